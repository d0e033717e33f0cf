"""Mutation tests: every exercise's checker fails plausible bugs and shortcuts, and passes the solution.

MUTANTS is the table: (exercise id, what the bug is, the buggy answer), for the exercises
that are not yet specs (a spec's likely bugs live in its trusted half, plmkit/checks/_judges/,
and tests/test_specs.py runs them). Each row must
FAIL its checker, both in honour mode and through the grading path (record in a
temporary folder, then `judge_recorded` on the files, as the grader does). The
book's own solution code (extracted from solutions/*.ipynb) must pass both ways, and
calling the reference (directly, by alias, by functools.partial, through a wrapper)
must fail with a reason that names the reference. All in-process: no notebook kernel.
"""
from __future__ import annotations

import functools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plmkit.nn as pn
import test_checks_gpt as gpt_bugs
from plmkit import basics, checks, distributed
from plmkit import generate as gen
from plmkit import train as train_lib
from plmkit.checks._judges import transformer as ch2
from plmkit.models import bert as bert_lib
from plmkit.objectives import clm as clm_lib
from plmkit.objectives import mlm as mlm_lib
from plmkit.objectives import pairs as pairs_lib
from plmkit.objectives import qa as qa_lib
from plmkit.tokenize import bpe, unigram, wordpiece as wp
from solution_code import solutions

REGISTRY = checks.load_all()
CHAPTER = {"0": "00_warmup", "1": "01_tokenization", "2": "02_transformer", "3": "03_bert", "4": "04_gpt"}
NAMES = {  # exercise -> names the check cell passes, in order
    "0.1": ["softmax"], "0.2": ["log_softmax"], "0.3": ["cross_entropy"], "0.4": ["train_loop"],
    "1.1": ["count_pairs"], "1.2": ["merge"], "1.3": ["train_bpe"], "1.4": ["encode"], "1.5": ["wordpiece"],
    "2.1": ["attention"], "2.2": ["causal_mask"], "2.3": ["split_heads", "merge_heads"],
    "2.4": ["sinusoidal_encoding"], "2.5": ["layer_norm"], "2.6": ["PreLNBlock"], "2.7": ["MultiHeadAttention"],
    "3.1": ["embed"], "3.2": ["mask_tokens"], "3.3": ["mlm_loss"], "3.4": ["nsp_pairs"], "3.5": ["sop_pairs"],
    "3.6": ["albert_param_count"], "3.7": ["mean_pool"],
    "3.9": ["best_span"],
    "4.1": ["causal_mask"], "4.2": ["clm_loss"], "4.3": ["perplexity"], "4.4": ["temperature_softmax"],
    "4.5": ["top_k_filter"], "4.6": ["top_p_filter"], "4.7": ["beam_search_step"], "4.8": ["best_hypothesis"],
    "4.9": ["generate"], "4.10": ["make_optimizer", "train_step"], "4.11": ["gpt2_logits"],
    "4.12": ["zero_memory"],
    "1.6": ["viterbi"],
    "3.8": ["bert_encode", "sentence_embedding"],
}


def solution(exercise):
    ns = solutions(CHAPTER[exercise.split(".")[0]])
    return tuple(ns[n] for n in NAMES[exercise])


def both_ways(exercise, learner, tmp_path, seed):
    """The honour-mode verdict and the graded verdict for the same seed; they must agree."""
    ex = REGISTRY[exercise]
    honour = ex.honour(*learner, seed=seed)
    ex.record(*learner, seed=seed, folder=tmp_path)
    graded = checks.judge_recorded(exercise, seed, tmp_path)
    assert graded.line == honour.line and graded.passed == honour.passed, (honour.line, graded.line)
    return graded


# ============================================================================ chapter 2 (shortcuts and degenerate answers)

def _own_mha():
    """The solution's MultiHeadAttention (Exercise 2.7): the block of 2.6 is built from the learner's own."""
    return solutions("02_transformer")["MultiHeadAttention"]


class PreLN(nn.Module):
    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.attn = _own_mha()(d_model, n_heads)
        self.norm1 = pn.LayerNorm(d_model)
        self.ffn = pn.FeedForward(d_model, d_ff)
        self.norm2 = pn.LayerNorm(d_model)


class MHAViaTorch(nn.Module):
    """Wraps torch's module behind the learner's names: nn.MultiheadAttention is the reference."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x, context=None, mask=None):
        kv = x if context is None else context
        C = x.shape[-1]
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        kpm = None if mask is None or mask.ndim == 2 else ~mask[:, 0, 0, :]
        am = ~mask if mask is not None and mask.ndim == 2 else None
        return F.multi_head_attention_forward(
            x.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), C, self.h, w, b, None, None, False, 0.0,
            self.out_proj.weight, self.out_proj.bias, key_padding_mask=kpm, attn_mask=am,
            need_weights=False)[0].transpose(0, 1)


class MHAViaSDPA(MHAViaTorch):
    """Own projections, torch's fused attention: F.scaled_dot_product_attention is the reference."""

    def forward(self, x, context=None, mask=None):
        kv = x if context is None else context
        B, T, C = x.shape
        q, k, v = (p(t).view(B, t.shape[1], self.h, C // self.h).transpose(1, 2)
                   for p, t in ((self.q_proj, x), (self.k_proj, kv), (self.v_proj, kv)))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class PreLNWithPlmkitAttention(PreLN):
    """The 2.6 block around pn.MultiHeadAttention instead of the learner's own."""

    def __init__(self, d_model, n_heads, d_ff):
        super().__init__(d_model, n_heads, d_ff)
        self.attn = pn.MultiHeadAttention(d_model, n_heads)

    def forward(self, x, mask=None):
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.ffn(self.norm2(x))


# ============================================================================ chapter 3

def emb(ids, types, word, position, segment, *, pos=True, seg=True, start=0, detach=False):
    types = torch.zeros_like(ids) if types is None else types
    W = word.weight.detach() if detach else word.weight
    out = W[ids]
    if pos:
        out = out + position(torch.arange(start, start + ids.shape[1]))
    if seg:
        out = out + segment(types)
    return out


def emb_none_crashes(ids, types, word, position, segment):
    return word(ids) + position(torch.arange(ids.shape[1])) + segment(types)


def mt(ids, mask_id, V, special, mlm_probability=0.15, generator=None, *, protect=True, rule=(0.8, 0.9),
       global_rng=False, in_place=False):
    gen_ = None if global_rng else generator
    special_t = torch.isin(ids, torch.tensor(list(special)))
    sel = torch.rand(ids.shape, generator=gen_) < mlm_probability
    if protect:
        sel &= ~special_t
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    u = torch.rand(ids.shape, generator=gen_)
    out = ids if in_place else ids.clone()
    out[sel & (u < rule[0])] = mask_id
    swap = sel & (u >= rule[0]) & (u < rule[1])
    out[swap] = torch.randint(V, ids.shape, generator=gen_)[swap]
    return out, labels


def mlm_every_position(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), labels.clamp(min=0).reshape(-1))


