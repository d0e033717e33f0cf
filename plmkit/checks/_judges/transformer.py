"""Chapter 2's trusted half: the references and the likely bugs (`plmkit/checks/transformer.py` has the cases).

2.6's reference is plmkit's own Pre-LN `EncoderBlock`, 2.7's is torch's multi-head attention
(`F.multi_head_attention_forward`) behind the learner's four projections, both loaded with the
very weights the learner's module gets.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ... import nn as pn
from ...nn import blocks as _blocks
from .._core import Trusted

P = functools.partial


# ----------------------------------------------------------------------------- 2.1 attention

def attention(q, k, v, mask=None, *, scale="sqrt", axis=-1, mask_mode="before", invert=False, only_output=False,
              blocked=float("-inf")):
    """softmax(q k^T / sqrt(D), masked) v and the weights; the switches are the likely bugs (all off: correct)."""
    D = q.shape[-1]
    s = q @ k.transpose(-2, -1)                                    # (..., Tq, Tk)
    s = s / math.sqrt(D) if scale == "sqrt" else s / D if scale == "D" else s
    m = None if mask is None or mask_mode == "ignored" else (~mask if invert else mask)
    if m is not None and mask_mode == "before":
        s = s.masked_fill(~m, blocked)
    w = torch.softmax(s, dim=axis)
    if m is not None and mask_mode == "after":
        w = w * m
    return (w @ v) if only_output else (w @ v, w)


def attention_scales_q_in_place(q, k, v, mask=None):
    q /= math.sqrt(q.shape[-1])                                    # scales the caller's q
    return attention(q, k, v, mask, scale=None)


ATTENTION_BUGS = {
    "softmax taken over the query axis (dim=-2) instead of the key axis (dim=-1)": P(attention, axis=-2),
    "the scores are not divided by sqrt(D)": P(attention, scale=None),
    "the scores are divided by D instead of sqrt(D)": P(attention, scale="D"),
    "the mask is applied after the softmax (rows no longer sum to 1)": P(attention, mask_mode="after"),
    "the mask is inverted (True must mean 'may attend')": P(attention, invert=True),
    "the mask is ignored": P(attention, mask_mode="ignored"),
    "return a tuple (output, weights), not the output alone": P(attention, only_output=True),
    "blocked keys must get weight exactly 0 (masked_fill with -inf before the softmax, not 0)":
        P(attention, blocked=0.0),
    "attention changed q, k, v or the mask in place": attention_scales_q_in_place,
}


def _attention_judge(r, cases, results, expected):
    """The default comparison, plus what only attention has: blocked keys get weight 0 and do not leak."""
    for i, (c, rec, want) in enumerate(zip(cases, results, expected, strict=True)):
        r.compare(rec, want, c["what"], c["atol"], c["rtol"], (i,))
    blocked = [rec.get("value") for c, rec in zip(cases, results) if c["what"].startswith("attention(q, k, v, mask) "
                                                                                       "with keys 2 and 3")]
    ok = [type(v) is tuple and len(v) == 2 and all(isinstance(t, torch.Tensor) for t in v) for v in blocked]
    for v, good in zip(blocked, ok):
        r.check(good and v[1].shape[-1] == 4 and bool((v[1][..., 2:] == 0).all()),
                "attention(q, k, v, mask) with keys 2 and 3 blocked: blocked keys must get weight exactly 0 "
                "(masked_fill with -inf before the softmax)")
    a, b = [v[0] for v in blocked] if all(ok) and len(blocked) == 2 else (None, None)
    r.check(a is not None and a.shape == b.shape and torch.allclose(a, b, atol=1e-4),
            "changing the values of blocked keys changed the output: blocked keys leak")
    r.unchanged_all(results, "attention")


# ----------------------------------------------------------------------------- 2.2 causal_mask

def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


CAUSAL_MASK_BUGS = {
    "the mask is transposed: it lets position i see the FUTURE (upper triangle); query i may attend to keys j <= i":
        lambda T: torch.ones(T, T, dtype=torch.bool).triu(),
    "True/False are swapped; True must mean 'may attend'": lambda T: ~torch.ones(T, T, dtype=torch.bool).tril(),
    "the diagonal is False: a position may attend to itself": lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1),
    "expected a boolean tensor (True = may attend), not a float mask": lambda T: torch.ones(T, T).tril(),
}


# ----------------------------------------------------------------------------- 2.3 split/merge heads

def split_ok(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)     # (B, H, T, D)


def merge_ok(x):
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)                  # (B, T, C)


def split_wrong_view(x, n_heads):
    B, T, C = x.shape
    return x.view(B, n_heads, T, C // n_heads)


def merge_no_transpose(x):
    B, H, T, D = x.shape
    return x.reshape(B, T, H * D)


def merge_heads_last(x):
    B, H, T, D = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * D)


def merge_transposes_in_place(x):
    B, H, T, D = x.shape
    return x.transpose_(1, 2).reshape(B, T, H * D)                 # turns the caller's tensor around


HEADS_BUGS = {
    "x.view(B, H, T, D) mixes positions into heads: view as (B, T, H, D), then transpose(1, 2)":
        (split_wrong_view, merge_ok),
    "reshaped without moving the head axis next to D: transpose(1, 2) first": (split_ok, merge_no_transpose),
    "heads merged in the wrong order: channels must be [head 0 | head 1 | ...]": (split_ok, merge_heads_last),
    "split_heads or merge_heads changed its input in place (transpose_ is in place; transpose is not)":
        (split_ok, merge_transposes_in_place),
}


# ----------------------------------------------------------------------------- 2.4 sinusoidal_encoding

def sin_table(T, C, *, swap=False, freq="2i", start=0, dtype=torch.float32, blocks=False):
    pos = torch.arange(start, start + T, dtype=torch.float64)[:, None]
    i = torch.arange(0, C, 2, dtype=torch.float64)
    if freq == "i":
        i = i / 2
    angle = pos / 10000 ** (i / C)                                 # (T, C / 2)
    pe = torch.zeros(T, C, dtype=torch.float64)
    sin, cos = (angle.cos(), angle.sin()) if swap else (angle.sin(), angle.cos())
    if blocks:
        pe = torch.cat([sin, cos], 1)
    else:
        pe[:, 0::2], pe[:, 1::2] = sin, cos
    return pe.to(dtype)


def sin_stacked_the_other_way(T, d):
    pe = sin_table(T, d)
    return torch.stack([pe[:, 1::2], pe[:, 0::2]], -1).flatten(1)


def sin_pair_index(T, d):
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    angle = pos / 10000 ** (torch.arange(d // 2) / d)
    return torch.stack([angle.sin(), angle.cos()], -1).flatten(1)


SINUSOIDAL_BUGS = {
    "sin and cos are swapped: even channels are sin, odd channels cos": [P(sin_table, swap=True),
                                                                         sin_stacked_the_other_way],
    "check the frequencies: pair i uses 10000^(2i / C)": [P(sin_table, freq="i"), sin_pair_index],
    "positions start at 0": P(sin_table, start=1),
    "return a float32 table": P(sin_table, dtype=torch.float64),
    "sin and cos interleave (sin on even channels, cos on odd ones), not all sines first": P(sin_table, blocks=True),
}


# ----------------------------------------------------------------------------- 2.5 layer_norm

def layer_norm(x, weight, bias, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def ln(x, weight, bias, eps=1e-5, *, unbiased=False, eps_outside=False, over="last", affine=True):
    dims = tuple(range(x.ndim)) if over == "all" else (-1,)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    y = (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / torch.sqrt(var + eps)
    return y * weight + bias if affine else y


def ln_float32(x, weight, bias, eps=1e-5):
    return ln(x.float(), weight.float(), bias.float(), eps)


def ln_centres_in_place(x, weight, bias, eps=1e-5):
    x -= x.mean(-1, keepdim=True)                                  # centres the caller's x
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight + bias


LAYER_NORM_BUGS = {
    "LayerNorm uses the biased variance: divide by C, e.g. var(unbiased=False)": P(ln, unbiased=True),
    "eps goes inside the square root: sqrt(var + eps)": P(ln, eps_outside=True),
    "statistics taken over the whole tensor: take them over the last dim only (dim=-1)": P(ln, over="all"),
    "scale by weight and add bias at the end": P(ln, affine=False),
    "computed in float32: keep the input's dtype": ln_float32,
    "layer_norm changed x, weight or bias in place": ln_centres_in_place,
}


# ----------------------------------------------------------------------------- 2.6 pre_ln_block

class PreLN(nn.Module):
    """The block of Exercise 2.6 around plmkit's attention, with the likely bugs as forward methods."""

    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.attn = pn.MultiHeadAttention(d_model, n_heads)
        self.norm1 = pn.LayerNorm(d_model)
        self.ffn = pn.FeedForward(d_model, d_ff)
        self.norm2 = pn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.ffn(self.norm2(x))


