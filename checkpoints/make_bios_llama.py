"""Pretrain the small LLaMA that chapters 7, 8 and 9 start from, on synthetic biographies.

    OMP_NUM_THREADS=1 PYTHONPATH=. python checkpoints/make_bios_llama.py                  # all three
    OMP_NUM_THREADS=1 PYTHONPATH=. python checkpoints/make_bios_llama.py --only bios-llama

Writes, for each model, ``checkpoints/<name>/`` with config.json + model.safetensors
(Hugging Face Llama format), the word-level tokenizer (tokenizer.json and
tokenizer_config.json holding the chat template) and ``pretraining.json``
(what it trained on, the held-out loss, the command, seed, time, git commit).

    bios-llama        the base model: 4 layers, width 64; biographies in 5 phrasings, shuffled order
    bios-llama-v1     the same model on biographies in ONE fixed phrasing and order (chapter 7's control)
    bios-llama-draft  a 1-layer, width-32 model trained like bios-llama (chapter 9's draft model)

All three see the same 1,000 invented people (``make_people(1000, seed=0)``)
and nothing else: no question ever appears in pretraining. The held-out loss is
measured on 256 fresh biographies of the same people drawn with another seed
(new phrasing and order combinations for the 5-phrasing models), so it measures
how well the facts are stored, not how well new text is modelled.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import time

import torch

from plmkit.align import bios
from plmkit.align.chat import build_tokenizer, save_tokenizer
from plmkit.models.llama import Llama, LlamaConfig
from plmkit.train import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
N_PEOPLE, PEOPLE_SEED, EVAL_SEED, EVAL_ROWS, LENGTH = 1000, 0, 12345, 256, 56

MODELS = {
    "bios-llama": dict(variety=5, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, steps=2000, lr=3e-3),
    "bios-llama-v1": dict(variety=1, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, steps=2000, lr=3e-3),
    "bios-llama-draft": dict(variety=5, hidden_size=32, intermediate_size=88, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, steps=2000, lr=3e-3),
}
BATCH = 64


def eval_batches(tokenizer, people, variety):
    rng = random.Random(EVAL_SEED)
    return [bios.bio_batch(tokenizer, people, rng, variety, 64, LENGTH) for _ in range(EVAL_ROWS // 64)]


@torch.no_grad()
def held_out_loss(model, batches) -> float:
    """Mean per-token cross-entropy over the batches (padding ignored)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total, count = total + loss.item(), count + int((y != -100).sum())
    return total / count


def train(name: str, seed: int = 0) -> dict:
    spec = dict(MODELS[name])
    variety, steps, lr = spec.pop("variety"), spec.pop("steps"), spec.pop("lr")
    torch.manual_seed(seed)
    people = bios.make_people(N_PEOPLE, seed=PEOPLE_SEED)
    tokenizer = build_tokenizer(bios.corpus_words(people))
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=256, rope_theta=10000.0,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, **spec)
    model = Llama(config)
    rng = random.Random(seed)
    trainer = Trainer(model, lambda: bios.bio_batch(tokenizer, people, rng, variety, BATCH, LENGTH),
                      max_steps=steps, lr=lr, warmup_steps=100, weight_decay=0.1, device="cpu", precision="fp32",
                      progress=False, log_every=100)
    start = time.time()
    trainer.fit()
    seconds = time.time() - start
    loss = held_out_loss(model, eval_batches(tokenizer, people, variety))
    out = os.path.join(HERE, name)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    record = {
        "name": name, "command": " ".join(["python", *sys.argv]), "date": datetime.datetime.utcnow().isoformat() + "Z",
        "device": "cpu, 1 thread", "git_commit": commit, "seed": seed, "train_seconds": round(seconds, 1),
        "corpus": {"people": N_PEOPLE, "people_seed": PEOPLE_SEED, "variety": variety,
                   "description": "synthetic biographies (plmkit.align.bios), one per row as <s> bio </s>, "
                                  "no questions"},
        "steps": steps, "batch_size": BATCH, "row_length": LENGTH, "lr": lr,
        "exposures_per_person": steps * BATCH / N_PEOPLE,
        "parameters": model.num_parameters(),
        "held_out": {"seed": EVAL_SEED, "rows": EVAL_ROWS, "loss": loss,
                     "description": "fresh biographies of the same people (new phrasing/order draws)"},
        "train_loss_last": trainer.history["loss"][-1],
    }
    with open(os.path.join(out, "pretraining.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"{name}: {record['parameters']:,} parameters, {steps} steps x {BATCH} biographies "
          f"({record['exposures_per_person']:.0f} per person, variety {variety}), {seconds:.0f} s, "
          f"held-out loss {loss:.4f}", flush=True)
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(MODELS), action="append")
    parser.add_argument("--steps", type=int, help="override the number of steps (a quick smoke run)")
    args = parser.parse_args()
    for name in args.only or list(MODELS):
        if args.steps:
            MODELS[name]["steps"] = args.steps
        train(name)
