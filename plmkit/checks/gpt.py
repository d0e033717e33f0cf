"""Checkers for chapter 4, causal language modelling and GPT.

    4.1 causal_mask          lower-triangular boolean mask, True = may attend
    4.2 clm_loss             next-token cross-entropy: logits at t scored on token t+1; differentiable
    4.3 perplexity           exp of the token-weighted mean loss over batches
    4.4 temperature_softmax  softmax(logits / T), one-hot argmax at T = 0, any (..., V) shape
    4.5 top_k_filter         keep the k largest logits (ties with the k-th kept), any (..., V) shape
    4.6 top_p_filter         keep the smallest top set with mass >= p, crossing token included
    4.7 beam_search_step     the best n extensions over all beams and tokens together
    4.8 best_hypothesis      rank finished beams by sum of log-probs / length ** length_penalty
    4.9 generate             the sampling loop: temperature, top-k, top-p, stop token, one multinomial per step
    4.10 train_step          AdamW decay groups, warm-up + cosine lr, clipping: equal to plmkit's Trainer
    4.11 gpt2_logits         GPT-2 forward from a saved Hugging Face folder (random tiny weights): its logits
    4.12 zero_memory         bytes per device of parameters, gradients and Adam states under ZeRO stages 0-3

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

from .. import distributed as _dist
from .. import generate as _gen
from .. import train as _train
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
    r.check(not any(rec["mutated"] for rec in results), "perplexity changed the lists it was given")


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
    r.check(not any(rec["mutated"] for rec in results), "best_hypothesis changed the lists it was given")


# ----------------------------------------------------------------------------- shared: a tiny GPT from case data

def _tiny_gpt_cases(g, vocab: int) -> dict:
    """Config and weights of a tiny GPT (plain data), scaled so that the next-token distributions
    are neither flat nor one-hot: top-k and top-p cut something, and sampling still varies."""
    cfg = dict(vocab_size=vocab, n_positions=48, n_embd=32, n_layer=2, n_head=4)
    shapes = {k: tuple(v.shape) for k, v in _gpt_module(cfg).state_dict().items()}
    state = {}
    for k, shape in sorted(shapes.items()):
        if k == "lm_head.weight":                         # tied to wte.weight
            continue
        if ("norm" in k or "ln_" in k) and k.endswith("weight"):
            state[k] = 1.0 + 0.1 * g.randn(*shape)
        elif k.endswith("bias"):
            state[k] = 0.1 * g.randn(*shape)
        elif "wte" in k:
            state[k] = 0.35 * g.randn(*shape)
        else:
            state[k] = 0.2 * g.randn(*shape)
    return {"config": cfg, "state": state}


def _gpt_module(cfg: dict, state: dict | None = None):
    from ..models import GPT, GPTConfig
    with torch.random.fork_rng(devices=[]):               # leave the caller's random state alone
        model = GPT(GPTConfig(**cfg))                     # the weights are replaced: only shapes matter
    if state is not None:
        model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    return model


# ----------------------------------------------------------------------------- 4.9

check_generate = Exercise(
    "4.9", "generate", goal="writes the sampling loop itself",
    forbid=[Rule("plmkit's `generate` module (`generate`, `sample_next`, the filters, the decoder states)",
                 [Module("plmkit.generate")]), HF_GENERATION])


def _sampling_settings():
    """(temperature, top_k, top_p, stop?) per case: greedy, each filter alone, both together, a stop token."""
    return [(0, None, None, False), (0.8, None, None, False), (1.3, 5, None, False), (0.9, None, 0.8, False),
            (1.5, 6, 0.7, False), (1.2, 3, 0.95, False), (1.0, 4, 0.6, False), (1.0, None, 0.9, True),
            (2.0, None, None, True), (1.5, None, None, True),
            (0, None, None, True)]


@check_generate.cases
def _gen_cases(g):
    model = _tiny_gpt_cases(g, vocab=g.int(12, 20))
    V = model["config"]["vocab_size"]
    cases = []
    for i, (T, k, p, stop) in enumerate(_sampling_settings()):
        B, T0, n = (1 if stop and T == 0 else g.int(2, 4)), g.int(3, 6), g.int(10, 16)   # greedy + stop: ends early
        case = {"ids": g.randint(0, V, (B, T0)), "max_new_tokens": n, "temperature": T, "top_k": k, "top_p": p,
                "stop_token": None, "seed": g.seed_int()}
        if stop:
            # a stop token that row 0 really emits: sampling, as its 1st new token (the other rows go on
            # while row 0 only repeats it); greedy (one row), as its 3rd (decoding ends early)
            free = _gen_reference(model, {**case, "stop_token": None})
            case["stop_token"] = int(free[0, T0 + (0 if T else 2)])
        opts = ", ".join(f"{name}={case[name]}" for name in ("temperature", "top_k", "top_p", "stop_token")
                         if case[name] is not None)
        case["what"] = (f"generate(model, input_ids {(B, T0)}, max_new_tokens={n}, {opts}, "
                        f"generator=torch.Generator().manual_seed({case['seed']}))")
        cases.append(case)
    designed = _fixed_distribution_gpt(model, g)
    probs = ", ".join(f"{q:.3g}" for q in designed["probs"].tolist())
    B, T0, n, seed = 3, g.int(3, 6), g.int(10, 16), g.seed_int()
    cases.append({"ids": g.randint(0, V, (B, T0)), "max_new_tokens": n, "temperature": 1.0, "top_k": 3,
                  "top_p": 0.4, "stop_token": None, "seed": seed, "model": "designed",
                  "what": (f"generate(model, input_ids {(B, T0)}, max_new_tokens={n}, temperature=1.0, top_k=3, "
                           f"top_p=0.4, generator=torch.Generator().manual_seed({seed})) for a model whose "
                           f"next-token probabilities are ({probs}) at every step (top-k then top-p keeps only "
                           f"the most likely token; top-p then top-k would keep three)")})
    return {"model": model, "designed": designed, "cases": cases}


def _fixed_distribution_gpt(model: dict, g) -> dict:
    """A GPT whose next-token distribution is the same at every position, whatever the input.

    ln_f's gain is 0, so its output is its bias b; with wte = [I_V | 0] the tied head gives logits
    b[:V] = log probs. The three most likely tokens have 0.20, 0.15 and 0.10 (random ids), the rest
    share 0.55: top-k(3) renormalises them to 0.44, 0.33, 0.22 and top-p(0.4) then keeps one token,
    while top-p(0.4) on the full distribution keeps three (0.20 + 0.15 < 0.4), and top-k(3) all of them.
    So the two orders give different tokens at almost every draw (the wrong one matches the
    right one with probability 0.44 per draw), on every seed.
    """
    cfg = model["config"]
    V, C = cfg["vocab_size"], cfg["n_embd"]
    probs = torch.full((V,), 0.55 / (V - 3))
    top = g.randperm(V)[:3]
    probs[top] = torch.tensor([0.20, 0.15, 0.10])
    state = dict(model["state"])
    state["ln_f.weight"] = torch.zeros(C)
    state["ln_f.bias"] = torch.cat([probs.log(), torch.zeros(C - V)])
    state["wte.weight"] = torch.eye(V, C)
    return {"config": cfg, "state": state, "probs": probs}


def _gen_model(cases: dict, case: dict) -> dict:
    return cases[case.get("model", "model")]


def _gen_kwargs(case: dict) -> dict:
    return {name: case[name] for name in ("temperature", "top_k", "top_p", "stop_token")}


@check_generate.probe
def _gen_probe(p, generate, cases):
    out = []
    for case in cases["cases"]:
        data = _gen_model(cases, case)
        model = _gpt_module(data["config"], data["state"]).eval()
        gen = torch.Generator().manual_seed(case["seed"])
        out.append(p.call(generate, model, case["ids"], case["max_new_tokens"], generator=gen, **_gen_kwargs(case)))
    return out


def _gen_reference(model_data: dict, case: dict) -> torch.Tensor:
    """plmkit.generate, recomputing the whole prefix each step (chapter 4's loop)."""
    model = _gpt_module(model_data["config"], model_data["state"]).eval()
    stop = case["stop_token"]
    return _gen.generate(model, case["ids"], case["max_new_tokens"], temperature=case["temperature"],
                         top_k=case["top_k"], top_p=case["top_p"], stop_tokens=None if stop is None else [stop],
                         generator=torch.Generator().manual_seed(case["seed"]), use_cache=False)


@torch.no_grad()
def _gen_variant(model_data: dict, case: dict, slip: str) -> torch.Tensor:
    """The loop with one usual slip, to name it in a failure."""
    model = _gpt_module(model_data["config"], model_data["state"]).eval()
    gen = torch.Generator().manual_seed(case["seed"])
    ids, T, k, p, stop = case["ids"], case["temperature"], case["top_k"], case["top_p"], case["stop_token"]
    finished = torch.zeros(ids.size(0), dtype=torch.bool)
    for _ in range(case["max_new_tokens"]):
        logits = model(ids)[:, -1, :].float()
        if T == 0:
            nxt = logits.argmax(-1)
        else:
            if slip != "temperature last":
                logits = logits / T
            filters = [(_gen.top_k_filter, k), (_gen.top_p_filter, p)]
            if slip == "top-p first":
                filters.reverse()
            for f, arg in filters:
                if arg is not None and slip != "no filters":
                    logits = f(logits, arg)
            if slip == "temperature last":
                logits = logits / T
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)
        if stop is not None and slip != "no padding":
            nxt = torch.where(finished, torch.full_like(nxt, stop), nxt)
            finished |= nxt == stop
        ids = torch.cat([ids, nxt[:, None]], 1)
        if stop is not None and slip != "no early end" and bool(finished.all()):
            break
    return ids


