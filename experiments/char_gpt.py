"""Chapter 4's character-level GPT over seeds: how many of its sampled words are real words?

For each seed, trains the chapter's CPU character model on Shakespeare (every work but Hamlet,
exactly the notebook's recipe), samples `samples` texts of `sample_chars` characters after a
newline at each temperature, and counts the fraction of their words that occur in the training
text (`plmkit.generate.known_word_fraction`: whitespace-separated, lower-cased, punctuation
stripped from both ends, the last word of each sample left out). Two baselines get the same
sampling: a character bigram model counted on the training text and the untrained GPT.

Writes one labelled JSON (command, date, device, seeds, git commit, settings, results) that
solutions/04_gpt.ipynb loads.

    OMP_NUM_THREADS=1 python experiments/char_gpt.py --out experiments/results/char_gpt.json   # ~10 min
    python experiments/char_gpt.py --smoke --out /tmp/smoke.json                              # CI: seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plmkit import experiment  # noqa: E402
from plmkit import generate as decoding  # noqa: E402
from plmkit.data import load_works  # noqa: E402
from plmkit.device import seed_everything  # noqa: E402
from plmkit.models import GPT, GPTConfig  # noqa: E402
from plmkit.objectives import clm  # noqa: E402
from plmkit.tokenize import CharTokenizer  # noqa: E402
from plmkit.train import Trainer  # noqa: E402

# the notebook's CHAR profile for the CPU (solutions/04_gpt.ipynb, section 4)
MODEL = dict(n_embd=128, n_layer=2, n_head=4, block=64, batch=32, steps=1200, lr=4e-3, dropout=0.0)
FULL = dict(seeds=[0, 1, 2], model=MODEL, samples=16, sample_chars=240, temperatures=[0.8, 1.0])
SMOKE = dict(seeds=[0], model={**MODEL, "steps": 4, "batch": 4}, samples=2, sample_chars=40, temperatures=[1.0])


def corpus():
    """Shakespeare without Hamlet (training) and Hamlet (held out), as in the chapter."""
    works = load_works("shakespeare")
    train_text = "\n\n".join(text for title, text in works.items() if title != "Hamlet")
    return train_text, works["Hamlet"]


def train_char_gpt(m: dict, tok: CharTokenizer, train_ids, val_ids, seed: int):
    """The notebook's `make_trainer` recipe; returns the model and its history."""
    seed_everything(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=m["block"], n_embd=m["n_embd"],
                          n_layer=m["n_layer"], n_head=m["n_head"], dropout=m["dropout"]))
    g = torch.Generator().manual_seed(0)
    val_batches = [clm.random_windows(val_ids, m["block"], m["batch"], generator=g) for _ in range(4)]
    steps = m["steps"]
    trainer = Trainer(model, lambda: clm.random_windows(train_ids, m["block"], m["batch"]), eval_data=val_batches,
                      max_steps=steps, lr=m["lr"], warmup_steps=steps // 20, min_lr_ratio=0.1,
                      eval_every=max(1, steps // 10), log_every=max(1, steps // 50), progress=False)
    return model, trainer.fit()


def sample_texts(model, tok: CharTokenizer, n: int, chars: int, temperature: float, seed: int) -> list[str]:
    """`n` samples of `chars` characters, each continuing a single newline."""
    start = torch.tensor([tok.encode("\n")] * n)
    out = decoding.generate(model.eval(), start, chars, temperature=temperature,
                            generator=torch.Generator().manual_seed(seed))
    return [tok.decode(row[1:].tolist()) for row in out]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = ap.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    torch.set_num_threads(1)
    train_text, held_out = corpus()
    tok = CharTokenizer.train(train_text)
    train_ids, val_ids = torch.tensor(tok.encode(train_text)), torch.tensor(tok.encode(held_out))
    vocabulary = set(decoding.words(train_text))
    bigram = clm.BigramLM(train_ids, tok.vocab_size)
    record = {**experiment.label("experiments/char_gpt.py", argv if argv is not None else sys.argv[1:], "cpu",
                                 s["seeds"]), "settings": s, "vocabulary_words": len(vocabulary), "results": []}
    for seed in s["seeds"]:
        start = time.time()
        seed_everything(seed)
        m = s["model"]
        untrained = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=m["block"], n_embd=m["n_embd"],
                                  n_layer=m["n_layer"], n_head=m["n_head"]))
        model, history = train_char_gpt(m, tok, train_ids, val_ids, seed)
        row = {"seed": seed, "eval_loss": history["eval_loss"][-1], "train_seconds": round(time.time() - start, 1)}
        for T in s["temperatures"]:
            for name, lm in (("gpt", model), ("bigram", bigram), ("untrained", untrained)):
                texts = sample_texts(lm, tok, s["samples"], s["sample_chars"], T, seed)
                row[f"{name}_T{T}"] = decoding.known_word_fraction(texts, vocabulary)
            row[f"example_T{T}"] = sample_texts(model, tok, 1, s["sample_chars"], T, seed)[0]
        record["results"].append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("example")}), flush=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1, ensure_ascii=False)
    return record


if __name__ == "__main__":
    main()
