"""plmkit.nn against outside references: PyTorch's own layers, an explicit loop, the formulas on paper.

Tiny sizes, float32 comparisons at 1e-5, gradient checks in float64.
"""
import doctest
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import plmkit.nn as pn
from plmkit.nn import (DecoderBlock, EncoderBlock, FeedForward, KVCache, LayerNorm, LearnedPositionalEmbedding,
                       MultiHeadAttention, Seq2SeqTransformer, SinusoidalPositionalEncoding, build_attention_mask,
                       causal_mask, merge_heads, padding_mask, record_attention, scaled_dot_product_attention,
                       sinusoidal_table, split_heads)

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def loop_attention(q, k, v, allowed):
    """Independent reference: one query at a time, plain Python softmax over the allowed keys."""
    B, H, Tq, D = q.shape
    out = torch.zeros(B, H, Tq, v.shape[-1], dtype=q.dtype)
    w = torch.zeros(B, H, Tq, k.shape[2], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                keys = [j for j in range(k.shape[2]) if allowed[b, h, i, j]]
                if not keys:
                    continue
                s = [float(q[b, h, i] @ k[b, h, j]) / math.sqrt(D) for j in keys]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                for j, ej in zip(keys, e):
                    w[b, h, i, j] = ej / sum(e)
                out[b, h, i] = sum(w[b, h, i, j] * v[b, h, j] for j in keys)
    return out, w


# ---------------------------------------------------------------- scaled dot-product attention
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "padding"])
def test_sdpa_matches_loop_and_torch(kind):
    B, H, Tq, Tk, D = 2, 3, 4, 4, 5
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, H, Tk, D), torch.randn(B, H, Tk, D)
    if kind == "none":
        mask, allowed = None, torch.ones(B, H, Tq, Tk, dtype=torch.bool)
    elif kind == "bool":
        mask = torch.rand(B, 1, Tq, Tk) > 0.4
        mask[..., 0] = True
        allowed = mask.expand(B, H, Tq, Tk)
    elif kind == "float":
        keep = torch.rand(Tq, Tk) > 0.4
        keep[:, 0] = True
        mask = torch.zeros(Tq, Tk).masked_fill(~keep, float("-inf"))
        allowed = keep.expand(B, H, Tq, Tk)
    elif kind == "causal":
        mask = causal_mask(Tq)
        allowed = torch.ones(Tq, Tk).tril().bool().expand(B, H, Tq, Tk)
    else:
        mask = padding_mask(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]))
        allowed = mask.expand(B, H, Tq, Tk)
    ref_out, ref_w = loop_attention(q, k, v, allowed)
    out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    fast = scaled_dot_product_attention(q, k, v, mask)
    torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(fast, ref_out, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(out, torch_out, atol=ATOL, rtol=1e-4)


def test_sdpa_is_causal_flag_and_cross_lengths():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    # 3 new queries after 2 cached keys: query i sits at position 2 + i
    allowed = causal_mask(3, 5).expand(1, 2, 3, 5)
    ref, _ = loop_attention(q, k, v, allowed)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True), ref, atol=ATOL, rtol=1e-4)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)
    assert (w[..., 0, 3:] == 0).all() and (w[..., 2, :] > 0).all()
    # square case goes through torch's is_causal kernel
    q2 = torch.randn(2, 2, 6, 4)
    torch.testing.assert_close(scaled_dot_product_attention(q2, q2, q2, is_causal=True),
                               scaled_dot_product_attention(q2, q2, q2, causal_mask(6), return_weights=True)[0],
                               atol=ATOL, rtol=1e-4)


def test_sdpa_weights_rows_sum_to_one_and_blocked_rows_are_zero():
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    torch.testing.assert_close(w[0, 0, [0, 2]].sum(-1), torch.ones(2))
    assert torch.equal(w[0, 0, 1], torch.zeros(3)) and torch.equal(out[0, 0, 1], torch.zeros(4))
    fast = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(fast).all() and torch.equal(fast[0, 0, 1], torch.zeros(4))


def test_sdpa_combines_float_mask_with_causal():
    q = torch.randn(1, 1, 4, 2)
    bias = torch.randn(4, 4)
    out, w = scaled_dot_product_attention(q, q, q, bias, return_weights=True, is_causal=True)
    scores = (q @ q.transpose(-1, -2)) / math.sqrt(2) + bias
    ref_w = torch.softmax(scores.masked_fill(~causal_mask(4), float("-inf")), -1)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(scaled_dot_product_attention(q, q, q, bias, is_causal=True), out, atol=ATOL, rtol=1e-4)


def test_sdpa_validation():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="broadcast"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="dtype"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="4-d"):
        scaled_dot_product_attention(q[0], q, q)
    with pytest.raises(ValueError, match="head width"):
        scaled_dot_product_attention(q, torch.randn(1, 2, 3, 5), q)
    with pytest.raises(ValueError, match="T must be"):
        causal_mask(0)
    with pytest.raises(ValueError, match="T_k"):
        causal_mask(4, 2)


