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
from plmkit.objectives import blank_infilling as plmkit_blank_infilling
from plmkit.objectives import corrupt_spans as plmkit_corrupt_spans
from plmkit.objectives import random_spans_noise_mask as plmkit_noise_mask
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


# ---------------------------------------------------------------- the new exercises' reference answers
def random_spans_noise_mask(length, noise_density=0.15, mean_noise_span_length=3.0, generator=None):
    L = max(length, 2)
    noise = int(torch.round(torch.tensor(L * noise_density, dtype=torch.float32)))
    noise = min(max(noise, 1), L - 1)
    spans = max(int(torch.round(torch.tensor(noise / mean_noise_span_length, dtype=torch.float32))), 1)
    spans = min(spans, L - noise)

    def segment(n, k):                                  # n items into k non-empty runs, every split alike
        cuts = torch.zeros(n - 1, dtype=torch.long)
        cuts[torch.randperm(n - 1, generator=generator)[:k - 1]] = 1
        return torch.bincount(torch.cat([torch.zeros(1, dtype=torch.long), cuts.cumsum(0)]), minlength=k)

    runs = torch.stack([segment(L - noise, spans), segment(noise, spans)], dim=1).reshape(-1)   # kept, noise, ...
    return (torch.repeat_interleave(torch.arange(2 * spans), runs) % 2 == 1)[:length]


def blank_infilling(tokens, spans, mask_id, start_id, end_id):
    ids = tokens.tolist()
    ends = dict(spans)
    part_a, where = [], {}
    i = 0
    while i < len(ids):
        if i in ends:
            where[i] = len(part_a)
            part_a.append(mask_id)
            i = ends[i]
        else:
            part_a.append(ids[i])
            i += 1
    A = len(part_a)
    part_b, labels, pos1, pos2 = [], [], [], []
    for s, e in spans:
        part_b += [start_id] + ids[s:e]
        labels += ids[s:e] + [end_id]
        pos1 += [where[s]] * (e - s + 1)
        pos2 += list(range(1, e - s + 2))
    L = A + len(part_b)
    mask = prefix_lm_mask(A, L) if L else torch.zeros(0, 0, dtype=torch.bool)     # the learner's own 5.1
    return (torch.tensor(part_a + part_b), torch.tensor([-100] * A + labels),
            torch.tensor([list(range(A)) + pos1, [0] * A + pos2]), mask)


