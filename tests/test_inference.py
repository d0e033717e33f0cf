"""plmkit.inference: int8 weights, speculative decoding, the paged cache, the memory/FLOP calculators.

References: plain float matrices and F.linear (int8), the target model's own sampling distribution computed
exactly by enumeration (speculative decoding, chi-square test with a fixed seed), the target's greedy
output from plmkit.generate (itself equal to Hugging Face, tests/test_generate.py), the growing KVCache
(paged cache), and published LLaMA parameter counts (calculators).
"""
import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from plmkit import inference
from plmkit.generate import generate
from plmkit.inference import (BlockPool, Int8Linear, PagedKVCache, accept_draft, dequantize_int8,
                              expected_tokens_per_round, forward_cost, fragmentation, kv_cache_bytes,
                              linear_weight_bytes, lookup_slot, memory_report, quantize_int8, quantize_model_int8_,
                              residual_distribution, speculative_generate)
from plmkit.models.llama import Llama, LlamaConfig


def tiny_llama(seed, V=40, width=32, layers=2, scale=0.15):
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab_size=V, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else scale * torch.randn_like(p))
    return model.eval()


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; cells expected < 5 are pooled into one."""
    n = counts.sum()
    expected = probs.double() * n
    small = expected < 5
    obs = torch.cat([counts[~small].double(), counts[small].double().sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


# ----------------------------------------------------------------------------- int8

def test_int8_round_to_nearest_is_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g)
    w[3, 7] = 40.0                                  # an outlier in one row only
    w[5] = 0.0                                      # a row of zeros
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and s.shape == (64,)
    err = (dequantize_int8(q, s) - w).abs()
    bound = w.abs().amax(dim=1, keepdim=True) / 254
    assert bool((err <= bound + 1e-7).all())
    assert torch.equal(dequantize_int8(q, s)[5], torch.zeros(48))
    # the outlier's row has its own scale: other rows keep their resolution
    assert float(err[0].max()) < 0.02
    # the bound is sharp enough to catch truncation (which only promises absmax / 127)
    truncated = torch.trunc(w / s[:, None]) * s[:, None]
    assert bool(((truncated - w).abs() > bound + 1e-7).any())


def test_int8_linear_computes_with_the_dequantised_weight():
    lin = torch.nn.Linear(24, 10)
    x = torch.randn(3, 5, 24)
    qlin = Int8Linear.from_linear(lin)
    want = F.linear(x, dequantize_int8(*quantize_int8(lin.weight)), lin.bias)
    torch.testing.assert_close(qlin(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qlin(x), lin(x), atol=0.05, rtol=0.05)


def test_int8_model_keeps_its_predictions_and_quarters_the_linear_bytes():
    model = tiny_llama(0)
    ids = torch.randint(40, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)
        fp32_bytes = linear_weight_bytes(model)
        quantize_model_int8_(model)
        after = model(ids)
    assert isinstance(model.blocks[0].attn.q_proj, Int8Linear) and isinstance(model.lm_head, torch.nn.Linear)
    assert linear_weight_bytes(model) < 0.3 * fp32_bytes + 40 * 32 * 4
    agree = (before.argmax(-1) == after.argmax(-1)).float().mean()
    ppl = lambda logits: math.exp(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))  # noqa: E731
    print(f"int8: top-1 agreement {agree:.2f}, perplexity {ppl(before):.3f} -> {ppl(after):.3f}")   # reported
    assert agree > 0.8


def test_int8_validation():
    with pytest.raises(ValueError, match="weight"):
        quantize_int8(torch.zeros(3))
    with pytest.raises(ValueError, match="scale"):
        dequantize_int8(torch.zeros(2, 2, dtype=torch.int8), torch.ones(3))
    model = tiny_llama(0)
    inference.fuse_qkv_(model)
    with pytest.raises(ValueError, match="unfuse"):
        quantize_model_int8_(model)


# ----------------------------------------------------------------------------- speculative decoding

def test_residual_distribution():
    p, q = torch.tensor([0.1, 0.6, 0.3]), torch.tensor([0.4, 0.2, 0.4])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(residual_distribution(p, p), p)


def test_the_accept_reject_rule_emits_the_target_distribution():
    """First emitted token of a round, many rounds: distributed as p[0], whatever q is (chi-square)."""
    g = torch.Generator().manual_seed(0)
    V, k = 5, 2
    p = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    counts, accepted = torch.zeros(V), 0
    n = 20000
    for _ in range(n):
        draft = torch.stack([torch.multinomial(q[i], 1, generator=g)[0] for i in range(k)])
        m, token = accept_draft(p, q, draft, g)
        first = int(draft[0]) if m > 0 else token
        counts[first] += 1
        accepted += m > 0
    assert chi_square_p_value(counts, p[0]) > 1e-3
    # the first draft token is accepted with probability sum_x min(p, q)
    assert abs(accepted / n - float(torch.minimum(p[0], q[0]).sum())) < 0.015
    # resampling from p instead of the residual is biased: the same test rejects it
    biased = torch.zeros(V)
    for _ in range(n):
        x = int(torch.multinomial(q[0], 1, generator=g))
        ok = float(torch.rand((), generator=g)) < min(1.0, float(p[0, x] / q[0, x]))
        biased[x if ok else int(torch.multinomial(p[0], 1, generator=g))] += 1
    assert chi_square_p_value(biased, p[0]) < 1e-6


def test_greedy_speculative_decoding_is_the_targets_greedy_output():
    target, draft = tiny_llama(0), tiny_llama(5, width=16, layers=1, scale=0.3)
    prompt = torch.tensor([3, 17, 8, 21])
    want = generate(target, prompt[None], 24, temperature=0)[0]
    for k in (1, 3, 5):
        got, stats = speculative_generate(target, draft, prompt, 24, k=k, temperature=0)
        assert torch.equal(got, want), k
        assert stats.emitted == 24 and 0.0 <= stats.acceptance_rate <= 1.0
        assert stats.target_calls < 24 or stats.acceptance_rate == 0.0
    _, stats = speculative_generate(target, target, prompt, 24, k=4, temperature=0)   # a perfect draft
    assert stats.acceptance_rate == 1.0 and stats.target_calls == 5                  # 24 tokens, 5 per call


def test_sampled_speculative_decoding_matches_the_target_distribution():
    """The joint distribution of the first two sampled tokens equals the target's, computed exactly."""
    V = 6
    target, draft = tiny_llama(0, V=V, scale=0.4), tiny_llama(3, V=V, width=16, layers=1, scale=0.4)
    prompt = torch.tensor([1, 4, 2])
    with torch.no_grad():
        p1 = torch.softmax(target(prompt[None])[0, -1].double(), -1)                           # (V,)
        seconds = torch.stack([torch.cat([prompt, torch.tensor([t])]) for t in range(V)])
        p2 = torch.softmax(target(seconds)[:, -1].double(), -1)                                # (V, V)
    joint = (p1[:, None] * p2).flatten()
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(V * V)
    proposed = accepted = 0
    for _ in range(1500):
        seq, stats = speculative_generate(target, draft, prompt, 3, k=2, temperature=1.0, generator=g)
        counts[int(seq[3]) * V + int(seq[4])] += 1
        proposed, accepted = proposed + stats.proposed, accepted + stats.accepted
    rate = accepted / proposed
    print(f"speculative sampling: acceptance rate {rate:.3f} over {proposed} draft tokens")   # reported
    assert 0.0 < rate < 1.0
    assert chi_square_p_value(counts, joint) > 1e-3


