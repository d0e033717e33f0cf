"""The chapter-2 checkers pass plmkit's reference and fail blank answers and the classic bugs."""
import math

import pytest
import torch
from torch import nn

import plmkit.nn as pn
from checker_harness import (assert_blank_fails, assert_fails, assert_mutant_fails, assert_reference_passes,
                             assert_refused, make_blank)
from plmkit.checks import transformer as checks

blank = make_blank(2)


# ---------------------------------------------------------------- reference answers (as in the notebook)
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return w @ v, w


def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def split_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def sinusoidal_encoding(T, d_model):
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    i = torch.arange(0, d_model, 2, dtype=torch.float32)
    angle = pos / 10000 ** (i / d_model)
    pe = torch.zeros(T, d_model)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return pe


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x, context=None, mask=None):
        kv = x if context is None else context
        q, k, v = (split_heads(p(t), self.n_heads) for p, t in ((self.q_proj, x), (self.k_proj, kv), (self.v_proj, kv)))
        return self.out_proj(merge_heads(attention(q, k, v, mask)[0]))


class PreLNBlock(nn.Module):
    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads)         # the learner's own (Exercise 2.7)
        self.norm1 = pn.LayerNorm(d_model)
        self.ffn = pn.FeedForward(d_model, d_ff)
        self.norm2 = pn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.ffn(self.norm2(x))


CASES = [
    (checks.check_attention, (attention,)),
    (checks.check_causal_mask, (causal_mask,)),
    (checks.check_heads, (split_heads, merge_heads)),
    (checks.check_sinusoidal, (sinusoidal_encoding,)),
    (checks.check_layer_norm, (layer_norm,)),
    (checks.check_pre_ln_block, (PreLNBlock,)),
    (checks.check_mha, (MultiHeadAttention,)),
]


def test_references_pass_with_a_stable_verdict(capsys):
    for check, fns in CASES:
        assert_reference_passes(check, fns, capsys, times=3)     # fresh random inputs each time, same line


def test_plmkit_reference_is_refused(capsys):
    for check, fns in [(checks.check_heads, (pn.split_heads, pn.merge_heads)),
                       (checks.check_sinusoidal, (pn.sinusoidal_table,)),
                       (checks.check_causal_mask, (pn.causal_mask,)),
                       (checks.check_layer_norm, (pn.layer_norm,)),
                       (checks.check_mha, (pn.MultiHeadAttention,))]:
        assert_refused(check, fns, capsys)


def test_blank_fails_every_checker(capsys):
    for check, fns in CASES:
        assert_blank_fails(check, (blank,) * len(fns), capsys)

    class BlankBlock(PreLNBlock):
        def forward(self, x, mask=None):
            raise NotImplementedError("Exercise 2.6: replace this line with your code")
    assert_blank_fails(checks.check_pre_ln_block, BlankBlock, capsys)


# ---------------------------------------------------------------- 2.1 attention
def _attention_bug(kind):
    def fn(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1)
        if kind != "no_scale":
            scores = scores / math.sqrt(q.shape[-1])
        if mask is not None and kind != "mask_after":
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=-2 if kind == "wrong_axis" else -1)
        if mask is not None and kind == "mask_after":
            w = w * mask
        return w @ v, w
    return fn


@pytest.mark.parametrize("kind, hint", [("wrong_axis", "query axis"), ("no_scale", "sqrt(D)"),
                                        ("mask_after", "after the softmax")])
def test_attention_bugs_fail_and_are_named(kind, hint, capsys):
    assert_mutant_fails(checks.check_attention, _attention_bug(kind), hint, capsys)


def test_attention_other_bugs(capsys):
    def output_only(q, k, v, mask=None):
        return attention(q, k, v, mask)[0]

    def inverted(q, k, v, mask=None):
        return attention(q, k, v, None if mask is None else ~mask)

    def uses_torch(q, k, v, mask=None):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out, attention(q, k, v, mask)[1]

    for bug in (output_only, inverted):
        assert_fails(checks.check_attention, bug, capsys)
    assert_mutant_fails(checks.check_attention, uses_torch, "calls `F.scaled_dot_product_attention`", capsys)