def mlm_sum(logits, labels):
    keep = labels != -100
    return F.cross_entropy(logits[keep], labels[keep], reduction="sum")


def mlm_item(logits, labels):
    keep = labels != -100
    return torch.tensor(F.cross_entropy(logits[keep], labels[keep]).item())


def mlm_over_all(logits, labels):
    keep = labels != -100
    return F.cross_entropy(logits[keep], labels[keep], reduction="sum") / labels.numel()


def nsp(documents, rng, *, same_doc=False, flip=False, global_random=False, always_next=False):
    r = random if global_random else rng
    pairs = []
    for d, doc in enumerate(documents):
        others = [k for k, o in enumerate(documents) if k != d and o]
        for j in range(len(doc) - 1):
            if always_next or r.random() < 0.5:
                pairs.append((doc[j], doc[j + 1], 1 if flip else 0))
            else:
                src = documents[d] if same_doc else documents[r.choice(others)]
                pairs.append((doc[j], r.choice(src), 0 if flip else 1))
    return pairs


def sop(documents, rng, *, never_swap=False, flip=False, global_random=False, cross_docs=False):
    r = random if global_random else rng
    pairs = []
    flat = [s for doc in documents for s in doc] if cross_docs else None
    for doc in documents:
        for j in range(len(doc) - 1):
            a, b = doc[j], doc[j + 1]
            swap = (not never_swap) and r.random() < 0.5
            pair = (b, a, 1) if swap else (a, b, 0)
            pairs.append((pair[0], pair[1], 1 - pair[2]) if flip else pair)
    if cross_docs:
        pairs[0] = (flat[0], flat[-1], 0)
    return pairs


def albert(vocab_size, embedding_size, hidden_size, num_layers, intermediate_size, max_positions=512,
           type_vocab_size=2, shared=True, *, projection=True, pooler=True, emb_norm=True, ignore_shared=False):
    V, E, H, I = vocab_size, embedding_size, hidden_size, intermediate_size
    total = (V + max_positions + type_vocab_size) * E + (2 * E if emb_norm else 0)
    total += E * H + H if projection else 0
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    total += layer * (num_layers if (ignore_shared or not shared) else 1)
    return total + (H * H + H if pooler else 0)


def pool(hidden, mask, *, how="real"):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "all":
        return hidden.mean(1)
    if how == "by_T":
        return (hidden * m).sum(1) / hidden.shape[1]
    if how == "float32":
        return ((hidden * m).sum(1) / m.sum(1)).float()
    return (hidden * m).sum(1) / m.sum(1)


def span(start, end, context_mask, max_answer_len, *, how="right"):
    """Exercise 3.9 with one bug: the best (start, end) pair over the allowed spans."""
    B, T = start.shape
    ctx = context_mask.bool()
    if how == "independent":                                   # two argmaxes, no pairing
        return start.masked_fill(~ctx, -1e9).argmax(1), end.masked_fill(~ctx, -1e9).argmax(1)
    i = torch.arange(T)
    length = i[None, :] - i[:, None] + 1
    allowed = {"backwards": length <= max_answer_len,
               "one too long": (length >= 1) & (length <= max_answer_len + 1),
               "one too short": (length >= 1) & (length < max_answer_len)}.get(
        how, (length >= 1) & (length <= max_answer_len))
    if how == "start in passage only":
        allowed = allowed & ctx[:, :, None]
    elif how != "question allowed":
        allowed = allowed & ctx[:, :, None] & ctx[:, None, :]
    scores = start[:, :, None] + end[:, None, :]
    if how == "start times end":
        scores = start[:, :, None] * end[:, None, :]
    best = scores.masked_fill(~allowed, float("-inf")).reshape(B, -1).argmax(1)
    if how == "column-major":
        return best % T, best // T
    return best // T, best % T


# ============================================================================ chapter 4

def clm_ignores_padding(logits, ids):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].clamp(min=0).reshape(-1))


def clm_item(logits, ids):
    V = logits.shape[-1]
    return torch.tensor(F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)).item())


def ppl_tensor(losses, counts):
    t = torch.tensor(losses, dtype=torch.float64)
    n = torch.tensor(counts, dtype=torch.float64)
    return torch.exp((t * n).sum() / n.sum())


def temp_dim1(logits, T):
    if T == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).to(logits.dtype)
    return torch.softmax(logits / T, dim=1)


def temp_argmax_index(logits, T):
    return logits.argmax(-1) if T == 0 else torch.softmax(logits / T, -1)


def temp_float32(logits, T):
    if T == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return torch.softmax(logits.float() / T, -1)