class PostLN(PreLN):
    def forward(self, x, mask=None):
        x = self.norm1(x + self.attn(x, mask=mask))
        return self.norm2(x + self.ffn(x))


class ForgetsMask(PreLN):
    def forward(self, x, mask=None):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class NormsTheStream(PreLN):
    def forward(self, x, mask=None):
        x = self.norm1(x)
        x = x + self.attn(x, mask=mask)
        x = self.norm2(x)
        return x + self.ffn(x)


class NoResidual(PreLN):
    def forward(self, x, mask=None):
        x = self.attn(self.norm1(x), mask=mask)
        return x + self.ffn(self.norm2(x))


class SwappedNorms(PreLN):
    def forward(self, x, mask=None):
        x = x + self.attn(self.norm2(x), mask=mask)
        return x + self.ffn(self.norm1(x))


class AddsInPlace(PreLN):
    def forward(self, x, mask=None):
        x += self.attn(self.norm1(x), mask=mask)                   # += writes into the caller's x
        return x + self.ffn(self.norm2(x))


PRE_LN_BUGS = {
    "this is the Post-LN arrangement: normalise the sub-layer's input, not the sum": PostLN,
    "the mask was not passed to the attention": ForgetsMask,
    "the residual stream itself was normalised: normalise a copy for each sub-layer, x + attn(norm1(x))":
        NormsTheStream,
    "no residual around the attention: x = x + attn(norm1(x))": NoResidual,
    "norm1 goes before the attention, norm2 before the feed-forward": SwappedNorms,
    "PreLNBlock.forward changed its input x in place: use x = x + ..., not x += ...": AddsInPlace,
}