def test_split_merge_heads_layout():
    x = torch.arange(2 * 3 * 6.).view(2, 3, 6)
    h = split_heads(x, 2)
    assert h.shape == (2, 2, 3, 3)
    assert torch.equal(h[:, 1], x[..., 3:])          # head 1 = channels 3..5
    assert torch.equal(merge_heads(h), x)
    with pytest.raises(ValueError, match="n_heads"):
        split_heads(x, 4)


# ---------------------------------------------------------------- multi-head attention vs torch
def to_torch_mha(mha: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(mha.d_model, mha.n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("cross", [False, True])
def test_mha_matches_torch_multihead_attention(cross):
    B, T, S, C, H = 2, 5, 7, 12, 3
    mha = MultiHeadAttention(C, H).eval()
    ref = to_torch_mha(mha)
    x = torch.randn(B, T, C)
    ctx = torch.randn(B, S, C) if cross else None
    src = x if ctx is None else ctx
    Tk = src.shape[1]
    keep = torch.ones(B, Tk, dtype=torch.bool)
    keep[1, -2:] = False                                            # padding in the second sequence
    ours_mask = padding_mask(keep)
    if not cross:
        ours_mask = ours_mask & causal_mask(T)
    out, w = mha(x, ctx, mask=ours_mask, return_weights=True)
    # torch: bool masks mean "forbidden"
    ref_out, ref_w = ref(x, src, src, key_padding_mask=~keep,
                         attn_mask=None if cross else ~causal_mask(T), average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(mha(x, ctx, mask=ours_mask), ref_out, atol=ATOL, rtol=1e-4)


def test_mha_need_weights_attribute_and_validation():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 4, 8)
    mha.need_weights = True
    y = mha(x)
    assert isinstance(y, torch.Tensor) and mha.last_weights.shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="n_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="d_model"):
        mha(torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="broadcast"):
        mha(x, mask=torch.ones(5, 5, dtype=torch.bool))


def test_kv_cache_decoding_equals_full_causal_pass():
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 6, 8)
    full = mha(x, is_causal=True)
    cache = KVCache()
    steps = [mha(x[:, :3], is_causal=True, cache=cache)]
    steps += [mha(x[:, t:t + 1], is_causal=True, cache=cache) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=1e-4)
    assert len(cache) == 6


# ---------------------------------------------------------------- positions, norms, FFN
def test_sinusoidal_table_matches_formula():
    T, C = 7, 6
    table = sinusoidal_table(T, C)
    for t in range(T):
        for i in range(C // 2):
            angle = t / 10000 ** (2 * i / C)
            assert abs(table[t, 2 * i] - math.sin(angle)) < 1e-6
            assert abs(table[t, 2 * i + 1] - math.cos(angle)) < 1e-6
    pe = SinusoidalPositionalEncoding(C, max_len=10)
    x = torch.randn(2, 4, C)
    torch.testing.assert_close(pe(x, offset=3), x + table[3:7])
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.randn(1, 11, C))
    with pytest.raises(ValueError, match="even"):
        sinusoidal_table(3, 5)


def test_learned_positions():
    pe = LearnedPositionalEmbedding(max_len=5, d_model=4)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(pe(x, offset=2), x + pe.weight[2:5])
    with pytest.raises(ValueError, match="too long"):
        pe(x, offset=3)


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_layernorm_matches_torch(eps):
    ours, ref = LayerNorm(10, eps=eps), torch.nn.LayerNorm(10, eps=eps)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 10) * 5 + 2
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2, atol=ATOL, rtol=1e-4)
    g = torch.randn_like(y1)
    y1.backward(g), y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


def test_feedforward_activations():
    x = torch.randn(2, 3, 4)
    for act, fn in [("relu", lambda h: h.clamp(min=0)),
                    ("gelu", lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))),
                    ("gelu_tanh", lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3))))]:
        ffn = FeedForward(4, 8, activation=act)
        ref = ffn.fc2(fn(x @ ffn.fc1.weight.T + ffn.fc1.bias))
        torch.testing.assert_close(ffn(x), ref, atol=ATOL, rtol=1e-4)
    with pytest.raises(ValueError, match="activation"):
        FeedForward(4, 8, activation="swish")


# ---------------------------------------------------------------- blocks vs torch.nn.Transformer*Layer
def _copy_mha(ours, theirs):
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.weight.copy_(ours.out_proj.weight)
    theirs.out_proj.bias.copy_(ours.out_proj.bias)