def topk_dim1(logits, k):
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def topp(logits, p, *, dim=-1, crossing=True, in_place=False):
    probs, order = torch.sort(torch.softmax(logits, dim=-1), dim=dim, descending=True)
    above = probs.cumsum(dim=-1) - probs
    keep_sorted = above < p if crossing else probs.cumsum(dim=-1) <= p
    keep = keep_sorted.scatter(-1, order, keep_sorted)
    return logits.masked_fill_(~keep, float("-inf")) if in_place else logits.masked_fill(~keep, float("-inf"))


def beam_tokens_mod_k(sums, nxt, n):
    B, K, V = nxt.shape
    scores, flat = torch.topk((sums[:, :, None] + nxt).reshape(B, K * V), n, dim=-1)
    return scores, flat // V, flat % K


def ppl_sorts_in_place(losses, counts):
    order = sorted(range(len(losses)), key=lambda i: losses[i])
    losses.sort()                                      # sorted in place: the caller's list changes
    counts[:] = [counts[i] for i in order]
    return math.exp(sum(l * n for l, n in zip(losses, counts)) / sum(counts))


def best_pops(sums, lengths, length_penalty=1.0):
    scores = [sums.pop(0) / n ** length_penalty for n in lengths]   # empties the caller's list
    return max(range(len(scores)), key=lambda i: scores[i])


def best_argmin(sums, lengths, length_penalty=1.0):
    scores = [s / n ** length_penalty for s, n in zip(sums, lengths)]
    return min(range(len(scores)), key=lambda i: scores[i])


def best_float(sums, lengths, length_penalty=1.0):
    scores = [s / n ** length_penalty for s, n in zip(sums, lengths)]
    return float(max(range(len(scores)), key=lambda i: scores[i]))


@torch.no_grad()
def gen_loop(model, input_ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, stop_token=None,
             generator=None, slip=""):
    """4.9 with one slip: the order of the filters, the temperature, the stop rules."""
    ids, finished = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model(ids)[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            logits = logits if slip == "temperature last" else logits / temperature
            ns = solutions("04_gpt")                    # the book's filters: plmkit's own are forbidden here
            filters = [(ns["top_k_filter"], top_k), (ns["top_p_filter"], top_p)]
            for f, arg in (filters[::-1] if slip == "top-p first" else filters):
                if arg is not None:
                    logits = f(logits, arg)
            logits = logits / temperature if slip == "temperature last" else logits
            probs = torch.softmax(logits, -1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if stop_token is not None:
            if slip != "finished rows keep sampling":
                nxt = torch.where(finished, torch.full_like(nxt, stop_token), nxt)
            finished |= nxt == stop_token
        ids = torch.cat([ids, nxt[:, None]], 1)
        if stop_token is not None and slip != "no early end" and bool(finished.all()):
            break
    return ids


def gpt2(folder, input_ids, *, slip=""):
    """4.11 with one slip: the mask, GELU, the Conv1D layout, the final norm, positions, the scale."""
    import json
    import os

    from safetensors.torch import load_file
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    w = {k.removeprefix("transformer."): v for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    B, T = input_ids.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    D = C // H

    def ln(x, name):
        return F.layer_norm(x, (C,), w[name + ".weight"], w[name + ".bias"], cfg["layer_norm_epsilon"])

    def lin(x, name):
        W = w[name + ".weight"]
        return x @ (W.T.reshape(W.shape) if slip == "Conv1D read as Linear" else W) + w[name + ".bias"]

    x = w["wte.weight"][input_ids] + (0 if slip == "no positions" else w["wpe.weight"][:T])
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / (D if slip == "scale 1/D" else math.sqrt(D))
        if slip != "no mask":
            scores = scores.masked_fill(~mask, float("-inf"))
        x = x + lin((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        h = F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc"), approximate="none" if slip == "exact GELU" else "tanh")
        x = x + lin(h, p + "mlp.c_proj")
    return (x if slip == "no ln_f" else ln(x, "ln_f")) @ w["wte.weight"].T


def _lr_mult(step, cfg, slip=""):
    w, S, r = cfg["warmup_steps"], cfg["max_steps"], cfg["min_lr_ratio"]
    if slip == "no floor":
        r = 0.0
    if step < w:
        return (step if slip == "warm-up from 0" else step + 1) / w
    if step >= S:
        return r
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, S - w)))


def opt_groups(model, cfg, slip=""):
    """4.10's make_optimizer; slips: every parameter decayed, embeddings decayed (only the ndim rule)."""
    if slip == "decay everything":
        return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=cfg["betas"],
                                 weight_decay=cfg["weight_decay"])
    skip = set()
    for module in model.modules():
        if slip != "embeddings decayed" and ("Embedding" in type(module).__name__ or "Norm" in type(module).__name__):
            skip.update(id(p) for p in module.parameters(recurse=False))
    decay = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in skip]
    rest = [p for p in model.parameters() if p.ndim < 2 or id(p) in skip]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg["lr"], betas=cfg["betas"])


