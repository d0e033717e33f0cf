"""Checkers for chapter 6, from GPT to LLaMA, and scaling laws.

    6.1 rms_norm              x / sqrt(mean(x^2) + eps) * weight, statistics in float32, dtype kept
    6.2 swiglu                down(silu(x W_gate^T) * (x W_up^T)), weights in nn.Linear layout
    6.3 apply_rope            rotate-half RoPE of (B, H, T, D) by position_ids, angles pos * theta^(-2i/D)
    6.4 grouped_attention     causal attention with H_kv key/value heads each serving H / H_kv query heads
    6.5 llama_num_parameters  the parameter count of a Hugging Face-style Llama config dict
    6.6 kv_cache_bytes        2 x layers x H_kv x head_dim x tokens x batch x bytes per value
    6.7 compute_optimal       (N_opt, D_opt) minimising E + A/N^a + B/D^b subject to 6 N D = C

Each names the usual slip when it sees it: a mean subtracted (that is LayerNorm),
the activation on the wrong branch, the interleaved layout or frequencies
theta^(-i/D), key/value heads tiled instead of repeated in place, GQA ignored
in a count, the 2 of "keys and values" forgotten, the exponents swapped.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import scaling as _scaling
from ..models import llama as _llama
from ..nn import attention as _attn
from ..nn import ffn as _ffn
from ..nn import norms as _norms
from ..nn import rotary as _rotary
from ._core import Exercise, reference_grads
from ._guard import Rule, aten_ops
from ._rules import SDPA, TORCH_MHA

TORCH_RMS = Rule("`F.rms_norm` / `nn.RMSNorm`",
                 [F.rms_norm, torch.nn.RMSNorm, *aten_ops("rms_norm", "_fused_rms_norm")])
PLMKIT_RMS = Rule("plmkit's `rms_norm` / `RMSNorm`", [_norms.rms_norm, _norms.RMSNorm])
PLMKIT_FFN = Rule("plmkit's `GatedFeedForward`", [_ffn.GatedFeedForward])
PLMKIT_ROPE = Rule("plmkit's rotary functions (`apply_rotary`, `RotaryEmbedding`, `rotate_half`)",
                   [_rotary.apply_rotary, _rotary.RotaryEmbedding, _rotary.rotate_half, _rotary.rotary_inv_freq,
                    _rotary.apply_rotary_interleaved])
PLMKIT_ATTENTION = Rule("plmkit's attention (`scaled_dot_product_attention`, `repeat_kv`, `MultiHeadAttention`)",
                        [_attn.scaled_dot_product_attention, _attn.repeat_kv, _attn.MultiHeadAttention])
PLMKIT_COUNT = Rule("plmkit's `LlamaConfig` counts", [_llama.LlamaConfig.num_parameters,
                                                      _llama.LlamaConfig.kv_cache_bytes_per_token,
                                                      _llama.LlamaConfig])
PLMKIT_SCALING = Rule("plmkit's `scaling.compute_optimal`", [_scaling.compute_optimal,
                                                            _scaling.ScalingLaw.compute_optimal])


def _shape(x) -> str:
    return f"{tuple(x.shape)}"


# ----------------------------------------------------------------------------- 6.1

check_rms_norm = Exercise("6.1", "rms_norm", goal="computes RMSNorm itself from the mean of squares",
                          forbid=[TORCH_RMS, PLMKIT_RMS])


@check_rms_norm.cases
def _rms_cases(g):
    cases = []
    for shape in ((g.int(4, 12),), (g.int(2, 5), g.int(4, 12)), (2, g.int(2, 5), g.int(4, 12))):
        C = shape[-1]
        x, w = g.randn(*shape) * 3 + 1, g.randn(C)
        cases.append({"args": [x, w], "kwargs": {}, "what": f"rms_norm(x {shape}, weight ({C},))"})
    x, w = g.randn(3, 8) + 2, g.randn(8)
    cases.append({"args": [x, w], "kwargs": {"eps": 0.5},
                  "what": "rms_norm(x (3, 8), weight, eps=0.5): eps goes inside the square root"})
    x = (g.randn(2, 16) * 200).to(torch.float16)
    cases.append({"args": [x, torch.ones(16, dtype=torch.float16)], "kwargs": {},
                  "what": "rms_norm(x (2, 16) in float16 with values up to ~600, weight ones): mean of squares "
                          "in float32, result in float16"})
    x, w = g.randn(2, 3, 6, dtype=torch.float64), g.randn(6, dtype=torch.float64)
    cases.append({"args": [x, w], "kwargs": {}, "grad": [0, 1], "cotangent": g.randn(2, 3, 6, dtype=torch.float64),
                  "what": "rms_norm(x (2, 3, 6) in float64, weight), with the gradients"})
    return cases


@check_rms_norm.probe
def _rms_probe(p, fn, cases):
    return [p.call(fn, *c["args"], grad=c.get("grad", ()), cotangent=c.get("cotangent"), **c["kwargs"])
            for c in cases]


def _rms_ref(x, w, eps=1e-6):
    return _norms.rms_norm(x, w, eps)


@check_rms_norm.judge
def _rms_judge(r, cases, results):
    for c, rec in zip(cases, results):
        x, w = c["args"]
        eps = c["kwargs"].get("eps", 1e-6)
        want = _rms_ref(x, w, eps)
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(got, x=x, w=w, eps=eps):
            x64, got = x.double(), got.double()
            ln = (x64 - x64.mean(-1, keepdim=True)) / torch.sqrt(x64.var(-1, unbiased=False, keepdim=True) + eps)
            if torch.allclose(got, ln * w.double(), atol=1e-3):
                return "that subtracts the mean: it is LayerNorm; RMSNorm only divides by the root mean square"
            if torch.allclose(got, x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + eps), atol=1e-3):
                return "the learned weight is not applied"
            if torch.allclose(got, x64 / (torch.sqrt(x64.pow(2).mean(-1, keepdim=True)) + eps) * w.double(),
                              atol=1e-5):
                return "eps belongs inside the square root"
            return ""
        tol = 2e-3 if x.dtype == torch.float16 else (1e-10 if x.dtype == torch.float64 else 1e-5)
        r.close(got, want, c["what"], atol=tol, rtol=tol, hint=hint)
        if c.get("grad"):
            r.grads_close(rec, reference_grads(_rms_ref, c), c["what"], atol=1e-8, rtol=1e-6)
    r.check(not any(rec["mutated"] for rec in results), "rms_norm changed x or weight in place")


# ----------------------------------------------------------------------------- 6.2

check_swiglu = Exercise("6.2", "swiglu", goal="computes the gated feed-forward itself",
                        forbid=[PLMKIT_FFN])


@check_swiglu.cases
def _swiglu_cases(g):
    cases = []
    for lead in ((g.int(2, 5),), (2, g.int(2, 5))):
        C, H = g.int(4, 10), g.int(6, 20)
        x = g.randn(*lead, C)
        Wg, Wu, Wd = g.randn(H, C) / math.sqrt(C), g.randn(H, C) / math.sqrt(C), g.randn(C, H) / math.sqrt(H)
        cases.append({"args": [x, Wg, Wu, Wd],
                      "what": f"swiglu(x {_shape(x)}, w_gate {(H, C)}, w_up {(H, C)}, w_down {(C, H)})"})
    C, H = 5, 7
    x = g.randn(3, C, dtype=torch.float64)
    ws = [g.randn(H, C, dtype=torch.float64), g.randn(H, C, dtype=torch.float64), g.randn(C, H, dtype=torch.float64)]
    cases.append({"args": [x, *ws], "grad": [0, 1, 2, 3], "cotangent": g.randn(3, C, dtype=torch.float64),
                  "what": "swiglu(x (3, 5) in float64, ...), with the gradients"})
    return cases


@check_swiglu.probe
def _swiglu_probe(p, fn, cases):
    return [p.call(fn, *c["args"], grad=c.get("grad", ()), cotangent=c.get("cotangent")) for c in cases]


def _swiglu_ref(x, Wg, Wu, Wd):
    return (F.silu(x @ Wg.T) * (x @ Wu.T)) @ Wd.T


@check_swiglu.judge
def _swiglu_judge(r, cases, results):
    for c, rec in zip(cases, results):
        x, Wg, Wu, Wd = c["args"]
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(got, x=x, Wg=Wg, Wu=Wu, Wd=Wd):
            got = got.double()
            x, Wg, Wu, Wd = x.double(), Wg.double(), Wu.double(), Wd.double()
            guesses = {"the SiLU belongs on the gate branch (w_gate), not on w_up":
                           (F.silu(x @ Wu.T) * (x @ Wg.T)) @ Wd.T,
                       "that is GLU with a sigmoid; SwiGLU uses silu(z) = z * sigmoid(z)":
                           (torch.sigmoid(x @ Wg.T) * (x @ Wu.T)) @ Wd.T,
                       "the up projection must multiply the gate": F.silu(x @ Wg.T) @ Wd.T}
            return next((k for k, v in guesses.items() if got.shape == v.shape and torch.allclose(got, v, atol=1e-4)),
                        "")
        r.close(got, _swiglu_ref(x, Wg, Wu, Wd), c["what"], atol=1e-9 if x.dtype == torch.float64 else 1e-5,
                hint=hint)
        if c.get("grad"):
            r.grads_close(rec, reference_grads(_swiglu_ref, c), c["what"], atol=1e-8, rtol=1e-6)
    r.check(not any(rec["mutated"] for rec in results), "swiglu changed its inputs in place")


# ----------------------------------------------------------------------------- 6.3

check_apply_rope = Exercise("6.3", "apply_rope", goal="rotates the query/key pairs itself",
                            forbid=[PLMKIT_ROPE])


@check_apply_rope.cases
def _rope_cases(g):
    cases = []
    B, H, T, D = 2, g.int(1, 4), g.int(3, 8), 2 * g.int(2, 6)
    x = g.randn(B, H, T, D)
    cases.append({"args": [x, torch.arange(T).expand(B, T).clone()], "kwargs": {},
                  "what": f"apply_rope(x {(B, H, T, D)}, position_ids = 0..{T - 1} for each row)"})
    pos = g.randint(0, 500, (B, T))
    cases.append({"args": [x, pos], "kwargs": {},
                  "what": f"apply_rope(x {(B, H, T, D)}, random position_ids in [0, 500) differing per row)"})
    cases.append({"args": [x, pos], "kwargs": {"theta": 500000.0},
                  "what": "apply_rope(x, position_ids, theta=500000.0) (LLaMA 3's base)"})
    one = torch.zeros(1, 1, 1, 4)
    one[..., 0] = 1.0
    cases.append({"args": [one, torch.tensor([[1]])], "kwargs": {"theta": 100.0},
                  "what": "apply_rope(x = (1, 0, 0, 0), position 1, theta=100): pair (x0, x2) turns by 1 rad "
                          "into (cos 1, 0, sin 1, 0)"})
    x = g.randn(1, 2, 4, 6, dtype=torch.float64)
    cases.append({"args": [x, torch.tensor([[3, 4, 5, 6]])], "kwargs": {}, "grad": [0],
                  "cotangent": g.randn(1, 2, 4, 6, dtype=torch.float64),
                  "what": "apply_rope(x (1, 2, 4, 6) in float64, positions 3..6), with the gradient"})
    return cases


@check_apply_rope.probe
def _rope_probe(p, fn, cases):
    return [p.call(fn, *c["args"], grad=c.get("grad", ()), cotangent=c.get("cotangent"), **c["kwargs"])
            for c in cases]


def _rope_ref(x, pos, theta=10000.0):
    cos, sin = _rotary.RotaryEmbedding(x.shape[-1], theta=theta)(pos)
    out, _ = _rotary.apply_rotary(x, x, cos.to(x.dtype), sin.to(x.dtype))
    return out


def _rope_interleaved(x, pos, theta=10000.0):
    cos, sin = _rotary.RotaryEmbedding(x.shape[-1], theta=theta)(pos)
    out, _ = _rotary.apply_rotary_interleaved(x, x, cos.to(x.dtype), sin.to(x.dtype))
    return out


@check_apply_rope.judge
def _rope_judge(r, cases, results):
    for c, rec in zip(cases, results):
        x, pos = c["args"]
        theta = c["kwargs"].get("theta", 10000.0)
        want = _rope_ref(x, pos, theta)
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(got, x=x, pos=pos, theta=theta):
            got = got.double()
            guesses = {"that pairs neighbours (x0, x1), (x2, x3): the interleaved layout; pair x_i with x_(i+D/2)":
                           _rope_interleaved(x, pos, theta),
                       "the rotation goes the wrong way: (a, b) -> (a cos - b sin, a sin + b cos)":
                           _rope_ref(x, -pos, theta),
                       "frequencies are theta ** (-2i / D) for i = 0 .. D/2 - 1":
                           _rope_ref(x, pos, theta ** 0.5) if x.shape[-1] else None}
            if not torch.allclose(pos, torch.arange(pos.shape[-1]).expand_as(pos)):
                guesses["use position_ids, not 0..T-1"] = _rope_ref(x, torch.arange(pos.shape[-1])[None], theta)
            return next((k for k, v in guesses.items()
                         if v is not None and v.shape == got.shape and torch.allclose(got, v.double(), atol=1e-4)), "")
        r.close(got, want, c["what"], atol=1e-9 if x.dtype == torch.float64 else 1e-4, hint=hint)
        if c.get("grad"):
            r.grads_close(rec, reference_grads(lambda x, p=pos: _rope_ref(x, p), c), c["what"], atol=1e-8)
    r.check(not any(rec["mutated"] for rec in results), "apply_rope changed x or position_ids in place")


# ----------------------------------------------------------------------------- 6.4

check_grouped_attention = Exercise(
    "6.4", "grouped_attention", goal="computes grouped-query attention itself from matrix products and softmax",
    forbid=[SDPA, TORCH_MHA, PLMKIT_ATTENTION])


@check_grouped_attention.cases
def _gqa_cases(g):
    cases = []
    for H, H_kv, what in ((4, 2, "GQA: 4 query heads, 2 key/value heads"), (6, 1, "MQA: 6 query heads, 1 key/value head"),
                          (3, 3, "MHA: 3 and 3"), (8, 4, "GQA: 8 query heads, 4 key/value heads")):
        B, T, D = 2, g.int(3, 7), 8
        cases.append({"args": [g.randn(B, H, T, D), g.randn(B, H_kv, T, D), g.randn(B, H_kv, T, D)],
                      "what": f"grouped_attention, {what}, T={T}, D={D}"})
    q, k, v = (g.randn(1, 4, 5, 4, dtype=torch.float64), g.randn(1, 2, 5, 4, dtype=torch.float64),
               g.randn(1, 2, 5, 4, dtype=torch.float64))
    cases.append({"args": [q, k, v], "grad": [0, 1, 2], "cotangent": g.randn(1, 4, 5, 4, dtype=torch.float64),
                  "what": "grouped_attention(q (1, 4, 5, 4), k, v (1, 2, 5, 4)) in float64, with the gradients"})
    return cases


@check_grouped_attention.probe
def _gqa_probe(p, fn, cases):
    return [p.call(fn, *c["args"], grad=c.get("grad", ()), cotangent=c.get("cotangent")) for c in cases]


def _gqa_ref(q, k, v, tiled=False, causal=True):
    n = q.shape[1] // k.shape[1]
    if tiled:
        k, v = k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1)
    else:
        k, v = k.repeat_interleave(n, dim=1), v.repeat_interleave(n, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[2]
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


@check_grouped_attention.judge
def _gqa_judge(r, cases, results):
    for c, rec in zip(cases, results):
        q, k, v = c["args"]
        got = r.value(rec, c["what"])
        if got is None:
            continue

        def hint(got, q=q, k=k, v=v):
            got = got.double()
            q, k, v = q.double(), k.double(), v.double()
            guesses = {"key/value head j serves query heads j*n .. (j+1)*n - 1 (consecutive): repeat each head in "
                       "place (repeat_interleave), do not tile the whole stack (repeat)": _gqa_ref(q, k, v, tiled=True),
                       "the attention must be causal: query i sees keys 0..i": _gqa_ref(q, k, v, causal=False)}
            return next((h for h, w in guesses.items() if w.shape == got.shape and torch.allclose(got, w, atol=1e-4)),
                        "")
        r.close(got, _gqa_ref(q, k, v), c["what"], atol=1e-9 if q.dtype == torch.float64 else 1e-5, hint=hint)
        if c.get("grad"):
            r.grads_close(rec, reference_grads(_gqa_ref, c), c["what"], atol=1e-8, rtol=1e-6)
    r.check(not any(rec["mutated"] for rec in results), "grouped_attention changed q, k or v in place")


# ----------------------------------------------------------------------------- 6.5

check_llama_num_parameters = Exercise("6.5", "llama_num_parameters", goal="counts the parameters itself",
                                      forbid=[PLMKIT_COUNT])

REAL_CONFIGS = {
    "LLaMA-7B": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    "LLaMA-2-70B": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
    "LLaMA-3-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}


def _tiny_config(g, tied):
    H, H_kv = g.choice([4, 8]), g.choice([1, 2, 4])
    return dict(vocab_size=g.int(50, 500), hidden_size=8 * H, intermediate_size=g.int(60, 200),
                num_hidden_layers=g.int(1, 5), num_attention_heads=H, num_key_value_heads=H_kv,
                tie_word_embeddings=tied)


@check_llama_num_parameters.cases
def _count_cases(g):
    cases = [(name, cfg) for name, cfg in REAL_CONFIGS.items()]
    cases.append(("a small untied config", _tiny_config(g, False)))
    cases.append(("a small config with tie_word_embeddings=True (the head is the embedding: count it once)",
                  _tiny_config(g, True)))
    return cases


@check_llama_num_parameters.probe
def _count_probe(p, fn, cases):
    return [p.call(fn, dict(cfg)) for _, cfg in cases]


def _llama_config(cfg):
    return _llama.LlamaConfig(**cfg)


@check_llama_num_parameters.judge
def _count_judge(r, cases, results):
    for (name, cfg), rec in zip(cases, results):
        what = f"llama_num_parameters({name}: {cfg})"
        got = r.count(rec, what)
        if got is None:
            continue
        want = _llama_config(cfg).num_parameters()
        hint = ""
        C, L = cfg["hidden_size"], cfg["num_hidden_layers"]
        kv = C // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
        if got - want == L * 2 * C * (C - kv) and kv != C:
            hint = " (k_proj and v_proj have num_key_value_heads * head_dim rows, not hidden_size: GQA)"
        elif got - want == -(2 * L + 1) * C:
            hint = " (the RMSNorm weights count too: two per layer and the final one)"
        elif got - want == cfg["vocab_size"] * C and cfg["tie_word_embeddings"]:
            hint = " (a tied head is the embedding matrix: count it once)"
        elif want - got == cfg["vocab_size"] * C:
            hint = " (the untied LM head is a second vocab_size x hidden_size matrix)"
        r.check(got == want, f"{what}: expected {want:,}, got {got:,}{hint}")


# ----------------------------------------------------------------------------- 6.6

check_kv_cache_bytes = Exercise("6.6", "kv_cache_bytes", goal="counts the cache's bytes itself",
                                forbid=[PLMKIT_COUNT])


@check_kv_cache_bytes.cases
def _kv_cases(g):
    cases = [(name, cfg, 4096, 1, 2) for name, cfg in REAL_CONFIGS.items()]
    cases.append(("LLaMA-2-70B, batch 8, 1000 tokens, float32", REAL_CONFIGS["LLaMA-2-70B"], 1000, 8, 4))
    cases.append(("a small config", _tiny_config(g, False), g.int(10, 100), g.int(1, 4), g.choice([1, 2, 4])))
    return cases


@check_kv_cache_bytes.probe
def _kv_probe(p, fn, cases):
    return [p.call(fn, dict(cfg), seq_len, batch_size=b, bytes_per_value=nb) for _, cfg, seq_len, b, nb in cases]


@check_kv_cache_bytes.judge
def _kv_judge(r, cases, results):
    for (name, cfg, seq_len, b, nb), rec in zip(cases, results):
        what = f"kv_cache_bytes({name}, seq_len={seq_len}, batch_size={b}, bytes_per_value={nb})"
        got = r.count(rec, what)
        if got is None:
            continue
        want = _llama_config(cfg).kv_cache_bytes_per_token(nb) * seq_len * b
        hint = ""
        if got * 2 == want:
            hint = " (both keys AND values are cached: a factor 2)"
        elif cfg["num_key_value_heads"] != cfg["num_attention_heads"] and \
                got * cfg["num_key_value_heads"] == want * cfg["num_attention_heads"]:
            hint = " (only num_key_value_heads heads are cached, not num_attention_heads: that is GQA's saving)"
        r.check(got == want, f"{what}: expected {want:,}, got {got:,}{hint}")


# ----------------------------------------------------------------------------- 6.7

check_compute_optimal = Exercise("6.7", "compute_optimal", goal="derives the allocation itself",
                                 forbid=[PLMKIT_SCALING])

_LAWS = {"Chinchilla's printed fit": dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
         "a law with alpha > beta": dict(E=2.0, A=120.0, B=900.0, alpha=0.45, beta=0.30)}


@check_compute_optimal.cases
def _opt_cases(g):
    cases = [("Gopher's budget 5.76e23 FLOPs", 5.76e23, _LAWS["Chinchilla's printed fit"])]
    C = float(10 ** (17 + 5 * g.rand(1).item()))
    cases.append((f"C = {C:.3g} FLOPs", C, _LAWS["Chinchilla's printed fit"]))
    cases.append((f"C = {C * 10:.3g} FLOPs, {list(_LAWS)[1]}", C * 10, _LAWS["a law with alpha > beta"]))
    return cases


@check_compute_optimal.probe
def _opt_probe(p, fn, cases):
    return [p.call(fn, C, **law) for _, C, law in cases]


@check_compute_optimal.judge
def _opt_judge(r, cases, results):
    for (name, C, law), rec in zip(cases, results):
        what = f"compute_optimal({name}, {law})"
        got = r.value(rec, what, (tuple, list))
        if got is None:
            continue
        ok_shape = r.check(len(got) == 2 and all(isinstance(v, (int, float)) for v in got),
                           f"{what}: expected a pair of floats (N_opt, D_opt), got {got!r:.100}")
        if not ok_shape:
            continue
        N, D = (float(v) for v in got)
        n_want, d_want = (float(v) for v in _scaling.compute_optimal(C, _scaling.ScalingLaw(**law)))
        hint = ""
        if N > 0 and D > 0 and math.isclose(N, d_want, rel_tol=1e-3) and math.isclose(D, n_want, rel_tol=1e-3):
            hint = " (N and D are swapped: N_opt grows as C ** (beta / (alpha + beta)))"
        elif N > 0 and D > 0 and not math.isclose(N * D * 6, C, rel_tol=1e-3):
            hint = f" (6 N D must equal the budget C; yours gives {6 * N * D:.3g})"
        r.check(math.isclose(N, n_want, rel_tol=1e-4) and math.isclose(D, d_want, rel_tol=1e-4),
                f"{what}: expected N_opt = {n_want:.4g}, D_opt = {d_want:.4g}, got {N:.4g}, {D:.4g}{hint}")
