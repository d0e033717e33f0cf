"""The chapter-5 checkers pass the reference answers and fail blank answers, shortcuts and plausible bugs.

Mutation table: for every exercise at least three hand-written bugs of its
solution, each run in-process against the checker (no notebook kernel).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from checker_harness import (assert_blank_fails, assert_mutant_fails, assert_mutants_cover, assert_reference_passes,
                             assert_refused, case_ids, make_blank, mutant_ids, run)
from plmkit.checks import t5 as checks
from plmkit.generate import generate as plmkit_generate
from plmkit.models.t5 import shift_right as plmkit_shift_right
from plmkit.nn.relative import relative_position_bucket as plmkit_bucket
from plmkit.objectives import corrupt_spans as plmkit_corrupt_spans
from plmkit.objectives import prefix_lm_mask as plmkit_prefix


blank = make_blank(5)


# ---------------------------------------------------------------- reference answers (as in the notebook)
def prefix_lm_mask(prefix_length, T):
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    return (k < prefix_length) | (k <= q)


def cross_attention(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads, scale=1.0, use_mask=True, kv_from_x=False):
    B, T, C = x.shape
    S = memory.shape[1]
    D = w_q.shape[0] // n_heads
    src = x if kv_from_x else memory
    q = (x @ w_q.T).view(B, T, n_heads, D).transpose(1, 2)                 # (B, H, T, D)
    k = (src @ w_k.T).view(B, src.shape[1], n_heads, D).transpose(1, 2)     # (B, H, S, D)
    v = (src @ w_v.T).view(B, src.shape[1], n_heads, D).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) * scale                                # T5: no 1/sqrt(D)
    if use_mask and not kv_from_x:
        scores = scores.masked_fill(~memory_mask.bool()[:, None, None, :], float("-inf"))
    w = torch.softmax(scores, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(B, T, n_heads * D)
    return out @ w_o.T


def shift_right(labels, decoder_start_token_id=0, pad_token_id=0):
    shifted = torch.full_like(labels, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, n, large)


def t5_rms_norm(x, weight, eps=1e-6):
    x32 = x.float() if x.dtype != torch.float64 else x
    variance = x32.pow(2).mean(-1, keepdim=True)
    return weight * (x32 * torch.rsqrt(variance + eps)).to(x.dtype)


def t5_feed_forward(x, weights, variant):
    if variant == "v1.0":
        return torch.relu(x @ weights["wi"].T) @ weights["wo"].T
    gate = F.gelu(x @ weights["wi_0"].T, approximate="tanh")
    return (gate * (x @ weights["wi_1"].T)) @ weights["wo"].T


def corrupt_spans(tokens, noise_mask, vocab_size, eos_id):
    inputs, targets, span, prev = [], [], -1, False
    for t, noise in zip(tokens.tolist(), noise_mask.tolist()):
        if noise and not prev:
            span += 1
            inputs.append(vocab_size - 1 - span)
            targets.append(vocab_size - 1 - span)
        (targets if noise else inputs).append(t)
        prev = noise
    return torch.tensor(inputs + [eos_id]), torch.tensor(targets + [eos_id])


@torch.no_grad()
def greedy_decode(model, input_ids, attention_mask, max_new_tokens):
    c = model.config
    memory = model.encode(input_ids, attention_mask)                      # the encoder runs once
    out = torch.full((input_ids.shape[0], 1), c.decoder_start_token_id)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model.logits(model.decode(out, memory, attention_mask))[:, -1]
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, c.pad_token_id), nxt)
        done |= nxt == c.eos_token_id
        out = torch.cat([out, nxt[:, None]], dim=1)
        if done.all():
            break
    return out


CASES = [
    (checks.check_prefix_lm_mask, prefix_lm_mask),
    (checks.check_cross_attention, cross_attention),
    (checks.check_shift_right, shift_right),
    (checks.check_relative_position_bucket, relative_position_bucket),
    (checks.check_t5_rms_norm, t5_rms_norm),
    (checks.check_t5_feed_forward, t5_feed_forward),
    (checks.check_corrupt_spans, corrupt_spans),
    (checks.check_greedy_decode, greedy_decode),
]


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_reference_answer_passes_with_a_stable_verdict(check, fn, capsys):
    assert_reference_passes(check, fn, capsys)


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_blank_fails(check, fn, capsys):
    assert_blank_fails(check, blank, capsys)


def _cached_greedy(model, input_ids, attention_mask, max_new_tokens):
    return plmkit_generate(model, input_ids, max_new_tokens=max_new_tokens, temperature=0,
                           attention_mask=attention_mask, stop_tokens=1)


@pytest.mark.parametrize("check,shortcut", [
    (checks.check_prefix_lm_mask, plmkit_prefix),
    (checks.check_shift_right, plmkit_shift_right),
    (checks.check_relative_position_bucket, plmkit_bucket),
    (checks.check_corrupt_spans, lambda t, m, v, e: plmkit_corrupt_spans(t, m, v, e)),
    (checks.check_greedy_decode, _cached_greedy),
    (checks.check_cross_attention,
     lambda x, m, mm, wq, wk, wv, wo, h: F.scaled_dot_product_attention(
         (x @ wq.T).view(*x.shape[:2], h, -1).transpose(1, 2), (m @ wk.T).view(*m.shape[:2], h, -1).transpose(1, 2),
         (m @ wv.T).view(*m.shape[:2], h, -1).transpose(1, 2), attn_mask=mm.bool()[:, None, None, :], scale=1.0
     ).transpose(1, 2).reshape(*x.shape[:2], -1) @ wo.T),
    (checks.check_t5_rms_norm, lambda x, w, eps=1e-6: F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype) * w),
], ids=["prefix", "shift", "bucket", "spans", "greedy", "sdpa", "rms"])
def test_references_and_builtins_are_refused(check, shortcut, capsys):
    assert_refused(check, shortcut, capsys)


def test_feed_forward_modules_refused(capsys):
    from plmkit.nn.ffn import FeedForward

    def via_module(x, weights, variant):
        m = FeedForward(x.shape[-1], weights["wo"].shape[1], activation="relu", bias=False).to(x.dtype)
        return t5_feed_forward(x, weights, variant) if variant != "v1.0" else m(x) * 0 + t5_feed_forward(x, weights, variant)
    assert_refused(checks.check_t5_feed_forward, via_module, capsys)


# ---------------------------------------------------------------- the mutation table: plausible bugs
def prefix_le(P, T):
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (k <= P) | (k <= q)


def prefix_transposed(P, T):
    return prefix_lm_mask(P, T).T.contiguous()


def prefix_causal(P, T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def prefix_int(P, T):
    return prefix_lm_mask(P, T).int()


def shift_keeps_ignore(labels, start=0, pad=0):
    shifted = torch.full_like(labels, start)
    shifted[:, 1:] = labels[:, :-1]
    return shifted


def shift_left(labels, start=0, pad=0):
    out = torch.full_like(labels, pad)
    out[:, :-1] = labels[:, 1:]
    return out.masked_fill(out == -100, pad)


def shift_roll(labels, start=0, pad=0):
    return torch.roll(labels, 1, dims=1).masked_fill(torch.roll(labels, 1, dims=1) == -100, pad)


def shift_in_place(labels, start=0, pad=0):
    labels[labels == -100] = pad
    return shift_right(labels, start, pad)


def bucket_flipped(d, bidirectional=True, num_buckets=32, max_distance=128):
    return relative_position_bucket(-d, bidirectional, num_buckets, max_distance)


def bucket_always_bidirectional(d, bidirectional=True, num_buckets=32, max_distance=128):
    return relative_position_bucket(d, True, num_buckets, max_distance)


def bucket_no_clamp(d, bidirectional=True, num_buckets=32, max_distance=128):
    bucket = torch.zeros_like(d)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (d > 0).long() * num_buckets
        n = d.abs()
    else:
        n = (-d).clamp(min=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    return bucket + torch.where(n < max_exact, n, large)


def bucket_max_exact_full(d, bidirectional=True, num_buckets=32, max_distance=128):
    bucket = torch.zeros_like(d)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (d > 0).long() * num_buckets
        n = d.abs()
    else:
        n = (-d).clamp(min=0)
    max_exact = num_buckets // 4                                            # wrong: a quarter, not half
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    return bucket + torch.where(n < max_exact, n, large.clamp(max=num_buckets - 1))


def rms_layer_norm(x, w, eps=1e-6):
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype) * w


def rms_half_variance(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rms_eps_outside(x, w, eps=1e-6):
    x32 = x.float() if x.dtype != torch.float64 else x
    return w * (x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype)


def rms_no_weight(x, w, eps=1e-6):
    return t5_rms_norm(x, torch.ones_like(w), eps)


def ffn_exact_gelu(x, weights, variant):
    if variant == "v1.0":
        return t5_feed_forward(x, weights, variant)
    return (F.gelu(x @ weights["wi_0"].T) * (x @ weights["wi_1"].T)) @ weights["wo"].T


def ffn_swapped(x, weights, variant):
    if variant == "v1.0":
        return t5_feed_forward(x, weights, variant)
    return (F.gelu(x @ weights["wi_1"].T, approximate="tanh") * (x @ weights["wi_0"].T)) @ weights["wo"].T


def ffn_relu_everywhere(x, weights, variant):
    if variant == "v1.0":
        return t5_feed_forward(x, weights, variant)
    return (torch.relu(x @ weights["wi_0"].T) * (x @ weights["wi_1"].T)) @ weights["wo"].T


def ffn_gelu_v10(x, weights, variant):
    if variant == "v1.0":
        return F.gelu(x @ weights["wi"].T) @ weights["wo"].T
    return t5_feed_forward(x, weights, variant)


def spans_no_eos(tokens, mask, V, eos):
    a, b = corrupt_spans(tokens, mask, V, eos)
    return a[:-1], b[:-1]


def spans_count_up(tokens, mask, V, eos):
    a, b = corrupt_spans(tokens, mask, V, eos)
    n = int((a >= 80).sum())                            # ordinary tokens are < 80 in the cases
    remap = lambda t: torch.where(t >= 80, 2 * V - n - 1 - t, t)        # noqa: E731  V-1-k -> V-n+k
    return remap(a), remap(b)


def spans_per_token(tokens, mask, V, eos):
    inputs, targets, k = [], [], 0
    for t, noise in zip(tokens.tolist(), mask.tolist()):
        if noise:
            inputs.append(V - 1 - k)
            targets += [V - 1 - k, t]
            k += 1
        else:
            inputs.append(t)
    return torch.tensor(inputs + [eos]), torch.tensor(targets + [eos])


def spans_figure_style(tokens, mask, V, eos):
    a, b = corrupt_spans(tokens, mask, V, eos)
    n = int((a >= 80).sum())
    if not mask[-1]:                                    # the paper's Figure 2: a final sentinel in the target
        b = torch.cat([b[:-1], torch.tensor([V - 1 - n, eos])])
    return a, b


def cross_scaled(*args):
    D = args[3].shape[0] // args[7]
    return cross_attention(*args, scale=D ** -0.5)


def cross_no_mask(*args):
    return cross_attention(*args, use_mask=False)


def cross_self(*args):
    return cross_attention(*args, kv_from_x=True)


def cross_mask_queries(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    out = cross_attention(x, memory, torch.ones_like(memory_mask), w_q, w_k, w_v, w_o, n_heads)
    return out * memory_mask[:, :x.shape[1], None].to(out.dtype) if memory_mask.shape[1] >= x.shape[1] else out


@torch.no_grad()
def greedy_encoder_each_step(model, input_ids, attention_mask, max_new_tokens):
    c = model.config
    out = torch.full((input_ids.shape[0], 1), c.decoder_start_token_id)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        memory = model.encode(input_ids, attention_mask)                # re-encodes every step
        nxt = model.logits(model.decode(out, memory, attention_mask))[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, c.pad_token_id), nxt)
        done |= nxt == c.eos_token_id
        out = torch.cat([out, nxt[:, None]], dim=1)
        if done.all():
            break
    return out


@torch.no_grad()
def greedy_ignores_eos(model, input_ids, attention_mask, max_new_tokens):
    c = model.config
    memory = model.encode(input_ids, attention_mask)
    out = torch.full((input_ids.shape[0], 1), c.decoder_start_token_id)
    for _ in range(max_new_tokens):
        nxt = model.logits(model.decode(out, memory, attention_mask))[:, -1].argmax(-1)
        out = torch.cat([out, nxt[:, None]], dim=1)
    return out


@torch.no_grad()
def greedy_no_start(model, input_ids, attention_mask, max_new_tokens):
    return greedy_decode(model, input_ids, attention_mask, max_new_tokens)[:, 1:]


@torch.no_grad()
def greedy_last_token_only(model, input_ids, attention_mask, max_new_tokens):
    c = model.config
    memory = model.encode(input_ids, attention_mask)
    out = torch.full((input_ids.shape[0], 1), c.decoder_start_token_id)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):                     # feeds only the last token, without a cache
        nxt = model.logits(model.decode(out[:, -1:], memory, attention_mask))[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, c.pad_token_id), nxt)
        done |= nxt == c.eos_token_id
        out = torch.cat([out, nxt[:, None]], dim=1)
        if done.all():
            break
    return out


MUTANTS = [
    (checks.check_prefix_lm_mask, prefix_le, "k < P"),
    (checks.check_prefix_lm_mask, prefix_transposed, "transposed"),
    (checks.check_prefix_lm_mask, prefix_causal, "plain causal mask"),
    (checks.check_prefix_lm_mask, prefix_int, "dtype"),
    (checks.check_cross_attention, cross_scaled, "divided by sqrt(D)"),
    (checks.check_cross_attention, cross_no_mask, "memory_mask is ignored"),
    (checks.check_cross_attention, cross_self, "keys and values come from x"),
    (checks.check_cross_attention, cross_mask_queries, None),
    (checks.check_shift_right, shift_keeps_ignore, "-100"),
    (checks.check_shift_right, shift_left, "LEFT"),
    (checks.check_shift_right, shift_roll, None),
    (checks.check_shift_right, shift_in_place, "in place"),
    (checks.check_relative_position_bucket, bucket_flipped, "sign is flipped"),
    (checks.check_relative_position_bucket, bucket_always_bidirectional, "causal"),
    (checks.check_relative_position_bucket, bucket_no_clamp, "clamp"),
    (checks.check_relative_position_bucket, bucket_max_exact_full, None),
    (checks.check_t5_rms_norm, rms_layer_norm, "mean was subtracted"),
    (checks.check_t5_rms_norm, rms_half_variance, "float16"),
    (checks.check_t5_rms_norm, rms_eps_outside, "inside the square root"),
    (checks.check_t5_rms_norm, rms_no_weight, "not multiplied by weight"),
    (checks.check_t5_feed_forward, ffn_exact_gelu, "tanh approximation"),
    (checks.check_t5_feed_forward, ffn_swapped, "wi_0"),
    (checks.check_t5_feed_forward, ffn_relu_everywhere, "gates with GELU"),
    (checks.check_t5_feed_forward, ffn_gelu_v10, None),
    (checks.check_corrupt_spans, spans_no_eos, "EOS"),
    (checks.check_corrupt_spans, spans_count_up, "counted DOWN"),
    (checks.check_corrupt_spans, spans_per_token, "per noise SPAN"),
    (checks.check_corrupt_spans, spans_figure_style, "Figure 2"),
    (checks.check_greedy_decode, greedy_encoder_each_step, "the encoder ran"),
    (checks.check_greedy_decode, greedy_ignores_eos, "EOS"),
    (checks.check_greedy_decode, greedy_no_start, "start token"),
    (checks.check_greedy_decode, greedy_last_token_only, None),
]


@pytest.mark.parametrize("check,mutant,named", MUTANTS, ids=mutant_ids(MUTANTS))
def test_plausible_bug_fails_and_is_named(check, mutant, named, capsys):
    assert_mutant_fails(check, mutant, named, capsys)


def test_every_exercise_has_three_mutants():
    assert_mutants_cover(MUTANTS, chapter=5, n_exercises=8)


def test_the_notebooks_own_solutions_pass(capsys):
    from solution_code import solutions

    ns = solutions("05_t5")
    for check, fn in CASES:
        ok, out = run(check, ns[fn.__name__], capsys=capsys)
        assert ok, out
