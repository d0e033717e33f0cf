"""plmkit.nn.cache: cached decoding equals a full pass, and the caches agree with Hugging Face's cache layers.

References: a full (uncached) forward over the whole sequence, and
``transformers.cache_utils.DynamicLayer`` / ``StaticLayer`` for the buffers
themselves (update, crop, reorder). Tiny sizes, float32 at 1e-5.
"""
import doctest

import pytest
import torch
from transformers.cache_utils import DynamicLayer, StaticLayer

import plmkit.nn.cache as cache_mod
from plmkit.nn import (CrossAttentionCache, DecoderBlock, KVCache, MultiHeadAttention, StaticKVCache,
                       build_attention_mask)
from plmkit.nn.attention import KVCache as KVCacheFromAttention

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rotate_half_rotary(position_ids: torch.Tensor, head_dim: int):
    """A RoPE-like (q, k) -> (q, k) for positions (B, T); enough to show rotation happens before caching."""
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    ang = position_ids[..., None].float() * inv                        # (B, T, D/2)
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None]                # (B, 1, T, D)
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None]

    def rot(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    return lambda q, k: (q * cos + rot(q) * sin, k * cos + rot(k) * sin)


def left_padded_mask():
    # row 0 has 2 pads, row 1 none, row 2 one: ragged prompts left-padded, as generate() will do
    return torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1],
                         [1, 1, 1, 1, 1, 1, 1, 1],
                         [0, 1, 1, 1, 1, 1, 1, 1]])


def decode_stepwise(run, x, attention_mask, prompt, cache, static_length=None):
    """Prefill `prompt` positions, then one position at a time; `run(x_part, mask, pos)` calls the layer."""
    T = x.shape[1]
    outs, starts = [], [0] + list(range(prompt, T))
    ends = [prompt] + list(range(prompt + 1, T + 1))
    for s, e in zip(starts, ends):
        pos = torch.arange(s, e)
        K = static_length if static_length is not None else e
        mask = build_attention_mask(attention_mask[:, :e], pos, K)
        outs.append(run(x[:, s:e], mask, pos))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("use_rotary", [False, True])