def _copy_ln(ours, theirs):
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_block_matches_torch(norm_first, activation):
    C, H, F_ = 12, 3, 20
    ours = EncoderBlock(C, H, F_, norm_first=norm_first, activation=activation).eval()
    _randomise(ours)
    ref = torch.nn.TransformerEncoderLayer(C, H, F_, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        _copy_mha(ours.attn, ref.self_attn)
        _copy_ln(ours.norm1, ref.norm1), _copy_ln(ours.norm2, ref.norm2)
        ref.linear1.load_state_dict(ours.ffn.fc1.state_dict()), ref.linear2.load_state_dict(ours.ffn.fc2.state_dict())
    x = torch.randn(2, 5, C)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    got = ours(x, mask=padding_mask(keep))
    want = ref(x, src_key_padding_mask=~keep)
    # torch's fast path zeroes padded positions' outputs; compare the real tokens
    torch.testing.assert_close(got[keep], want[keep], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_matches_torch(norm_first):
    C, H, F_ = 12, 3, 20
    ours = DecoderBlock(C, H, F_, norm_first=norm_first, activation="relu").eval()
    _randomise(ours)
    ref = torch.nn.TransformerDecoderLayer(C, H, F_, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        _copy_mha(ours.attn, ref.self_attn), _copy_mha(ours.cross_attn, ref.multihead_attn)
        _copy_ln(ours.norm1, ref.norm1), _copy_ln(ours.norm_cross, ref.norm2), _copy_ln(ours.norm2, ref.norm3)
        ref.linear1.load_state_dict(ours.ffn.fc1.state_dict()), ref.linear2.load_state_dict(ours.ffn.fc2.state_dict())
    x, mem = torch.randn(2, 4, C), torch.randn(2, 6, C)
    mem_keep = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]).bool()
    got = ours(x, mem, memory_mask=padding_mask(mem_keep))
    want = ref(x, mem, tgt_mask=~causal_mask(4), memory_key_padding_mask=~mem_keep)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_gpt_style_decoder_block_is_causal_and_caches():
    block = DecoderBlock(8, 2, 16, norm_first=True, cross_attention=False).eval()
    x = torch.randn(1, 5, 8)
    y = block(x)
    x2 = x.clone()
    x2[0, 4] += 3.0
    torch.testing.assert_close(block(x2)[0, :4], y[0, :4])
    assert not torch.allclose(block(x2)[0, 4], y[0, 4])
    cache = KVCache()
    steps = [block(x[:, t:t + 1], cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), y, atol=ATOL, rtol=1e-4)
    with pytest.raises(ValueError, match="no cross-attention"):
        block(x, memory=x)
    with pytest.raises(ValueError, match="memory"):
        DecoderBlock(8, 2, 16)(x)


# ---------------------------------------------------------------- the whole encoder-decoder
def test_seq2seq_padding_and_causality():
    model = Seq2SeqTransformer(vocab_size=11, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=12,
                               pad_id=0, norm_first=True).eval()
    src = torch.tensor([[3, 4, 5, 6, 0, 0]])
    tgt = torch.tensor([[1, 7, 8, 9]])
    logits = model(src, tgt)
    # extra padding on the source changes nothing
    torch.testing.assert_close(model(torch.tensor([[3, 4, 5, 6, 0, 0, 0, 0]]), tgt), logits, atol=ATOL, rtol=1e-4)
    # a later target token does not change earlier logits
    tgt2 = tgt.clone()
    tgt2[0, 3] = 2
    torch.testing.assert_close(model(src, tgt2)[:, :3], logits[:, :3], atol=ATOL, rtol=1e-4)
    # greedy decoding agrees with the argmax of a teacher-forced pass over its own output
    gen = model.generate(src, bos_id=1, max_new_tokens=4)
    again = model(src, torch.cat([torch.ones(1, 1, dtype=torch.long), gen[:, :-1]], 1)).argmax(-1)
    assert torch.equal(again, gen)
    with pytest.raises(ValueError, match="token ids"):
        model(src, torch.tensor([[1, 11]]))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 13, dtype=torch.long), tgt)


def test_record_attention_collects_every_layer():
    model = Seq2SeqTransformer(vocab_size=7, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_len=10).eval()
    src, tgt = torch.randint(0, 7, (1, 5)), torch.randint(0, 7, (1, 3))
    with record_attention(model) as maps:
        model(src, tgt)
    assert maps["encoder.layers.1.attn"].shape == (1, 2, 5, 5)
    assert maps["decoder.layers.0.attn"].shape == (1, 2, 3, 3)
    assert maps["decoder.layers.0.cross_attn"].shape == (1, 2, 3, 5)
    torch.testing.assert_close(maps["decoder.layers.0.cross_attn"].sum(-1), torch.ones(1, 2, 3))
    assert not any(m.need_weights for m in model.modules() if isinstance(m, MultiHeadAttention))


# ---------------------------------------------------------------- gradients (float64)
def test_gradcheck_attention_paths():
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, False, True], [True, True, False], [True, True, True]])
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask, True), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v))


def test_gradcheck_modules():
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    for module in [MultiHeadAttention(6, 2), LayerNorm(6), FeedForward(6, 8, "gelu_tanh"),
                   EncoderBlock(6, 2, 8, norm_first=True), EncoderBlock(6, 2, 8, norm_first=False),
                   DecoderBlock(6, 2, 8, cross_attention=False)]:
        module = module.double()
        assert torch.autograd.gradcheck(lambda t: module(t), (x,)), type(module).__name__
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w: pn.layer_norm(t, w, None, 1e-5), (x, w))