# ---------------------------------------------------------------- 2.2 causal mask
def test_causal_mask_bugs(capsys):
    bugs = {
        "FUTURE": lambda T: torch.ones(T, T, dtype=torch.bool).triu(),
        "diagonal": lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1),
        "dtype": lambda T: torch.ones(T, T).tril(),
        "swapped": lambda T: ~torch.ones(T, T, dtype=torch.bool).tril(),
    }
    for hint, bug in bugs.items():
        assert_mutant_fails(checks.check_causal_mask, bug, hint, capsys)


# ---------------------------------------------------------------- 2.3 heads
def test_heads_merged_in_wrong_order_fail(capsys):
    def merge_no_transpose(x):
        B, H, T, D = x.shape
        return x.reshape(B, T, H * D)

    def merge_d_major(x):                                    # channels ordered (D, H) instead of (H, D)
        B, H, T, D = x.shape
        return x.permute(0, 2, 3, 1).reshape(B, T, H * D)

    def split_view(x, n_heads):
        B, T, C = x.shape
        return x.view(B, n_heads, T, C // n_heads)

    assert_mutant_fails(checks.check_heads, (split_heads, merge_no_transpose), "transpose(1, 2)", capsys)
    assert_mutant_fails(checks.check_heads, (split_heads, merge_d_major), "wrong order", capsys)
    assert_mutant_fails(checks.check_heads, (split_view, merge_heads), "mixes positions", capsys)


# ---------------------------------------------------------------- 2.4 sinusoidal
def test_sinusoidal_bugs(capsys):
    def swapped(T, d):
        pe = sinusoidal_encoding(T, d)
        return torch.stack([pe[:, 1::2], pe[:, 0::2]], -1).flatten(1)

    def wrong_freq(T, d):                                    # 10000^(i/d) with i the pair index
        pos = torch.arange(T, dtype=torch.float32)[:, None]
        angle = pos / 10000 ** (torch.arange(d // 2) / d)
        return torch.stack([angle.sin(), angle.cos()], -1).flatten(1)

    def blocks(T, d):                                        # all sines first, then all cosines
        pe = sinusoidal_encoding(T, d)
        return torch.cat([pe[:, 0::2], pe[:, 1::2]], 1)

    assert_mutant_fails(checks.check_sinusoidal, swapped, "swapped", capsys)
    assert_mutant_fails(checks.check_sinusoidal, wrong_freq, "frequencies", capsys)
    assert_fails(checks.check_sinusoidal, blocks, capsys)


# ---------------------------------------------------------------- 2.5 LayerNorm
def test_layer_norm_bugs(capsys):
    def unbiased(x, w, b, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b

    def eps_outside(x, w, b, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + eps) * w + b

    def over_batch(x, w, b, eps=1e-5):                       # statistics over everything
        return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) * w + b

    def no_affine(x, w, b, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)

    def uses_torch(x, w, b, eps=1e-5):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, eps)

    assert_mutant_fails(checks.check_layer_norm, unbiased, "biased variance", capsys)
    assert_mutant_fails(checks.check_layer_norm, eps_outside, "inside the square root", capsys)
    assert_mutant_fails(checks.check_layer_norm, over_batch, "last dim only", capsys)
    assert_fails(checks.check_layer_norm, no_affine, capsys)
    assert_mutant_fails(checks.check_layer_norm, uses_torch, "calls torch's layer norm", capsys)


# ---------------------------------------------------------------- 2.6 Pre-LN block
def test_pre_ln_block_bugs(capsys):
    class PostLN(PreLNBlock):
        def forward(self, x, mask=None):
            x = self.norm1(x + self.attn(x, mask=mask))
            return self.norm2(x + self.ffn(x))

    class ForgetsMask(PreLNBlock):
        def forward(self, x, mask=None):
            x = x + self.attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))

    class NormsTheStream(PreLNBlock):
        def forward(self, x, mask=None):
            x = self.norm1(x)
            x = x + self.attn(x, mask=mask)
            x = self.norm2(x)
            return x + self.ffn(x)

    class NoResidual(PreLNBlock):
        def forward(self, x, mask=None):
            x = self.attn(self.norm1(x), mask=mask)
            return x + self.ffn(self.norm2(x))

    class Renamed(nn.Module):
        def __init__(self, d_model, n_heads, d_ff):
            super().__init__()
            self.block = pn.EncoderBlock(d_model, n_heads, d_ff, norm_first=True)

        def forward(self, x, mask=None):
            return self.block(x, mask)

    assert_mutant_fails(checks.check_pre_ln_block, PostLN, "Post-LN", capsys)
    assert_mutant_fails(checks.check_pre_ln_block, ForgetsMask, "mask was not passed", capsys)
    for bug in (NormsTheStream, NoResidual):
        assert_fails(checks.check_pre_ln_block, bug, capsys)
    assert_mutant_fails(checks.check_pre_ln_block, Renamed, "missing the submodules", capsys)


