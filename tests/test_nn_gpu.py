"""plmkit.nn on a CUDA device: fused vs explicit attention with padding, static-cache decoding, no syncs, one graph.

Skipped without CUDA (run with ``pytest -m gpu tests/test_nn_gpu.py`` where a GPU is lent).
"""
import pytest
import torch

from plmkit.nn import DecoderBlock, MultiHeadAttention, StaticKVCache, build_attention_mask

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LEFT_PADDED = [[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
               [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
               [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_fused_equals_explicit_with_padding_on_cuda(dtype, tol):
    torch.manual_seed(0)
    mha = MultiHeadAttention(64, 8, n_kv_heads=2).cuda().to(dtype).eval()
    am = torch.tensor(LEFT_PADDED, device="cuda")
    x = torch.randn(3, 12, 64, device="cuda", dtype=dtype)
    mask = build_attention_mask(am, None, 12)
    with torch.no_grad():
        fused = mha(x, mask=mask)
        explicit, _ = mha(x, mask=mask, return_weights=True)
        ref = mha.double()(x.double(), mask=mask, return_weights=True)[0]
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused.double(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(explicit.double(), ref, atol=tol, rtol=tol)


def _stack():
    torch.manual_seed(0)
    return torch.nn.ModuleList(DecoderBlock(64, 8, 128, norm_first=True, cross_attention=False, n_kv_heads=2)
                               for _ in range(2)).cuda().eval()


def test_static_cache_decoding_equals_full_pass_without_host_sync():
    blocks = _stack()
    B, L = 3, 12
    am = torch.tensor(LEFT_PADDED, device="cuda")
    x = torch.randn(B, L, 64, device="cuda")
    caches = [StaticKVCache(B, 2, L, 8, device="cuda") for _ in blocks]

    def run(xs, pos, key_length, use_cache):
        mask = build_attention_mask(am[:, :key_length] if not use_cache else am, pos, key_length)
        for block, cache in zip(blocks, caches):
            xs = block(xs, mask=mask, is_causal=False, cache=cache if use_cache else None,
                       cache_position=pos if use_cache else None)
        return xs

    with torch.no_grad():
        full = run(x, None, L, False)
        outs = [run(x[:, :4], torch.arange(4, device="cuda"), L, True)]
        positions = torch.arange(L, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")              # any host-device sync now raises
        try:
            for t in range(4, L):
                outs.append(run(x[:, t:t + 1], positions[t:t + 1], L, True))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_static_decode_step_no_recompiles(mode):
    from torch._dynamo.utils import counters

    blocks = _stack()
    B, L = 3, 12
    am = torch.tensor(LEFT_PADDED, device="cuda")
    x = torch.randn(B, L, 64, device="cuda")
    caches = [StaticKVCache(B, 2, L, 8, device="cuda") for _ in blocks]

    def step(xs, pos):
        mask = build_attention_mask(am, pos, L)
        for block, cache in zip(blocks, caches):
            xs = block(xs, mask=mask, is_causal=False, cache=cache, cache_position=pos)
        return xs

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, mode=mode, fullgraph=True, dynamic=False)
    with torch.no_grad():
        full = blocks[0](x, mask=build_attention_mask(am, None, L), is_causal=False)
        full = blocks[1](full, mask=build_attention_mask(am, None, L), is_causal=False)
        outs = [step(x[:, :4], torch.arange(4, device="cuda"))]
        for t in range(4, L):
            out = compiled(x[:, t:t + 1], torch.tensor([t], device="cuda"))
            outs.append(out.clone())                          # CUDA-graph outputs are overwritten by the next replay
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize("with_bias", [False, True])
def test_fully_padded_queries_give_finite_gradients_on_cuda(with_bias):
    torch.manual_seed(0)
    mha = MultiHeadAttention(64, 8, n_kv_heads=2).cuda()
    am = torch.tensor(LEFT_PADDED, device="cuda")
    x = torch.randn(3, 12, 64, device="cuda", requires_grad=True)
    bias = torch.randn(1, 8, 12, 12, device="cuda") if with_bias else None
    out = mha(x, mask=build_attention_mask(am, None, 12), position_bias=bias)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters())