# ----------------------------------------------------------------------------- 2.7 multi_head_attention

class TorchMHA(nn.Module):
    """torch's multi-head attention (`F.multi_head_attention_forward`) behind the exercise's four projections."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x, context=None, mask=None):
        kv = x if context is None else context
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        padding = None if mask is None or mask.ndim == 2 else ~mask[:, 0, 0, :]   # torch: True = blocked
        blocked = ~mask if mask is not None and mask.ndim == 2 else None
        y, _ = F.multi_head_attention_forward(
            x.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), x.shape[-1], self.h, w, b, None, None, False,
            0.0, self.out_proj.weight, self.out_proj.bias, key_padding_mask=padding, attn_mask=blocked,
            need_weights=False)
        return y.transpose(0, 1)


class MHA(nn.Module):
    """Multi-head attention with a switch for each likely bug (all off: correct)."""
    scale_by = "head"          # "head": sqrt(D); "model": sqrt(C)
    out_proj_used = True
    merge = "ok"               # "no_transpose": reshape (B, H, T, D) straight to (B, T, C)
    split = "ok"               # "view_bht": view as (B, H, T, D)
    own_kv = False             # keys/values from x even when a context is given
    pass_mask = True
    one_head = False
    in_place = False

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def _split(self, t):
        B, T, C = t.shape
        h = 1 if self.one_head else self.h
        if self.split == "view_bht":
            return t.view(B, h, T, C // h)
        return t.view(B, T, h, C // h).transpose(1, 2)

    def forward(self, x, context=None, mask=None):
        kv = x if (context is None or self.own_kv) else context
        if self.in_place:
            x.mul_(1.0)                                             # touches the caller's x
            if mask is not None:
                mask &= True
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        C = x.shape[-1]
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1] if self.scale_by == "head" else C)
        if mask is not None and self.pass_mask:
            s = s.masked_fill(~mask, float("-inf"))
        y = torch.softmax(s, -1) @ v                                # (B, H, T, D)
        B, H, T, D = y.shape
        y = y.reshape(B, T, C) if self.merge == "no_transpose" else y.transpose(1, 2).reshape(B, T, C)
        return self.out_proj(y) if self.out_proj_used else y


def mha_bug(**switches):
    return type("MHABug", (MHA,), switches)


MHA_BUGS = {
    "the scores are divided by sqrt(d_model) instead of sqrt(head_dim)": mha_bug(scale_by="model"),
    "the output projection out_proj is missing": mha_bug(out_proj_used=False),
    "heads merged without transpose(1, 2): positions and heads are mixed": mha_bug(merge="no_transpose"),
    "heads split by view(B, H, T, D): view as (B, T, H, D), then transpose(1, 2)": mha_bug(split="view_bht"),
    "keys and values come from x, not from `context`": mha_bug(own_kv=True),
    "the mask is not passed to the attention": mha_bug(pass_mask=False),
    "the heads are never split (one head of width d_model)": mha_bug(one_head=True),
    "MultiHeadAttention.forward changed x, the context or the mask in place": mha_bug(in_place=True),
}


TRUSTED = {
    "attention": Trusted(attention, ATTENTION_BUGS, judge=_attention_judge),
    "causal_mask": Trusted(causal_mask, CAUSAL_MASK_BUGS),
    "split_merge_heads": Trusted((split_ok, merge_ok), HEADS_BUGS),
    "sinusoidal_encoding": Trusted(sin_table, SINUSOIDAL_BUGS),
    "layer_norm": Trusted(layer_norm, LAYER_NORM_BUGS),
    "pre_ln_block": Trusted(P(_blocks.EncoderBlock, norm_first=True), PRE_LN_BUGS),
    "multi_head_attention": Trusted(TorchMHA, MHA_BUGS),
}