_GEN_SLIPS = {"top-p first": "top-p is applied before top-k; the order is temperature, then top-k, then top-p",
              "temperature last": "the temperature is applied after the filters; divide the logits by it first",
              "no filters": "top_k / top_p were not applied to the distribution that is sampled",
              "no padding": "a row that has emitted the stop token must only repeat it (it is finished)",
              "no early end": "decoding must end as soon as every row has emitted the stop token"}


@check_generate.judge
def _gen_judge(r, cases, results):
    for case, rec in zip(cases["cases"], results):
        want = _gen_reference(_gen_model(cases, case), case)
        what = case["what"]
        got = r.value(rec, what)
        if got is None:
            continue

        def hint(g, case=case):
            for slip, words in _GEN_SLIPS.items():
                v = _gen_variant(_gen_model(cases, case), case, slip)
                if v.shape == g.shape and torch.equal(v, g.long()):
                    return words
            if g.ndim == 2 and g.shape[1] >= case["ids"].shape[1] and not torch.equal(g[:, :case["ids"].shape[1]],
                                                                                      case["ids"]):
                return "the result must begin with the prompt, followed by the new tokens"
            return ""
        r.close(got, want, f"{what}: the token ids", atol=0, rtol=0, hint=hint)
    r.check(not any(rec["mutated"] for rec in results), "generate changed input_ids in place")


