"""Checkers for chapter 4, causal language modelling and GPT.

    4.1 causal_mask          lower-triangular boolean mask, True = may attend
    4.2 clm_loss             next-token cross-entropy: logits at t scored on token t+1
    4.3 perplexity           exp of the token-weighted mean loss over batches
    4.4 temperature_softmax  softmax(logits / T), one-hot argmax at T = 0
    4.5 top_k_filter         keep the k largest logits (ties with the k-th kept)
    4.6 top_p_filter         keep the smallest top set with mass >= p, crossing token included
    4.7 beam_search_step     the best n extensions over all beams and tokens together
    4.8 best_hypothesis      rank finished beams by sum of log-probs / length ** length_penalty

Each checker compares the learner's function with plmkit's reference on fresh
random inputs and on hand-made cases that separate the right answer from the
usual slips (no shift or a shift the wrong way, averaging perplexities,
multiplying by the temperature, dropping the token that crosses p, picking
the best token per beam, ignoring the length penalty).
"""
from __future__ import annotations

import math

import torch

from ..generate import beam_score, beam_search_step, temperature_softmax, top_k_filter, top_p_filter
from ..nn import causal_mask
from ..objectives.clm import clm_loss, perplexity
from ._legacy import Report, checker

IGNORE = -100


def _rint(r: Report, low: int, high: int) -> int:
    return int(r.randint(low, high, (1,)))


def _as_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- 4.1

@checker("4.1", "causal_mask")
def check_causal_mask(r: Report, causal_mask_fn) -> None:
    for T in (1, 4, _rint(r, 5, 12)):
        what = f"causal_mask({T})"
        got = r.call(causal_mask_fn, T, what=what)
        if not isinstance(got, torch.Tensor):
            r.check(False, f"{what}: expected a torch.Tensor, got {type(got).__name__}")
            continue
        if not r.check(got.dtype == torch.bool, f"{what}: expected a boolean tensor (True = may attend), "
                                                f"got dtype {got.dtype}"):
            continue
        expected = causal_mask(T)
        if tuple(got.shape) != (T, T):
            r.check(False, f"{what}: expected shape {(T, T)}, got {tuple(got.shape)}")
            continue
        if torch.equal(got, expected):
            r.check(True, "")
        elif torch.equal(got, expected.T):
            r.check(False, f"{what}: the mask is transposed: row i (the query) may attend to columns j <= i")
        elif torch.equal(got, expected & ~torch.eye(T, dtype=torch.bool)):
            r.check(False, f"{what}: the diagonal is blocked; a position may attend to itself")
        else:
            i, j = (int(v) for v in torch.nonzero(got != expected)[0])
            r.check(False, f"{what}[{i}, {j}]: expected {bool(expected[i, j])}, got {bool(got[i, j])}")


# ----------------------------------------------------------------------------- 4.2

