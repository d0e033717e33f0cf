"""The LLaMA building blocks of plmkit.nn against Hugging Face's Llama and T5 modules.

RMSNorm vs LlamaRMSNorm / T5LayerNorm, the gated feed-forward vs LlamaMLP / T5's gated-GELU,
rotary tables and rotation vs LlamaRotaryEmbedding / apply_rotary_pos_emb, the interleaved
layout vs Meta's complex-number formulation, and the relative-position property of RoPE.
"""
import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig as HFLlamaConfig
from transformers import T5Config
from transformers.models.llama.modeling_llama import (LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb)
from transformers.models.t5.modeling_t5 import T5DenseGatedActDense, T5LayerNorm

import plmkit.nn as pn
from plmkit.nn import (GatedFeedForward, LayerNorm, RMSNorm, RotaryEmbedding, apply_rotary, apply_rotary_interleaved,
                       half_to_interleaved, interleaved_to_half, layer_norm, rms_norm)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- norms
@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_layernorm_module_is_the_teaching_formula(eps):
    """The module runs F.layer_norm; the readable layer_norm() must give the same numbers and gradients."""
    ln = LayerNorm(16, eps=eps).double()
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
    x = (torch.randn(3, 5, 16, dtype=torch.float64) * 4 + 3).requires_grad_()
    y_mod = ln(x)
    y_formula = layer_norm(x, ln.weight, ln.bias, eps)
    torch.testing.assert_close(y_mod, y_formula, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(y_mod)
    (gx_mod,) = torch.autograd.grad(y_mod, x, g)
    (gx_formula,) = torch.autograd.grad(y_formula, x, g)
    torch.testing.assert_close(gx_mod, gx_formula, atol=1e-10, rtol=1e-10)
    assert LayerNorm(16, bias=False)(x.float()).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rmsnorm_matches_llama(dtype):
    ours, ref = RMSNorm(32, eps=1e-6), LlamaRMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
    ref.load_state_dict(ours.state_dict())
    ours, ref = ours.to(dtype), ref.to(dtype)
    x = torch.randn(2, 7, 32).mul(30).to(dtype)
    torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)            # same operations in the same order
    assert ours(x).dtype == dtype


def test_rmsnorm_matches_t5_layernorm_and_formula():
    """T5's "LayerNorm" is RMSNorm: no mean subtraction, no bias; float64 reference by hand."""
    ours, ref = RMSNorm(24, eps=1e-6), T5LayerNorm(24, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 24) * 5 + 2
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
    x64 = x.double()
    by_hand = x64 / torch.sqrt((x64 ** 2).mean(-1, keepdim=True) + 1e-6) * ours.weight.double()
    torch.testing.assert_close(ours(x).double(), by_hand, atol=1e-5, rtol=1e-5)
    # it is not LayerNorm: a shifted input gives a different output
    assert not torch.allclose(rms_norm(x + 1.0), rms_norm(x), atol=1e-3)


def test_rmsnorm_float32_statistics_on_half_input():
    """Squares of fp16 values overflow past 65504: the float32 mean square keeps the result finite."""
    x = torch.full((1, 8), 300.0, dtype=torch.float16)                   # 300**2 = 90000 > fp16 max
    y = rms_norm(x)
    assert torch.isfinite(y).all() and torch.allclose(y.float(), torch.ones(1, 8), atol=1e-3)


def test_norm_validation_and_gradcheck():
    with pytest.raises(ValueError, match="d must"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(4, eps=0.0)
    with pytest.raises(ValueError, match="dimension d = 4"):
        RMSNorm(4)(torch.randn(2, 5))
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w: rms_norm(t, w, 1e-6), (x, w))


# ---------------------------------------------------------------- gated feed-forward
def test_gated_ffn_matches_llama_mlp():
    cfg = HFLlamaConfig(hidden_size=16, intermediate_size=44, hidden_act="silu", mlp_bias=False)
    ref = LlamaMLP(cfg)
    ours = GatedFeedForward(16, 44)
    assert set(ours.state_dict()) == set(ref.state_dict())                  # same names: gate/up/down_proj
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
    # the silu of the activation map is the fused kernel and equals the formula
    h = torch.randn(100)
    torch.testing.assert_close(pn.activation_fn("silu")(h), pn.silu(h))
    torch.testing.assert_close(pn.silu(h), h / (1 + torch.exp(-h)))


