"""Small text-to-text tasks and the pre-training objective comparison of chapter 5.

Everything is character-level on lower-case English words from the Python
docs (``load_corpus("pydoc")``), so that a model of ~100k parameters learns
something in seconds on a CPU.

    CharVocab              <pad>=0, </s>=1, <unk>=2, <mask>=3, " a-z:|", then sentinels at the end
    word_list / windows    the words of the corpus, random windows of them
    make_task              "reverse: a b" -> "b a", "sort: b a" -> "a b", "fill: a _ c d e" -> "b"
    pretrain_pairs         one batch of (input, target) texts for an objective:
                           'span' (T5), 'bart' (text infilling), 'prefix' (prefix LM), 'clm' (decoder-only)
    Seq2SeqBatch / collate encoder-decoder batches (right padding, labels -100 on padding)
    decoder_only_batch     "input|target</s>" for a decoder-only model, loss on the target only
    T5DecoderOnly          T5's blocks without cross-attention: the decoder-only side of the comparison
    build_model            a tiny T5 (encoder-decoder) or T5DecoderOnly of matched per-token cost
    run_objective          pre-train with one objective, fine-tune on the tasks, report loss and exact match

Per-token cost: an encoder-decoder with L encoder and L decoder layers runs
each input token through L layers and each target token through L more, the
same work as an L-layer decoder-only model running input + target; it has
about twice the parameters. :func:`train_flops` counts 6 x parameters-per-token
x tokens for both, and :func:`run_objective` sets the pre-training steps so
that every objective spends the same FLOPs.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import load_corpus
from .generate import generate
from torch import nn

from .models.t5 import T5Config, T5ForConditionalGeneration, T5Stack, init_t5_weights, seq2seq_loss
from .objectives import IGNORE_INDEX, span_corruption, text_infilling
from .train import Trainer

__all__ = ["CharVocab", "word_list", "make_task", "TASKS", "OBJECTIVES", "pretrain_pairs", "collate",
           "decoder_only_batch", "T5DecoderOnly", "build_model", "train_flops", "exact_match", "run_objective"]

TASKS = ("reverse", "sort", "fill")
OBJECTIVES = ("span", "bart", "prefix", "clm")


class CharVocab:
    """Characters of the tasks plus special tokens; the last `n_sentinels` ids are T5's sentinels.

    >>> v = CharVocab()
    >>> v.encode("ab c"), v.decode(v.encode("ab c") + [v.eos])
    ([5, 6, 4, 7], 'ab c')
    """

    SPECIALS = ("<pad>", "</s>", "<unk>", "<mask>")
    CHARS = " abcdefghijklmnopqrstuvwxyz:|_"

    def __init__(self, n_sentinels: int = 16):
        self.itos = list(self.SPECIALS) + list(self.CHARS) + [f"<extra_id_{k}>" for k in reversed(range(n_sentinels))]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad, self.eos, self.unk, self.mask = 0, 1, 2, 3
        self.n_sentinels = n_sentinels

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(ch, self.unk) for ch in text]

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.eos and stop_at_eos:
                break
            if i != self.pad:
                s = self.itos[i]
                out.append(s if len(s) == 1 else s if s.startswith("<extra") or s == "<mask>" else "")
        return "".join(out)


def word_list(min_len: int = 2, max_len: int = 6) -> list[str]:
    """The corpus as a list of lower-case words, in order (repeats kept)."""
    words = re.findall(r"[a-z]+", load_corpus("pydoc").lower())
    return [w for w in words if min_len <= len(w) <= max_len]


def _window(words: list[str], n: int, rng: random.Random) -> list[str]:
    i = rng.randrange(len(words) - n)
    return words[i:i + n]


def make_task(task: str, words: list[str], rng: random.Random, n_words: int = 2) -> tuple[str, str]:
    """One (input, target) pair of a text-to-text task, the task named by a prefix.

    >>> make_task("reverse", ["one", "two", "three", "four", "five", "six"], random.Random(0))
    ('reverse: four six', 'six four')
    """
    if task == "reverse":
        ws = rng.sample(words, n_words)
        return f"reverse: {' '.join(ws)}", " ".join(reversed(ws))
    if task == "sort":
        ws = rng.sample(words, n_words)
        return f"sort: {' '.join(ws)}", " ".join(sorted(ws))
    if task == "fill":
        ws = _window(words, 5, rng)
        k = rng.randrange(1, 4)
        return f"fill: {' '.join(ws[:k] + ['_'] + ws[k + 1:])}", ws[k]
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def pretrain_pairs(objective: str, words: list[str], vocab: CharVocab, batch_size: int, rng: random.Random,
                   n_words: int = 6, generator: torch.Generator | None = None) -> list[tuple[list[int], list[int]]]:
    """A batch of (input ids, target ids) for one pre-training objective, on windows of `n_words` words.

    span    T5 span corruption (noise 0.15, mean span 3); sentinels from the end of the vocabulary
    bart    BART text infilling (30%, Poisson(3) spans, one <mask> each); the target is the whole text
    prefix  the text cut at a random point: input the first part, target the rest (T5's prefix LM)
    clm     decoder-only: no input, the target is the whole text (next-token prediction)
    Every target ends with </s>.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    out = []
    for _ in range(batch_size):
        ids = vocab.encode(" ".join(_window(words, n_words, rng)))
        t = torch.tensor(ids)
        if objective == "span":
            inp, tgt = span_corruption(t, len(vocab), vocab.eos, generator=generator)
            out.append((inp.tolist(), tgt.tolist()))
        elif objective == "bart":
            inp, tgt = text_infilling(t, vocab.mask, generator=generator)
            out.append((inp.tolist() + [vocab.eos], tgt.tolist() + [vocab.eos]))
        elif objective == "prefix":
            cut = rng.randrange(1, len(ids))
            out.append((ids[:cut] + [vocab.eos], ids[cut:] + [vocab.eos]))
        else:
            out.append(([], ids + [vocab.eos]))
    return out


def collate(pairs: list[tuple[list[int], list[int]]], pad: int = 0) -> dict:
    """Encoder-decoder batch: input_ids / attention_mask (B, S) right-padded, labels (B, T) with -100 on padding."""
    S = max(len(a) for a, _ in pairs)
    T = max(len(b) for _, b in pairs)
    ids = torch.full((len(pairs), S), pad)
    mask = torch.zeros(len(pairs), S, dtype=torch.long)
    labels = torch.full((len(pairs), T), IGNORE_INDEX)
    for i, (a, b) in enumerate(pairs):
        ids[i, :len(a)], mask[i, :len(a)] = torch.tensor(a, dtype=torch.long), 1
        labels[i, :len(b)] = torch.tensor(b, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def decoder_only_batch(pairs: list[tuple[list[int], list[int]]], sep: int, pad: int = 0) -> dict:
    """Decoder-only batch: ``input | target`` right-padded; the loss covers the target tokens only.

    An empty input (CLM pre-training) gives just the target, every token scored but the first.
    """
    seqs = [(a + [sep] if a else []) + b for a, b in pairs]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad)
    labels = torch.full((len(seqs), T), IGNORE_INDEX)
    for i, ((a, b), s) in enumerate(zip(pairs, seqs)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        start = len(a) + 1 if a else 1
        labels[i, start - 1:len(s) - 1] = torch.tensor(s[start:], dtype=torch.long)   # next-token targets
    return {"input_ids": ids, "labels": labels}


def _decoder_only_loss(model, batch) -> torch.Tensor:
    logits = model(batch["input_ids"])                                           # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


class T5DecoderOnly(nn.Module):
    """T5's decoder blocks without cross-attention: a decoder-only LM with T5's recipe.

    Relative position bias (causal), RMS norm, no biases, the same feed-forward and the same
    initialisation as :class:`~plmkit.models.t5.T5ForConditionalGeneration`, and a tied head
    scaled by d_model^-0.5. So the objective comparison changes the architecture and nothing
    else. ``forward(input_ids, attention_mask=None, position_ids=None)`` -> logits (B, T, V);
    positions are relative, so `position_ids` is accepted and not needed (left padding is masked).
    """

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.decoder = T5Stack(config, is_decoder=True, cross_attention=False)
        init_t5_weights(self, config, self.shared, (self.decoder,))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.decoder.decode(self.shared(input_ids), None, None, attention_mask)[-1]   # (B, T, C)
        return F.linear(hidden * self.config.d_model ** -0.5, self.shared.weight)            # (B, T, V)


def build_model(kind: str, vocab_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                d_ff: int = 128):
    """'encdec': T5 (v1.0 recipe) with n_layers + n_layers; 'dec': the same blocks as a decoder-only
    model with n_layers (the same per-token cost, half the parameters)."""
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // n_heads, d_ff=d_ff,
                   num_layers=n_layers, num_heads=n_heads, relative_attention_num_buckets=16,
                   relative_attention_max_distance=64, dropout_rate=0.0)
    if kind == "encdec":
        return T5ForConditionalGeneration(cfg)
    if kind == "dec":
        return T5DecoderOnly(cfg)
    raise ValueError(f"kind must be 'encdec' or 'dec', got {kind!r}")


def _non_embedding_params(model) -> tuple[int, int]:
    """(parameters an input token passes through, parameters a target token passes through), embeddings excluded."""
    if isinstance(model, T5ForConditionalGeneration):
        enc = sum(p.numel() for p in model.encoder.parameters())
        dec = sum(p.numel() for p in model.decoder.parameters())
        return enc, dec
    n = sum(p.numel() for p in model.decoder.parameters())
    return n, n


def train_flops(model, batch: dict) -> float:
    """Training FLOPs of one step on `batch`: 6 x (parameters used per token) x tokens (Kaplan et al.'s rule)."""
    n_in, n_out = _non_embedding_params(model)
    if "attention_mask" in batch:                                                   # encoder-decoder
        src = int(batch["attention_mask"].sum())
        tgt = int((batch["labels"] != IGNORE_INDEX).sum())
        return 6.0 * (n_in * src + n_out * tgt)
    tokens = int((batch["input_ids"] != 0).sum())
    return 6.0 * n_in * tokens


def _task_pairs(tasks, words, vocab, n, rng):
    pairs, names = [], []
    for i in range(n):
        task = tasks[i % len(tasks)]
        a, b = make_task(task, words, rng)
        pairs.append((vocab.encode(a), vocab.encode(b) + [vocab.eos]))
        names.append(task)
    return pairs, names


@torch.no_grad()
def exact_match(model, pairs, names, vocab, max_new_tokens: int = 24) -> dict[str, float]:
    """Greedy-decode every input; the fraction whose output equals the target exactly, per task."""
    model.eval()
    hits: dict[str, list[int]] = {}
    for i in range(0, len(pairs), 64):
        chunk, tasks = pairs[i:i + 64], names[i:i + 64]
        if isinstance(model, T5ForConditionalGeneration):
            out = generate(model, [a for a, _ in chunk], max_new_tokens=max_new_tokens, temperature=0,
                           stop_tokens=vocab.eos, pad_token_id=vocab.pad)
            texts = [vocab.decode(o[1:]) for o in out]
        else:
            sep = vocab.stoi["|"]
            prompts = [a + [sep] for a, _ in chunk]
            out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0,
                           stop_tokens=vocab.eos, pad_token_id=vocab.pad)
            texts = [vocab.decode(o[len(p):]) for o, p in zip(out, prompts)]
        for (_, b), text, task in zip(chunk, texts, tasks):
            hits.setdefault(task, []).append(int(text == vocab.decode(b)))
    return {t: sum(h) / len(h) for t, h in hits.items()}