def make_t5(slip=""):
    """The capstone's three functions, built from this file's 5.2 / 5.4 / 5.5 / 5.6, with one slip switched on."""
    def position_bias(table, Tq, Tk, bidirectional, num_buckets, max_distance):
        rel = torch.arange(Tk)[None, :] - torch.arange(Tq)[:, None]                  # (Tq, Tk): key - query
        if slip == "flipped":
            rel = -rel
        return table[relative_position_bucket(rel, bidirectional, num_buckets, max_distance)].permute(2, 0, 1)[None]

    def self_attention(x, w_q, w_k, w_v, w_o, n_heads, bias):
        B, T, _ = x.shape
        D = w_q.shape[0] // n_heads
        q, k, v = ((x @ w.T).view(B, T, n_heads, D).transpose(1, 2) for w in (w_q, w_k, w_v))
        s = q @ k.transpose(-2, -1)
        if slip == "scaled":
            s = s / D ** 0.5
        return (torch.softmax(s + bias, dim=-1) @ v).transpose(1, 2).reshape(B, T, n_heads * D) @ w_o.T

    def norm(x, w, eps):
        if slip == "layer norm":
            return F.layer_norm(x, (x.shape[-1],), eps=eps) * w
        return t5_rms_norm(x, w, eps)

    def parts(config):
        variant = "v1.1" if config["feed_forward_proj"] == "gated-gelu" else "v1.0"
        names = ("wi_0", "wi_1", "wo") if variant == "v1.1" else ("wi", "wo")
        return variant, names, config["num_heads"], config["layer_norm_epsilon"]

    def sub(x, f, w, eps):
        return norm(x + f(x), w, eps) if slip == "post-ln" else x + f(norm(x, w, eps))

    def t5_encode(state, config, input_ids, attention_mask):
        variant, names, H, eps = parts(config)
        w, S = state, input_ids.shape[1]
        hidden = attention_mask == 0
        pad = (hidden[:, None, :, None] if slip == "mask queries" else hidden[:, None, None, :])
        pad = torch.zeros(pad.shape).masked_fill(pad, -1e9 if slip == "mask queries" else float("-inf"))
        bias = position_bias(w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], S, S,
                             slip != "encoder causal buckets", config["relative_attention_num_buckets"],
                             config["relative_attention_max_distance"])
        x = w["shared.weight"][input_ids]                                             # (B, S, C)
        for i in range(config["num_layers"]):
            p = f"encoder.block.{i}.layer."
            b = bias if i == 0 or slip != "bias once" else 0.0
            qkvo = [w[f"{p}0.SelfAttention.{n}.weight"] for n in "qkvo"]
            x = sub(x, lambda h: self_attention(h, *qkvo, H, b + pad), w[p + "0.layer_norm.weight"], eps)
            ffw = {n: w[f"{p}1.DenseReluDense.{n}.weight"] for n in names}
            x = sub(x, lambda h: t5_feed_forward(h, ffw, variant), w[p + "1.layer_norm.weight"], eps)
        return x if slip == "no final norm" else norm(x, w["encoder.final_layer_norm.weight"], eps)

    def t5_decode(state, config, decoder_input_ids, memory, attention_mask):
        variant, names, H, eps = parts(config)
        w, T = state, decoder_input_ids.shape[1]
        side = "encoder" if slip == "bias shared" else "decoder"
        causal = torch.zeros(T, T) if slip == "no causal" else torch.full((T, T), float("-inf")).triu(1)
        bias = position_bias(w[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], T, T,
                             slip == "decoder bidirectional buckets", config["relative_attention_num_buckets"],
                             config["relative_attention_max_distance"])
        memory_mask = torch.ones_like(attention_mask) if slip == "no cross mask" else attention_mask
        y = w["shared.weight"][decoder_input_ids]                                     # (B, T, C)
        layers = config["num_layers"] if slip == "decoder depth" else config["num_decoder_layers"]
        for i in range(layers):
            p = f"decoder.block.{i}.layer."
            b = bias if i == 0 or slip != "bias once" else 0.0
            qkvo = [w[f"{p}0.SelfAttention.{n}.weight"] for n in "qkvo"]
            y = sub(y, lambda h: self_attention(h, *qkvo, H, b + causal), w[p + "0.layer_norm.weight"], eps)
            cross = [w[f"{p}1.EncDecAttention.{n}.weight"] for n in "qkvo"]
            y = sub(y, lambda h: cross_attention(h, memory, memory_mask, *cross, H), w[p + "1.layer_norm.weight"], eps)
            ffw = {n: w[f"{p}2.DenseReluDense.{n}.weight"] for n in names}
            y = sub(y, lambda h: t5_feed_forward(h, ffw, variant), w[p + "2.layer_norm.weight"], eps)
        if slip != "no final norm":
            y = norm(y, w["decoder.final_layer_norm.weight"], eps)
        if config["tie_word_embeddings"]:
            return (y if slip == "no head scale" else y * config["d_model"] ** -0.5) @ w["shared.weight"].T
        return y @ w["shared.weight" if slip == "tied head" else "lm_head.weight"].T

    def t5_logits(folder, input_ids, attention_mask, decoder_input_ids):
        import json
        from pathlib import Path

        from safetensors.torch import load_file
        config = json.loads((Path(folder) / "config.json").read_text())
        state = load_file(str(Path(folder) / "model.safetensors"))
        memory = t5_encode(state, config, input_ids, attention_mask)
        return t5_decode(state, config, decoder_input_ids, memory, attention_mask)

    return Answers(f"t5_{slip.replace(' ', '_').replace('-', '_') or 'reference'}", t5_encode, t5_decode, t5_logits)


class Answers(tuple):
    """Several functions handed to one check, with a name for the test id."""

    def __new__(cls, name, *fns):
        obj = super().__new__(cls, fns)
        obj.__name__ = name
        return obj