def test_gated_gelu_matches_t5_v1_1():
    cfg = T5Config(d_model=16, d_ff=40, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    ref = T5DenseGatedActDense(cfg).eval()
    ours = GatedFeedForward(16, 40, activation="gelu_tanh")
    with torch.no_grad():                                                  # T5 names: wi_0 gate, wi_1 up, wo down
        ours.gate_proj.weight.copy_(ref.wi_0.weight)
        ours.up_proj.weight.copy_(ref.wi_1.weight)
        ours.down_proj.weight.copy_(ref.wo.weight)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


def test_gated_ffn_bias_and_validation():
    ffn = GatedFeedForward(8, 12, bias=True)
    assert ffn.gate_proj.bias is not None and ffn.down_proj.bias is not None
    assert sum(p.numel() for p in GatedFeedForward(8, 12).parameters()) == 3 * 8 * 12
    with pytest.raises(ValueError, match="d_ff"):
        GatedFeedForward(8, 0)
    with pytest.raises(ValueError, match="activation"):
        GatedFeedForward(8, 4, activation="swish")


# ---------------------------------------------------------------- rotary
@pytest.mark.parametrize("theta,scaling", [(10000.0, None), (500000.0, None), (10000.0, 4.0)])
def test_rotary_tables_match_llama(theta, scaling):
    rope_scaling = None if scaling is None else {"rope_type": "linear", "factor": scaling}
    cfg = HFLlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=128, rope_theta=theta,
                        rope_scaling=rope_scaling)
    ref = LlamaRotaryEmbedding(cfg)
    ours = RotaryEmbedding(16, max_position_embeddings=128, theta=theta, scaling_factor=scaling or 1.0)
    pos = torch.stack([torch.arange(40), torch.arange(40) + 77])           # (2, 40) incl. past 128 // 4
    cos_ref, sin_ref = ref(torch.zeros(1, dtype=torch.float32), pos)
    cos, sin = ours(pos)
    torch.testing.assert_close(cos, cos_ref, atol=0, rtol=0)
    torch.testing.assert_close(sin, sin_ref, atol=0, rtol=0)
    cos_bf, _ = ours(pos, dtype=torch.bfloat16)
    assert cos_bf.dtype == torch.bfloat16


def test_apply_rotary_matches_hf_with_grouped_keys():
    B, H, H_kv, T, D = 2, 4, 2, 9, 16
    q, k = torch.randn(B, H, T, D), torch.randn(B, H_kv, T, D)
    cos, sin = RotaryEmbedding(D, theta=1000.0)(torch.arange(T).expand(B, T) + torch.tensor([[0], [5]]))
    q1, k1 = apply_rotary(q, k, cos, sin)
    q2, k2 = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(q1, q2, atol=0, rtol=0)
    torch.testing.assert_close(k1, k2, atol=0, rtol=0)
    # a rotation keeps lengths, and position 0 is the identity
    torch.testing.assert_close(q1.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(q1[0, :, 0], q[0, :, 0])


@settings(max_examples=30, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 1000))
def test_rotated_score_depends_only_on_offset(m, n, shift):
    """<R(m) q, R(n) k> = <R(m + s) q, R(n + s) k> for every shift s; and it changes with m - n."""
    g = torch.Generator().manual_seed(m * 1000 + n)
    D = 8
    q, k = torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, D, generator=g,
                                                                                    dtype=torch.float64)
    rope = RotaryEmbedding(D, theta=100.0).double()

    def score(a, b):
        cq, sq = (t.double() for t in rope(torch.tensor([[a]])))
        ck, sk = (t.double() for t in rope(torch.tensor([[b]])))
        qr, _ = apply_rotary(q, q, cq, sq)
        kr, _ = apply_rotary(k, k, ck, sk)
        return float((qr * kr).sum())

    assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-4, abs_tol=1e-4)