def run_objective(objective: str, seed: int = 0, *, words: list[str] | None = None, d_model: int = 64,
                  n_layers: int = 2, pretrain_steps: int = 300, finetune_steps: int = 300, batch_size: int = 32,
                  lr: float = 3e-3, n_eval: int = 150, device: str | None = "cpu", log=print,
                  return_model: bool = False):
    """Pre-train a fresh model with `objective`, fine-tune it on the three tasks, evaluate on held-out pairs.

    `pretrain_steps` is the budget of the CLM baseline; every objective gets the
    same pre-training FLOPs (its steps scaled by the FLOPs of one of its steps),
    and all fine-tune for `finetune_steps`. Returns parameters, FLOPs, steps,
    losses, exact match per task and wall time (and the model, with ``return_model=True``).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    t0 = time.time()
    words = words or word_list()
    vocab = CharVocab()
    torch.manual_seed(seed)
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    kind = "dec" if objective == "clm" else "encdec"
    model = build_model(kind, len(vocab), d_model=d_model, n_layers=n_layers, d_ff=2 * d_model)
    sep = vocab.stoi["|"]
    split = int(0.9 * len(words))
    train_words, test_words = words[:split], words[split:]

    def batch_of(pairs):
        return collate(pairs, vocab.pad) if kind == "encdec" else decoder_only_batch(pairs, sep, vocab.pad)

    loss_fn = seq2seq_loss if kind == "encdec" else _decoder_only_loss

    # FLOPs of one step: this objective's vs. the CLM baseline's, on the same kind of text
    probe_rng = random.Random(seed + 1)
    step_flops = sum(train_flops(model, batch_of(pretrain_pairs(objective, train_words, vocab, batch_size, probe_rng)))
                     for _ in range(4)) / 4
    base = build_model("dec", len(vocab), d_model=d_model, n_layers=n_layers, d_ff=2 * d_model)
    base_flops = sum(train_flops(base, decoder_only_batch(pretrain_pairs("clm", train_words, vocab, batch_size,
                                                                         probe_rng), sep))
                     for _ in range(4)) / 4
    steps = pretrain_steps if objective == "clm" else max(1, round(pretrain_steps * base_flops / step_flops))

    trainer = Trainer(model, lambda: batch_of(pretrain_pairs(objective, train_words, vocab, batch_size, rng,
                                                              generator=g)),
                      max_steps=steps, loss_fn=loss_fn, lr=lr, warmup_steps=min(30, steps), weight_decay=0.0,
                      device=device, precision="fp32", progress=False, log_every=max(1, steps // 10))
    trainer.fit()
    pre_loss = trainer.history["loss"][-1]
    ft = Trainer(model, lambda: batch_of(_task_pairs(TASKS, train_words, vocab, batch_size, rng)[0]),
                 max_steps=finetune_steps, loss_fn=loss_fn, lr=lr, warmup_steps=min(30, finetune_steps),
                 weight_decay=0.0, device=device, precision="fp32", progress=False,
                 log_every=max(1, finetune_steps // 10))
    ft.fit()
    eval_rng = random.Random(10_000 + seed)
    pairs, names = _task_pairs(TASKS, test_words, vocab, n_eval, eval_rng)
    model.eval()
    with torch.no_grad():
        dev = next(model.parameters()).device
        eval_loss = float(loss_fn(model, {k: v.to(dev) for k, v in batch_of(pairs).items()}))
    em = exact_match(model, pairs, names, vocab)
    result = {"objective": objective, "model": "encoder-decoder" if kind == "encdec" else "decoder-only",
              "seed": seed, "parameters": sum(p.numel() for p in model.parameters()),
              "pretrain_steps": steps, "pretrain_flops": steps * step_flops, "pretrain_loss": pre_loss,
              "finetune_loss": ft.history["loss"][-1], "eval_loss": eval_loss, "exact_match": em,
              "exact_match_mean": sum(em.values()) / len(em), "seconds": time.time() - t0}
    log(f"{objective:7s} seed {seed}: {result['parameters']:,} params, {steps} pre-training steps, "
        f"held-out loss {eval_loss:.3f}, exact match {result['exact_match_mean']:.2f} "
        f"({', '.join(f'{k} {v:.2f}' for k, v in em.items())}), {result['seconds']:.0f} s")
    return (result, model) if return_model else result