def one_step(model, optimizer, batch, step, cfg, slip=""):
    """4.10's train_step; slips in the schedule, the clipping and the gradient bookkeeping."""
    for group in optimizer.param_groups:
        group["lr"] = cfg["lr"] * _lr_mult(step, cfg, slip)
    model.train()
    if slip != "no zero_grad":
        optimizer.zero_grad()
    inputs, targets = batch
    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    if cfg["grad_clip"] is not None and slip not in ("no clipping", "clips after the step"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    if slip == "clips each tensor":
        for p in model.parameters():
            if p.grad is not None and cfg["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_([p], cfg["grad_clip"])
    optimizer.step()
    if slip == "clips after the step" and cfg["grad_clip"] is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    return loss.item()


def ts(slip):
    return (P(opt_groups, slip=slip), P(one_step, slip=slip))


def bert_enc(weights, config, input_ids, token_type_ids=None, attention_mask=None, *, slip=""):
    """3.8's bert_encode with one slip: Pre-LN, no mask, tanh GELU, no scale, no embedding norm, heads, eps."""
    w, B, T = weights, *input_ids.shape
    H, nh = config["hidden_size"], config["num_attention_heads"]
    D, eps = H // nh, (1e-5 if slip == "eps 1e-5" else config["layer_norm_eps"])
    types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    keep = torch.ones_like(input_ids) if attention_mask is None else attention_mask

    def dense(x, n):
        return F.linear(x, w[n + ".weight"], w[n + ".bias"])

    def norm(x, n):
        return F.layer_norm(x, (H,), w[n + ".weight"], w[n + ".bias"], eps)

    x = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][:T]
         + w["embeddings.token_type_embeddings.weight"][types])
    if slip != "no embedding norm":
        x = norm(x, "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        ln1, ln2 = p + "attention.output.LayerNorm", p + "output.LayerNorm"
        inp = norm(x, ln1) if slip == "pre-ln" else x
        if slip == "heads":                              # (B, T, H) read as (B, heads, T, D): no transpose
            q, k, v = (dense(inp, p + f"attention.self.{n}").reshape(B, nh, T, D) for n in ("query", "key", "value"))
        else:
            q, k, v = (dense(inp, p + f"attention.self.{n}").view(B, T, nh, D).transpose(1, 2)
                       for n in ("query", "key", "value"))
        s = q @ k.transpose(-2, -1) / (1.0 if slip == "no scale" else math.sqrt(D))
        if slip != "no mask":
            s = s.masked_fill((keep == 0)[:, None, None, :], float("-inf"))
        a = s.softmax(-1) @ v
        a = dense(a.reshape(B, T, H) if slip == "heads" else a.transpose(1, 2).reshape(B, T, H),
                  p + "attention.output.dense")
        act = "tanh" if slip == "tanh GELU" else "none"
        if slip == "pre-ln":
            x = x + a
            x = x + dense(F.gelu(dense(norm(x, ln2), p + "intermediate.dense"), approximate=act), p + "output.dense")
        else:
            x = norm(x + a, ln1)
            x = norm(x + dense(F.gelu(dense(x, p + "intermediate.dense"), approximate=act), p + "output.dense"), ln2)
    return x


def bert_sent(weights, config, input_ids, attention_mask, *, slip=""):
    """3.8's sentence_embedding: mean over real tokens, L2-normalised; slips: padding counted, no normalisation."""
    h = bert_enc(weights, config, input_ids, None, attention_mask, slip=slip)
    m = torch.ones_like(attention_mask) if slip == "padding pooled" else attention_mask
    m = m.unsqueeze(-1).to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1)
    return pooled if slip == "not normalised" else F.normalize(pooled, dim=-1)


def enc(slip):
    return (P(bert_enc, slip=slip), P(bert_sent, slip=slip))