def test_pre_ln_block_must_use_the_learners_attention(capsys):
    class WithPlmkitAttention(PreLNBlock):
        def __init__(self, d_model, n_heads, d_ff):
            super().__init__(d_model, n_heads, d_ff)
            self.attn = pn.MultiHeadAttention(d_model, n_heads)
    assert_refused(checks.check_pre_ln_block, WithPlmkitAttention, capsys, named="pn.MultiHeadAttention")


# ---------------------------------------------------------------- 2.7 multi-head attention
def _mha_bug(kind):
    class Bug(MultiHeadAttention):
        def forward(self, x, context=None, mask=None):
            kv = x if (context is None or kind == "own_kv") else context
            q, k, v = (split_heads(p(t), self.n_heads)
                       for p, t in ((self.q_proj, x), (self.k_proj, kv), (self.v_proj, kv)))
            if kind == "scale_C":                                  # attention divides by sqrt(D); make it sqrt(C)
                q = q / math.sqrt(self.n_heads)
            y = attention(q, k, v, None if kind == "no_mask" else mask)[0]
            if kind == "no_transpose":
                B, H, T, D = y.shape
                y = y.reshape(B, T, H * D)
            else:
                y = merge_heads(y)
            return y if kind == "no_out_proj" else self.out_proj(y)
    return Bug


@pytest.mark.parametrize("kind, hint", [
    ("scale_C", "sqrt(d_model) instead of sqrt(head_dim)"),
    ("no_out_proj", "output projection out_proj is missing"),
    ("no_transpose", "merged without transpose"),
    ("own_kv", "keys and values come from x"),
    ("no_mask", "mask is not passed"),
])
def test_mha_bugs_are_named(kind, hint, capsys):
    assert_mutant_fails(checks.check_mha, _mha_bug(kind), hint, capsys)


def test_mha_needs_the_documented_submodules(capsys):
    class Packed(nn.Module):
        def __init__(self, d_model, n_heads):
            super().__init__()
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.out_proj = nn.Linear(d_model, d_model)

        def forward(self, x, context=None, mask=None):
            return x
    assert_mutant_fails(checks.check_mha, Packed, "q_proj", capsys)


def test_mha_is_judged_against_torch():
    """The judge's reference is torch's own module: check it against an independent computation."""
    from plmkit.checks._core import Gen
    g = Gen(5, "2.7")
    c = checks._mha_cases(g)[0]
    ref = checks._torch_mha(c)
    m = MultiHeadAttention(c["C"], c["H"])
    m.load_state_dict(checks._mha_state(c["in_w"], c["in_b"], c["out_w"], c["out_b"]))
    for _, cross, mask in c["runs"]:
        ctx = c["context"] if cross else None
        with torch.no_grad():
            torch.testing.assert_close(ref(c["x"], ctx, mask), m(c["x"], ctx, mask), atol=1e-5, rtol=1e-4)
