"""The chapter-6 checkers pass the book's solutions and fail blank and plausibly buggy answers (>= 3 per exercise)."""
import math

import pytest
import torch
import torch.nn.functional as F

from checker_harness import (assert_blank_fails, assert_mutant_fails, assert_reference_passes, assert_refused,
                             make_blank, mutant_ids, recorded_agrees_with_honour)
from plmkit.checks import llama as checks
from plmkit.nn import rotary
from solution_code import solutions

SOL = solutions("06_llama")
NAMES = ("rms_norm", "swiglu", "apply_rope", "grouped_attention", "llama_num_parameters", "kv_cache_bytes",
         "compute_optimal")
REFERENCES = [(getattr(checks, f"check_{name}"), SOL[name]) for name in NAMES]


blank = make_blank(6)


@pytest.mark.parametrize("check, fn", REFERENCES, ids=NAMES)
def test_reference_passes_with_a_stable_line(check, fn, capsys):
    assert_reference_passes(check, fn, capsys, times=3)


@pytest.mark.parametrize("check", [c for c, _ in REFERENCES], ids=NAMES)
def test_blank_fails(check, capsys):
    assert_blank_fails(check, blank, capsys)


# ----------------------------------------------------------------------------- plausible bugs
def rms_subtracts_mean(x, weight, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], eps=eps) * weight


def rms_eps_outside(x, weight, eps=1e-6):
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight


def rms_no_weight(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)


def rms_half_stats(x, weight, eps=1e-6):                      # statistics in the input dtype: fp16 overflows
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rms_wrong_dim(x, weight, eps=1e-6):
    x32 = x.double()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(0, keepdim=True) + eps)).to(x.dtype)


def rms_library(x, weight, eps=1e-6):
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def swiglu_swapped(x, wg, wu, wd):
    return (F.silu(x @ wu.T) * (x @ wg.T)) @ wd.T


def swiglu_sigmoid(x, wg, wu, wd):
    return (torch.sigmoid(x @ wg.T) * (x @ wu.T)) @ wd.T


def swiglu_no_up(x, wg, wu, wd):
    return F.silu(x @ wg.T) @ wd.T


def swiglu_not_transposed(x, wg, wu, wd):
    return (F.silu(x @ wg.T) * (x @ wu.T)) @ wd


def _rope(x, pos, theta, layout="half", exponent=2.0, sign=1.0):
    D = x.shape[-1]
    inv = 1.0 / theta ** (exponent * torch.arange(0, D // 2, dtype=torch.float32) / D)
    ang = sign * pos[..., None].float() * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    fn = rotary.apply_rotary if layout == "half" else rotary.apply_rotary_interleaved
    return fn(x, x, cos.to(x.dtype), sin.to(x.dtype))[0]


def rope_interleaved(x, position_ids, theta=10000.0):
    return _rope(x, position_ids, theta, layout="interleaved")


def rope_slow_frequencies(x, position_ids, theta=10000.0):
    return _rope(x, position_ids, theta, exponent=1.0)


def rope_backwards(x, position_ids, theta=10000.0):
    return _rope(x, position_ids, theta, sign=-1.0)


def rope_ignores_positions(x, position_ids, theta=10000.0):
    return _rope(x, torch.arange(x.shape[2]).expand(x.shape[0], -1), theta)


def _attend(q, k, v, causal=True):
    T = q.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1) @ v


def gqa_tiled(q, k, v):
    n = q.shape[1] // k.shape[1]
    return _attend(q, k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1))


def gqa_not_causal(q, k, v):
    n = q.shape[1] // k.shape[1]
    return _attend(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), causal=False)


def gqa_mha_only(q, k, v):
    return _attend(q, k, v)


def gqa_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def _count(config, kv_full=False, norms=True, tied_twice=False, head=True):
    C, V, F_, L = (config[k] for k in ("hidden_size", "vocab_size", "intermediate_size", "num_hidden_layers"))
    D = C // config["num_attention_heads"]
    kv = C if kv_full else config["num_key_value_heads"] * D
    layer = 2 * C * C + 2 * C * kv + 3 * C * F_ + (2 * C if norms else 0)
    out = V * C if head and (tied_twice or not config["tie_word_embeddings"]) else 0
    return V * C + L * layer + (C if norms else 0) + out


def count_ignores_gqa(config):
    return _count(config, kv_full=True)


def count_no_norms(config):
    return _count(config, norms=False)


def count_tied_twice(config):
    return _count(config, tied_twice=True)


def count_no_head(config):
    return _count(config, head=False)


def _kv(config, seq_len, batch_size=1, bytes_per_value=2, factor=2, heads="num_key_value_heads", width=None):
    D = config["hidden_size"] // config["num_attention_heads"]
    per = factor * config["num_hidden_layers"] * (width or config[heads] * D) * bytes_per_value
    return per * seq_len * batch_size


def kv_only_keys(config, seq_len, batch_size=1, bytes_per_value=2):
    return _kv(config, seq_len, batch_size, bytes_per_value, factor=1)


def kv_all_heads(config, seq_len, batch_size=1, bytes_per_value=2):
    return _kv(config, seq_len, batch_size, bytes_per_value, heads="num_attention_heads")


def kv_ignores_batch(config, seq_len, batch_size=1, bytes_per_value=2):
    return _kv(config, seq_len, 1, bytes_per_value)


def kv_float_bits(config, seq_len, batch_size=1, bytes_per_value=2):
    return _kv(config, seq_len, batch_size, 8 * bytes_per_value)