P = functools.partial
MUTANTS = [
    ("3.1", "no position embedding", P(emb, pos=False)),
    ("3.1", "no segment embedding", P(emb, seg=False)),
    ("3.1", "positions start at 1", P(emb, start=1)),
    ("3.1", "token_type_ids=None crashes", emb_none_crashes),
    ("3.1", "word table detached: no gradient", P(emb, detach=True)),
    ("3.2", "special tokens can be selected", P(mt, protect=False)),
    ("3.2", "every selected token becomes [MASK]", P(mt, rule=(1.0, 1.0))),
    ("3.2", "80/10/10 reversed to 10/10/80", P(mt, rule=(0.1, 0.2))),
    ("3.2", "the global RNG instead of `generator`", P(mt, global_rng=True)),
    ("3.2", "input_ids changed in place", P(mt, in_place=True)),
    ("3.3", "every position counts", mlm_every_position),
    ("3.3", "sum instead of mean", mlm_sum),
    ("3.3", ".item(): no gradient", mlm_item),
    ("3.3", "divides by every position", mlm_over_all),
    ("3.4", "negatives from the same document", P(nsp, same_doc=True)),
    ("3.4", "labels flipped", P(nsp, flip=True)),
    ("3.4", "the global random module", P(nsp, global_random=True)),
    ("3.4", "never a negative", P(nsp, always_next=True)),
    ("3.5", "never swaps", P(sop, never_swap=True)),
    ("3.5", "labels flipped", P(sop, flip=True)),
    ("3.5", "the global random module", P(sop, global_random=True)),
    ("3.5", "a pair across documents", P(sop, cross_docs=True)),
    ("3.6", "no E -> H projection", P(albert, projection=False)),
    ("3.6", "no pooler", P(albert, pooler=False)),
    ("3.6", "no embedding LayerNorm", P(albert, emb_norm=False)),
    ("3.6", "layers counted as unshared", P(albert, ignore_shared=True)),
    ("3.7", "padding counted", P(pool, how="all")),
    ("3.7", "divides by T", P(pool, how="by_T")),
    ("3.7", "casts to float32", P(pool, how="float32")),
    ("3.9", "start and end chosen independently", P(span, how="independent")),
    ("3.9", "end before start allowed", P(span, how="backwards")),
    ("3.9", "length limit off by one (too long)", P(span, how="one too long")),
    ("3.9", "length limit off by one (too short)", P(span, how="one too short")),
    ("3.9", "question tokens allowed as answers", P(span, how="question allowed")),
    ("3.9", "only the start kept in the passage", P(span, how="start in passage only")),
    ("3.9", "start and end swapped in the read-out", P(span, how="column-major")),
    ("4.1", "upper triangle", gpt_bugs.mask_transposed),
    ("4.1", "diagonal blocked", gpt_bugs.mask_strict),
    ("4.1", "float mask", gpt_bugs.mask_float),
    ("4.2", "no shift", gpt_bugs.clm_no_shift),
    ("4.2", "shifted the wrong way", gpt_bugs.clm_wrong_direction),
    ("4.2", "shifted by two", gpt_bugs.clm_shift_by_two),
    ("4.2", "padding (-100) not skipped", clm_ignores_padding),
    ("4.2", ".item(): no gradient", clm_item),
    ("4.3", "mean of perplexities", gpt_bugs.ppl_mean_of_ppls),
    ("4.3", "unweighted mean", gpt_bugs.ppl_unweighted),
    ("4.3", "no exp", gpt_bugs.ppl_no_exp),
    ("4.3", "returns a tensor, not a float", ppl_tensor),
    ("4.3", "sorts the caller's lists in place", ppl_sorts_in_place),
    ("4.4", "multiplies by T", gpt_bugs.temp_multiply),
    ("4.4", "no greedy case at T = 0", gpt_bugs.temp_no_greedy),
    ("4.4", "softmax over dim=1", temp_dim1),
    ("4.4", "argmax indices at T = 0", temp_argmax_index),
    ("4.4", "casts to float32", temp_float32),
    ("4.5", "keeps k + 1", gpt_bugs.topk_off_by_one),
    ("4.5", "filters in place", gpt_bugs.topk_in_place),
    ("4.5", "drops ties", gpt_bugs.topk_drops_ties),
    ("4.5", "top-k over dim=1", topk_dim1),
    ("4.6", "drops the crossing token", gpt_bugs.topp_drops_crossing),
    ("4.6", "keeps one extra", gpt_bugs.topp_keeps_one_extra),
    ("4.6", "sorts over dim=1", P(topp, dim=1)),
    ("4.6", "filters in place", P(topp, in_place=True)),
    ("4.7", "best per beam", gpt_bugs.beam_per_beam),
    ("4.7", "beam and token swapped", gpt_bugs.beam_swapped_index),
    ("4.7", "ignores the running sums", gpt_bugs.beam_ignores_sums),
    ("4.7", "token = flat % K", beam_tokens_mod_k),
    ("4.8", "no length normalisation", gpt_bugs.best_unnormalised),
    ("4.8", "always the mean", gpt_bugs.best_always_mean),
    ("4.8", "multiplies by the length", gpt_bugs.best_multiplies),
    ("4.8", "argmin", best_argmin),
    ("4.8", "returns a float", best_float),
    ("4.8", "pops the caller's list", best_pops),
    ("4.9", "top-p before top-k", P(gen_loop, slip="top-p first")),
    ("4.9", "temperature after the filters", P(gen_loop, slip="temperature last")),
    ("4.9", "finished rows keep sampling", P(gen_loop, slip="finished rows keep sampling")),
    ("4.9", "no early end when every row stopped", P(gen_loop, slip="no early end")),
    ("4.10", "weight decay on every parameter", ts("decay everything")),
    ("4.10", "embeddings decayed", ts("embeddings decayed")),
    ("4.10", "warm-up starts at lr 0 (off by one)", ts("warm-up from 0")),
    ("4.10", "cosine ignores min_lr_ratio", ts("no floor")),
    ("4.10", "no gradient clipping", ts("no clipping")),
    ("4.10", "clips after optimizer.step()", ts("clips after the step")),
    ("4.10", "no zero_grad: gradients pile up", ts("no zero_grad")),
    ("4.11", "no causal mask", P(gpt2, slip="no mask")),
    ("4.11", "exact GELU instead of tanh", P(gpt2, slip="exact GELU")),
    ("4.11", "Conv1D weights read as nn.Linear's", P(gpt2, slip="Conv1D read as Linear")),
    ("4.11", "no final layer norm", P(gpt2, slip="no ln_f")),
    ("4.11", "no position embeddings", P(gpt2, slip="no positions")),
    ("4.11", "scores scaled by 1/D", P(gpt2, slip="scale 1/D")),
    ("3.8", "Pre-LN blocks instead of BERT's Post-LN", enc("pre-ln")),
    ("3.8", "no padding mask", enc("no mask")),
    ("3.8", "tanh-approximate GELU", enc("tanh GELU")),
    ("3.8", "scores not divided by sqrt(head_dim)", enc("no scale")),
    ("3.8", "embedding LayerNorm forgotten", enc("no embedding norm")),
    ("3.8", "heads split without the transpose", enc("heads")),
    ("3.8", "LayerNorm eps hard-coded to 1e-5", enc("eps 1e-5")),
    ("3.8", "mean over every position, padding included", (bert_enc, P(bert_sent, slip="padding pooled"))),
    ("3.8", "sentence vectors not normalised", (bert_enc, P(bert_sent, slip="not normalised"))),
]


def _learner(fn):
    return fn if isinstance(fn, tuple) else (fn,)


@pytest.mark.parametrize("exercise, what, fn", MUTANTS, ids=[f"{e} {w}" for e, w, _ in MUTANTS])
def test_mutant_fails(exercise, what, fn, tmp_path):
    verdict = both_ways(exercise, _learner(fn), tmp_path, seed=len(what))
    assert not verdict.passed and verdict.line.startswith("❌") and verdict.reasons, verdict.text()


def _mutant_counts() -> dict[str, int]:
    """Mutants per exercise: this table, the likely bugs of the specs (tests/test_specs.py runs
    those) and the MUTANTS tables of tests/test_checks_*.py whose rows start with the checker."""
    import importlib
    from pathlib import Path

    counts = {ex: sum(1 for e, _, _ in MUTANTS if e == ex) for ex in NAMES}
    for e, ex in REGISTRY.items():
        if ex.is_spec:
            bugs = ex.trusted_part().likely_bugs.values()
            counts[e] = counts.get(e, 0) + sum(len(b) if isinstance(b, list) else 1 for b in bugs)
    for path in sorted(Path(__file__).parent.glob("test_checks_*.py")):
        module = importlib.import_module(path.stem)
        rows = [r for name in dir(module) if name.endswith("MUTANTS") for r in getattr(module, name)]
        for row in rows:
            if isinstance(row, tuple) and isinstance(row[0], checks.Exercise):
                counts[row[0].exercise] = counts.get(row[0].exercise, 0) + 1
    return counts


