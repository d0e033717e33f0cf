"""Chapter 7's experiments on the biography models: one fine-tuning run, measured every way the chapter needs.

    run = sft_run("checkpoints/bios-llama", seed=0, lora_rank=None, n_people=None, response_only=True)
    run["unseen"]        exact match on questions about people SFT never saw (knowledge from pretraining only)
    run["seen"]          exact match on questions about the people SFT trained on
    run["base_chat"]     the base model, the same held-out questions in the chat template, before SFT
    run["base_completion"]  the base model asked to complete the first phrasing ("X was born in") -- stored knowledge
    run["bio_loss_before"/"bio_loss_after"]  held-out biography loss: forgetting
    run["writes_user_turn"]  fraction of answers after which the model, left running, writes a <|user|> header

The experiment scripts (``experiments/sft_*.py``) loop over it and write labelled JSON.
"""
from __future__ import annotations

import random
import time

import torch

from ..models.llama import Llama
from . import bios
from .chat import ROLE_TOKENS, load_tokenizer
from .lora import add_lora, count_parameters
from .sft import _ids, answer_batch, finetune, qa_accuracy

__all__ = ["checkpoint", "load_base", "completion_accuracy", "bio_loss", "user_turn_rate", "sft_run", "PEOPLE", "PEOPLE_SEED"]

PEOPLE, PEOPLE_SEED = 1000, 0


def checkpoint(name: str) -> str:
    """The folder of a checkpoint shipped with the book: <repository>/checkpoints/<name>."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "checkpoints" / name
    if not (folder / "config.json").is_file():
        raise ValueError(f"name must be a checkpoint under checkpoints/ (bios-llama, bios-llama-v1, "
                         f"bios-llama-draft), got {name!r}; make it with checkpoints/make_bios_llama.py")
    return str(folder)


def load_base(directory: str):
    """(model in eval mode, tokenizer, people) of a checkpoint made by checkpoints/make_bios_llama.py."""
    model = Llama.from_pretrained(directory).eval()
    return model, load_tokenizer(directory), bios.make_people(PEOPLE, seed=PEOPLE_SEED)


@torch.no_grad()
def completion_accuracy(model, tokenizer, people: list[dict]) -> float:
    """Greedy completion of the first phrasing of each fact ("X was born in" -> "Oslo"), exact match."""
    from ..generate import generate

    prompts, answers = [], []
    for p in people:
        for attr in bios.ATTRIBUTES:
            template = bios.TEMPLATES[attr][0]
            prefix = template[:template.index("{value}")].format(name=p["name"])
            prompts.append([tokenizer.token_to_id("<s>")] + _ids(tokenizer, prefix))
            answers.append(_ids(tokenizer, p[attr]))
    n = max(len(a) for a in answers)
    out = generate(model.eval(), prompts, n, temperature=0)
    return sum(o[len(pr):len(pr) + len(a)] == a for o, pr, a in zip(out, prompts, answers)) / len(answers)


@torch.no_grad()
def bio_loss(model, tokenizer, people: list[dict], variety: int, seed: int = 12345, rows: int = 256) -> float:
    """Mean per-token loss on `rows` fresh biographies (the pretraining objective): forgetting shows here."""
    rng = random.Random(seed)
    total, count = 0.0, 0
    for _ in range(rows // 64):
        x, y = bios.bio_batch(tokenizer, people, rng, variety, 64)
        logits = model(x)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100,
                                                   reduction="sum").item()
        count += int((y != -100).sum())
    return total / count


@torch.no_grad()
def user_turn_rate(model, tokenizer, questions: list[str], max_new_tokens: int = 16) -> float:
    """Fraction of generations that, not stopped at <|end|>, go on to write a <|user|> header."""
    from ..generate import generate
    from .chat import render

    user = tokenizer.token_to_id(ROLE_TOKENS["user"])
    prompts = [_ids(tokenizer, render([{"role": "user", "content": q}], add_generation_prompt=True))
               for q in questions]
    out = generate(model.eval(), prompts, max_new_tokens, temperature=0)
    return sum(user in o[len(p):] for o, p in zip(out, prompts)) / len(prompts)


def sft_run(base_dir: str, *, seed: int = 0, lora_rank: int | None = None, lora_targets=("q_proj", "v_proj"),
            n_people: int | None = None, response_only: bool = True, epochs: float = 4.0, lr: float | None = None,
            n_eval: int | None = None, base_metrics: bool = True, keep: list | None = None) -> dict:
    """Fine-tune the checkpoint in `base_dir` on multi-turn QA about half the people; measure (see module doc).

    `keep`: a list to which the fine-tuned model is appended (the notebook's chat widget reuses it).
    """
    model, tok, people = load_base(base_dir)
    variety = 5 if "v1" not in base_dir.rstrip("/").split("/")[-1] else 1
    train_people, test_people = bios.split_people(people, seed=0)          # the same split for every run
    if n_people is not None:
        train_people = train_people[:n_people]
    eval_seen = [qa for p in train_people[:n_eval] for qa in bios.qa_pairs(p)]
    eval_unseen = [qa for p in test_people[:n_eval] for qa in bios.qa_pairs(p)]
    out = {"base": base_dir.rstrip("/").split("/")[-1], "seed": seed, "lora_rank": lora_rank,
           "n_people": len(train_people), "response_only": response_only, "epochs": epochs}
    if base_metrics:
        out["base_chat"] = qa_accuracy(model, tok, eval_unseen)
        out["base_completion"] = completion_accuracy(model, tok, test_people[:n_eval])
    out["bio_loss_before"] = bio_loss(model, tok, people, variety)
    if lora_rank is not None:
        add_lora(model, targets=lora_targets, r=lora_rank, alpha=2.0 * lora_rank)
    trainable, total = count_parameters(model)
    out.update(trainable=trainable, total=total, optimizer_state_bytes=2 * 4 * trainable)   # AdamW: 2 fp32 moments
    conversations = bios.multi_turn_conversations(train_people, random.Random(seed))
    start = time.time()
    trainer = finetune(model, tok, conversations, epochs=epochs, seed=seed, response_only=response_only,
                       lr=lr or (1e-2 if lora_rank is not None else 2e-3))
    out["train_seconds"] = time.time() - start
    out["steps"] = trainer.step
    out["train_loss_last"] = trainer.history["loss"][-1] if trainer.history["loss"] else None
    out["seen"] = qa_accuracy(model, tok, eval_seen)
    out["unseen"] = qa_accuracy(model, tok, eval_unseen)
    out["bio_loss_after"] = bio_loss(model, tok, people, variety)
    out["writes_user_turn"] = user_turn_rate(model, tok, [q for q, _ in eval_unseen[:100]])
    if keep is not None:
        keep.append(model)
    out["examples"] = [(q, a, p) for (q, a), p in zip(eval_unseen[:5], answer_batch(model, tok, [q for q, _ in
                                                                                            eval_unseen[:5]]))]
    return out
