"""Checkers for chapter 4, causal language modelling and GPT.

    4.1 causal_mask          lower-triangular boolean mask, True = may attend
    4.2 clm_loss             next-token cross-entropy: logits at t scored on token t+1; differentiable
    4.3 perplexity           exp of the token-weighted mean loss over batches
    4.4 temperature_softmax  softmax(logits / T), one-hot argmax at T = 0, any (..., V) shape
    4.5 top_k_filter         keep the k largest logits (ties with the k-th kept), any (..., V) shape
    4.6 top_p_filter         keep the smallest top set with mass >= p, crossing token included
    4.7 beam_search_step     the best n extensions over all beams and tokens together
    4.8 best_hypothesis      rank finished beams by sum of log-probs / length ** length_penalty

Functions documented for (..., V) logits are run on 1-D, 2-D and 3-D inputs,
so a `dim=1` where `dim=-1` belongs fails. Each checker names the usual slips
(no shift or a shift the wrong way, averaging perplexities, multiplying by the
temperature, dropping the token that crosses p, picking the best token per
beam, ignoring the length penalty).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import generate as _gen
from ..objectives import clm as _clm
from ._core import Exercise, reference_grads
from ._guard import Module, Rule
from .transformer import causal_mask_checker

IGNORE = -100
HF_GENERATION = Rule("Hugging Face's generation utilities (`transformers.generation`: logits warpers, beam search)",
                     [Module("transformers.generation")])
HF_LOSS = Rule("Hugging Face's loss functions (`transformers.loss`, e.g. `ForCausalLMLoss`)", [Module("transformers.loss")])


def _logit_shapes(g, scale: float = 1.0) -> list[torch.Tensor]:
    """Logits of shapes (V,), (B, V) and (B, T, V): functions of (..., V) must work on each."""
    V = g.int(10, 40)
    return [g.randn(V) * scale, g.randn(g.int(2, 5), V) * scale, g.randn(2, g.int(2, 4), V) * scale]


def _shape(x) -> str:
    return f"logits {tuple(x.shape)}"


# ----------------------------------------------------------------------------- 4.1

check_causal_mask = causal_mask_checker("4.1")


# ----------------------------------------------------------------------------- 4.2

check_clm_loss = Exercise("4.2", "clm_loss", goal="shifts the labels itself",
                          forbid=[Rule("plmkit's `clm.clm_loss`", [_clm.clm_loss]), HF_LOSS])


@check_clm_loss.cases
def _clm_cases(g):
    B, T, V = g.int(2, 5), g.int(4, 10), g.int(7, 30)
    logits, ids = g.randn(B, T, V), g.randint(0, V, (B, T))
    confident = torch.full((B, T, V), -20.0)
    confident[:, :-1].scatter_(-1, ids[:, 1:, None], 20.0)
    echo = torch.full((B, T, V), -20.0).scatter_(-1, ids[..., None], 20.0)
    padded = ids.clone()
    padded[0, T // 2:] = IGNORE
    return [
        {"args": [logits, ids], "what": f"clm_loss(logits {(B, T, V)}, input_ids {(B, T)})"},
        {"args": [confident, ids], "what": "clm_loss for logits that put all mass on the NEXT token (expected ~0)"},
        {"args": [echo, ids], "what": "clm_loss for logits that copy the CURRENT token"},
        {"args": [logits, padded], "what": "clm_loss with labels -100 (padding) at the end of row 0: those "
                                           "positions are skipped"},
        {"args": [g.randn(2, 6, 9, dtype=torch.float64), g.randint(0, 9, (2, 6))], "grad": [0],
         "cotangent": torch.tensor(1.0, dtype=torch.float64),
         "what": "clm_loss(logits (2, 6, 9) in float64, input_ids (2, 6)), with the gradient"},
    ]


@check_clm_loss.probe
def _clm_probe(p, clm_loss, cases):
    return [p.call(clm_loss, *c["args"], grad=c.get("grad", ()), cotangent=c.get("cotangent")) for c in cases]


def _clm_ref(logits, ids):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), ignore_index=IGNORE)


@check_clm_loss.judge
def _clm_judge(r, cases, results):
    for c, rec in zip(cases, results):
        logits, ids = c["args"]
        want = _clm_ref(logits, ids)
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(g, logits=logits, ids=ids):
            V = logits.shape[-1]
            g = g.double()
            guesses = {"no shift: position t must be scored on input_ids[:, t + 1]":
                           F.cross_entropy(logits.reshape(-1, V), ids.clamp(min=0).reshape(-1)),
                       "shifted the wrong way: logits[:, :-1] go with input_ids[:, 1:]":
                           F.cross_entropy(logits[:, 1:].reshape(-1, V), ids[:, :-1].reshape(-1), ignore_index=IGNORE)}
            for name, v in guesses.items():
                if torch.allclose(g, v.double(), atol=1e-4):
                    return name
            return ""
        r.close(got, want, c["what"], atol=1e-4 if logits.dtype == torch.float32 else 1e-9, hint=hint)
        if c.get("grad"):
            r.grads_close(rec, reference_grads(_clm_ref, c), c["what"])
    r.check(not any(rec["mutated"] for rec in results), "clm_loss changed logits or input_ids in place")


# ----------------------------------------------------------------------------- 4.3

check_perplexity = Exercise("4.3", "perplexity", goal="pools the losses itself",
                            forbid=[Rule("plmkit's `clm.perplexity`", [_clm.perplexity])])


@check_perplexity.cases
def _ppl_cases(g):
    loss = round(float(g.randn(1).abs() + 0.5), 6)
    n = g.int(3, 7)
    losses = [round(v, 6) for v in (g.randn(n).abs() * 1.5 + 0.3).tolist()]
    counts = g.ints(n, 1, 500)
    counts[0] += 1000                                        # uneven batches: weighting matters
    return [([loss], [100], f"perplexity([{loss}], [100])"),
            ([math.log(65)], [1], "perplexity([log 65], [1]): a uniform guess over 65 characters"),
            (losses, counts, f"perplexity of {n} batches with token counts {counts}"),
            ([1.0, 9.0], [50, 0], "perplexity of two batches, one with 0 tokens (it adds nothing)")]


@check_perplexity.probe
def _ppl_probe(p, perplexity, cases):
    return [p.call(perplexity, losses, counts) for losses, counts, _ in cases]


@check_perplexity.judge
def _ppl_judge(r, cases, results):
    for (losses, counts, what), rec in zip(cases, results):
        want = math.exp(sum(l * n for l, n in zip(losses, counts)) / sum(counts))
        got = r.value(rec, what, float)
        if got is None:
            if rec.get("value") is not None and not rec.get("raised"):
                r.failures[-1] += " (return a Python float, e.g. math.exp(...) or tensor.item())"
            continue
        ok = math.isclose(got, want, rel_tol=1e-5)
        hint = ""
        if not ok and math.isclose(got, sum(math.exp(l) for l in losses) / len(losses), rel_tol=1e-5):
            hint = " (that is the mean of per-batch perplexities; pool the losses first)"
        elif not ok and math.isclose(got, math.exp(sum(losses) / len(losses)), rel_tol=1e-5):
            hint = " (that is exp of the unweighted mean; weight each batch by its token count)"
        r.check(ok, f"{what}: expected {want:.6g}, got {got:.6g}{hint}")


# ----------------------------------------------------------------------------- 4.4

check_temperature_softmax = Exercise(
    "4.4", "temperature_softmax", goal="scales the logits itself",
    forbid=[Rule("plmkit's `generate.temperature_softmax` / `apply_temperature` / `sample_next`",
                 [_gen.temperature_softmax, _gen.apply_temperature, _gen.sample_next]), HF_GENERATION])


@check_temperature_softmax.cases
def _temp_cases(g):
    cases = []
    for x in _logit_shapes(g, 3.0):
        for T in (1.0, 0.5, 2.0, 0):
            cases.append({"args": [x, T], "what": f"temperature_softmax({_shape(x)}, temperature={T})"
                                                  + (": greedy, a one-hot vector at the argmax" if T == 0 else "")})
    close_call = torch.tensor([[1.0, 1.004, -1.0], [0.5, -2.0, 0.499]])
    cases.append({"args": [close_call, 0], "what": "temperature_softmax([[1.0, 1.004, -1.0], [0.5, -2.0, 0.499]], "
                                                   "temperature=0): all mass on the argmax"})
    cases.append({"args": [torch.tensor([3.0, 1.0, -2.0]), 1000.0],
                  "what": "temperature_softmax([3, 1, -2], 1000.0): a very high temperature is nearly uniform"})
    x = g.randn(3, 8, dtype=torch.float64) * 2
    cases.append({"args": [x, 0.7], "what": "temperature_softmax(logits (3, 8) in float64, 0.7), with the gradient",
                  "grad": [0], "cotangent": g.randn(3, 8, dtype=torch.float64)})
    return cases


@check_temperature_softmax.probe
def _temp_probe(p, fn, cases):
    return [p.call(fn, *c["args"], grad=c.get("grad", ()), cotangent=c.get("cotangent")) for c in cases]


def _temp_ref(x, T):
    if T == 0:
        return F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype)
    return torch.softmax(x / T, dim=-1)


@check_temperature_softmax.judge
def _temp_judge(r, cases, results):
    for c, rec in zip(cases, results):
        x, T = c["args"]
        want = _temp_ref(x, T)
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(g, x=x, T=T):
            if T and torch.allclose(g.double(), torch.softmax(x * T, -1).double(), atol=1e-5):
                return "the logits are multiplied by the temperature; divide them"
            for d in range(x.ndim - 1):
                if T and torch.allclose(g.double(), torch.softmax(x / T, d).double(), atol=1e-5):
                    return f"normalised over dim={d}; the vocabulary is the LAST dim (dim=-1)"
            return ""
        r.close(got, want, c["what"], atol=1e-5 if x.dtype == torch.float32 else 1e-10, hint=hint)
        if c.get("grad"):
            r.grads_close(rec, reference_grads(_temp_ref, c), c["what"])
    r.check(not any(rec["mutated"] for rec in results), "temperature_softmax changed the logits in place")


# ----------------------------------------------------------------------------- 4.5

check_top_k_filter = Exercise("4.5", "top_k_filter", goal="filters the logits itself",
                              forbid=[Rule("plmkit's `generate.top_k_filter` / `sample_next`",
                                           [_gen.top_k_filter, _gen.sample_next]), HF_GENERATION])


@check_top_k_filter.cases
def _topk_cases(g):
    cases = []
    for x in _logit_shapes(g):
        V = x.shape[-1]
        for k in (1, g.int(2, V // 2), V, V + 3):
            cases.append({"args": [x, k], "what": f"top_k_filter({_shape(x)}, k={k})"})
    ties = torch.tensor([[2.0, 5.0, 2.0, 1.0, 5.0, 0.0]])
    cases.append({"args": [ties, 3], "what": "top_k_filter([[2, 5, 2, 1, 5, 0]], k=3): both 2s tie with the "
                                             "3rd largest and stay"})
    return cases


@check_top_k_filter.probe
def _topk_probe(p, fn, cases):
    return [p.call(fn, *c["args"]) for c in cases]


def _topk_ref(x, k):
    if k >= x.shape[-1]:
        return x.clone()
    kth = torch.topk(x, k, dim=-1).values[..., -1:]
    return x.masked_fill(x < kth, float("-inf"))


@check_top_k_filter.judge
def _topk_judge(r, cases, results):
    for c, rec in zip(cases, results):
        x, k = c["args"]
        want = _topk_ref(x, k)
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(g, x=x, k=k, want=want):
            kept = torch.isfinite(g)
            if kept.shape == want.shape and int(kept.sum()) < int(torch.isfinite(want).sum()) and k < x.shape[-1]:
                return "ties with the k-th largest must stay: keep logits >= the k-th value"
            if x.ndim > 1 and kept.shape == want.shape and not torch.equal(kept, torch.isfinite(want)):
                return "the k largest must be taken per row, along the last dim (dim=-1)"
            return ""
        r.close(got, want, c["what"], hint=hint)
    r.check(not any(rec["mutated"] for rec in results),
            "top_k_filter changed the logits passed in (in place); return a new tensor (masked_fill, not masked_fill_)")


# ----------------------------------------------------------------------------- 4.6

check_top_p_filter = Exercise("4.6", "top_p_filter", goal="filters the logits itself",
                              forbid=[Rule("plmkit's `generate.top_p_filter` / `sample_next`",
                                           [_gen.top_p_filter, _gen.sample_next]), HF_GENERATION])


@check_top_p_filter.cases
def _topp_cases(g):
    cases = []
    for x in _logit_shapes(g, 2.0):
        for p in (0.5, 0.9, 1.0, 0.01):
            cases.append({"args": [x, p], "what": f"top_p_filter({_shape(x)}, p={p})"
                                                  + {1.0: ": keeps every token",
                                                     0.01: ": keeps only the most likely token"}.get(p, "")})
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    cases.append({"args": [probs.log(), 0.6], "what": "top_p_filter(log [0.1, 0.5, 0.15, 0.25], p=0.6): 0.5 is "
                                                      "short of 0.6, 0.5 + 0.25 crosses it, so exactly the tokens "
                                                      "with 0.5 and 0.25 stay"})
    return cases


@check_top_p_filter.probe
def _topp_probe(p, fn, cases):
    return [p.call(fn, *c["args"]) for c in cases]


@check_top_p_filter.judge
def _topp_judge(r, cases, results):
    for c, rec in zip(cases, results):
        x, p = c["args"]
        want = _gen.top_p_filter(x, p)
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(g, x=x, p=p, want=want):
            kept, should = torch.isfinite(g), torch.isfinite(want)
            if kept.shape != should.shape:
                return ""
            if int(kept.sum()) == int(should.sum()) - (x.numel() // x.shape[-1]):
                return "the token whose probability crosses p (carries the running total past p) must stay"
            if x.ndim > 1 and not torch.equal(kept, should):
                return "sort and sum along the last dim (dim=-1), per row"
            return ""
        r.close(got, want, c["what"], hint=hint)
    r.check(not any(rec["mutated"] for rec in results),
            "top_p_filter changed the logits passed in (in place); return a new tensor")


# ----------------------------------------------------------------------------- 4.7

check_beam_search_step = Exercise("4.7", "beam_search_step", goal="ranks the candidates itself",
                                  forbid=[Rule("plmkit's `generate.beam_search_step`", [_gen.beam_search_step]), HF_GENERATION])


@check_beam_search_step.cases
def _beam_cases(g):
    cases = []
    for B, K, V, n in [(g.int(1, 4), 1, g.int(5, 20), 4), (g.int(1, 4), 3, g.int(5, 20), 3), (2, 4, g.int(5, 20), 8)]:
        sums = -g.randn(B, K).abs() * 4
        nxt = torch.log_softmax(g.randn(B, K, V) * 2, dim=-1)
        cases.append({"args": [sums, nxt, n],
                      "what": f"beam_search_step(sum_logprobs {(B, K)}, next_logprobs {(B, K, V)}, n={n})"})
    sums = torch.tensor([[-0.1, -9.0]])
    nxt = torch.log_softmax(torch.tensor([[[2.0, 1.5, 1.0, -3.0], [3.0, -1.0, -1.0, -1.0]]]), dim=-1)
    cases.append({"args": [sums, nxt, 2], "what": "beam_search_step with beam 0 far ahead of beam 1 (n=2): both "
                                                  "candidates extend beam 0 (candidates compete over all beams "
                                                  "together, not best-per-beam)"})
    return cases


@check_beam_search_step.probe
def _beam_probe(p, fn, cases):
    return [p.call(fn, *c["args"]) for c in cases]


@check_beam_search_step.judge
def _beam_judge(r, cases, results):
    for c, rec in zip(cases, results):
        sums, nxt, n = c["args"]
        B, K, V = nxt.shape
        scores, flat = torch.topk((sums[:, :, None] + nxt).reshape(B, K * V), n, dim=-1)
        want = (scores, flat // V, flat % V)
        what = c["what"]
        got = r.value(rec, what, (tuple, list))
        if got is None:
            continue
        if not r.check(len(got) == 3, f"{what}: expected a tuple (scores, beam_idx, token_ids), got {len(got)} items"):
            continue
        r.close(got[0], want[0], f"{what}: scores")
        r.close(got[1], want[1], f"{what}: beam_idx (which beam each candidate extends)", atol=0, rtol=0)
        r.close(got[2], want[2], f"{what}: token_ids", atol=0, rtol=0)
    r.check(not any(rec["mutated"] for rec in results), "beam_search_step changed its inputs in place")


# ----------------------------------------------------------------------------- 4.8

check_best_hypothesis = Exercise("4.8", "best_hypothesis", goal="scores the hypotheses itself",
                                 forbid=[Rule("plmkit's `generate.best_hypothesis` / `beam_score`",
                                              [_gen.best_hypothesis, _gen.beam_score]), HF_GENERATION])


@check_best_hypothesis.cases
def _best_cases(g):
    cases = []
    sums, lengths = [-2.0, -3.6, -8.0], [1, 4, 16]
    for alpha, why in ((0.0, "the plain sum: the short one"), (1.0, "per token: the long one"),
                       (0.5, "sum / sqrt(length): the medium one")):
        cases.append((sums, lengths, alpha, f"best_hypothesis({sums}, {lengths}, length_penalty={alpha}) ({why})"))
    for alpha in (0.0, 1.0, 2.0):
        lengths = g.ints(6, 1, 20)
        sums = [round(-(abs(float(v)) + 0.2) * n, 4) for v, n in zip(g.randn(6), lengths)]
        cases.append((sums, lengths, alpha, f"best_hypothesis({sums}, {lengths}, length_penalty={alpha})"))
    return cases


@check_best_hypothesis.probe
def _best_probe(p, fn, cases):
    return [p.call(fn, s, n, a) for s, n, a, _ in cases]


@check_best_hypothesis.judge
def _best_judge(r, cases, results):
    for (sums, lengths, alpha, what), rec in zip(cases, results):
        scores = [s / n ** alpha for s, n in zip(sums, lengths)]
        want = max(range(len(scores)), key=lambda i: scores[i])
        got = r.value(rec, what, int)
        if got is None:
            if not rec.get("raised"):
                r.failures[-1] += " (return the index as a Python int, e.g. int(tensor.argmax()))"
            continue
        r.equal(got, want, what)