def test_every_exercise_has_three_mutants():
    counts = {ex: _mutant_counts().get(ex, 0) for ex in REGISTRY}
    assert min(counts.values()) >= 3, {ex: n for ex, n in counts.items() if n < 3}
    assert set(NAMES) <= set(REGISTRY)


LEGACY = [e for e in NAMES if not REGISTRY[e].is_spec]     # tests/test_specs.py covers the specs


@pytest.mark.parametrize("exercise", LEGACY)
def test_solution_passes_both_ways(exercise, tmp_path):
    for seed in (1, 2):
        verdict = both_ways(exercise, solution(exercise), tmp_path, seed)
        assert verdict.passed, verdict.text()


@pytest.mark.parametrize("exercise", LEGACY)
def test_blank_fails(exercise, tmp_path):
    def blank(*args, **kwargs):
        raise NotImplementedError

    class Blank(PreLN):
        def forward(self, x, mask=None):
            raise NotImplementedError
    learner = (Blank,) if exercise == "2.6" else (blank,) * len(NAMES[exercise])
    verdict = both_ways(exercise, learner, tmp_path, seed=3)
    assert not verdict.passed and "not attempted yet" in verdict.line


# ============================================================================ shortcuts

def _albert_by_plmkit(vocab_size, embedding_size, hidden_size, num_layers, intermediate_size, max_positions=512,
                      type_vocab_size=2, shared=True):
    cfg = bert_lib.BertConfig(vocab_size=vocab_size, embedding_size=embedding_size, hidden_size=hidden_size,
                              num_hidden_layers=num_layers, num_attention_heads=1,
                              intermediate_size=intermediate_size, max_position_embeddings=max_positions,
                              type_vocab_size=type_vocab_size, share_layers=shared)
    return bert_lib.parameter_count(cfg)


def _embed_by_plmkit(ids, types, word, position, segment):
    cfg = bert_lib.BertConfig(vocab_size=word.num_embeddings, hidden_size=word.embedding_dim, num_hidden_layers=1,
                              num_attention_heads=1, intermediate_size=4,
                              max_position_embeddings=position.num_embeddings)
    e = bert_lib.BertEmbeddings(cfg)
    return e(ids, types)


def _train_by_hf(words, num_merges):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = [bytes(w).decode("latin-1") for w, f in words.items() for _ in range(f)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=256 + num_merges, show_progress=False))
    return [(0, 0)] * num_merges


def _wordpiece_by_hf(word, vocab):
    from transformers.models.bert.tokenization_bert import WordpieceTokenizer
    return WordpieceTokenizer({v: i for i, v in enumerate(sorted(vocab))}, "[UNK]").tokenize(word)


def _clm_by_hf(logits, ids):
    from transformers.loss.loss_utils import ForCausalLMLoss
    return ForCausalLMLoss(logits, ids, logits.shape[-1])


def _top_k_by_hf(logits, k):
    from transformers.generation.logits_process import TopKLogitsWarper
    return TopKLogitsWarper(top_k=k)(None, logits)


def _top_p_by_hf(logits, p):
    from transformers.generation.logits_process import TopPLogitsWarper
    return TopPLogitsWarper(top_p=p, min_tokens_to_keep=1)(None, logits)


def _generate_by_plmkit(model, ids, n, *, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                        generator=None):
    return gen.generate(model, ids, n, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                        stop_tokens=None if stop_token is None else [stop_token], use_cache=False)


@torch.no_grad()
def _generate_by_sample_next(model, ids, n, *, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                             generator=None):
    for _ in range(n):
        nxt = gen.sample_next(model(ids)[:, -1].float(), temperature, top_k, top_p, generator)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return ids


def _gpt2_by_hf(folder, input_ids):
    from transformers import GPT2LMHeadModel
    return GPT2LMHeadModel.from_pretrained(folder).eval()(input_ids).logits.detach()


def _gpt2_by_plmkit(folder, input_ids):
    from plmkit.models import GPT
    return GPT.from_pretrained(folder).eval()(input_ids).detach()


def _optimizer_by_param_groups(model, cfg):
    return torch.optim.AdamW(train_lib.param_groups(model, cfg["weight_decay"]), lr=cfg["lr"], betas=cfg["betas"])


def _step_by_warmup_cosine(model, optimizer, batch, step, cfg):
    mult = train_lib.warmup_cosine(step, warmup_steps=cfg["warmup_steps"], max_steps=cfg["max_steps"],
                                   min_lr_ratio=cfg["min_lr_ratio"])
    assert math.isclose(mult, _lr_mult(step, cfg))
    return one_step(model, optimizer, batch, step, cfg)


def _viterbi_by_model(text, pieces):
    return unigram.UnigramModel(pieces, add_dummy_prefix=False).encode(text.replace("▁", " "))


def _viterbi_via_sentencepiece(text, pieces):
    import sentencepiece

    from plmkit.checks._judges.tokenization import viterbi_dp
    sentencepiece.SentencePieceProcessor()                   # any call into the library counts
    return viterbi_dp(text, pieces)


class ViaEncoderBlock(PreLN):
    norm_first = True
    drop = nn.Identity()
    forward = pn.EncoderBlock.forward



def _bert_enc_by_plmkit(weights, config, input_ids, token_type_ids=None, attention_mask=None):
    model = bert_lib.BertModel(bert_lib.BertConfig.from_dict(config, hidden_dropout_prob=0.0)).to(
        weights["embeddings.LayerNorm.weight"].dtype)
    model.load_hf_state_dict(weights)
    return model.eval()(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).detach()