# ----------------------------------------------------------------------------- 4.10

check_train_step = Exercise(
    "4.10", "train_step", goal="builds the optimizer groups, the schedule and the step itself",
    forbid=[Rule("plmkit's `train.Trainer` / `param_groups` / `warmup_cosine`",
                 [_train.Trainer, _train.param_groups, _train.warmup_cosine])])

_TRAIN_CONFIGS = [dict(lr=0.02, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=2, max_steps=5, min_lr_ratio=0.1,
                       grad_clip=0.5),
                  dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.3, warmup_steps=0, max_steps=3, min_lr_ratio=0.0,
                       grad_clip=None)]


@check_train_step.cases
def _train_cases(g):
    model = _tiny_gpt_cases(g, vocab=g.int(12, 20))
    V = model["config"]["vocab_size"]
    runs = []
    for cfg in _TRAIN_CONFIGS:
        batches = []
        for _ in range(cfg["max_steps"]):
            ids = g.randint(0, V, (g.int(2, 4), 9))
            batches.append((ids[:, :-1], ids[:, 1:]))
        runs.append({"config": dict(cfg), "batches": batches})
    return {"model": model, "runs": runs}


def _train_what(cfg: dict) -> str:
    return "train_step over steps 0.." + str(cfg["max_steps"] - 1) + " with cfg " + str(cfg)


