"""The gpu suite: what only a CUDA device can show. Skipped, with the reason, where there is none.

Run it where a GPU is lent (../shared/GPU.md): ``pytest -m gpu tests/test_gpu.py -rs``.

    bf16 autocast + fused AdamW + torch.compile training   tracks float32 training
    checkpoint / resume on CUDA                            continues exactly (bf16, fused AdamW, dropout)
    fused vs explicit attention with padding               equal, fully padded query rows included
    static-cache decoding                                  equals one full pass, left-padded batch
    compiled static-cache decoding                         no recompiles after warm-up (dynamo's counters)
    forward passes and masking                             no host-device sync (CUDA sync debug mode)

Written against the shared interfaces of BRIEF.md: ``GPT.forward(input_ids, attention_mask,
position_ids, *, caches, cache_position)`` and ``GPT.new_caches(batch_size, max_length,
static=True)`` (plmkit.nn.StaticKVCache underneath).
"""
import warnings

import pytest
import torch

from plmkit.models import GPT, BertConfig, BertForSequenceClassification, GPTConfig
from plmkit.nn.attention import scaled_dot_product_attention
from plmkit.objectives import mask_tokens
from plmkit.objectives.clm import random_windows
from plmkit.train import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (the gpu suite runs where one is lent, see ../shared/GPU.md)"),
]

CUDA = "cuda"
V = 64


def tiny_gpt(seed=0, dropout=0.0, n_positions=64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, n_positions=n_positions, n_embd=64, n_layer=2, n_head=4, dropout=dropout))


def pattern_batches(n, B=16, T=32, seed=0):
    """Windows of a repeating pattern with noise: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    text = torch.arange(2000) % 17 * 3 % V
    text = torch.where(torch.rand(2000, generator=g) < 0.1, torch.randint(V, (2000,), generator=g), text)
    return [random_windows(text, T, B, generator=g) for _ in range(n)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_bf16_fused_compiled_training_tracks_fp32():
    data = pattern_batches(8)
    kw = dict(max_steps=40, lr=3e-3, warmup_steps=5, log_every=5, progress=False, device=CUDA)
    ref = Trainer(tiny_gpt(), data, precision="fp32", **kw)
    fast = Trainer(tiny_gpt(), data, precision="bf16", compile=True, **kw)
    assert fast.amp_dtype is torch.bfloat16
    assert all(g["fused"] for g in fast.optimizer.param_groups)            # fused AdamW on CUDA
    a, b = ref.fit(), fast.fit()
    assert a["loss"][-1] < 0.6 * a["loss"][0]                              # both really train ...
    assert b["loss"][-1] < 0.6 * b["loss"][0]
    for x, y in zip(a["loss"], b["loss"]):                                 # ... along the same curve
        assert abs(x - y) <= 0.05 * x, (a["loss"], b["loss"])
    # Weights are not compared one by one: a key bias has zero gradient in exact arithmetic (softmax
    # ignores it) and bf16 noise, normalised by Adam, moves it freely. Held-out loss is what matters.
    held_out = pattern_batches(4, seed=7)
    ref.eval_data = fast.eval_data = held_out
    assert abs(ref.evaluate() - fast.evaluate()) <= 0.05 * ref.evaluate()


def test_resume_is_exact_on_cuda(tmp_path):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    data = pattern_batches(5, B=8, T=24)

    def make(model):
        return Trainer(model, data, max_steps=10, warmup_steps=2, eval_data=pattern_batches(2, seed=9),
                       eval_every=4, precision="bf16", progress=False, device=CUDA, log_every=2)

    # The math attention kernel is deterministic; this test is about the checkpoint, not the kernels.
    with sdpa_kernel(SDPBackend.MATH):
        torch.manual_seed(123)
        torch.cuda.manual_seed(123)
        straight = make(tiny_gpt(dropout=0.1))
        straight.fit()

        torch.manual_seed(123)
        torch.cuda.manual_seed(123)
        first = make(tiny_gpt(dropout=0.1))
        first.fit(steps=6)
        first.save_checkpoint(tmp_path / "run.pt")
        torch.manual_seed(999)
        torch.cuda.manual_seed(999)                                         # the checkpoint must restore both RNGs
        resumed = make(tiny_gpt(seed=5, dropout=0.1))
        resumed.load_checkpoint(tmp_path / "run.pt")
        resumed.fit()
    assert resumed.step == straight.step == 10
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    assert straight.history == resumed.history


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_and_explicit_attention_agree_with_padding(dtype, atol):
    torch.manual_seed(0)
    B, H, T, D = 3, 4, 37, 32
    q, k, v = (torch.randn(B, H, T, D, device=CUDA, dtype=dtype) for _ in range(3))
    real = torch.ones(B, T, dtype=torch.bool, device=CUDA)
    real[1, :9] = False                                                    # left padding
    real[2, 30:] = False                                                   # right padding
    causal = torch.ones(T, T, dtype=torch.bool, device=CUDA).tril()
    for mask in (real[:, None, None, :], real[:, None, None, :] & causal):  # padding; padding + causal
        fused = scaled_dot_product_attention(q, k, v, mask)
        explicit, _ = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
        assert torch.allclose(fused.float(), explicit.float(), atol=atol), (fused - explicit).abs().max()
        blocked = ~mask.any(-1).expand(B, H, T)                            # queries that see no key at all
        assert torch.equal(fused[blocked], torch.zeros_like(fused[blocked]))


def _left_padded(B=3, prompt=6, new=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(V, (B, prompt + new), generator=g)
    mask = torch.ones(B, prompt + new, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)                         # Hugging Face's rule
    return ids.to(CUDA), mask.to(CUDA), positions.to(CUDA)


def _decode_static(step_fn, caches, ids, mask, positions, prompt):
    """Prefill `prompt` tokens, then one token per call, into static `caches`; logits (B, L, V)."""
    L = ids.shape[1]
    seen = torch.zeros_like(mask)                                          # (B, L): slots written so far
    seen[:, :prompt] = mask[:, :prompt]
    out = [step_fn(ids[:, :prompt], attention_mask=seen, position_ids=positions[:, :prompt], caches=caches,
                   cache_position=torch.arange(prompt, device=CUDA))]
    for t in range(prompt, L):
        seen[:, t] = mask[:, t]
        out.append(step_fn(ids[:, t:t + 1], attention_mask=seen, position_ids=positions[:, t:t + 1],
                           caches=caches, cache_position=torch.tensor([t], device=CUDA)))
    return torch.cat(out, dim=1)


@torch.no_grad()
def test_static_cache_decoding_equals_a_full_pass():
    model = tiny_gpt(seed=2).to(CUDA).eval()
    ids, mask, positions = _left_padded()
    full = model(ids, attention_mask=mask, position_ids=positions)         # (B, L, V)
    caches = model.new_caches(batch_size=ids.shape[0], max_length=ids.shape[1], static=True)
    steps = _decode_static(model, caches, ids, mask, positions, prompt=6)
    real = mask.bool()
    assert torch.allclose(steps[real], full[real], atol=1e-4), (steps[real] - full[real]).abs().max()


@torch.no_grad()
def test_compiled_static_decoding_does_not_recompile_after_warm_up():
    from torch._dynamo.utils import counters

    model = tiny_gpt(seed=3).to(CUDA).eval()
    compiled = torch.compile(model)
    ids, mask, positions = _left_padded(new=12)
    B, L = ids.shape
    eager = _decode_static(model, model.new_caches(batch_size=B, max_length=L, static=True), ids, mask,
                           positions, prompt=6)
    caches = model.new_caches(batch_size=B, max_length=L, static=True)   # allocated once, reused (in place)
    _decode_static(compiled, caches, ids, mask, positions, prompt=6)      # warm-up: prefill and step shapes
    before = (counters["stats"]["unique_graphs"], counters["frames"]["total"])
    again = _decode_static(compiled, caches, ids, mask, positions, prompt=6)
    after = (counters["stats"]["unique_graphs"], counters["frames"]["total"])
    print(f"(graphs, frames) after warm-up {before}, after a second decode {after}; "
          f"graph breaks {dict(counters['graph_break'])}")
    assert after == before, f"recompiled after warm-up: (graphs, frames) {before} -> {after}"
    real = mask.bool()
    assert torch.allclose(again[real], eager[real], atol=1e-4), (again[real] - eager[real]).abs().max()


def _syncs(fn):
    """Run fn under CUDA's sync debug mode; return how many host-device syncs it asked for."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Only the sync warnings themselves; the first set_sync_debug_mode call also warns that the
    # mode is "a prototype feature" (seen on an H200), which is not a sync.
    return sum("synchroniz" in str(w.message) and "prototype" not in str(w.message) for w in caught)