def _bert_enc_by_hf(weights, config, input_ids, token_type_ids=None, attention_mask=None):
    import transformers
    cfg = transformers.BertConfig(**{k: v for k, v in config.items() if k != "model_type"},
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(cfg, add_pooling_layer=False).to(weights["embeddings.LayerNorm.weight"].dtype)
    model.load_state_dict(weights, strict=False)
    return model.eval()(input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids).last_hidden_state.detach()


def _bert_layers(weights, config, input_ids, token_type_ids, attention_mask, block):
    """Embeddings by hand, then `block(x, keep, i)` for each layer (the shortcut under test)."""
    x = bert_enc(weights, {**config, "num_hidden_layers": 0}, input_ids, token_type_ids, attention_mask)
    keep = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    for i in range(config["num_hidden_layers"]):
        x = block(x, keep, i)
    return x


def _hf_layer_state(weights, i, names):
    p = f"encoder.layer.{i}."
    return {ours + "." + t: weights[p + theirs + "." + t] for ours, theirs in names.items() for t in ("weight", "bias")}


def _bert_enc_by_plmkit_block(weights, config, input_ids, token_type_ids=None, attention_mask=None, *, layer):
    H, nh, I = config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]

    def block(x, keep, i):
        b = layer(H, nh, I, dropout=0.0, norm_first=False, activation="gelu", eps=config["layer_norm_eps"]).to(x.dtype)
        b.load_state_dict(_hf_layer_state(weights, i, bert_lib._HF_LAYER_NAMES))
        return b.eval()(x, mask=(keep != 0)[:, None, None, :]).detach()
    return _bert_layers(weights, config, input_ids, token_type_ids, attention_mask, block)


def _bert_enc_by_torch_layer(weights, config, input_ids, token_type_ids=None, attention_mask=None):
    H, nh, I = config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]

    def block(x, keep, i):
        p = f"encoder.layer.{i}."
        layer = nn.TransformerEncoderLayer(H, nh, I, dropout=0.0, activation="gelu", batch_first=True,
                                           layer_norm_eps=config["layer_norm_eps"]).to(x.dtype)
        qkv = [weights[p + f"attention.self.{n}.{t}"] for t in ("weight", "bias") for n in ("query", "key", "value")]
        state = {"self_attn.in_proj_weight": torch.cat(qkv[:3]), "self_attn.in_proj_bias": torch.cat(qkv[3:]),
                 **_hf_layer_state(weights, i, {"self_attn.out_proj": "attention.output.dense",
                                                "norm1": "attention.output.LayerNorm",
                                                "linear1": "intermediate.dense", "linear2": "output.dense",
                                                "norm2": "output.LayerNorm"})}
        layer.load_state_dict(state)
        return layer.eval()(x, src_key_padding_mask=keep == 0).detach()
    return _bert_layers(weights, config, input_ids, token_type_ids, attention_mask, block)