def test_expected_tokens_per_round():
    assert expected_tokens_per_round(0.0, 4) == 1.0
    assert expected_tokens_per_round(1.0, 4) == 5.0
    assert abs(expected_tokens_per_round(0.8, 4) - (1 - 0.8 ** 5) / 0.2) < 1e-12


def test_speculative_validation():
    t = tiny_llama(0)
    with pytest.raises(ValueError, match="k must"):
        speculative_generate(t, t, torch.tensor([1, 2]), 4, k=0)
    with pytest.raises(ValueError, match="one prompt"):
        speculative_generate(t, t, torch.ones(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="p must be"):
        accept_draft(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- paged cache

def test_paged_cache_decoding_equals_the_growing_cache():
    model = tiny_llama(0)
    ids = torch.randint(40, (2, 11), generator=torch.Generator().manual_seed(2))
    pool = BlockPool(num_blocks=2 * 6 * len(model.blocks), block_size=4)
    paged = [PagedKVCache(pool, 2, 2, 8) for _ in model.blocks]
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :5], caches=paged)]
        steps += [model(ids[:, t:t + 1], caches=paged) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    # 11 positions in blocks of 4: 3 blocks per row per layer, the last one three-quarters used
    assert all(len(t) == 3 for c in paged for t in c.block_tables)
    assert pool.num_free == pool.num_blocks - 3 * 2 * len(model.blocks)
    for c in paged:
        c.crop(4)                                        # exactly one block each
    assert pool.num_free == pool.num_blocks - 1 * 2 * len(model.blocks)
    block, offset = paged[0].slot(1, 3)
    assert torch.equal(paged[0].k[block, :, offset], paged[0].gather()[0][1, :, 3])


def test_block_table_lookup_and_fragmentation():
    assert lookup_slot([4, 0, 9], 0, 16) == (4, 0)
    assert lookup_slot([4, 0, 9], 31, 16) == (0, 15)
    assert lookup_slot([4, 0, 9], 32, 16) == (9, 0)
    with pytest.raises(ValueError, match="position"):
        lookup_slot([4, 0, 9], 48, 16)
    f = fragmentation([1, 16, 17], max_length=32, block_size=16)
    assert f["used"] == 34 and f["contiguous_reserved"] == 96 and f["paged_reserved"] == 64
    with pytest.raises(RuntimeError, match="out of KV-cache blocks"):
        PagedKVCache(BlockPool(1, 2), 1, 1, 2).update(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))