def test_cached_attention_equals_full_pass_with_padding(static, n_kv_heads, use_rotary):
    B, T, C, H = 3, 8, 16, 4
    mha = MultiHeadAttention(C, H, n_kv_heads=n_kv_heads).eval()
    x = torch.randn(B, T, C)
    am = left_padded_mask()
    position_ids = (am.cumsum(-1) - 1).clamp(min=0)                     # Hugging Face's rule for left padding
    rot = (lambda s, e: rotate_half_rotary(position_ids[:, s:e], C // H)) if use_rotary else (lambda s, e: None)
    with torch.no_grad():
        full = mha(x, mask=build_attention_mask(am, None, T), rotary=rot(0, T))
        L = 11
        cache = StaticKVCache(B, n_kv_heads, L, C // H) if static else KVCache()
        got = decode_stepwise(lambda xp, m, pos: mha(xp, mask=m, cache=cache, cache_position=pos,
                                                     rotary=rot(int(pos[0]), int(pos[-1]) + 1)),
                              x, am, prompt=3, cache=cache, static_length=L if static else None)
    torch.testing.assert_close(got, full, atol=ATOL, rtol=1e-4)
    assert len(cache) == T
    # padded queries see no key at all: zero attention output, so the output projection's bias only
    torch.testing.assert_close(got[0, :2], mha.out_proj.bias.expand(2, C), atol=ATOL, rtol=0)


@pytest.mark.parametrize("static", [False, True])
def test_is_causal_with_cache_position_hides_unwritten_slots(static):
    """The block's usual call (is_causal=True + a padding mask) is right with a static cache too."""
    B, T, C = 3, 8, 16
    block = DecoderBlock(C, 4, 32, norm_first=True, cross_attention=False, n_kv_heads=2).eval()
    x = torch.randn(B, T, C)
    am = left_padded_mask()
    with torch.no_grad():
        full = block(x, mask=build_attention_mask(am, None, T), is_causal=False)
        L = 12
        cache = StaticKVCache(B, 2, L, 4) if static else KVCache()
        outs = []
        for s, e in [(0, 4)] + [(t, t + 1) for t in range(4, T)]:
            pad = torch.ones(B, (L if static else e) - e, dtype=am.dtype)
            keep = torch.cat([am[:, :e], pad], 1).bool()[:, None, None, :]   # padding only: causality from positions
            outs.append(block(x[:, s:e], mask=keep, cache=cache, cache_position=torch.arange(s, e)))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=1e-4)


def test_static_cache_matches_hf_static_layer():
    ours, ref = StaticKVCache(2, 3, 7, 4), StaticLayer(max_cache_len=7)
    for pos in (torch.arange(0, 3), torch.tensor([3]), torch.tensor([4, 5])):
        k, v = torch.randn(2, 3, len(pos), 4), torch.randn(2, 3, len(pos), 4)
        ok, ov = ours.update(k, v, pos)
        rk, rv = ref.update(k, v, {"cache_position": pos})
        assert torch.equal(ok, rk) and torch.equal(ov, rv)
    assert len(ours) == 6 and ours.valid.tolist() == [True] * 6 + [False]
    index = torch.tensor([1, 1])
    ptr = ours.k.data_ptr()
    ours.reorder(index), ref.reorder_cache(index)
    assert torch.equal(ours.k, ref.keys) and torch.equal(ours.v, ref.values)
    assert ours.k.data_ptr() == ptr                                     # in place: CUDA graphs keep their addresses
    ours.crop(2)
    assert len(ours) == 2 and ours.k[:, :, 2:].eq(0).all() and torch.equal(ours.k[:, :, :2], ref.keys[:, :, :2])


def test_growing_cache_matches_hf_dynamic_layer():
    ours, ref = KVCache(), DynamicLayer()
    for T_new in (3, 1, 2):
        k, v = torch.randn(2, 3, T_new, 4), torch.randn(2, 3, T_new, 4)
        ok, ov = ours.update(k, v, torch.arange(len(ours), len(ours) + T_new))
        rk, rv = ref.update(k, v)
        assert torch.equal(ok, rk) and torch.equal(ov, rv)
    index = torch.tensor([1, 0, 0])                                     # beam search may grow the batch
    ours.reorder(index), ref.batch_select_indices(index)
    assert torch.equal(ours.k, ref.keys) and ours.k.shape[0] == 3
    ours.crop(4), ref.crop(4)
    assert len(ours) == 4 and torch.equal(ours.v, ref.values)
    assert KVCacheFromAttention is KVCache                              # chapter 4's import path still works


@pytest.mark.parametrize("static", [False, True])
def test_crop_then_refeed_equals_fresh_decoding(static):
    """Speculative decoding: after crop(n), feeding other tokens gives what a fresh cache would."""
    mha = MultiHeadAttention(8, 2).eval()
    x, x_alt = torch.randn(1, 6, 8), torch.randn(1, 3, 8)
    new = (lambda: StaticKVCache(1, 2, 8, 4)) if static else KVCache
    with torch.no_grad():
        cache = new()
        mha(x, is_causal=True, cache=cache, cache_position=torch.arange(6))
        cache.crop(3)
        got = mha(x_alt, is_causal=True, cache=cache, cache_position=torch.arange(3, 6))
        fresh = mha(torch.cat([x[:, :3], x_alt], 1), is_causal=True)[:, 3:]
    torch.testing.assert_close(got, fresh, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("static", [False, True])
def test_reorder_follows_the_selected_rows(static):
    """After reorder(index), decoding row b continues old row index[b]'s sequence."""
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 5, 8)
    index = torch.tensor([2, 0, 2])
    new = (lambda: StaticKVCache(3, 2, 6, 4)) if static else KVCache
    with torch.no_grad():
        cache = new()
        mha(x[:, :4], is_causal=True, cache=cache, cache_position=torch.arange(4))
        cache.reorder(index)
        step = torch.randn(3, 1, 8)
        got = mha(step, is_causal=True, cache=cache, cache_position=torch.tensor([4]))
        want = mha(torch.cat([x[index, :4], step], 1), is_causal=True)[:, 4:]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_cross_attention_cache_projects_once():
    mha = MultiHeadAttention(8, 2, n_kv_heads=1).eval()
    memory, keep = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    calls = []
    mha.k_proj.register_forward_hook(lambda *a: calls.append("k"))
    mha.v_proj.register_forward_hook(lambda *a: calls.append("v"))
    cache = CrossAttentionCache()
    mask = keep[:, None, None, :]
    queries = torch.randn(2, 4, 8)
    with torch.no_grad():
        steps = [mha(queries[:, :1], context=memory, mask=mask, cache=cache)]
        steps += [mha(queries[:, t:t + 1], mask=mask, cache=cache) for t in range(1, 4)]   # no context needed
        n_calls = len(calls)
        full = mha(queries, context=memory, mask=mask)
    assert n_calls == 2                                                 # one k_proj + one v_proj call in 4 steps
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=1e-4)
    cache.reorder(torch.tensor([1, 1]))
    assert torch.equal(cache.k[0], cache.k[1]) and len(cache) == 5
    cache.crop(3)                                                       # decoder positions: encoder keys stay
    assert len(cache) == 5


def test_decoder_block_with_self_and_cross_caches_equals_full_pass():
    block = DecoderBlock(12, 3, 24, norm_first=False, n_kv_heads=3).eval()
    x, memory = torch.randn(2, 5, 12), torch.randn(2, 6, 12)
    mem_mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]).bool()[:, None, None, :]
    with torch.no_grad():
        full = block(x, memory, memory_mask=mem_mask)
        for static in (False, True):
            cache = StaticKVCache(2, 3, 5, 4) if static else KVCache()
            cross = CrossAttentionCache()
            outs = [block(x[:, :2], memory, memory_mask=mem_mask, cache=cache, cache_position=torch.arange(2),
                          cross_cache=cross)]
            outs += [block(x[:, t:t + 1], None, memory_mask=mem_mask, cache=cache,
                           cache_position=torch.tensor([t]), cross_cache=cross) for t in range(2, 5)]
            torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=1e-4)