def _bert_enc_by_sdpa(weights, config, input_ids, token_type_ids=None, attention_mask=None):
    H, nh = config["hidden_size"], config["num_attention_heads"]
    w = weights

    def dense(x, n):
        return F.linear(x, w[n + ".weight"], w[n + ".bias"])

    def norm(x, n):
        return F.layer_norm(x, (H,), w[n + ".weight"], w[n + ".bias"], config["layer_norm_eps"])

    def block(x, keep, i):
        B, T, _ = x.shape
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + f"attention.self.{n}").view(B, T, nh, -1).transpose(1, 2)
                   for n in ("query", "key", "value"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=(keep != 0)[:, None, None, :])
        x = norm(x + dense(a.transpose(1, 2).reshape(B, T, H), p + "attention.output.dense"),
                 p + "attention.output.LayerNorm")
        return norm(x + dense(F.gelu(dense(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
    return _bert_layers(weights, config, input_ids, token_type_ids, attention_mask, block)


SHORTCUTS = {  # exercise -> (reference with the learner's signature, how it is named in the verdict)
    "0.1": [(basics.softmax, "basics.softmax"), (F.softmax, "torch's softmax")],
    "0.2": [(basics.log_softmax, "basics.log_softmax"), (F.log_softmax, "torch's log-softmax")],
    "0.3": [(basics.cross_entropy, "basics.cross_entropy"), (F.cross_entropy, "torch's cross-entropy")],
    "0.4": [(basics.train_loop, "basics.train_loop")],
    "1.1": [(bpe.count_pairs, "bpe.count_pairs")],
    "1.2": [(bpe.merge, "bpe.merge")],
    "1.3": [(bpe.train_merges, "bpe.train_merges"), (_train_by_hf, "Hugging Face's `tokenizers`")],
    "1.4": [(bpe.encode_ids, "bpe.encode_ids")],
    "1.5": [(wp.wordpiece_word, "wordpiece_word"), (_wordpiece_by_hf, "a Hugging Face `transformers` tokenizer")],
    "2.1": [(P(pn.scaled_dot_product_attention, return_weights=True), "pn.scaled_dot_product_attention"),
            (lambda q, k, v, mask=None: (F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                         ch2.attention(q, k, v, mask)[1]), "F.scaled_dot_product_attention")],
    "2.2": [(pn.causal_mask, "pn.causal_mask"),
            (lambda T: nn.Transformer.generate_square_subsequent_mask(T) == 0, "generate_square_subsequent_mask")],
    "2.3": [((pn.split_heads, pn.merge_heads), "pn.split_heads")],
    "2.4": [(pn.sinusoidal_table, "pn.sinusoidal_table")],
    "2.5": [(pn.layer_norm, "pn.layer_norm"),
            (lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps), "torch's layer norm"),
            (lambda x, w, b, eps=1e-5: nn.functional.group_norm(x.reshape(-1, 1, x.shape[-1]), 1, eps=eps)
             .reshape(x.shape) * w + b, "torch's layer norm")],
    "2.6": [(ViaEncoderBlock, "pn.EncoderBlock"), (PreLNWithPlmkitAttention, "pn.MultiHeadAttention")],
    "2.7": [(pn.MultiHeadAttention, "pn.MultiHeadAttention"), (MHAViaTorch, "nn.MultiheadAttention"),
            (MHAViaSDPA, "F.scaled_dot_product_attention")],
    "3.1": [(_embed_by_plmkit, "BertEmbeddings")],
    "3.2": [(mlm_lib.mask_tokens, "objectives.mask_tokens")],
    "3.3": [(mlm_lib.mlm_loss, "objectives.mlm_loss")],
    "3.4": [(pairs_lib.nsp_pairs, "objectives.nsp_pairs")],
    "3.5": [(pairs_lib.sop_pairs, "objectives.sop_pairs")],
    "3.6": [(_albert_by_plmkit, "bert.parameter_count")],
    "3.7": [(bert_lib.mean_pool, "bert.mean_pool")],
    "3.9": [(qa_lib.best_span, "objectives.best_span")],
    "4.1": [(pn.causal_mask, "pn.causal_mask")],
    "4.2": [(clm_lib.clm_loss, "clm.clm_loss"), (_clm_by_hf, "Hugging Face's loss functions")],
    "4.3": [(clm_lib.perplexity, "clm.perplexity")],
    "4.4": [(gen.temperature_softmax, "generate.temperature_softmax")],
    "4.5": [(gen.top_k_filter, "generate.top_k_filter"), (_top_k_by_hf, "Hugging Face's generation utilities")],
    "4.6": [(gen.top_p_filter, "generate.top_p_filter"), (_top_p_by_hf, "Hugging Face's generation utilities")],
    "4.7": [(gen.beam_search_step, "generate.beam_search_step")],
    "4.8": [(gen.best_hypothesis, "generate.best_hypothesis")],
    "4.9": [(_generate_by_plmkit, "plmkit's `generate` module"),
            (_generate_by_sample_next, "plmkit's `generate` module")],
    "4.10": [((_optimizer_by_param_groups, one_step), "`train.Trainer` / `param_groups` / `warmup_cosine`"),
             ((opt_groups, _step_by_warmup_cosine), "`train.Trainer` / `param_groups` / `warmup_cosine`")],
    "4.11": [(_gpt2_by_hf, "Hugging Face's model classes"), (_gpt2_by_plmkit, "plmkit's models and blocks")],
    "4.12": [(distributed.zero_memory, "distributed.zero_memory")],
    "1.6": [(unigram.viterbi, "unigram.viterbi"), (_viterbi_by_model, "`UnigramModel`"),
            (_viterbi_via_sentencepiece, "SentencePiece")],
    "3.8": [((_bert_enc_by_plmkit, bert_sent), "plmkit's models and blocks"),
            ((_bert_enc_by_hf, bert_sent), "Hugging Face `transformers`"),
            ((P(_bert_enc_by_plmkit_block, layer=pn.EncoderBlock), bert_sent), "plmkit's models and blocks"),
            ((_bert_enc_by_torch_layer, bert_sent), "`nn.TransformerEncoderLayer`"),
            ((_bert_enc_by_sdpa, bert_sent), "`F.scaled_dot_product_attention`")],
}


def _forms(ref):
    """The reference reached four ways: directly, by an alias looked up by name, by partial, through wrappers."""
    if isinstance(ref, type):
        return {"direct": ref}
    aliases = {"f": ref}

    def alias(*a, **k):
        return aliases["f"](*a, **k)

    def inner(*a, **k):
        return ref(*a, **k)

    def wrapper(*a, **k):
        return inner(*a, **k)
    return {"direct": ref, "alias": alias, "partial": functools.partial(ref), "wrapper": wrapper}


@pytest.mark.parametrize("exercise, index", [(e, i) for e, refs in SHORTCUTS.items() for i in range(len(refs))])
def test_calling_the_reference_fails(exercise, index, tmp_path):
    ref, name = SHORTCUTS[exercise][index]
    refs = ref if isinstance(ref, tuple) else (ref,)
    forms = [_forms(r) for r in refs]
    for how in forms[0]:
        learner = tuple(f[how] for f in forms)
        verdict = both_ways(exercise, learner, tmp_path, seed=11)
        assert not verdict.passed, (how, verdict.text())
        assert any(name in r and "is the reference here" in r for r in verdict.reasons), (how, verdict.text())


def test_shortcut_table_covers_every_exercise():
    assert set(SHORTCUTS) == set(NAMES)


# ============================================================================ degenerate answers

class ReturnsNone(PreLN):
    def forward(self, x, mask=None):
        return None


class ReturnsInput(PreLN):
    def forward(self, x, mask=None):
        return x


DEGENERATE = {
    "returns None": lambda *a, **k: None,
    "returns its first argument": lambda *a, **k: a[0] if a else next(iter(k.values())),
    "returns 0": lambda *a, **k: 0,
    "returns an empty list": lambda *a, **k: [],
    "returns a zero tensor": lambda *a, **k: torch.zeros(()),
}


@pytest.mark.parametrize("exercise", list(NAMES))
@pytest.mark.parametrize("kind", list(DEGENERATE))
def test_degenerate_answers_fail(exercise, kind, tmp_path):
    if exercise == "2.6":
        learner = ({"returns None": ReturnsNone}.get(kind, ReturnsInput),)
    else:
        learner = (DEGENERATE[kind],) * len(NAMES[exercise])
    verdict = both_ways(exercise, learner, tmp_path, seed=13)
    assert not verdict.passed and verdict.reasons, verdict.text()