# ---------------------------------------------------------------- the worked examples in the docstrings
@pytest.mark.parametrize("name", ["attention", "positional", "norms", "ffn", "blocks", "transformer"])
def test_docstring_examples(name):
    module = importlib.import_module(f"plmkit.nn.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- the later chapters' options: GQA, scale, bias, rotary
def loop_attention_general(q, k, v, allowed, scale, bias=None):
    """Independent reference with H_kv <= H heads, a given scale and an additive bias: one query at a time."""
    B, H, Tq, D = q.shape
    group = H // k.shape[1]
    out = torch.zeros(B, H, Tq, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            kh = h // group                                        # the key/value head this query head reads
            for i in range(Tq):
                keys = [j for j in range(k.shape[2]) if allowed[b, h, i, j]]
                if not keys:
                    continue
                s = [float(q[b, h, i] @ k[b, kh, j]) * scale + (float(bias[b, h, i, j]) if bias is not None else 0.0)
                     for j in keys]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                out[b, h, i] = sum(ej / sum(e) * v[b, kh, j] for j, ej in zip(keys, e))
    return out


@pytest.mark.parametrize("H_kv", [6, 3, 2, 1])
def test_gqa_equals_repeated_heads_torch_and_loop(H_kv):
    B, H, Tq, Tk, D = 2, 6, 3, 5, 4
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, H_kv, Tk, D), torch.randn(B, H_kv, Tk, D)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])) & causal_mask(Tq, Tk)
    k_rep, v_rep = pn.repeat_kv(k, H // H_kv), pn.repeat_kv(v, H // H_kv)
    torch.testing.assert_close(k_rep, k.repeat_interleave(H // H_kv, dim=1), atol=0, rtol=0)
    want = scaled_dot_product_attention(q, k_rep, v_rep, mask)
    explicit, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    fused = scaled_dot_product_attention(q, k, v, mask)
    torch_gqa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    ref = loop_attention_general(q, k, v, mask.expand(B, H, Tq, Tk), 1 / math.sqrt(D))
    for got in (explicit, fused, torch_gqa, ref):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    assert w.shape == (B, H, Tq, Tk)
    # the square is_causal fast path with fewer K/V heads
    kq, vq = torch.randn(B, H_kv, Tq, D), torch.randn(B, H_kv, Tq, D)
    torch.testing.assert_close(scaled_dot_product_attention(q, kq, vq, is_causal=True),
                               scaled_dot_product_attention(q, kq, vq, is_causal=True, return_weights=True)[0],
                               atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scale_and_position_bias_match_loop(scale, with_bias):
    B, H, Tq, Tk, D = 2, 4, 3, 5, 4
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, 2, Tk, D), torch.randn(B, 2, Tk, D)
    bias = torch.randn(1, H, Tq, Tk) if with_bias else None
    keep = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]).bool()
    mask = padding_mask(keep)
    ref = loop_attention_general(q, k, v, mask.expand(B, H, Tq, Tk), 1 / math.sqrt(D) if scale is None else scale,
                                 None if bias is None else bias.expand(B, H, Tq, Tk))
    explicit, _ = scaled_dot_product_attention(q, k, v, mask, True, scale=scale, position_bias=bias)
    fused = scaled_dot_product_attention(q, k, v, mask, scale=scale, position_bias=bias)
    additive = torch.zeros(B, 1, 1, Tk).masked_fill(~mask, float("-inf"))   # the same mask, additive
    fused_additive = scaled_dot_product_attention(q, k, v, additive, scale=scale, position_bias=bias)
    for got in (explicit, fused, fused_additive):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-4)


def test_mha_gqa_rotary_matches_hf_llama_attention():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                      max_position_embeddings=32, attention_bias=False)
    cfg._attn_implementation = "eager"
    ref = LlamaAttention(cfg, layer_idx=0).eval()
    ours = MultiHeadAttention(16, 4, n_kv_heads=2, bias=False).eval()
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(ours, name).weight.copy_(getattr(ref, name).weight)
        ours.out_proj.weight.copy_(ref.o_proj.weight)
    B, T = 2, 6
    x = torch.randn(B, T, 16)
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    position_ids = (am.cumsum(-1) - 1).clamp(min=0)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, position_ids)
    mask = build_attention_mask(am, None, T)                               # (B, 1, T, T) bool
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        want, _ = ref(x, position_embeddings=(cos, sin), attention_mask=additive)
        rotary = lambda q, k: apply_rotary_pos_emb(q, k, cos, sin)         # noqa: E731
        got = ours(x, mask=mask, rotary=rotary)
        got_explicit, _ = ours(x, mask=mask, rotary=rotary, return_weights=True)
    real = am.bool()                                    # HF lets an all-padding query read everything; skip those
    real[0, :2] = False
    torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(got_explicit, got, atol=ATOL, rtol=1e-4)