@check_train_step.probe
def _train_probe(p, make_optimizer, train_step, cases):
    out = []
    for run in cases["runs"]:
        cfg = run["config"]
        model = _gpt_module(cases["model"]["config"], cases["model"]["state"])
        names = {id(t): n for n, t in model.named_parameters()}
        opt = p.run(make_optimizer, model, dict(cfg))
        groups = [{"weight_decay": float(gr.get("weight_decay", 0.0)),
                   "params": sorted(names.get(id(t), "?") for t in gr["params"])}
                  for gr in getattr(opt, "param_groups", [])]
        steps = []
        for step, batch in enumerate(run["batches"]):
            rec = p.call(train_step, model, opt, batch, step, dict(cfg))
            rec["lr"] = [float(gr["lr"]) for gr in opt.param_groups]
            rec["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            steps.append(rec)
        out.append({"optimizer": type(opt).__name__, "groups": groups, "steps": steps})
    return out


def _train_reference(cases: dict, run: dict) -> tuple[list, list, list, list]:
    """plmkit's Trainer on the same model and batches: (loss, lr, state) after each step, and its groups."""
    cfg = run["config"]
    model = _gpt_module(cases["model"]["config"], cases["model"]["state"])
    names = {id(t): n for n, t in model.named_parameters()}
    groups = [{"weight_decay": gr["weight_decay"], "params": sorted(names[id(t)] for t in gr["params"])}
              for gr in _train.param_groups(model, cfg["weight_decay"])]
    trainer = _train.Trainer(model, run["batches"], max_steps=cfg["max_steps"], lr=cfg["lr"], betas=cfg["betas"],
                             weight_decay=cfg["weight_decay"], warmup_steps=cfg["warmup_steps"],
                             min_lr_ratio=cfg["min_lr_ratio"], grad_clip=cfg["grad_clip"], device="cpu",
                             precision="fp32", progress=False)
    losses, lrs, states = [], [], []
    for _ in run["batches"]:
        lr = trainer.optimizer.param_groups[0]["lr"]                # the lr this step uses
        losses.append(float(trainer.train_step()))
        lrs.append(lr)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return losses, lrs, states, groups


@check_train_step.judge
def _train_judge(r, cases, results):
    for run, res in zip(cases["runs"], results):
        losses, lrs, states, groups = _train_reference(cases, run)
        cfg = run["config"]
        what = _train_what(cfg)
        r.check(res["optimizer"] == "AdamW", f"make_optimizer must return a torch.optim.AdamW, got {res['optimizer']}")
        want_groups = {gr["weight_decay"]: gr["params"] for gr in groups}
        got_groups = {gr["weight_decay"]: gr["params"] for gr in res["groups"]}
        decayed = set(want_groups.get(cfg["weight_decay"], []))
        got_decayed = set(got_groups.get(cfg["weight_decay"], []))
        extra, missing = sorted(got_decayed - decayed), sorted(decayed - got_decayed)
        groups_ok = r.check(not extra and not missing and sorted(got_groups) == sorted(want_groups),
                f"make_optimizer(model, {cfg}): the parameter groups differ from the rule (weight decay "
                f"{cfg['weight_decay']} on the weight matrices, 0.0 on biases, norm gains and embeddings, the tied "
                f"head included): "
                + (f"decayed but should not be: {extra[:4]}; " if extra else "")
                + (f"should be decayed: {missing[:4]}; " if missing else "")
                + f"groups given: {[(w, len(n)) for w, n in got_groups.items()]}")
        lr_ok = True
        for step, (rec, loss, lr, state) in enumerate(zip(res["steps"], losses, lrs, states)):
            at = f"{what}, step {step}"
            got = r.value(rec, at, float)
            if got is None:
                if rec.get("value") is not None and not rec.get("raised"):
                    r.failures[-1] += " (return the loss as a Python float: loss.item())"
            else:
                r.check(math.isclose(got, loss, rel_tol=1e-4, abs_tol=1e-5),
                        f"{at}: the loss should be {loss:.6f} (cross-entropy of model(inputs) against targets, "
                        f"before the update), got {got:.6f}")
            got_lr = rec["lr"]
            ok = bool(got_lr) and all(math.isclose(v, lr, rel_tol=1e-6) for v in got_lr)
            lr_ok &= ok
            warm = step < cfg["warmup_steps"]
            r.check(ok, f"{at}: the learning rate in the optimizer should be {lr:.6g} "
                        f"(lr x {'(step + 1) / warmup_steps' if warm else 'the cosine multiplier'} = "
                        f"{lr / cfg['lr']:.4f}), got {got_lr}")
            bad = [k for k in state if not torch.allclose(rec["state"][k], state[k], atol=1e-5, rtol=1e-4)]
            hint = ""
            if bad and lr_ok and groups_ok:
                hint = (" (groups and learning rate are right: clip the global gradient norm between backward() "
                        "and step(), clear the gradients every step)" if cfg["grad_clip"] else
                        " (clear the gradients every step, one optimizer.step() per call)")
            r.check(not bad, f"{at}: after the update the weights differ from plmkit's Trainer's, e.g. in "
                             f"{bad[:3]}{hint}")
            r.unchanged(rec, at)


# ----------------------------------------------------------------------------- 4.11

check_gpt2_logits = Exercise(
    "4.11", "gpt2_logits", goal="runs GPT-2's forward pass itself from the saved weights",
    forbid=[Rule("Hugging Face's model classes (`transformers.models`)", [Module("transformers.models")]),
            Rule("plmkit's models and blocks (`plmkit.models`, `plmkit.nn`)", [Module("plmkit.models"),
                                                                              Module("plmkit.nn")])])


def _gpt2_shapes(cfg: dict) -> dict:
    """Hugging Face GPT-2 tensor names and shapes (Conv1D weights are stored (in, out)); the head is tied."""
    C, V, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"]
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg["n_positions"], C),
              "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    for i in range(L):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                       p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
                       p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                       p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
                       p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)})
    return shapes


