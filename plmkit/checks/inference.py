"""Checkers for chapter 9, the KV cache and fast inference.

    9.1 attend_with_cache     append the new keys/values to the cache, attend the new queries over all of
                              them (causal among the new ones); equal to recomputing everything
    9.2 kv_cache_bytes        2 x layers x KV heads x head_dim x bytes x batch x length (MHA, GQA, MQA, int8)
    9.3 pass_cost             FLOPs, bytes and arithmetic intensity of prefill and of one decode step
    9.4 static_cache_write    new keys written IN PLACE into a pre-allocated buffer at a position tensor
    9.5 speculative_accept    accept with probability min(1, p/q); the residual norm(max(0, p - q))
    9.6 quantize_int8         per-output-channel absmax scale, round to nearest: error <= absmax / 254
    9.7 block_table_lookup    position -> (physical block, offset) through a paged cache's block table

Each judge names the classic bug when it recognises one: attending only to the
old keys, a missing causal mask among several new tokens, the factor 2 for K
and V forgotten, query heads counted instead of key/value heads, attention or
the cache left out of a pass's cost, a write one slot off or into a copy, the
ratio q/p, the residual p - q left unnormalised or taken the wrong way round,
one scale for the whole matrix, truncation instead of rounding, the block
table skipped.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..inference import memory as _memory
from ..inference import int8 as _int8
from ..inference import paged as _paged
from ..inference import speculative as _spec
from ..models import llama as _llama
from ..nn import attention as _attn
from ..nn import cache as _cache
from ._core import Exercise
from ._guard import Rule, aten_ops

SDPA = Rule("`F.scaled_dot_product_attention`",
            [F.scaled_dot_product_attention, *aten_ops(
                "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
                "_fused_sdp_choice", "_native_multi_head_attention")])
PLMKIT_ATTENTION = Rule("plmkit's `scaled_dot_product_attention` / `MultiHeadAttention`",
                        [_attn.scaled_dot_product_attention, _attn.MultiHeadAttention])
PLMKIT_CACHES = Rule("plmkit's caches (`KVCache.update`, `StaticKVCache.update`)",
                     [_cache.KVCache.update, _cache.StaticKVCache.update])


def _causal_attention(q, k, v, past):
    """Reference: q (B, H, T, D) at positions past..past+T-1 over k, v (B, H, past+T, D), causal, 1/sqrt(D)."""
    T, K = q.shape[2], k.shape[2]
    keep = torch.arange(K)[None, :] <= (past + torch.arange(T))[:, None]                  # (T, K)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v


# ----------------------------------------------------------------------------- 9.1

check_attend_with_cache = Exercise(
    "9.1", "attend_with_cache", goal="appends to the cache and attends itself (matrix products, softmax)",
    forbid=[SDPA, PLMKIT_ATTENTION, PLMKIT_CACHES])


@check_attend_with_cache.cases
def _cache_cases(g):
    cases = []
    for B, H, past, T, D in ((1, 2, 5, 1, 8), (2, 3, 7, 1, 4), (2, 2, 4, 3, 8), (1, 4, 0, 6, 4),
                             (1, 2, g.int(1, 9), 1, 8)):
        cases.append({"q": g.randn(B, H, T, D), "k_new": g.randn(B, H, T, D), "v_new": g.randn(B, H, T, D),
                      "k_cache": g.randn(B, H, past, D), "v_cache": g.randn(B, H, past, D),
                      "what": f"attend_with_cache with {past} cached and {T} new position(s), B={B}, H={H}, D={D}"})
    return cases


@check_attend_with_cache.probe
def _cache_probe(p, attend_with_cache, cases):
    return [p.call(attend_with_cache, c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"]) for c in cases]


def _cache_hint(c):
    q, past = c["q"], c["k_cache"].shape[2]
    k_all = torch.cat([c["k_cache"], c["k_new"]], 2)
    v_all = torch.cat([c["v_cache"], c["v_new"]], 2)
    D = q.shape[-1]
    candidates = []
    if past:
        old = torch.softmax(q @ c["k_cache"].transpose(-2, -1) / math.sqrt(D), -1) @ c["v_cache"]
        candidates.append(("the new queries attend only to the cached keys: append the new keys/values first", old))
    candidates.append(("the scores are not divided by sqrt(D)",
                       _causal_attention(q * math.sqrt(D), k_all, v_all, past)))
    if q.shape[2] > 1:
        full = torch.softmax(q @ k_all.transpose(-2, -1) / math.sqrt(D), -1) @ v_all
        candidates.append(("several new tokens see each other's future: new token i may read keys up to "
                           "position past + i only (a causal mask offset by the cache length)", full))

    def hint(got):
        for name, cand in candidates:
            if got.shape == cand.shape and torch.allclose(got.double(), cand.double(), atol=1e-4):
                return name
        return ""
    return hint


@check_attend_with_cache.judge
def _cache_judge(r, cases, results):
    for c, rec in zip(cases, results):
        past = c["k_cache"].shape[2]
        k_all = torch.cat([c["k_cache"], c["k_new"]], 2)
        v_all = torch.cat([c["v_cache"], c["v_new"]], 2)
        want = _causal_attention(c["q"], k_all, v_all, past)
        got = r.value(rec, c["what"], tuple)
        if got is None:
            continue
        if not r.check(len(got) == 3, f"{c['what']}: return (out, k_all, v_all), got {len(got)} items"):
            continue
        r.close(got[0], want, c["what"] + ": the attention output", hint=_cache_hint(c))
        r.close(got[1], k_all, c["what"] + ": the returned keys (old ones first, the new ones appended on dim 2)")
        r.close(got[2], v_all, c["what"] + ": the returned values")
        r.unchanged(rec, c["what"])


# ----------------------------------------------------------------------------- 9.2

check_kv_cache_bytes = Exercise(
    "9.2", "kv_cache_bytes", goal="computes the cache size itself",
    forbid=[Rule("plmkit's cache-size helpers", [_memory.kv_cache_bytes, _memory.kv_bytes_per_token,
                                                 _memory.memory_report,
                                                 _llama.LlamaConfig.kv_cache_bytes_per_token])])

_KV_FIXED = [  # (what, n_layers, n_kv_heads, head_dim, seq_len, batch, bytes_per_value)
    ("LLaMA-2-7B (MHA: 32 KV heads), fp16, 4096 tokens", 32, 32, 128, 4096, 1, 2),
    ("LLaMA-2-70B (GQA: 8 KV heads of 64), fp16, 4096 tokens", 80, 8, 128, 4096, 1, 2),
    ("a 24-layer MQA model (1 KV head), fp16, batch 8, 2048 tokens", 24, 1, 128, 2048, 8, 2),
    ("LLaMA-3-8B (8 KV heads), an int8 cache, batch 4, 8192 tokens", 32, 8, 128, 8192, 4, 1),
    ("a small model in fp32, batch 3, 100 tokens", 6, 4, 64, 100, 3, 4),
]


@check_kv_cache_bytes.cases
def _kv_cases(g):
    return _KV_FIXED + [("a random configuration", g.int(1, 40), g.choice([1, 2, 4, 8]), g.choice([64, 128]),
                         g.int(1, 5000), g.int(1, 9), g.choice([1, 2, 4]))]


@check_kv_cache_bytes.probe
def _kv_probe(p, kv_cache_bytes, cases):
    return [p.call(kv_cache_bytes, L, H, D, T, batch=B, bytes_per_value=b) for _, L, H, D, T, B, b in cases]


@check_kv_cache_bytes.judge
def _kv_judge(r, cases, results):
    for (what, L, H, D, T, B, b), rec in zip(cases, results):
        want = 2 * L * H * D * T * B * b
        call = f"kv_cache_bytes({L}, {H}, {D}, {T}, batch={B}, bytes_per_value={b}) for {what}"
        got = r.value(rec, call, (int, float))
        if got is None:
            continue
        hints = {want / 2: "half the answer: keys AND values are cached (the factor 2)",
                 want / B: "the batch size is missing", want / b: "the bytes per value are missing",
                 want * 8 / b: "bits, not bytes"}
        r.check(got == want, f"{call}: expected {want}, got {got}"
                + (f" ({hints[got]})" if got in hints and got != want else ""))


# ----------------------------------------------------------------------------- 9.3

check_pass_cost = Exercise(
    "9.3", "pass_cost", goal="counts the FLOPs and bytes itself",
    forbid=[Rule("plmkit's `pass_cost` / `forward_cost`", [_memory.pass_cost, _memory.forward_cost])])

_COST_FIXED = [  # (what, n_params, n_layers, n_heads, head_dim, n_kv_heads, new, past, bytes)
    ("LLaMA-2-7B-like prefill of 512 tokens", 6_607_343_616, 32, 32, 128, 32, 512, 0, 2),
    ("LLaMA-2-7B-like decode step after 512 tokens", 6_607_343_616, 32, 32, 128, 32, 1, 512, 2),
    ("a GQA decode step after 4000 tokens", 7_504_924_672, 32, 32, 128, 8, 1, 4000, 2),
    ("a small model, 3 new tokens after 10", 1000, 2, 4, 8, 2, 3, 10, 4),
]


@check_pass_cost.cases
def _cost_cases(g):
    return _COST_FIXED + [("a random pass", g.int(10_000, 10_000_000), g.int(1, 30), 8, 64, g.choice([1, 2, 8]),
                           g.int(1, 300), g.int(0, 3000), g.choice([1, 2, 4]))]


@check_pass_cost.probe
def _cost_probe(p, pass_cost, cases):
    return [p.call(pass_cost, P, L, H, D, Hkv, new, past, bytes_per_value=b)
            for _, P, L, H, D, Hkv, new, past, b in cases]


def _cost_hint(P, L, H, D, Hkv, new, past, b):
    pairs = new * past + new * (new + 1) // 2
    kv = 2 * L * Hkv * D * b * (past + new)
    return {"flops": {2 * P * new: "the attention FLOPs (4 x layers x heads x head_dim per query-key pair) are missing",
                      P * new + 4 * L * H * D * pairs: "count 2 FLOPs per parameter per token (multiply and add)",
                      2 * P * new + 4 * L * H * D * new * (past + new): "the new tokens attend causally: new token "
                                                                        "i sees past + i + 1 keys, not all of them"},
            "bytes": {P * b: "the KV cache's bytes (read past, write new) are missing",
                      P * b + kv / 2: "keys AND values: the cache holds 2 vectors per head",
                      P * b + 2 * L * H * D * b * (past + new): "the cache holds n_kv_heads heads, not n_heads"}}


@check_pass_cost.judge
def _cost_judge(r, cases, results):
    for (what, P, L, H, D, Hkv, new, past, b), rec in zip(cases, results):
        flops, nbytes, intensity = _memory.pass_cost(P, L, H, D, Hkv, new, past, b)
        call = f"pass_cost({P}, {L}, {H}, {D}, {Hkv}, {new}, {past}, bytes_per_value={b}) for {what}"
        got = r.value(rec, call, tuple)
        if got is None:
            continue
        if not r.check(len(got) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in got),
                       f"{call}: return a tuple (flops, bytes, intensity) of numbers, got {got!r}"[:300]):
            continue
        hints = _cost_hint(P, L, H, D, Hkv, new, past, b)
        for name, value, want in (("flops", got[0], flops), ("bytes", got[1], nbytes)):
            ok = math.isclose(value, want, rel_tol=1e-9)
            hint = next((h for v, h in hints[name].items() if math.isclose(value, v, rel_tol=1e-9)), "")
            r.check(ok, f"{call}: {name} expected {want:.6g}, got {value:.6g}" + (f" ({hint})" if hint else ""))
        r.check(math.isclose(got[2], got[0] / got[1], rel_tol=1e-9) if got[1] else False,
                f"{call}: the intensity must be flops / bytes, got {got[2]!r}")


# ----------------------------------------------------------------------------- 9.4

check_static_cache_write = Exercise(
    "9.4", "static_cache_write", goal="writes into the buffer itself",
    forbid=[Rule("plmkit's `StaticKVCache.update`", [_cache.StaticKVCache.update])])


@check_static_cache_write.cases
def _write_cases(g):
    cases = []
    for B, H, L, D, pos in ((1, 2, 8, 4, [3]), (2, 3, 10, 4, [0, 1, 2, 3]), (2, 2, 6, 8, [5]),
                            (1, 1, 12, 4, [4, 5, 6]), (3, 2, 9, 4, [g.int(0, 9)])):
        T = len(pos)
        cases.append({"cache": g.randn(B, H, L, D), "new": g.randn(B, H, T, D), "position": torch.tensor(pos),
                      "what": f"static_cache_write into a (B, H, L, D) = ({B}, {H}, {L}, {D}) buffer at "
                              f"positions {pos}"})
    return cases


@check_static_cache_write.probe
def _write_probe(p, static_cache_write, cases):
    records = []
    for c in cases:
        rec = p.call(static_cache_write, c["cache"], c["new"], c["position"])
        records.append(rec)
    return records


@check_static_cache_write.judge
def _write_judge(r, cases, results):
    for c, rec in zip(cases, results):
        want = c["cache"].clone()
        want[:, :, c["position"]] = c["new"]
        got = r.value(rec, c["what"])
        if got is None:
            continue
        off = c["cache"].clone()
        shifted = (c["position"] + 1).clamp(max=c["cache"].shape[2] - 1)
        off[:, :, shifted] = c["new"]

        def hint(x, off=off):
            return "written one slot off: slot p holds position p" if torch.equal(x, off) else ""
        r.close(got, want, c["what"], hint=hint)
        mutated = rec.get("mutated") or []
        r.check("argument 1" in mutated, f"{c['what']}: the cache buffer passed in is unchanged; write IN PLACE "
                                         f"(index_copy_ or cache[:, :, position] = new) and return it, so that a "
                                         f"captured CUDA graph keeps reading the same memory")
        r.check("argument 2" not in mutated and "argument 3" not in mutated,
                f"{c['what']}: `new` and `position` must be left unchanged")


# ----------------------------------------------------------------------------- 9.5

check_speculative_accept = Exercise(
    "9.5", "speculative_accept", goal="writes the accept/reject rule itself",
    forbid=[Rule("plmkit's speculative decoding (`accept_draft`, `residual_distribution`)",
                 [_spec.accept_draft, _spec.residual_distribution, _spec.speculative_generate])])


@check_speculative_accept.cases
def _spec_cases(g):
    cases = []
    V = 6
    for _ in range(5):
        p = torch.softmax(g.randn(V, dtype=torch.float64) * 1.5, -1)
        q = torch.softmax(g.randn(V, dtype=torch.float64) * 1.5, -1)
        token = g.int(0, V)
        for u in (0.0, 0.999, float(g.rand(1, dtype=torch.float64)[0])):
            cases.append((p, q, token, u))
    # the token the target likes more than the draft is always accepted; one it likes less sometimes not
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64)
    cases += [(p, q, 0, 0.99), (p, q, 1, 0.49), (p, q, 1, 0.51), (p, q, 2, 0.999)]
    return cases


@check_speculative_accept.probe
def _spec_probe(p, speculative_accept, cases):
    return [p.call(speculative_accept, pp, q, token, u) for pp, q, token, u in cases]


@check_speculative_accept.judge
def _spec_judge(r, cases, results):
    for (p, q, token, u), rec in zip(cases, results):
        what = (f"speculative_accept(p, q, token={token}, u={u:.3g}) with p[token]={float(p[token]):.3f}, "
                f"q[token]={float(q[token]):.3f}")
        want_accept = u < min(1.0, float(p[token] / q[token]))
        want_res = _spec.residual_distribution(p, q)
        got = r.value(rec, what, tuple)
        if got is None:
            continue
        if not r.check(len(got) == 2, f"{what}: return (accepted, residual), got {len(got)} items"):
            continue
        accepted, residual = got
        hint = ""
        if bool(accepted) != want_accept and (u < min(1.0, float(q[token] / p[token]))) == bool(accepted):
            hint = " (the ratio is upside down: accept with probability min(1, p/q), target over draft)"
        r.check(type(accepted) is bool, f"{what}: `accepted` must be a Python bool, got {type(accepted).__name__}")
        r.check(bool(accepted) == want_accept, f"{what}: expected accepted={want_accept}, got {accepted}{hint}")

        def res_hint(x, p=p, q=q):
            if torch.allclose(x.double(), (p - q).clamp(min=0), atol=1e-6):
                return "normalise max(0, p - q) so that it sums to 1"
            if torch.allclose(x.double(), _spec.residual_distribution(q, p), atol=1e-6):
                return "the residual is max(0, p - q): what the TARGET wants more than the draft proposed"
            if torch.allclose(x.double(), p, atol=1e-6):
                return "resampling from p itself over-weights the tokens the draft already proposes"
            return ""
        r.close(residual, want_res, what + ": the residual distribution", hint=res_hint)
        r.unchanged(rec, what)


# ----------------------------------------------------------------------------- 9.6

check_quantize_int8 = Exercise(
    "9.6", "quantize_int8", goal="quantises the weight itself",
    forbid=[Rule("plmkit's int8 helpers", [_int8.quantize_int8, _int8.Int8Linear, _int8.quantize_model_int8_]),
            Rule("torch's quantisation (`torch.quantize_per_channel`, `torch.quantize_per_tensor`)",
                 [torch.quantize_per_channel, torch.quantize_per_tensor,
                  *aten_ops("quantize_per_channel", "quantize_per_tensor", "fake_quantize_per_channel_affine")])])


@check_quantize_int8.cases
def _int8_cases(g):
    cases = []
    for out, inp in ((4, 8), (16, 12), (3, 50)):
        w = g.randn(out, inp) * torch.logspace(-2, 1, out)[:, None]     # rows of very different sizes
        w[0, 0] = 7.5 * float(w[0].abs().max())                         # an outlier in row 0
        cases.append(w)
    return cases


@check_quantize_int8.probe
def _int8_probe(p, quantize_int8, cases):
    return [p.call(quantize_int8, w) for w in cases]


@check_quantize_int8.judge
def _int8_judge(r, cases, results):
    for w, rec in zip(cases, results):
        what = f"quantize_int8 of a {tuple(w.shape)} weight whose rows differ in size (and one outlier)"
        q_ref, s_ref = _int8.quantize_int8(w)
        got = r.value(rec, what, tuple)
        if got is None:
            continue
        if not r.check(len(got) == 2, f"{what}: return (q, scale), got {len(got)} items"):
            continue
        q, scale = got
        if not (r.check(isinstance(q, torch.Tensor) and q.dtype == torch.int8 and q.shape == w.shape,
                        f"{what}: q must be an int8 tensor of the weight's shape {tuple(w.shape)}, got "
                        f"{getattr(q, 'dtype', type(q).__name__)} {tuple(getattr(q, 'shape', ()))}")
                and r.check(isinstance(scale, torch.Tensor) and tuple(scale.shape) == (w.shape[0],),
                            f"{what}: scale must be a tensor of one scale per OUTPUT channel, shape "
                            f"({w.shape[0]},), got {tuple(getattr(scale, 'shape', ()))}"
                            + (" (one scale for the whole matrix is per-tensor quantisation)"
                               if isinstance(scale, torch.Tensor) and scale.numel() == 1 else "")
                            + (" (that is one per INPUT channel: reduce over dim 1)"
                               if isinstance(scale, torch.Tensor) and tuple(scale.shape) == (w.shape[1],) else ""))):
            continue
        r.close(scale.float(), s_ref, what + ": the scales (absmax of each row / 127)", dtype=False, atol=1e-7,
                rtol=1e-5)
        err = (q.double() * scale.double()[:, None] - w.double()).abs()
        bound = w.double().abs().amax(1, keepdim=True) / 254
        bad = err > bound * (1 + 1e-5) + 1e-9
        trunc = torch.equal(q, torch.trunc(w / s_ref[:, None]).to(torch.int8))
        r.check(not bool(bad.any()), f"{what}: dequantised weights must be within absmax/254 (half a step) of the "
                                     f"originals; {int(bad.sum())} are not"
                + (" (truncation: round to the nearest integer, torch.round)" if trunc else ""))
        r.unchanged(rec, what)


# ----------------------------------------------------------------------------- 9.7

check_block_table_lookup = Exercise(
    "9.7", "block_table_lookup", goal="looks the position up in the block table itself",
    forbid=[Rule("plmkit's `lookup_slot` / `PagedKVCache.slot`", [_paged.lookup_slot, _paged.PagedKVCache.slot])])


@check_block_table_lookup.cases
def _block_cases(g):
    table = [int(b) for b in g.randperm(40)[:6]]
    fixed = [([7, 2, 5], 9, 4), ([7, 2, 5], 0, 4), ([7, 2, 5], 4, 4), ([7, 2, 5], 11, 4), ([3, 0], 16, 16),
             ([3, 0], 31, 16)]
    return fixed + [(table, g.int(0, 6 * 8), 8), (table, 47, 8)]


@check_block_table_lookup.probe
def _block_probe(p, block_table_lookup, cases):
    return [p.call(block_table_lookup, list(t), pos, bs) for t, pos, bs in cases]


@check_block_table_lookup.judge
def _block_judge(r, cases, results):
    for (table, pos, bs), rec in zip(cases, results):
        what = f"block_table_lookup({table}, position={pos}, block_size={bs})"
        want = (table[pos // bs], pos % bs)
        got = r.value(rec, what, tuple)
        if got is None:
            continue
        hint = ""
        if got == (pos // bs, pos % bs) and want != got:
            hint = " (that is the LOGICAL block: look it up in the block table to find the physical one)"
        elif len(got) == 2 and got[1] == pos // bs:
            hint = " (offset and block index swapped: the offset is position % block_size)"
        if not r.equal(tuple(got), want, what) and hint:
            r.failures[-1] += hint
        r.unchanged(rec, what)