def test_mha_head_dim_scale_bias_match_hf_t5_attention():
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    cfg = T5Config(d_model=12, d_kv=5, num_heads=3, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.0)
    ref = T5Attention(cfg, has_relative_attention_bias=True).eval()
    ours = MultiHeadAttention(12, 3, bias=False, head_dim=5, scale=1.0).eval()     # T5: no 1/sqrt(D)
    with torch.no_grad():
        for mine, theirs in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
            getattr(ours, mine).weight.copy_(getattr(ref, theirs).weight)
    assert ours.q_proj.weight.shape == (15, 12) and ours.out_proj.weight.shape == (12, 15)
    B, T = 2, 7
    x = torch.randn(B, T, 12)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2]).bool()
    additive = torch.zeros(B, 1, 1, T).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        want = ref(x, mask=additive, cache_position=torch.arange(T))[0]
        bias = ref.compute_bias(T, T)                                          # (1, H, T, T)
        got = ours(x, mask=padding_mask(keep), position_bias=bias)
        got_explicit, _ = ours(x, mask=padding_mask(keep), position_bias=bias, return_weights=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(got_explicit, want, atol=ATOL, rtol=1e-4)


def test_gradcheck_new_attention_paths():
    dt = torch.float64
    q = torch.randn(1, 4, 3, 2, dtype=dt, requires_grad=True)
    k, v = (torch.randn(1, 2, 3, 2, dtype=dt, requires_grad=True) for _ in range(2))
    bias = torch.randn(1, 4, 3, 3, dtype=dt, requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, True, False], [True, True, True]])
    for weights in (True, False):
        def f(q, k, v, bias, weights=weights):
            res = scaled_dot_product_attention(q, k, v, mask, weights, scale=0.7, position_bias=bias)
            return res[0] if weights else res
        assert torch.autograd.gradcheck(f, (q, k, v, bias))
    x = torch.randn(2, 3, 8, dtype=dt, requires_grad=True)
    for module in [MultiHeadAttention(8, 4, n_kv_heads=2), MultiHeadAttention(8, 2, head_dim=3, scale=1.0),
                   MultiHeadAttention(8, 4, n_kv_heads=1, bias=False)]:
        module = module.double()
        assert torch.autograd.gradcheck(lambda t: module(t, is_causal=True), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_explicit_with_padding(dtype):
    mha = MultiHeadAttention(16, 4, n_kv_heads=2).to(dtype).eval()
    x = torch.randn(3, 6, 16, dtype=dtype)
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    mask = build_attention_mask(am, None, 6)
    fused = mha(x, mask=mask)
    explicit, _ = mha(x, mask=mask, return_weights=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fused, explicit, atol=tol, rtol=tol)
    assert torch.isfinite(fused).all()


def test_new_options_validation():
    with pytest.raises(ValueError, match="n_kv_heads must be a positive int that divides n_heads=4"):
        MultiHeadAttention(8, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_kv_heads"):
        MultiHeadAttention(8, 4, n_kv_heads=0)
    with pytest.raises(ValueError, match="head_dim must be a positive int"):
        MultiHeadAttention(8, 4, head_dim=0)
    with pytest.raises(ValueError, match="scale must be a positive"):
        MultiHeadAttention(8, 4, scale=-1.0)
    with pytest.raises(ValueError, match="n_heads"):
        MultiHeadAttention(8, 0, head_dim=2)
    MultiHeadAttention(10, 4, head_dim=3)                 # H * D need not equal C once head_dim is given
    q = torch.randn(1, 4, 3, 2)
    with pytest.raises(ValueError, match="divide"):
        scaled_dot_product_attention(q, torch.randn(1, 3, 3, 2), torch.randn(1, 3, 3, 2))
    with pytest.raises(ValueError, match="position_bias"):
        scaled_dot_product_attention(q, q, q, position_bias=torch.randn(1, 3, 3, 3))
    with pytest.raises(ValueError, match="position_bias"):
        scaled_dot_product_attention(q, q, q, position_bias=torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="scale"):
        scaled_dot_product_attention(q, q, q, scale=0.0)
    with pytest.raises(ValueError, match="rotary"):
        MultiHeadAttention(8, 2)(torch.randn(1, 2, 8), context=torch.randn(1, 3, 8), rotary=lambda q, k: (q, k))
    with pytest.raises(ValueError, match="n_rep"):
        pn.repeat_kv(q, 0)


# ---------------------------------------------------------------- masks built once per forward
def hf_bool_mask(attention_mask, cache_position, key_length, segment_ids=None, causal=True):
    from transformers.masking_utils import (and_masks, causal_mask_function, packed_sequence_mask_function,
                                            sdpa_mask_recent_torch)
    fns = [causal_mask_function] if causal else [lambda b, h, q, k: torch.ones((), dtype=torch.bool)]
    if segment_ids is not None:
        fns.append(packed_sequence_mask_function(segment_ids))
    B = attention_mask.shape[0] if attention_mask is not None else segment_ids.shape[0]
    return sdpa_mask_recent_torch(B, cache_position, key_length, mask_function=and_masks(*fns),
                                  attention_mask=None if attention_mask is None else attention_mask.bool(),
                                  allow_is_causal_skip=False)


@pytest.mark.parametrize("case", ["full", "prefill_cached", "decode_step", "packed", "packed_padded", "bidirectional"])
def test_build_attention_mask_matches_hf(case):
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4, 4]])
    K = 7
    args = {"full": (am, None, None, True), "prefill_cached": (am, torch.arange(2, 5), None, True),
            "decode_step": (am, torch.tensor([6]), None, True), "packed": (None, None, seg, True),
            "packed_padded": (am, torch.arange(3, 7), seg, True), "bidirectional": (am, None, None, False)}[case]
    attention_mask, pos, segment_ids, causal = args
    got = build_attention_mask(attention_mask, pos, K, causal=causal, segment_ids=segment_ids)
    want = hf_bool_mask(attention_mask, torch.arange(K) if pos is None else pos, K, segment_ids, causal)
    assert got.dtype == torch.bool and torch.equal(got.expand_as(want), want)