def test_cache_validation():
    cache = StaticKVCache(2, 2, 4, 3)
    k = torch.randn(2, 2, 1, 3)
    with pytest.raises(ValueError, match="cache_position"):
        cache.update(k, k, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"cache_position values must lie in \[0, 3\]"):
        cache.update(k, k, torch.tensor([4]))
    with pytest.raises(ValueError, match="T_new"):
        cache.update(k, k, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cache.update(torch.randn(2, 1, 1, 3), torch.randn(2, 1, 1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="float64"):
        cache.update(k.double(), k.double(), torch.tensor([0]))
    with pytest.raises(ValueError, match="index"):
        cache.reorder(torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="length"):
        cache.crop(5)
    for name, bad in [("batch_size", 0), ("max_length", -1), ("head_dim", 2.0)]:
        with pytest.raises(ValueError, match=name):
            StaticKVCache(**{"batch_size": 1, "n_kv_heads": 1, "max_length": 4, "head_dim": 2, name: bad})
    with pytest.raises(ValueError, match="dtype"):
        StaticKVCache(1, 1, 4, 2, dtype=torch.long)
    grow = KVCache()
    grow.update(k, k)
    with pytest.raises(ValueError, match="only appends"):
        grow.update(k, k, torch.tensor([0]))
    with pytest.raises(ValueError, match="cached"):
        grow.update(torch.randn(3, 2, 1, 3), torch.randn(3, 2, 1, 3))
    with pytest.raises(ValueError, match="length"):
        grow.crop(2)
    with pytest.raises(ValueError, match="4-d"):
        grow.update(k[0], k[0])
    cross = CrossAttentionCache()
    cross.update(k, k)
    with pytest.raises(ValueError, match="already set"):
        cross.update(k, k)
    mha = MultiHeadAttention(6, 2)
    with pytest.raises(ValueError, match="cache_position"):
        mha(torch.randn(2, 1, 6), cache=StaticKVCache(2, 2, 4, 3))
    with pytest.raises(ValueError, match="context"):
        mha(torch.randn(2, 1, 6), cache=CrossAttentionCache())


def test_docstring_examples():
    result = doctest.testmod(cache_mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_static_decode_step_compiles_to_one_graph():
    """A decode step (mask + block + static cache) traces as one graph and is not recompiled as positions move.

    fullgraph=True also proves the step reads no tensor value back to Python (that would break the graph),
    which is what "no host-device sync" means on a GPU. aot_eager needs no C++ compiler, so this runs on CPU."""
    from torch._dynamo.utils import counters

    block = DecoderBlock(16, 4, 32, norm_first=True, cross_attention=False, n_kv_heads=2).eval()
    B, L = 2, 10
    am = torch.tensor([[0, 1] + [1] * 8, [1] * 10])
    x = torch.randn(B, L, 16)
    cache = StaticKVCache(B, 2, L, 4)

    def step(xs, pos):
        return block(xs, mask=build_attention_mask(am, pos, L), is_causal=False, cache=cache, cache_position=pos)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        full = block(x, mask=build_attention_mask(am, None, L), is_causal=False)
        outs = [step(x[:, :3], torch.arange(3))]                       # prefill, eager
        outs += [compiled(x[:, t:t + 1], torch.tensor([t])) for t in range(3, L)]
    assert counters["stats"]["unique_graphs"] == 1                      # 7 decode steps, one graph
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=1e-4)
    torch._dynamo.reset()