@check_gpt2_logits.cases
def _gpt2_cases(g):
    n_head = g.choice([2, 4])
    cfg = dict(vocab_size=g.int(20, 40), n_positions=16, n_embd=8 * n_head, n_layer=2, n_head=n_head,
               layer_norm_epsilon=1e-5)
    state = {}
    for k, shape in _gpt2_shapes(cfg).items():
        if "ln" in k and k.endswith("weight"):
            state[k] = 1.0 + 0.2 * g.randn(*shape)
        else:
            state[k] = (0.1 if k.endswith("bias") else 0.3) * g.randn(*shape)
    V, T = cfg["vocab_size"], cfg["n_positions"]
    inputs = [g.randint(0, V, (2, 7)), g.randint(0, V, (1, T)), g.randint(0, V, (3, 1))]
    return {"config": cfg, "state": state, "inputs": inputs}


def _write_gpt2_folder(cases: dict, folder: str) -> None:
    import json
    import os

    from safetensors.torch import save_file
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
              **cases["config"]}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.contiguous() for k, v in cases["state"].items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})


@check_gpt2_logits.probe
def _gpt2_probe(p, gpt2_logits, cases):
    import tempfile
    out = []
    with tempfile.TemporaryDirectory() as folder:
        _write_gpt2_folder(cases, folder)
        for ids in cases["inputs"]:
            out.append(p.call(gpt2_logits, folder, ids))
    return out