def test_build_attention_mask_per_example_and_short_masks():
    am = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    base = build_attention_mask(am, None, 4)
    # a 3-d or 4-d per-example mask, boolean or additive (HF style: the dtype's minimum)
    per_example = am.bool()[:, None, :].expand(2, 4, 4)
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~per_example[:, None], torch.finfo(torch.float32).min)
    assert torch.equal(build_attention_mask(per_example, None, 4), base)
    assert torch.equal(build_attention_mask(additive, None, 4), base)
    assert torch.equal(build_attention_mask(additive.masked_fill(additive < 0, float("-inf")), None, 4), base)
    # a static cache of 6 slots, 4 written: the unwritten slots are hidden by causality alone
    static = build_attention_mask(am, torch.tensor([3]), 6)
    assert static.shape == (2, 1, 1, 6) and static[..., 4:].sum() == 0 and torch.equal(static[..., :4], base[:, :, 3:])
    with pytest.raises(ValueError, match="key_length"):
        build_attention_mask(am, None, 3)                   # the padding mask is longer than the keys
    with pytest.raises(ValueError, match="key_length"):
        build_attention_mask(am, None, 6, causal=False)
    with pytest.raises(ValueError, match="cache_position"):
        build_attention_mask(am, torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="segment_ids"):
        build_attention_mask(am, None, 4, segment_ids=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="per-example"):
        build_attention_mask(torch.ones(2, 3, 4, dtype=torch.bool), None, 4)
    with pytest.raises(ValueError, match="attention_mask"):
        build_attention_mask(torch.ones(2, 4, dtype=torch.complex64), None, 4)


def test_prefix_lm_mask_matches_definition():
    T, lengths = 5, torch.tensor([0, 2, 5])
    got = pn.prefix_lm_mask(lengths, T)
    for b, P in enumerate(lengths.tolist()):
        for i in range(T):
            for j in range(T):
                assert bool(got[b, 0, i, j]) == (j <= i or j < P)
    assert torch.equal(got[0, 0], causal_mask(T))
    with pytest.raises(ValueError, match="prefix_lengths"):
        pn.prefix_lm_mask(torch.tensor([1.5]), T)


# ---------------------------------------------------------------- blocks with their parts swapped (Llama, T5)
def test_decoder_block_with_custom_norm_and_ffn_matches_hf_llama_layer():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm,
                                                          LlamaRotaryEmbedding, apply_rotary_pos_emb)

    cfg = LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=4, max_position_embeddings=32, rms_norm_eps=1e-6, attention_bias=False)
    cfg._attn_implementation = "eager"
    ref = LlamaDecoderLayer(cfg, layer_idx=0).eval()
    _randomise(ref)
    ours = DecoderBlock(16, 4, 24, norm_first=True, cross_attention=False, eps=1e-6, bias=False, n_kv_heads=2,
                        norm=LlamaRMSNorm, ffn=lambda d_model, d_ff: LlamaMLP(cfg)).eval()
    assert isinstance(ours.norm1, LlamaRMSNorm) and isinstance(ours.norm2, LlamaRMSNorm)
    assert isinstance(ours.ffn, LlamaMLP) and ours.norm1.variance_epsilon == 1e-6
    mapping = {"input_layernorm": "norm1", "post_attention_layernorm": "norm2", "mlp": "ffn",
               "self_attn.o_proj": "attn.out_proj", "self_attn": "attn"}
    state = {}
    for key, val in ref.state_dict().items():
        for theirs, mine in mapping.items():
            if key.startswith(theirs + "."):
                key = mine + key[len(theirs):]
                break
        state[key] = val
    ours.load_state_dict(state)
    x = torch.randn(2, 6, 16)
    am = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    position_ids = (am.cumsum(-1) - 1).clamp(min=0)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, position_ids)
    mask = build_attention_mask(am, None, 6)
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        want = ref(x, attention_mask=additive, position_embeddings=(cos, sin))
        want = want[0] if isinstance(want, tuple) else want
        got = ours(x, mask=mask, is_causal=False, rotary=lambda q, k: apply_rotary_pos_emb(q, k, cos, sin))
        # and step by step with a static cache, the rotary tables sliced per step
        cache = pn.StaticKVCache(2, 2, 8, 4)
        steps = []
        for s, e in [(0, 3), (3, 4), (4, 5), (5, 6)]:
            pos = torch.arange(s, e)
            rot = (lambda c, si: lambda q, k: apply_rotary_pos_emb(q, k, c, si))(cos[:, s:e], sin[:, s:e])
            steps.append(ours(x[:, s:e], mask=build_attention_mask(am[:, :e], pos, 8), is_causal=False,
                              cache=cache, cache_position=pos, rotary=rot))
    real = am.bool()
    real[0, 0] = False                                     # HF lets an all-padding query read everything
    torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat(steps, 1), got, atol=ATOL, rtol=1e-4)


