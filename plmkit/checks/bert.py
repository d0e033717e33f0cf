"""Checkers for chapter 3, masked language modelling and BERT.

    3.1 embed               the three-way embedding sum: word + position + segment
    3.2 mask_tokens         15% selection, 80/10/10, never special tokens
    3.3 mlm_loss            cross-entropy over the selected positions only
    3.4 nsp_pairs           IsNext / NotNext pairs, negatives from other documents
    3.5 sop_pairs           in-order / swapped pairs from the same document
    3.6 albert_param_count  factorised embeddings and shared layers, by formula
    3.7 mean_pool           average over real tokens only
    3.9 best_span           extractive QA read-out: start <= end, length limit, passage positions only

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
        got = r.value(rec, what, int)
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