@checker("4.2", "clm_loss")
def check_clm_loss(r: Report, clm_loss_fn) -> None:
    B, T, V = _rint(r, 2, 5), _rint(r, 4, 10), _rint(r, 7, 30)
    logits, ids = r.randn(B, T, V), r.randint(0, V, (B, T))
    what = f"clm_loss(logits {(B, T, V)}, input_ids {(B, T)})"
    r.close(r.call(clm_loss_fn, logits, ids, what=what), clm_loss(logits, ids), what, atol=1e-4)

    # A model that is certain of the true next token has loss ~0 ...
    confident = torch.full((B, T, V), -20.0)
    confident[:, :-1].scatter_(-1, ids[:, 1:, None], 20.0)
    what = "clm_loss for logits that put all mass on the NEXT token (expected ~0)"
    got = r.call(clm_loss_fn, confident, ids, what=what)
    value = _as_float(got)
    r.check(value is not None and abs(value) < 1e-3,
            f"{what}: got {got!r}; position t must be scored on input_ids[:, t + 1] (shift the labels left by one)")

    # ... and one that predicts the CURRENT token must not be rewarded.
    echo = torch.full((B, T, V), -20.0).scatter_(-1, ids[..., None], 20.0)
    what = "clm_loss for logits that copy the CURRENT token"
    r.close(r.call(clm_loss_fn, echo, ids, what=what), clm_loss(echo, ids), what, atol=1e-3)

    padded = ids.clone()
    padded[0, T // 2:] = IGNORE
    what = "clm_loss with labels -100 (padding) at the end of row 0: those positions are skipped"
    r.close(r.call(clm_loss_fn, logits, padded, what=what), clm_loss(logits, padded), what, atol=1e-4)


# ----------------------------------------------------------------------------- 4.3

@checker("4.3", "perplexity")
def check_perplexity(r: Report, perplexity_fn) -> None:
    loss = float(r.randn(1).abs() + 0.5)
    what = f"perplexity([{loss:.3f}], [100])"
    got = _as_float(r.call(perplexity_fn, [loss], [100], what=what))
    r.check(got is not None and math.isclose(got, math.exp(loss), rel_tol=1e-5),
            f"{what}: expected exp(loss) = {math.exp(loss):.5g}, got {got!r}")

    what = "perplexity([log 65], [1]): a uniform guess over 65 characters"
    got = _as_float(r.call(perplexity_fn, [math.log(65)], [1], what=what))
    r.check(got is not None and math.isclose(got, 65.0, rel_tol=1e-6), f"{what}: expected 65, got {got!r}")

    n = _rint(r, 3, 7)
    losses = (r.randn(n).abs() * 1.5 + 0.3).tolist()
    counts = r.randint(1, 500, (n,)).tolist()
    counts[0] = 1000 + counts[0]                     # uneven batches: weighting matters
    expected = perplexity(losses, counts)
    what = f"perplexity of {n} batches with token counts {counts}"
    got = _as_float(r.call(perplexity_fn, losses, counts, what=what))
    ok = got is not None and math.isclose(got, expected, rel_tol=1e-5)
    hint = ""
    if got is not None and not ok:
        if math.isclose(got, sum(math.exp(l) for l in losses) / n, rel_tol=1e-5):
            hint = " (that is the mean of per-batch perplexities; pool the losses first)"
        elif math.isclose(got, math.exp(sum(losses) / n), rel_tol=1e-5):
            hint = " (that is exp of the unweighted mean; weight each batch by its token count)"
    r.check(ok, f"{what}: expected {expected:.5g}, got {got!r}{hint}")

    what = "perplexity of two batches, one with 0 tokens"
    got = _as_float(r.call(perplexity_fn, [1.0, 9.0], [50, 0], what=what))
    r.check(got is not None and math.isclose(got, math.e, rel_tol=1e-6),
            f"{what}: expected e = 2.71828 (an empty batch adds nothing), got {got!r}")


# ----------------------------------------------------------------------------- 4.4

@checker("4.4", "temperature_softmax")
def check_temperature_softmax(r: Report, temperature_softmax_fn) -> None:
    B, V = _rint(r, 2, 5), _rint(r, 5, 40)
    logits = r.randn(B, V) * 3
    for T in (1.0, 0.5, 2.0, 10.0):
        what = f"temperature_softmax(logits {(B, V)}, temperature={T})"
        r.close(r.call(temperature_softmax_fn, logits, T, what=what), temperature_softmax(logits, T), what)
    what = f"temperature_softmax(logits {(B, V)}, temperature=0): greedy, a one-hot vector at the argmax"
    r.close(r.call(temperature_softmax_fn, logits, 0.0, what=what), temperature_softmax(logits, 0.0), what)
    close_call = torch.tensor([[1.0, 1.004, -1.0], [0.5, -2.0, 0.499]])
    what = "temperature_softmax([[1.0, 1.004, -1.0], [0.5, -2.0, 0.499]], temperature=0): all mass on the argmax"
    r.close(r.call(temperature_softmax_fn, close_call, 0, what=what), temperature_softmax(close_call, 0), what)
    flat = torch.tensor([3.0, 1.0, -2.0])
    what = "temperature_softmax([3, 1, -2], 1000.0): a very high temperature is nearly uniform"
    r.close(r.call(temperature_softmax_fn, flat, 1000.0, what=what), temperature_softmax(flat, 1000.0), what)


# ----------------------------------------------------------------------------- 4.5

@checker("4.5", "top_k_filter")
def check_top_k_filter(r: Report, top_k_filter_fn) -> None:
    B, V = _rint(r, 2, 5), _rint(r, 10, 50)
    logits = r.randn(B, V)
    for k in (1, _rint(r, 2, V // 2), V, V + 3):
        what = f"top_k_filter(logits {(B, V)}, k={k})"
        r.close(r.call(top_k_filter_fn, logits.clone(), k, what=what), top_k_filter(logits, k), what)
    ties = torch.tensor([[2.0, 5.0, 2.0, 1.0, 5.0, 0.0]])
    what = "top_k_filter([[2, 5, 2, 1, 5, 0]], k=3): both 2s tie with the 3rd largest and stay"
    r.close(r.call(top_k_filter_fn, ties.clone(), 3, what=what), top_k_filter(ties, 3), what)
    what = "top_k_filter must not change its input"
    x = logits.clone()
    r.call(top_k_filter_fn, x, 2, what=what)
    r.check(torch.equal(x, logits), f"{what}: the logits passed in were modified in place")


# ----------------------------------------------------------------------------- 4.6

@checker("4.6", "top_p_filter")
def check_top_p_filter(r: Report, top_p_filter_fn) -> None:
    B, V = _rint(r, 2, 5), _rint(r, 10, 50)
    logits = r.randn(B, V) * 2
    for p in (0.5, 0.9):
        what = f"top_p_filter(logits {(B, V)}, p={p})"
        r.close(r.call(top_p_filter_fn, logits.clone(), p, what=what), top_p_filter(logits, p), what)
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    what = ("top_p_filter(log [0.1, 0.5, 0.15, 0.25], p=0.6): 0.5 is short of 0.6, 0.5 + 0.25 crosses it, "
            "so exactly the tokens with 0.5 and 0.25 stay")
    r.close(r.call(top_p_filter_fn, probs.log(), 0.6, what=what), top_p_filter(probs.log(), 0.6), what)
    what = "top_p_filter(logits, p=1.0) keeps every token"
    r.close(r.call(top_p_filter_fn, logits.clone(), 1.0, what=what), logits, what)
    what = "top_p_filter(logits, p=0.01) keeps only the most likely token"
    r.close(r.call(top_p_filter_fn, logits.clone(), 0.01, what=what), top_p_filter(logits, 0.01), what)


# ----------------------------------------------------------------------------- 4.7

@checker("4.7", "beam_search_step")
def check_beam_search_step(r: Report, beam_search_step_fn) -> None:
    cases = [(_rint(r, 1, 4), 1, _rint(r, 5, 20), 4),                 # first step: one beam
             (_rint(r, 1, 4), 3, _rint(r, 5, 20), 3),
             (2, 4, _rint(r, 5, 20), 8)]
    for B, K, V, n in cases:
        sums = -r.randn(B, K).abs() * 4
        nxt = torch.log_softmax(r.randn(B, K, V) * 2, dim=-1)
        what = f"beam_search_step(sum_logprobs {(B, K)}, next_logprobs {(B, K, V)}, n={n})"
        got = r.call(beam_search_step_fn, sums, nxt, n, what=what)
        exp_scores, exp_beam, exp_tok = beam_search_step(sums, nxt, n)
        if not (isinstance(got, (tuple, list)) and len(got) == 3):
            r.check(False, f"{what}: expected a tuple (scores, beam_idx, token_ids), got {type(got).__name__}")
            continue
        scores, beam, tok = got
        r.close(scores, exp_scores, f"{what}: scores", atol=1e-5)
        r.close(beam, exp_beam, f"{what}: beam_idx (which beam each candidate extends)")
        r.close(tok, exp_tok, f"{what}: token_ids")
    # One beam far ahead: all the best candidates may come from it.
    sums = torch.tensor([[-0.1, -9.0]])
    nxt = torch.log_softmax(torch.tensor([[[2.0, 1.5, 1.0, -3.0], [3.0, -1.0, -1.0, -1.0]]]), dim=-1)
    what = "beam_search_step with beam 0 far ahead of beam 1 (n=2): both candidates extend beam 0"
    got = r.call(beam_search_step_fn, sums, nxt, 2, what=what)
    ok = isinstance(got, (tuple, list)) and len(got) == 3 and torch.equal(torch.as_tensor(got[1]),
                                                                         torch.tensor([[0, 0]]))
    r.check(ok, f"{what}: candidates compete over all beams together, not best-per-beam")


# ----------------------------------------------------------------------------- 4.8

@checker("4.8", "best_hypothesis")
def check_best_hypothesis(r: Report, best_hypothesis_fn) -> None:
    # Hand-made: a short, a medium and a long hypothesis whose winners differ with alpha.
    sums, lengths = [-2.0, -3.6, -8.0], [1, 4, 16]
    for alpha, why in ((0.0, "the plain sum: the short one"), (1.0, "per token: the long one"),
                       (0.5, "sum / sqrt(length): the medium one")):
        expected = int(torch.argmax(beam_score(torch.tensor(sums), torch.tensor(lengths, dtype=torch.float), alpha)))
        what = f"best_hypothesis({sums}, {lengths}, length_penalty={alpha})"
        got = r.call(best_hypothesis_fn, sums, lengths, alpha, what=what)
        r.equal(_as_int(got), expected, f"{what} ({why})")
    for alpha in (0.0, 1.0, 2.0):
        n = 6
        lengths = r.randint(1, 20, (n,))
        sums = -(r.randn(n).abs() + 0.2) * lengths           # about proportional to length
        expected = int(torch.argmax(beam_score(sums.double(), lengths.double(), alpha)))
        what = f"best_hypothesis(random sums {[round(s, 2) for s in sums.tolist()]}, lengths {lengths.tolist()}, length_penalty={alpha})"
        got = r.call(best_hypothesis_fn, sums.tolist(), lengths.tolist(), alpha, what=what)
        r.equal(_as_int(got), expected, what)


def _as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value