CASES = [
    (checks.check_prefix_lm_mask, prefix_lm_mask),
    (checks.check_cross_attention, cross_attention),
    (checks.check_shift_right, shift_right),
    (checks.check_relative_position_bucket, relative_position_bucket),
    (checks.check_t5_rms_norm, t5_rms_norm),
    (checks.check_t5_feed_forward, t5_feed_forward),
    (checks.check_corrupt_spans, corrupt_spans),
    (checks.check_greedy_decode, greedy_decode),
    (checks.check_random_spans_noise_mask, random_spans_noise_mask),
    (checks.check_blank_infilling, blank_infilling),
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


# ---------------------------------------------------------------- 5.8, 5.9, 5.11: the new exercises' plausible bugs
def noise_iid(length, noise_density=0.15, mean_noise_span_length=3.0, generator=None):
    return torch.rand(length, generator=generator) < noise_density


def noise_fixed_spans(length, noise_density=0.15, mean_noise_span_length=3.0, generator=None):
    base = random_spans_noise_mask(length, noise_density, mean_noise_span_length, generator)
    noise, kept = int(base.sum()), length - int(base.sum())
    k = len([i for i in range(length) if base[i] and (i == 0 or not base[i - 1])])
    lengths = [noise // k] * (k - 1) + [noise - (noise // k) * (k - 1)]     # equal spans, the rest on the last
    cuts = sorted(torch.randperm(max(kept - 1, 1), generator=generator)[:k - 1].add(1).tolist())
    gaps = [b - a for a, b in zip([0] + cuts, cuts + [kept])]
    out = []
    for g_, n in zip(gaps, lengths):
        out += [False] * g_ + [True] * n
    return torch.tensor(out[:length])


def noise_ends_kept(length, noise_density=0.15, mean_noise_span_length=3.0, generator=None):
    """Kept tokens in one run more than noise spans: kept, noise, ..., noise, kept (the paper's picture)."""
    mask = random_spans_noise_mask(length, noise_density, mean_noise_span_length, generator)
    if length > 2:                                      # move the last kept token to the end
        first_noise_end = int(torch.nonzero(~mask.flip(0))[0])     # trailing noise run length
        kept_idx = length - 1 - first_noise_end
        mask = torch.cat([mask[:kept_idx], mask[kept_idx + 1:], mask[kept_idx:kept_idx + 1]])
    return mask


def noise_starts_noise(length, noise_density=0.15, mean_noise_span_length=3.0, generator=None):
    return random_spans_noise_mask(length, noise_density, mean_noise_span_length, generator).flip(0)


def noise_cuts_with_replacement(length, noise_density=0.15, mean_noise_span_length=3.0, generator=None):
    L = max(length, 2)
    noise = min(max(int(torch.round(torch.tensor(L * noise_density))), 1), L - 1)
    spans = min(max(int(torch.round(torch.tensor(noise / mean_noise_span_length))), 1), L - noise)

    def segment(n, k):                                  # cut places drawn with replacement: may repeat
        cuts = torch.zeros(n - 1, dtype=torch.long)
        if n > 1 and k > 1:
            cuts[torch.randint(0, n - 1, (k - 1,), generator=generator)] = 1
        return torch.bincount(torch.cat([torch.zeros(1, dtype=torch.long), cuts.cumsum(0)]), minlength=k)

    out = []
    for kept, nz in zip(segment(L - noise, spans).tolist(), segment(noise, spans).tolist()):
        out += [False] * kept + [True] * nz
    return torch.tensor(out[:length])


def noise_ignores_generator(length, noise_density=0.15, mean_noise_span_length=3.0, generator=None):
    return random_spans_noise_mask(length, noise_density, mean_noise_span_length, None)


def glm_gpt_positions(tokens, spans, m, s, e):
    ids, labels, pos, mask = blank_infilling(tokens, spans, m, s, e)
    pos = pos.clone()
    pos[0] = torch.arange(ids.numel())
    return ids, labels, pos, mask


def glm_inner_from_zero(tokens, spans, m, s, e):
    ids, labels, pos, mask = blank_infilling(tokens, spans, m, s, e)
    A = int((labels == -100).sum())
    pos = pos.clone()
    pos[1, A:] -= 1
    return ids, labels, pos, mask


def glm_b_bidirectional(tokens, spans, m, s, e):
    ids, labels, pos, mask = blank_infilling(tokens, spans, m, s, e)
    A, L = int((labels == -100).sum()), ids.numel()
    return ids, labels, pos, (torch.arange(L)[None, :] < A) | (torch.arange(L)[:, None] >= A)


def glm_a_reads_b(tokens, spans, m, s, e):
    ids, labels, pos, mask = blank_infilling(tokens, spans, m, s, e)
    A = int((labels == -100).sum())
    return ids, labels, pos, mask | (torch.arange(ids.numel())[:, None] < A)


def glm_labels_not_shifted(tokens, spans, m, s, e):
    ids, labels, pos, mask = blank_infilling(tokens, spans, m, s, e)
    A = int((labels == -100).sum())
    labels = labels.clone()
    labels[A:] = ids[A:]
    return ids, labels, pos, mask


def glm_mask_per_token(tokens, spans, m, s, e):
    ids, labels, pos, mask = blank_infilling(tokens, spans, m, s, e)
    per_token = tokens.clone()
    for a, b in spans:
        per_token[a:b] = m
    A = int((labels == -100).sum())
    ids = torch.cat([per_token, ids[A:]])
    return ids, labels, pos, mask


T5_SLIPS = [
    ("scaled", "divided by sqrt(d_kv)"), ("bias once", "first layer only"), ("bias shared", "encoder's bias table"),
    ("no head scale", "d_model ** -0.5"), ("tied head", "lm_head.weight"), ("layer norm", "mean was subtracted"),
    ("no causal", "not causal"), ("mask queries", "applied to the queries"),
    ("encoder causal buckets", "encoder's buckets are bidirectional"),
    ("decoder bidirectional buckets", "decoder's buckets are causal"), ("flipped", "key - query"),
    ("no cross mask", "cross-attention reads the encoder's padding"), ("no final norm", "final_layer_norm"),
    ("post-ln", "Pre-LN"), ("decoder depth", "num_decoder_layers"),
]

NEW_MUTANTS = [
    (checks.check_random_spans_noise_mask, noise_iid, "noise tokens, expected"),
    (checks.check_random_spans_noise_mask, noise_fixed_spans, "in every draw"),
    (checks.check_random_spans_noise_mask, noise_ends_kept, "ends with kept tokens"),
    (checks.check_random_spans_noise_mask, noise_starts_noise, "starts with noise"),
    (checks.check_random_spans_noise_mask, noise_cuts_with_replacement, "noise spans, expected"),
    (checks.check_random_spans_noise_mask, noise_ignores_generator, "same seed"),
    (checks.check_blank_infilling, glm_gpt_positions, "not its own place"),
    (checks.check_blank_infilling, glm_inner_from_zero, "counts from 1"),
    (checks.check_blank_infilling, glm_b_bidirectional, "Part B must be causal"),
    (checks.check_blank_infilling, glm_a_reads_b, "Part A must not read Part B"),
    (checks.check_blank_infilling, glm_labels_not_shifted, "NEXT token"),
    (checks.check_blank_infilling, glm_mask_per_token, "one [MASK] per span"),
] + [(checks.check_t5_logits, make_t5(slip), words) for slip, words in T5_SLIPS]

MUTANTS += NEW_MUTANTS


@pytest.mark.parametrize("check,mutant,named", MUTANTS, ids=mutant_ids(MUTANTS))
def test_plausible_bug_fails_and_is_named(check, mutant, named, capsys):
    assert_mutant_fails(check, mutant, named, capsys)


def test_every_exercise_has_three_mutants():
    assert_mutants_cover(MUTANTS, chapter=5, n_exercises=11)


def test_the_notebooks_own_solutions_pass(capsys):
    from solution_code import solutions

    ns = solutions("05_t5")
    for check, fn in CASES:
        ok, out = run(check, ns[fn.__name__], capsys=capsys)
        assert ok, out
    ok, out = run(checks.check_t5_logits, ns["t5_encode"], ns["t5_decode"], ns["t5_logits"], capsys=capsys)
    assert ok, out


# ---------------------------------------------------------------- 5.8, 5.9, 5.11: references refused, the capstone
@pytest.mark.parametrize("check,shortcut", [
    (checks.check_random_spans_noise_mask, plmkit_noise_mask),
    (checks.check_blank_infilling, plmkit_blank_infilling),
    (checks.check_blank_infilling, lambda t, s, m, st, e: blank_infilling(t, s, m, st, e)[:3]
     + (plmkit_prefix(len(t) - sum(b - a for a, b in s) + len(s), len(t) + len(s)),)),
], ids=["noise_mask", "glm", "glm_prefix_mask"])
def test_new_references_are_refused(check, shortcut, capsys):
    assert_refused(check, shortcut, capsys)


def test_t5_capstone_reference_passes_and_blank_fails(capsys):
    """~3 s: two tiny HF T5s per run, the reference twice (fresh random models), then the blank."""
    assert_reference_passes(checks.check_t5_logits, make_t5(""), capsys)
    ok, out = run(checks.check_t5_logits, blank, blank, blank, capsys=capsys)
    assert not ok and "not attempted yet" in out


def _plmkit_t5_logits(folder, input_ids, attention_mask, decoder_input_ids):
    from plmkit.models.t5 import T5ForConditionalGeneration
    model = T5ForConditionalGeneration.from_pretrained(folder).eval()
    return model(input_ids, attention_mask, decoder_input_ids=decoder_input_ids)


def _hf_t5_logits(folder, input_ids, attention_mask, decoder_input_ids):
    import transformers
    model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    return model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits


@pytest.mark.parametrize("shortcut,named", [(_plmkit_t5_logits, "plmkit's models"),
                                            (_hf_t5_logits, "Hugging Face's model classes")], ids=["plmkit", "hf"])
def test_t5_capstone_refuses_plmkit_and_hugging_face(shortcut, named, capsys):
    """Both load the very folder the check writes and give the right logits: only the guard fails them."""
    enc, dec, _ = make_t5("")
    assert_refused(checks.check_t5_logits, (enc, dec, shortcut), capsys, named=named)


def test_t5_capstone_hint_reference_equals_hugging_face():
    """The checker's plain-torch T5 (which names the slips) is HF's T5 when no slip is switched on."""
    from plmkit.checks._core import Gen
    for m in checks._cap_cases(Gen(3, "5.11")):
        hf = checks._hf_t5(m)
        for r in m["runs"]:
            with torch.no_grad():
                want = hf(input_ids=r["ids"], attention_mask=r["mask"], decoder_input_ids=r["dec"]).logits
                enc, logits = checks._t5_torch(m["config"], m["state"], r["ids"], r["mask"], r["dec"])
                want_enc = hf.encoder(input_ids=r["ids"], attention_mask=r["mask"]).last_hidden_state
            torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(enc, want_enc, atol=1e-5, rtol=1e-5)


def test_noise_mask_chi_square_accepts_the_reference_over_many_runs():
    """The statistical check's false-alarm side: plmkit's own mask passes on 20 fresh seeds (~8 s)."""
    from plmkit.checks._core import Gen
    for seed in range(20):
        cases = checks._noise_cases(Gen(seed, "5.8"))
        for c in cases["stats"]:
            masks = torch.stack([plmkit_noise_mask(c["length"], c["density"], c["mean"],
                                                   torch.Generator().manual_seed(s)) for s in c["seeds"]])
            noise, spans = checks._noise_counts(c["length"], c["density"], c["mean"])
            firsts = [checks._runs(m_)[0][0] for m_ in masks]
            pmf = checks._composition_pmf(noise, spans)
            counts = [firsts.count(j) for j in range(1, len(pmf) + 1)]
            assert checks._chi_square_p(counts, pmf) > 1e-4


@pytest.mark.parametrize("check,answers,passes", [
    (checks.check_random_spans_noise_mask, (random_spans_noise_mask,), True),
    (checks.check_random_spans_noise_mask, (noise_fixed_spans,), False),
    (checks.check_blank_infilling, (blank_infilling,), True),
    (checks.check_blank_infilling, (glm_gpt_positions,), False),
    (checks.check_t5_logits, make_t5(""), True),
    (checks.check_t5_logits, make_t5("no head scale"), False),
], ids=["noise", "noise_bug", "glm", "glm_bug", "t5", "t5_bug"])
def test_new_exercises_graded_from_the_record_as_in_honour_mode(check, answers, passes, tmp_path):
    """Grading mode (record in the kernel, judge from the files) gives the very line honour mode gives (~6 s)."""
    from plmkit.checks import judge_recorded
    honour = check.honour(*answers, seed=11)
    assert check.record(*answers, seed=11, folder=tmp_path).recorded
    graded = judge_recorded(check.exercise, 11, tmp_path)
    assert graded.line == honour.line and graded.passed is passes, (honour.line, graded.line)


def test_noise_mask_checker_counts_are_t5s_definitions():
    """The counts the 5.8 checker demands (read off plmkit's reference) are T5's float32 definitions."""
    from test_objectives_seq2seq import t5_counts
    for L in range(1, 200):
        for d, m in ((0.15, 3.0), (0.3, 3.0), (0.5, 1.0), (0.2, 10.0)):
            noise, spans = t5_counts(L, d, m)
            assert checks._noise_counts(L, d, m) == (noise, min(spans, max(L, 2) - noise)), (L, d, m)
