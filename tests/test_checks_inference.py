"""The chapter-9 checkers pass the reference answers and fail blank answers, shortcuts and plausible bugs.

Mutation table: for every exercise at least three hand-written bugs of its solution, each run
in-process against the checker (no notebook kernel), most of them named by the verdict.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from checker_harness import (assert_blank_fails, assert_mutant_fails, assert_mutants_cover, assert_reference_passes,
                             assert_refused, case_ids, make_blank, mutant_ids, recorded_passes)
from plmkit import inference
from plmkit.checks import inference as checks
from plmkit.nn import StaticKVCache


blank = make_blank(9)


# ---------------------------------------------------------------- reference answers (as in the notebook)
def attend_with_cache(q, k_new, v_new, k_cache, v_cache):
    k_all = torch.cat([k_cache, k_new], dim=2)                      # (B, H, past + T, D)
    v_all = torch.cat([v_cache, v_new], dim=2)
    past, T = k_cache.shape[2], q.shape[2]
    scores = q @ k_all.transpose(-2, -1) / math.sqrt(q.shape[-1])   # (B, H, T, past + T)
    keys = torch.arange(past + T, device=q.device)
    visible = keys[None, :] <= past + torch.arange(T, device=q.device)[:, None]
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return weights @ v_all, k_all, v_all


def kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value * batch * seq_len


def pass_cost(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens=0, bytes_per_value=2):
    pairs = new_tokens * past_tokens + new_tokens * (new_tokens + 1) // 2
    flops = 2 * n_params * new_tokens + 4 * n_layers * n_heads * head_dim * pairs
    kv_bytes = 2 * n_layers * n_kv_heads * head_dim * bytes_per_value * (past_tokens + new_tokens)
    nbytes = n_params * bytes_per_value + kv_bytes
    return float(flops), float(nbytes), flops / nbytes


def static_cache_write(cache, new, position):
    cache.index_copy_(2, position, new)
    return cache


def speculative_accept(p, q, token, u):
    accepted = u < min(1.0, float(p[token] / q[token]))
    residual = (p - q).clamp(min=0)
    total = residual.sum()
    residual = residual / total if total > 0 else p.clone()
    return accepted, residual


def quantize_int8(w):
    scale = w.abs().amax(dim=1) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def block_table_lookup(block_table, position, block_size):
    return block_table[position // block_size], position % block_size


CASES = [
    (checks.check_attend_with_cache, attend_with_cache),
    (checks.check_kv_cache_bytes, kv_cache_bytes),
    (checks.check_pass_cost, pass_cost),
    (checks.check_static_cache_write, static_cache_write),
    (checks.check_speculative_accept, speculative_accept),
    (checks.check_quantize_int8, quantize_int8),
    (checks.check_block_table_lookup, block_table_lookup),
]


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_reference_answer_passes_with_a_stable_verdict(check, fn, capsys):
    assert_reference_passes(check, fn, capsys)


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_blank_fails(check, fn, capsys):
    assert_blank_fails(check, blank, capsys)


def _static_update(cache, new, position):
    B, H, L, D = cache.shape
    s = StaticKVCache(B, H, L, D)
    s.k.copy_(cache)
    s.update(new, new, position)
    cache.copy_(s.k)
    return cache


@pytest.mark.parametrize("check,shortcut", [
    (checks.check_attend_with_cache, lambda q, kn, vn, kc, vc: (
        F.scaled_dot_product_attention(q, torch.cat([kc, kn], 2), torch.cat([vc, vn], 2),
                                       attn_mask=torch.ones(q.shape[2], kc.shape[2] + kn.shape[2]).bool().tril(
                                           kc.shape[2])),
        torch.cat([kc, kn], 2), torch.cat([vc, vn], 2))),
    (checks.check_kv_cache_bytes, lambda L, H, D, T, batch=1, bytes_per_value=2: int(
        inference.kv_cache_bytes(_cfg(L, H, D), batch, T, bytes_per_value))),
    (checks.check_pass_cost, lambda *a, bytes_per_value=2: inference.pass_cost(*a, bytes_per_value=bytes_per_value)),
    (checks.check_static_cache_write, _static_update),
    (checks.check_speculative_accept, lambda p, q, t, u: (u < min(1.0, float(p[t] / q[t])),
                                                          inference.residual_distribution(p, q))),
    (checks.check_quantize_int8, inference.quantize_int8),
    (checks.check_quantize_int8, lambda w: (torch.quantize_per_channel(
        w, w.abs().amax(1) / 127, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8).int_repr(),
        w.abs().amax(1) / 127)),
    (checks.check_block_table_lookup, inference.lookup_slot),
], ids=["sdpa", "kv_bytes", "pass_cost", "static_update", "residual", "quantize", "torch_quant", "lookup"])
def test_references_and_builtins_are_refused(check, shortcut, capsys):
    assert_refused(check, shortcut, capsys)


def _cfg(L, H, D):
    return inference.memory.LlamaConfig(vocab_size=10, hidden_size=H * D, intermediate_size=8, num_hidden_layers=L,
                                        num_attention_heads=H, num_key_value_heads=H)


# ---------------------------------------------------------------- mutants
def attend_old_only(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    if k_cache.shape[2] == 0:
        return attend_with_cache(q, k_new, v_new, k_cache, v_cache)
    w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
    return w @ v_cache, k_all, v_all


def attend_unscaled(q, k_new, v_new, k_cache, v_cache):
    out, k, v = attend_with_cache(q * math.sqrt(q.shape[-1]), k_new, v_new, k_cache, v_cache)
    return out, k, v


def attend_no_causal(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    w = torch.softmax(q @ k_all.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
    return w @ v_all, k_all, v_all


def attend_prepend(q, k_new, v_new, k_cache, v_cache):
    out, _, _ = attend_with_cache(q, k_new, v_new, k_cache, v_cache)
    return out, torch.cat([k_new, k_cache], 2), torch.cat([v_new, v_cache], 2)


def bytes_no_two(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return n_layers * n_kv_heads * head_dim * bytes_per_value * batch * seq_len


def bytes_no_batch(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value * seq_len


def bytes_bits(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return 2 * n_layers * n_kv_heads * head_dim * 8 * bytes_per_value * batch * seq_len


def bytes_fixed_fp16(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return 2 * n_layers * n_kv_heads * head_dim * 2 * batch * seq_len


def cost_no_attention(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens=0, bytes_per_value=2):
    f, b, _ = pass_cost(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens, bytes_per_value)
    pairs = new_tokens * past_tokens + new_tokens * (new_tokens + 1) // 2
    f -= 4 * n_layers * n_heads * head_dim * pairs
    return f, b, f / b


def cost_no_cache_bytes(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens=0,
                        bytes_per_value=2):
    f, _, _ = pass_cost(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens, bytes_per_value)
    b = float(n_params * bytes_per_value)
    return f, b, f / b


def cost_query_heads_cached(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens=0,
                            bytes_per_value=2):
    return pass_cost(n_params, n_layers, n_heads, head_dim, n_heads, new_tokens, past_tokens, bytes_per_value)


def cost_one_flop(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens=0, bytes_per_value=2):
    f, b, _ = pass_cost(n_params, n_layers, n_heads, head_dim, n_kv_heads, new_tokens, past_tokens, bytes_per_value)
    f -= n_params * new_tokens
    return f, b, f / b


def write_copy(cache, new, position):
    out = cache.clone()
    out[:, :, position] = new
    return out


def write_off_by_one(cache, new, position):
    cache[:, :, (position + 1).clamp(max=cache.shape[2] - 1)] = new
    return cache


def write_first_slots(cache, new, position):
    cache[:, :, :new.shape[2]] = new
    return cache


def accept_inverted(p, q, token, u):
    _, residual = speculative_accept(p, q, token, u)
    return u < min(1.0, float(q[token] / p[token])), residual


def residual_unnormalised(p, q, token, u):
    accepted, _ = speculative_accept(p, q, token, u)
    return accepted, (p - q).clamp(min=0)


def residual_reversed(p, q, token, u):
    accepted, _ = speculative_accept(q, p, token, u)
    return u < min(1.0, float(p[token] / q[token])), speculative_accept(q, p, token, u)[1]


def residual_is_p(p, q, token, u):
    return u < min(1.0, float(p[token] / q[token])), p.clone()


def accept_tensor(p, q, token, u):
    accepted, residual = speculative_accept(p, q, token, u)
    return torch.tensor(accepted), residual


def int8_per_tensor(w):
    scale = w.abs().max() / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale.expand(w.shape[0]).clone()


def int8_truncate(w):
    scale = w.abs().amax(dim=1) / 127
    return torch.trunc(w / scale[:, None]).to(torch.int8), scale


def int8_per_input_channel(w):
    scale = w.abs().amax(dim=0) / 127
    return torch.round(w / scale[None, :]).clamp(-127, 127).to(torch.int8), scale


def int8_by_128(w):
    scale = w.abs().amax(dim=1) / 128
    return torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8), scale


def lookup_logical(block_table, position, block_size):
    return position // block_size, position % block_size


def lookup_swapped(block_table, position, block_size):
    return position % block_size, block_table[position // block_size]


def lookup_off_by_one(block_table, position, block_size):
    return block_table[min(position // block_size + (position % block_size == 0), len(block_table) - 1)], \
        position % block_size


def lookup_list(block_table, position, block_size):
    return [block_table[position // block_size], position % block_size]


MUTANTS = [
    (checks.check_attend_with_cache, attend_old_only, "only to the cached keys"),
    (checks.check_attend_with_cache, attend_unscaled, "sqrt(D)"),
    (checks.check_attend_with_cache, attend_no_causal, "each other's future"),
    (checks.check_attend_with_cache, attend_prepend, "returned keys"),
    (checks.check_kv_cache_bytes, bytes_no_two, "the factor 2"),
    (checks.check_kv_cache_bytes, bytes_no_batch, "batch size is missing"),
    (checks.check_kv_cache_bytes, bytes_bits, "bits"),
    (checks.check_kv_cache_bytes, bytes_fixed_fp16, None),
    (checks.check_pass_cost, cost_no_attention, "attention FLOPs"),
    (checks.check_pass_cost, cost_no_cache_bytes, "KV cache's bytes"),
    (checks.check_pass_cost, cost_query_heads_cached, "n_kv_heads heads"),
    (checks.check_pass_cost, cost_one_flop, "2 FLOPs per parameter"),
    (checks.check_static_cache_write, write_copy, "IN PLACE"),
    (checks.check_static_cache_write, write_off_by_one, "one slot off"),
    (checks.check_static_cache_write, write_first_slots, None),
    (checks.check_speculative_accept, accept_inverted, "upside down"),
    (checks.check_speculative_accept, residual_unnormalised, "normalise"),
    (checks.check_speculative_accept, residual_reversed, "max(0, p - q)"),
    (checks.check_speculative_accept, residual_is_p, "over-weights"),
    (checks.check_speculative_accept, accept_tensor, "Python bool"),
    (checks.check_quantize_int8, int8_per_tensor, "within absmax/254"),
    (checks.check_quantize_int8, int8_truncate, "truncation"),
    (checks.check_quantize_int8, int8_per_input_channel, "INPUT channel"),
    (checks.check_quantize_int8, int8_by_128, "absmax of each row / 127"),
    (checks.check_block_table_lookup, lookup_logical, "LOGICAL block"),
    (checks.check_block_table_lookup, lookup_swapped, None),
    (checks.check_block_table_lookup, lookup_off_by_one, None),
    (checks.check_block_table_lookup, lookup_list, "tuple"),
]


@pytest.mark.parametrize("check,mutant,named", MUTANTS, ids=mutant_ids(MUTANTS))
def test_plausible_bug_fails_and_is_named(check, mutant, named, capsys):
    assert_mutant_fails(check, mutant, named, capsys)


def test_every_exercise_has_three_mutants():
    assert_mutants_cover(MUTANTS, chapter=9, n_exercises=7)


def test_recorded_answers_are_judged_like_honour_mode(tmp_path):
    for check, fn in CASES:
        assert recorded_passes(check, fn, 3, tmp_path), check.name
    for check, mutant, _ in MUTANTS[::4]:
        assert not recorded_passes(check, mutant, 3, tmp_path), mutant.__name__
