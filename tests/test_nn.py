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
                       MultiHeadAttention, Seq2SeqTransformer, SinusoidalPositionalEncoding, causal_mask,
                       merge_heads, padding_mask, record_attention, scaled_dot_product_attention,
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