def test_encoder_block_with_position_bias_matches_hf_t5_block():
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Block, T5DenseActDense, T5LayerNorm

    cfg = T5Config(d_model=12, d_kv=5, d_ff=20, num_heads=3, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.0, layer_norm_epsilon=1e-6,
                   is_decoder=False, feed_forward_proj="relu")
    ref = T5Block(cfg, has_relative_attention_bias=True).eval()
    _randomise(ref)
    ffn = T5DenseActDense(cfg)                                # a module, used as given
    ours = EncoderBlock(12, 3, 20, norm_first=True, eps=1e-6, bias=False, head_dim=5, scale=1.0,
                        norm=T5LayerNorm, ffn=ffn).eval()
    assert ours.ffn is ffn and isinstance(ours.norm1, T5LayerNorm)
    sa, ff = ref.layer[0], ref.layer[1]
    with torch.no_grad():
        for mine, theirs in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
            getattr(ours.attn, mine).weight.copy_(getattr(sa.SelfAttention, theirs).weight)
        ours.norm1.weight.copy_(sa.layer_norm.weight)
        ours.norm2.weight.copy_(ff.layer_norm.weight)
        ours.ffn.load_state_dict(ff.DenseReluDense.state_dict())
    x = torch.randn(2, 7, 12)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2]).bool()
    additive = torch.zeros(2, 1, 1, 7).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        want = ref(x, attention_mask=additive, cache_position=torch.arange(7))[0]
        bias = sa.SelfAttention.compute_bias(7, 7)
        got = ours(x, mask=padding_mask(keep), position_bias=bias)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_block_options_validation():
    with pytest.raises(ValueError, match="norm must be a factory"):
        EncoderBlock(8, 2, 16, norm=LayerNorm(8))
    with pytest.raises(ValueError, match="ffn must be"):
        DecoderBlock(8, 2, 16, ffn="gated")
    with pytest.raises(ValueError, match="n_kv_heads"):
        DecoderBlock(8, 4, 16, n_kv_heads=3)
    block = DecoderBlock(8, 2, 16, cross_attention=False)
    with pytest.raises(ValueError, match="no cross-attention"):
        block(torch.randn(1, 2, 8), cross_cache=pn.CrossAttentionCache())


def test_seq2seq_cached_generation_and_stack_options():
    model = Seq2SeqTransformer(vocab_size=13, d_model=16, n_heads=4, n_layers=2, d_ff=32, max_len=16,
                               pad_id=0, norm_first=True).eval()
    src = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 11, 12]])
    calls = []
    model.decoder.layers[0].cross_attn.k_proj.register_forward_hook(lambda *a: calls.append(1))
    fast = model.generate(src, bos_id=1, max_new_tokens=8, use_cache=True)
    assert len(calls) == 1                                     # memory projected once, not once per step
    assert torch.equal(fast, model.generate(src, bos_id=1, max_new_tokens=8))
    # the cached decoder's logits equal a teacher-forced pass at every step
    memory, src_mask = model.encode(src)
    tgt = torch.cat([torch.ones(2, 1, dtype=torch.long), fast[:, :-1]], 1)
    full = model.decode(tgt, memory, src_mask)
    caches, cross = model.decoder.new_caches()
    steps = [model.decode(tgt[:, t:t + 1], memory if t == 0 else None, src_mask, caches=caches,
                          cross_caches=cross, offset=t) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=1e-4)
    # block options reach every layer of a stack, and the final norm uses the same factory
    enc = pn.Encoder(2, 12, 4, 24, norm_first=True, n_kv_heads=2, head_dim=3, scale=1.0,
                     norm=torch.nn.LayerNorm, bias=False)
    assert all(layer.attn.n_kv_heads == 2 and layer.attn.scale == 1.0 and layer.attn.k_proj.bias is None
               for layer in enc.layers)
    assert isinstance(enc.norm, torch.nn.LayerNorm) and isinstance(enc.layers[1].norm2, torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="block options"):
        pn.Decoder(1, 8, 2, 16, n_kv=1)
    with pytest.raises(ValueError, match="factory"):
        pn.Encoder(2, 8, 2, 16, ffn=FeedForward(8, 16))
    with pytest.raises(ValueError, match="one cache per layer"):
        pn.Decoder(2, 8, 2, 16)(torch.randn(1, 1, 8), torch.randn(1, 2, 8), caches=[KVCache()])


