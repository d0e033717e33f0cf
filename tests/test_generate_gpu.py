"""GPT decoding on a CUDA device: cached and static-cache steps equal a full pass and never sync
with the host; cached, static and recompute generation give the same tokens.

Skipped without CUDA (run with ``pytest -m gpu tests/test_generate_gpu.py`` where a GPU is lent).
"""
import pytest
import torch
import torch.nn.functional as F

from plmkit.generate import CachedState, generate, positions_from_mask
from plmkit.models import GPT, GPTConfig

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

V = 97


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(8)                  # peaked distributions: greedy has no near-ties
    return model.to("cuda", dtype)


def _padded(lengths=(7, 4, 1)):
    T = max(lengths)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(V, (len(lengths), T), generator=g)
    mask = torch.stack([torch.arange(T) >= T - n for n in lengths]).long()
    return ids.cuda(), mask.cuda()


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 0.15)])
def test_cached_steps_equal_a_full_pass_without_host_sync(static, dtype, tol):
    model = _model(dtype)
    ids, mask = _padded()
    state = CachedState(model, max_new_tokens=10, block_size=64, static=static)
    with torch.no_grad():
        logits = [state.prefill(ids, mask)]
        new = [logits[0].argmax(-1)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")              # any host-device sync now raises
        try:
            for _ in range(8):
                logits.append(state.step(new[-1]))
                new.append(logits[-1].argmax(-1))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        seq = torch.cat([ids, torch.stack(new[:-1], 1)], 1)
        full_mask = F.pad(mask, (0, seq.size(1) - ids.size(1)), value=1)
        full = model(seq, attention_mask=full_mask, position_ids=positions_from_mask(full_mask))
        expected = full[:, ids.size(1) - 1:]                                   # (B, 9, V)
    got = torch.stack(logits, 1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0, stop_tokens=[5, 9]),
                                dict(num_beams=3, stop_tokens=[5, 9])])
def test_cached_static_and_recompute_give_the_same_tokens_on_cuda(kw):
    model = _model()
    ids, mask = _padded()
    outs = [generate(model, ids, 24, attention_mask=mask, use_cache=c, static_cache=s, **kw)
            for c, s in ((False, False), (True, False), (True, True))]
    assert outs[0].device.type == "cuda"
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    cpu = generate(model.cpu(), ids.cpu(), 24, attention_mask=mask.cpu(), **kw)
    assert torch.equal(cpu, outs[0].cpu())