def _gpt2_reference(cases: dict):
    from transformers import GPT2Config, GPT2LMHeadModel
    with torch.random.fork_rng(devices=[]):
        model = GPT2LMHeadModel(GPT2Config(**cases["config"], activation_function="gelu_new",
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    missing, unexpected = model.load_state_dict(cases["state"], strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model


@check_gpt2_logits.judge
def _gpt2_judge(r, cases, results):
    model = _gpt2_reference(cases)
    for ids, rec in zip(cases["inputs"], results):
        with torch.no_grad():
            want = model(ids).logits
        what = f"gpt2_logits(folder, input_ids {tuple(ids.shape)})"
        got = r.value(rec, what)
        if got is None:
            continue

        def hint(g, ids=ids):
            if g.shape != want.shape:
                return "logits are (B, T, vocab_size): the head is the token embedding, transposed"
            if ids.shape[1] > 1 and torch.allclose(g[:, 0].double(), want[:, 0].double(), atol=1e-4):
                return ("position 0 is right, later ones are not: is the causal mask applied (and the right way "
                        "round), are the position embeddings wpe[:T] added?")
            return ""
        r.close(got, want, what, atol=1e-4, rtol=1e-4, hint=hint)
    r.check(not any(rec["mutated"] for rec in results), "gpt2_logits changed input_ids in place")


# ----------------------------------------------------------------------------- 4.12

check_zero_memory = Exercise("4.12", "zero_memory", goal="does ZeRO's memory sums itself",
                             forbid=[Rule("plmkit's `distributed.zero_memory`", [_dist.zero_memory])])
_ZERO_KEYS = ("params", "grads", "optimizer")
_LLAMA2_7B = 6_738_415_616                                  # LlamaConfig().num_parameters()


@check_zero_memory.cases
def _zero_cases(g):
    cases = [(_LLAMA2_7B, 8, stage, f"Llama-2-7B ({_LLAMA2_7B:,} parameters) on 8 GPUs") for stage in range(4)]
    cases.append((124_439_808, 1, 3, "GPT-2 small on 1 GPU (nothing to shard with)"))
    n = g.int(10**6, 10**8) * 6 + 1                          # 2n / 6 is never whole: no integer division
    for stage in (1, 2, 3):
        cases.append((n, 6, stage, f"{n:,} parameters on 6 GPUs"))
    return cases


@check_zero_memory.probe
def _zero_probe(p, zero_memory, cases):
    return [p.call(zero_memory, n, d, stage) for n, d, stage, _ in cases]


def _zero_hint(got: dict, want: dict, n: int, d: int, stage: int) -> str:
    if any(abs(got[k] - want[k]) < 1 and got[k] != want[k] for k in _ZERO_KEYS):
        return " (divide with /, not //: the byte counts need not be whole numbers of devices)"
    for key, starts, size in (("optimizer", 1, 12), ("grads", 2, 2), ("params", 3, 2)):
        full, shard = n * size, n * size / d
        if d > 1 and stage < starts and math.isclose(got[key], shard):
            return f" ({key} are sharded only from stage {starts} on)"
        if d > 1 and stage >= starts and math.isclose(got[key], full):
            return f" (stage {stage} shards the {key} over the {d} devices)"
    if math.isclose(got["optimizer"] * 12, want["optimizer"] * 8):
        return " (12 bytes of optimizer state per parameter: the fp32 master copy, Adam's m and v, 4 bytes each)"
    return ""


@check_zero_memory.judge
def _zero_judge(r, cases, results):
    for (n, d, stage, name), rec in zip(cases, results):
        what = f"zero_memory({n}, {d}, stage={stage}) for {name}"
        got = r.value(rec, what, dict)
        if got is None:
            continue
        want = _dist.zero_memory(n, d, stage)
        if not r.check(sorted(got) == sorted(_ZERO_KEYS) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in got.values()),
                f"{what}: expected a dict with the numbers {list(_ZERO_KEYS)}, got {got!r:.120}"):
            continue
        ok = all(math.isclose(got[k], want[k], rel_tol=1e-9) for k in _ZERO_KEYS)
        r.check(ok, f"{what}: expected bytes per device " + ", ".join(f"{k} {want[k]:,.1f}" for k in _ZERO_KEYS)
                + ", got " + ", ".join(f"{k} {got[k]:,.1f}" for k in _ZERO_KEYS)
                + ("" if ok else _zero_hint(got, want, n, d, stage)))