def opt_swapped(C, E, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * (C / 6) ** (beta / (alpha + beta))
    return C / (6 * N), N


def opt_no_six(C, E, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * C ** (beta / (alpha + beta))
    return N, C / N


def opt_g_not_inverted(C, E, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    return G * (C / 6) ** (beta / (alpha + beta)), G * (C / 6) ** (alpha / (alpha + beta))


def opt_twenty_tokens(C, E, A, B, alpha, beta):
    N = math.sqrt(C / 120)
    return N, 20 * N


MUTANTS = [
    (checks.check_rms_norm, rms_subtracts_mean, "LayerNorm"),
    (checks.check_rms_norm, rms_eps_outside, "inside the square root"),
    (checks.check_rms_norm, rms_no_weight, "weight"),
    (checks.check_rms_norm, rms_half_stats, ""),
    (checks.check_rms_norm, rms_wrong_dim, ""),
    (checks.check_rms_norm, rms_library, "F.rms_norm"),
    (checks.check_swiglu, swiglu_swapped, "gate branch"),
    (checks.check_swiglu, swiglu_sigmoid, "sigmoid"),
    (checks.check_swiglu, swiglu_no_up, "up projection"),
    (checks.check_swiglu, swiglu_not_transposed, ""),
    (checks.check_apply_rope, rope_interleaved, "interleaved"),
    (checks.check_apply_rope, rope_slow_frequencies, "theta ** (-2i / D)"),
    (checks.check_apply_rope, rope_backwards, "wrong way"),
    (checks.check_apply_rope, rope_ignores_positions, "position_ids"),
    (checks.check_grouped_attention, gqa_tiled, "repeat_interleave"),
    (checks.check_grouped_attention, gqa_not_causal, "causal"),
    (checks.check_grouped_attention, gqa_mha_only, ""),
    (checks.check_grouped_attention, gqa_sdpa, "scaled_dot_product_attention"),
    (checks.check_llama_num_parameters, count_ignores_gqa, "GQA"),
    (checks.check_llama_num_parameters, count_no_norms, "RMSNorm"),
    (checks.check_llama_num_parameters, count_tied_twice, "count it once"),
    (checks.check_llama_num_parameters, count_no_head, "LM head"),
    (checks.check_kv_cache_bytes, kv_only_keys, "factor 2"),
    (checks.check_kv_cache_bytes, kv_all_heads, "GQA"),
    (checks.check_kv_cache_bytes, kv_ignores_batch, ""),
    (checks.check_kv_cache_bytes, kv_float_bits, ""),
    (checks.check_compute_optimal, opt_swapped, "swapped"),
    (checks.check_compute_optimal, opt_no_six, "6 N D"),
    (checks.check_compute_optimal, opt_g_not_inverted, ""),
    (checks.check_compute_optimal, opt_twenty_tokens, ""),
]


@pytest.mark.parametrize("check, fn, hint", MUTANTS, ids=mutant_ids(MUTANTS))
def test_plausible_bug_fails(check, fn, hint, capsys):
    assert_mutant_fails(check, fn, hint, capsys, times=3)     # on every random draw, not just most


# ----------------------------------------------------------------------------- grading path and references
@pytest.mark.parametrize("check, fn", REFERENCES, ids=NAMES)
def test_solution_and_a_bug_agree_through_the_grading_path(check, fn, tmp_path):
    """Recorded in a folder, then judged from the files as the grader does: same verdict as in-process."""
    bug = next(b for c, b, _ in MUTANTS if c is check)
    for learner, should_pass in ((fn, True), (bug, False)):
        assert recorded_agrees_with_honour(check, learner, 7, tmp_path / learner.__name__) is should_pass


def ref_rms(x, weight, eps=1e-6):
    from plmkit.nn import rms_norm
    return rms_norm(x, weight, eps)


def ref_rope(x, position_ids, theta=10000.0):
    cos, sin = rotary.RotaryEmbedding(x.shape[-1], theta=theta)(position_ids)
    return rotary.apply_rotary(x, x, cos, sin)[0]


def ref_swiglu(x, wg, wu, wd):
    from plmkit.nn import GatedFeedForward
    ffn = GatedFeedForward(x.shape[-1], wg.shape[0]).to(x.dtype)
    with torch.no_grad():
        ffn.gate_proj.weight.copy_(wg), ffn.up_proj.weight.copy_(wu), ffn.down_proj.weight.copy_(wd)
    return ffn(x)


def ref_gqa(q, k, v):
    from plmkit.nn import scaled_dot_product_attention
    return scaled_dot_product_attention(q, k, v, is_causal=True)


def ref_count(config):
    from plmkit.models import LlamaConfig
    return LlamaConfig(**config).num_parameters()


def ref_optimal(C, E, A, B, alpha, beta):
    from plmkit import scaling
    N, D = scaling.compute_optimal(C, scaling.ScalingLaw(E=E, A=A, B=B, alpha=alpha, beta=beta))
    return float(N), float(D)


@pytest.mark.parametrize("check, shortcut", [
    (checks.check_rms_norm, ref_rms), (checks.check_apply_rope, ref_rope), (checks.check_swiglu, ref_swiglu),
    (checks.check_grouped_attention, ref_gqa), (checks.check_llama_num_parameters, ref_count),
    (checks.check_compute_optimal, ref_optimal)], ids=lambda v: getattr(v, "__name__", ""))
def test_calling_the_reference_fails(check, shortcut, capsys):
    assert_refused(check, shortcut, capsys, named="which is the reference here")