# ----------------------------------------------------------------------------- calculators

def test_published_llama_sizes_and_cache_bytes():
    cfg = inference.LLAMA_CONFIGS
    # parameter counts as published (6.74B, 68.98B, 8.03B)
    assert round(cfg["LLaMA-2-7B"].num_parameters() / 1e9, 2) == 6.74
    assert round(cfg["LLaMA-2-70B"].num_parameters() / 1e9, 2) == 68.98
    assert round(cfg["LLaMA-3-8B"].num_parameters() / 1e9, 2) == 8.03
    # the source notes' LLaMA-7B example: 2 x 32 layers x 2048 tokens x 4096 x 2 bytes = 1 GiB
    assert kv_cache_bytes(cfg["LLaMA-2-7B"], 1, 2048) == 2 * 32 * 2048 * 4096 * 2 == 2 ** 30
    # GQA: 8 KV heads instead of 32 -> a quarter per layer
    assert inference.kv_bytes_per_token(cfg["LLaMA-3-8B"]) * 4 == inference.kv_bytes_per_token(cfg["LLaMA-2-7B"])
    r = memory_report(cfg["LLaMA-2-70B"], batch=1, context=4096, weight_dtype="bf16", gpu_memory_gb=80)
    assert not r["fits"] and abs(r["weights_gb"] - 137.95) < 0.01


def test_prefill_is_compute_bound_and_decode_memory_bound():
    c = inference.LLAMA_CONFIGS["LLaMA-2-7B"]
    prefill = forward_cost(c, new_tokens=512)
    decode = forward_cost(c, new_tokens=1, past_tokens=512)
    assert decode["intensity"] < 1.5 < 100 < prefill["intensity"]
    gpu = inference.GPUS["H100 (SXM)"]
    ridge = gpu["bf16_tflops"] / gpu["bandwidth_tbs"]                  # FLOPs per byte at the ridge
    assert decode["intensity"] < ridge < prefill["intensity"]
    # the first decode step: 2 FLOPs per matmul parameter, plus one (query, key) pair of attention
    matmul = c.num_parameters() - c.vocab_size * c.hidden_size
    assert forward_cost(c, 1)["flops"] == 2 * matmul + 4 * 32 * 4096
    # 512 cached keys add 4 x layers x width per key: 2 % more at this length
    assert decode["flops"] - forward_cost(c, 1)["flops"] == 4 * 32 * 4096 * 512


def test_calculator_validation_and_doctests():
    with pytest.raises(ValueError, match="config"):
        kv_cache_bytes("7b", 1, 10)
    with pytest.raises(ValueError, match="context"):
        kv_cache_bytes(inference.LLAMA_CONFIGS["LLaMA-2-7B"], 1, 0)
    with pytest.raises(ValueError, match="kv_dtype"):
        memory_report(inference.LLAMA_CONFIGS["LLaMA-2-7B"], 1, 10, kv_dtype="fp8")
    from plmkit.inference import fast, int8, memory, paged, speculative
    for module in (fast, int8, memory, paged, speculative):
        assert doctest.testmod(module).failed == 0, module.__name__