def test_rotated_score_is_not_constant_in_offset():
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rope = RotaryEmbedding(8)
    scores = []
    for offset in range(4):
        c0, s0 = rope(torch.tensor([[0]]))
        c1, s1 = rope(torch.tensor([[offset]]))
        scores.append(float((apply_rotary(q, q, c1, s1)[0] * apply_rotary(k, k, c0, s0)[0]).sum()))
    assert len({round(s, 4) for s in scores}) == 4


def meta_rotary(x, position, D, theta):
    """Meta's original LLaMA code: pairs of adjacent coordinates as complex numbers, times e^{i m theta_j}."""
    freqs = 1.0 / (theta ** (torch.arange(0, D, 2)[: D // 2].float() / D))
    angles = torch.outer(position.float(), freqs)                          # (T, D/2)
    rot = torch.polar(torch.ones_like(angles), angles)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))     # (B, H, T, D/2)
    return torch.view_as_real(xc * rot).flatten(-2)


def test_interleaved_layout_matches_meta_and_converts():
    B, H, T, D = 2, 3, 6, 8
    q, k = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    pos = torch.arange(T)
    cos, sin = RotaryEmbedding(D)(pos.expand(B, T))
    qi, ki = apply_rotary_interleaved(q, k, cos, sin)
    torch.testing.assert_close(qi, meta_rotary(q, pos, D, 10000.0), atol=1e-5, rtol=1e-5)
    # the same rotation in the other layout, after moving coordinates
    qh, kh = apply_rotary(interleaved_to_half(q), interleaved_to_half(k), cos, sin)
    torch.testing.assert_close(qh, interleaved_to_half(qi), atol=1e-6, rtol=1e-5)
    # so the scores are identical: layouts differ only by a permutation of W_q / W_k rows
    torch.testing.assert_close(qh @ kh.transpose(-1, -2), qi @ ki.transpose(-1, -2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(half_to_interleaved(interleaved_to_half(q)), q)


def test_weight_permutation_moves_rotary_layout():
    """Permuting the rows of W_q per head turns an interleaved-layout model into a rotate-half one."""
    H, D, C = 2, 8, 12
    w = torch.randn(H * D, C)
    w_half = interleaved_to_half(w.view(H, D, C), dim=1).reshape(H * D, C)
    # Hugging Face's conversion script: w.view(H, D // 2, 2, C).transpose(1, 2).reshape(H * D, C)
    torch.testing.assert_close(w_half, w.view(H, D // 2, 2, C).transpose(1, 2).reshape(H * D, C))
    x = torch.randn(1, 5, C)
    q_inter = (x @ w.T).view(1, 5, H, D).transpose(1, 2)
    q_half = (x @ w_half.T).view(1, 5, H, D).transpose(1, 2)
    cos, sin = RotaryEmbedding(D)(torch.arange(5)[None])
    torch.testing.assert_close(apply_rotary(q_half, q_half, cos, sin)[0],
                               interleaved_to_half(apply_rotary_interleaved(q_inter, q_inter, cos, sin)[0]),
                               atol=1e-5, rtol=1e-5)


def test_rotary_validation():
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="theta"):
        RotaryEmbedding(8, theta=0.0)
    with pytest.raises(ValueError, match="scaling_factor"):
        RotaryEmbedding(8, scaling_factor=0.0)
    with pytest.raises(ValueError, match="position_ids"):
        RotaryEmbedding(8)(torch.zeros(2, 3, 4, dtype=torch.long))
    cos, sin = RotaryEmbedding(8)(torch.arange(5)[None])
    with pytest.raises(ValueError, match="cos and sin"):
        apply_rotary(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), cos, sin)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        apply_rotary(torch.randn(2, 5, 8), torch.randn(2, 5, 8), cos, sin)


@pytest.mark.parametrize("name", ["rotary", "norms", "ffn"])
def test_docstring_examples(name):
    import importlib
    module = importlib.import_module(f"plmkit.nn.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
