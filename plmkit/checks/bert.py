"""Checkers for chapter 3, masked language modelling and BERT.

    3.1 embed               the three-way embedding sum: word + position + segment
    3.2 mask_tokens         15% selection, 80/10/10, never special tokens
    3.3 mlm_loss            cross-entropy over the selected positions only
    3.4 nsp_pairs           IsNext / NotNext pairs, negatives from other documents
    3.5 sop_pairs           in-order / swapped pairs from the same document
    3.6 albert_param_count  factorised embeddings and shared layers, by formula
    3.7 mean_pool           average over real tokens only

The masking checker is statistical: it masks ~24,000 tokens, so the rates it
tests (15%, 80/10/10) are estimated to within a few tenths of a point and the
tolerances sit 6 standard errors away: a correct function fails with odds
below one in a million, a function that masks [CLS] or changes unselected
tokens fails every time.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from ..models.bert import BertConfig, mean_pool, parameter_count
from ._legacy import Report, checker

IGNORE = -100


# ----------------------------------------------------------------------------- 3.1

@checker("3.1", "embed")
def check_embed(r: Report, embed) -> None:
    B, T, H, V = int(r.randint(2, 5, (1,))), int(r.randint(3, 9, (1,))), int(r.randint(6, 13, (1,))), 40
    P = T + 5
    word, position, segment = nn.Embedding(V, H), nn.Embedding(P, H), nn.Embedding(2, H)
    with torch.no_grad():
        for table in (word, position, segment):
            table.weight.copy_(r.randn(*table.weight.shape))
    ids, types = r.randint(0, V, (B, T)), r.randint(0, 2, (B, T))

    def ref(ids, types):
        return word.weight[ids] + position.weight[torch.arange(ids.shape[1])] + segment.weight[types]

    with torch.no_grad():
        what = f"embed(input_ids {(B, T)}, token_type_ids {(B, T)}, word, position, segment)"
        r.close(r.call(embed, ids, types, word, position, segment, what=what), ref(ids, types), what)
        what = "embed(..., token_type_ids=None): None means every token is in segment 0"
        r.close(r.call(embed, ids, None, word, position, segment, what=what),
                ref(ids, torch.zeros_like(ids)), what)
        same = torch.full((1, T), 7)
        what = f"embed for one row of {T} copies of token 7: rows must differ by position (position i uses position(i))"
        r.close(r.call(embed, same, torch.zeros_like(same), word, position, segment, what=what),
                ref(same, torch.zeros_like(same)), what)
        long_ids = r.randint(0, V, (1, P))
        what = f"embed for a row of {P} tokens (as many as the position table holds)"
        r.close(r.call(embed, long_ids, torch.ones_like(long_ids), word, position, segment, what=what),
                ref(long_ids, torch.ones_like(long_ids)), what)


# ----------------------------------------------------------------------------- 3.2

def _mlm_batch(r: Report, B: int, T: int, V: int, pad: int, cls: int, sep: int) -> torch.Tensor:
    """Rows ``[CLS] w ... w [SEP] [PAD] ...`` of random lengths; ordinary tokens avoid the special ids."""
    ids = r.randint(20, V, (B, T))
    lengths = r.randint(T // 2, T + 1, (B,))
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = cls, sep
        ids[i, n:] = pad
    return ids


@checker("3.2", "mask_tokens")
def check_mask_tokens(r: Report, mask_tokens) -> None:
    V = int(r.randint(400, 800, (1,)))
    pad, cls, sep, mask_id = (int(i) for i in torch.randperm(20, generator=r.gen)[:4])
    special = [pad, cls, sep, mask_id]
    ids = _mlm_batch(r, 256, 128, V, pad, cls, sep)
    before = ids.clone()
    seed = int(r.randint(0, 2**31 - 1, (1,)))
    call = f"mask_tokens(input_ids (256, 128), mask_token_id={mask_id}, vocab_size={V}, special_ids={special})"
    out = r.call(mask_tokens, ids, mask_id, V, special, generator=torch.Generator().manual_seed(seed), what=call)
    ok = (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
          and all(tuple(t.shape) == tuple(ids.shape) for t in out))
    if not r.check(ok, f"{call} must return (masked_ids, labels), two tensors of shape (256, 128)"):
        return
    masked, labels = (t.long() for t in out)
    r.check(torch.equal(ids, before), f"{call} changed input_ids in place; work on a copy (input_ids.clone())")

    is_special = torch.isin(before, torch.tensor(special))
    sel = labels != IGNORE
    r.check(not (sel & is_special).any(),
            f"{call}: special tokens ([CLS], [SEP], [PAD]) were selected for prediction "
            f"({int((sel & is_special).sum())} times); never select a token in special_ids")
    r.check(torch.equal(masked[is_special], before[is_special]),
            f"{call}: some special tokens were changed in masked_ids; leave them as they are")
    r.check(torch.equal(labels[sel], before[sel]) and bool((labels[~sel] == IGNORE).all()),
            f"{call}: labels must hold the ORIGINAL token at selected positions and -100 everywhere else")
    r.check(torch.equal(masked[~sel], before[~sel]),
            f"{call}: {int((masked[~sel] != before[~sel]).sum())} tokens that were NOT selected were changed; "
            f"the 80/10/10 rule applies only to the selected 15%")

    ordinary = ~is_special
    n_sel = max(int(sel.sum()), 1)
    rate = int(sel.sum()) / int(ordinary.sum())
    r.check(abs(rate - 0.15) < 0.015,
            f"{call}: {rate:.1%} of the ordinary tokens were selected; expected about 15%")
    share_mask = int((sel & (masked == mask_id)).sum()) / n_sel
    r.check(abs(share_mask - 0.8) < 0.04,
            f"{call}: {share_mask:.1%} of the selected tokens became [MASK]; expected about 80%")
    rnd = sel & (masked != mask_id) & (masked != before)
    share_rnd = int(rnd.sum()) / n_sel
    spread = len(set(masked[rnd].tolist()))
    in_range = bool(((masked >= 0) & (masked < V)).all())
    r.check(abs(share_rnd - 0.1) < 0.03 and spread >= 50 and in_range,
            f"{call}: {share_rnd:.1%} of the selected tokens became a random token ({spread} distinct ids); "
            f"expected about 10%, drawn uniformly from range(vocab_size)")
    share_kept = int((sel & (masked == before)).sum()) / n_sel
    r.check(abs(share_kept - 0.1) < 0.03,
            f"{call}: {share_kept:.1%} of the selected tokens were left unchanged; expected about 10%")

    out = r.call(mask_tokens, ids, mask_id, V, special, mlm_probability=0.4,
                 generator=torch.Generator().manual_seed(seed + 1), what=call + " with mlm_probability=0.4")
    rate = int((out[1] != IGNORE).sum()) / int(ordinary.sum())
    r.check(abs(rate - 0.4) < 0.03, f"with mlm_probability=0.4, {rate:.1%} of the ordinary tokens were selected")

    small = ids[:8]
    a = r.call(mask_tokens, small, mask_id, V, special, generator=torch.Generator().manual_seed(seed), what=call)
    b = r.call(mask_tokens, small, mask_id, V, special, generator=torch.Generator().manual_seed(seed), what=call)
    c = r.call(mask_tokens, small, mask_id, V, special, generator=torch.Generator().manual_seed(seed + 7), what=call)
    r.check(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1]),
            "mask_tokens must draw all its randomness from `generator` (pass generator=generator to "
            "torch.rand / torch.randint): the same seed must give the same masks, another seed other masks")


# ----------------------------------------------------------------------------- 3.3

@checker("3.3", "mlm_loss")
def check_mlm_loss(r: Report, mlm_loss) -> None:
    for B, T, V, p in [(4, 16, 30, 0.15), (2, 9, 50, 0.5), (3, 40, 11, 0.05)]:
        logits = (r.randn(B, T, V) * 2).requires_grad_()
        targets = r.randint(0, V, (B, T))
        keep = torch.rand(B, T, generator=r.gen) < p
        keep[0, 0] = True                                              # at least one selected position
        labels = torch.where(keep, targets, torch.full_like(targets, IGNORE))
        what = f"mlm_loss(logits {(B, T, V)}, labels {(B, T)}) with {int(keep.sum())} of {B * T} positions selected"
        loss = r.call(mlm_loss, logits, labels, what=what)
        expected = F.cross_entropy(logits.detach()[keep], targets[keep])
        r.close(loss.detach() if isinstance(loss, torch.Tensor) else loss, expected, what + " (mean over selected)")
    logits = r.randn(3, 12, 20).requires_grad_()
    targets = r.randint(0, 20, (3, 12))
    keep = torch.rand(3, 12, generator=r.gen) < 0.3
    keep[0, 0], keep[0, 1] = True, False
    labels = torch.where(keep, targets, torch.full_like(targets, IGNORE))
    loss = r.call(mlm_loss, logits, labels, what="mlm_loss(logits, labels)")
    ok = isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.requires_grad
    if r.check(ok, "mlm_loss must return a scalar tensor connected to the logits (no .item(), no detach)"):
        (g,) = torch.autograd.grad(loss, logits)
        leak = g[~keep].abs().max().item()
        r.check(leak == 0.0, "the loss depends on the logits at unselected positions (labels == -100): "
                             "compute it on the selected positions only")
    else:
        r.check(False, "(skipped: no gradient to inspect)")


# ----------------------------------------------------------------------------- 3.4 and 3.5

def _documents(r: Report) -> list[list[str]]:
    """5 documents of 150-250 sentences named 'd<doc>.s<index>', plus a one-sentence document."""
    sizes = r.randint(150, 250, (5,)).tolist() + [1]
    return [[f"d{d}.s{s}" for s in range(n)] for d, n in enumerate(sizes)]


def _where(sentence) -> tuple[int, int]:
    d, s = str(sentence).split(".")
    return int(d[1:]), int(s[1:])


def _pairs_ok(r: Report, pairs, docs, what: str) -> bool:
    n = sum(len(d) - 1 for d in docs)
    ok = (isinstance(pairs, list) and len(pairs) == n
          and all(isinstance(p, tuple) and len(p) == 3 and p[2] in (0, 1) for p in pairs))
    return r.check(ok, f"{what} must return a list of {n} tuples (a, b, label) with label 0 or 1: "
                       f"one per pair of consecutive sentences")


def _seed(r: Report) -> int:
    return int(r.randint(0, 2**31 - 1, (1,)))


@checker("3.4", "nsp_pairs")
def check_nsp_pairs(r: Report, nsp_pairs) -> None:
    docs = _documents(r)
    seed = _seed(r)
    what = f"nsp_pairs(documents of sizes {[len(d) for d in docs]}, random.Random(seed))"
    pairs = r.call(nsp_pairs, docs, random.Random(seed), what=what)
    if not _pairs_ok(r, pairs, docs, what):
        return
    firsts = sorted(_where(a) for a, _, _ in pairs)
    r.check(firsts == sorted((d, s) for d, doc in enumerate(docs) for s in range(len(doc) - 1)),
            f"{what}: each sentence but the last of every document must be the A of exactly one pair")
    pos = [(a, b) for a, b, lab in pairs if lab == 0]
    neg = [(a, b) for a, b, lab in pairs if lab == 1]
    bad = [(a, b) for a, b in pos if _where(b) != (_where(a)[0], _where(a)[1] + 1)]
    r.check(not bad, f"{what}: label 0 (IsNext) must mean B is the sentence right after A; "
                     f"got e.g. {bad[:2]}")
    bad = [(a, b) for a, b in neg if _where(a)[0] == _where(b)[0]]
    r.check(not bad, f"{what}: label 1 (NotNext) must take B from ANOTHER document; "
                     f"{len(bad)} negatives came from A's own document, e.g. {bad[:2]}")
    share = len(neg) / len(pairs)
    r.check(0.4 < share < 0.6, f"{what}: {share:.0%} of the pairs are NotNext; expected about 50%")
    sources = {_where(b)[0] for _, b in neg}
    r.check(len({b for _, b in neg}) >= 50 and len(sources) >= 3,
            f"{what}: the NotNext sentences must be drawn at random from the other documents "
            f"(got {len({b for _, b in neg})} distinct sentences from {len(sources)} documents)")
    again = r.call(nsp_pairs, docs, random.Random(seed), what=what)
    other = r.call(nsp_pairs, docs, random.Random(seed + 1), what=what)
    r.check(again == pairs and other != pairs,
            "nsp_pairs must draw its randomness from `rng` only (rng.random(), rng.choice(...)): "
            "the same seed must give the same pairs")


@checker("3.5", "sop_pairs")
def check_sop_pairs(r: Report, sop_pairs) -> None:
    docs = _documents(r)
    seed = _seed(r)
    what = f"sop_pairs(documents of sizes {[len(d) for d in docs]}, random.Random(seed))"
    pairs = r.call(sop_pairs, docs, random.Random(seed), what=what)
    if not _pairs_ok(r, pairs, docs, what):
        return
    unordered = sorted(tuple(sorted((_where(a), _where(b)))) for a, b, _ in pairs)
    expected = sorted(((d, s), (d, s + 1)) for d, doc in enumerate(docs) for s in range(len(doc) - 1))
    r.check(unordered == expected,
            f"{what}: every pair must be two consecutive sentences of the SAME document (in some order), "
            f"each consecutive pair exactly once")
    bad = [(a, b, lab) for a, b, lab in pairs
           if _where(a)[0] == _where(b)[0] and (_where(b)[1] - _where(a)[1]) != (1 if lab == 0 else -1)]
    r.check(not bad, f"{what}: label 0 must mean (A, B) in the original order and label 1 swapped (B, A); "
                     f"got e.g. {bad[:2]}")
    share = sum(lab for *_, lab in pairs) / len(pairs)
    r.check(0.4 < share < 0.6, f"{what}: {share:.0%} of the pairs are swapped; expected about 50%")
    again = r.call(sop_pairs, docs, random.Random(seed), what=what)
    other = r.call(sop_pairs, docs, random.Random(seed + 1), what=what)
    r.check(again == pairs and other != pairs,
            "sop_pairs must draw its randomness from `rng` only: the same seed must give the same pairs")


# ----------------------------------------------------------------------------- 3.6

@checker("3.6", "albert_param_count")
def check_albert_param_count(r: Report, albert_param_count) -> None:
    cases = [dict(vocab_size=30000, embedding_size=128, hidden_size=768, num_layers=12, intermediate_size=3072)]
    for shared in (True, False, True):
        H = int(r.randint(16, 200, (1,)))
        cases.append(dict(vocab_size=int(r.randint(100, 5000, (1,))), embedding_size=int(r.randint(4, H, (1,))),
                          hidden_size=H, num_layers=int(r.randint(2, 13, (1,))),
                          intermediate_size=int(r.randint(16, 800, (1,))), shared=shared))
    cases.append({**cases[1], "max_positions": int(r.randint(16, 1024, (1,))), "type_vocab_size": 3})
    for case in cases:
        cfg = BertConfig(vocab_size=case["vocab_size"], embedding_size=case["embedding_size"],
                         hidden_size=case["hidden_size"], num_hidden_layers=case["num_layers"],
                         num_attention_heads=1, intermediate_size=case["intermediate_size"],
                         max_position_embeddings=case.get("max_positions", 512),
                         type_vocab_size=case.get("type_vocab_size", 2), share_layers=case.get("shared", True))
        expected = parameter_count(cfg)                                # E < H in every case: a projection
        args = ", ".join(f"{k}={v}" for k, v in case.items())
        what = f"albert_param_count({args})"
        r.equal(r.call(albert_param_count, **case, what=what), expected, what)


# ----------------------------------------------------------------------------- 3.7

@checker("3.7", "mean_pool")
def check_mean_pool(r: Report, mean_pool_fn) -> None:
    B, T, H = 5, int(r.randint(6, 12, (1,))), int(r.randint(4, 10, (1,)))
    hidden = r.randn(B, T, H)
    lengths = torch.cat([torch.tensor([T, 1]), r.randint(2, T, (B - 2,))])
    mask = (torch.arange(T) < lengths[:, None]).long()                # (B, T) 1 = real token
    what = f"mean_pool(hidden {(B, T, H)}, attention_mask with rows of {lengths.tolist()} real tokens)"
    r.close(r.call(mean_pool_fn, hidden, mask, what=what), mean_pool(hidden, mask), what)
    noisy = hidden.clone()
    noisy[mask == 0] = 1000.0                                          # what sits under padding must not matter
    what2 = "mean_pool with large values at the padded positions (padding must not count)"
    r.close(r.call(mean_pool_fn, noisy, mask, what=what2), mean_pool(hidden, mask), what2)
    what3 = "mean_pool(hidden, attention_mask) with a boolean attention_mask"
    r.close(r.call(mean_pool_fn, hidden, mask.bool(), what=what3), mean_pool(hidden, mask), what3)
    ones = torch.ones(B, T, dtype=torch.long)
    what4 = "mean_pool with no padding at all (must equal hidden.mean(dim=1))"
    r.close(r.call(mean_pool_fn, hidden, ones, what=what4), hidden.mean(1), what4)