@pytest.mark.parametrize("with_bias", [False, True])
def test_fully_padded_queries_give_zero_output_and_finite_gradients(with_bias):
    mha = MultiHeadAttention(8, 2, n_kv_heads=1)
    mask = build_attention_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), None, 4)   # row 0: queries 0, 1 see nothing
    x = torch.randn(2, 4, 8, requires_grad=True)
    bias = torch.randn(1, 2, 4, 4) if with_bias else None
    out = mha(x, mask=mask, position_bias=bias)
    torch.testing.assert_close(out[0, :2], mha.out_proj.bias.expand(2, 8).detach())
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in mha.parameters())


def test_blocks_assembled_from_plmkit_parts_match_hf_llama_and_t5():
    """The chapter 5/6 recipe with plmkit's own RMSNorm, GatedFeedForward, rotary and relative bias."""
    from transformers import LlamaConfig, T5Config
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.t5.modeling_t5 import T5Block

    # Llama: Pre-RMSNorm, SwiGLU, GQA, RoPE
    cfg = LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=4, max_position_embeddings=32, rms_norm_eps=1e-6, attention_bias=False)
    cfg._attn_implementation = "eager"
    ref = LlamaDecoderLayer(cfg, layer_idx=0).eval()
    _randomise(ref)
    ours = DecoderBlock(16, 4, 24, norm_first=True, cross_attention=False, eps=1e-6, bias=False, n_kv_heads=2,
                        norm=pn.RMSNorm, ffn=pn.GatedFeedForward).eval()
    names = {"input_layernorm": "norm1", "post_attention_layernorm": "norm2", "mlp": "ffn",
             "self_attn.o_proj": "attn.out_proj", "self_attn": "attn"}
    state = {}
    for key, val in ref.state_dict().items():
        prefix = next(p for p in names if key.startswith(p + "."))
        state[names[prefix] + key[len(prefix):]] = val
    ours.load_state_dict(state)
    x = torch.randn(2, 6, 16)
    am = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    position_ids = (am.cumsum(-1) - 1).clamp(min=0)
    rope = pn.RotaryEmbedding(4, 32)
    cos, sin = rope(position_ids)
    mask = build_attention_mask(am, None, 6)
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        want = ref(x, attention_mask=additive, position_embeddings=(cos, sin))
        want = want[0] if isinstance(want, tuple) else want
        got = ours(x, mask=mask, is_causal=False, rotary=lambda q, k: pn.apply_rotary(q, k, cos, sin))
    real = am.bool()
    real[0, 0] = False                                     # HF lets an all-padding query read everything
    torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=1e-4)

    # T5 encoder block: Pre-RMSNorm without bias, d_kv != d_model / H, no 1/sqrt(D), relative position bias
    cfg = T5Config(d_model=12, d_kv=5, d_ff=20, num_heads=3, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.0, layer_norm_epsilon=1e-6,
                   feed_forward_proj="relu")
    ref = T5Block(cfg, has_relative_attention_bias=True).eval()
    _randomise(ref)
    ours = EncoderBlock(12, 3, 20, norm_first=True, activation="relu", eps=1e-6, bias=False, head_dim=5, scale=1.0,
                        norm=pn.RMSNorm).eval()
    relative = pn.RelativePositionBias(3, num_buckets=8, max_distance=16, bidirectional=True)
    sa, ff = ref.layer[0], ref.layer[1]
    with torch.no_grad():
        for mine, theirs in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
            getattr(ours.attn, mine).weight.copy_(getattr(sa.SelfAttention, theirs).weight)
        relative.weight.copy_(sa.SelfAttention.relative_attention_bias.weight)
        ours.norm1.weight.copy_(sa.layer_norm.weight)
        ours.norm2.weight.copy_(ff.layer_norm.weight)
        ours.ffn.fc1.weight.copy_(ff.DenseReluDense.wi.weight)
        ours.ffn.fc2.weight.copy_(ff.DenseReluDense.wo.weight)
    x = torch.randn(2, 7, 12)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2]).bool()
    additive = torch.zeros(2, 1, 1, 7).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        want = ref(x, attention_mask=additive, cache_position=torch.arange(7))[0]
        got = ours(x, mask=padding_mask(keep), position_bias=relative(torch.arange(7), 7))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