@torch.no_grad()
def test_forward_passes_and_masking_do_not_sync():
    bert = BertForSequenceClassification(BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=48)).to(CUDA).eval()
    ids = torch.randint(V, (4, 16), device=CUDA)
    attn = torch.ones(4, 16, dtype=torch.long, device=CUDA)
    attn[0, 10:] = 0
    types = torch.zeros(4, 16, dtype=torch.long, device=CUDA)
    pos = torch.arange(16, device=CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    gpt = tiny_gpt(seed=4).to(CUDA).eval()
    g_ids, g_mask, g_pos = _left_padded()
    assert _syncs(lambda: bert(ids, attn, types, pos, output_hidden_states=True)) == 0
    assert _syncs(lambda: mask_tokens(ids, 3, V, special_ids=(0, 1, 2))) == 0
    assert _syncs(lambda: mask_tokens(ids, 3, V, special_ids=(0, 1, 2), generator=gen)) == 0
    assert _syncs(lambda: gpt(g_ids, attention_mask=g_mask, position_ids=g_pos)) == 0
    # The sync counter itself works: reading a value is one.
    assert _syncs(lambda: ids.sum().item()) == 1


def test_evaluation_reads_the_device_once():
    data = [tuple(t.to(CUDA) for t in b) for b in pattern_batches(5, B=4, T=16)]
    trainer = Trainer(tiny_gpt(), data[:1], eval_data=data, max_steps=1, precision="bf16", progress=False,
                      device=CUDA)
    assert _syncs(trainer.evaluate) == 1                                   # the final read, not one per batch
