"""Transformer blocks: attention and a feed-forward network, each wrapped in a residual connection and a LayerNorm.

Two arrangements of the same parts (x is the residual stream, (B, T, C)):

    Post-LN (Vaswani et al. 2017, BERT)        Pre-LN (GPT-2 onward, Xiong et al. 2020)
    x = norm1(x + attn(x))                     x = x + attn(norm1(x))
    x = norm2(x + ffn(x))                      x = x + ffn(norm2(x))

Post-LN normalises the stream itself after every sub-layer; Pre-LN leaves the
stream alone (an identity path from input to output) and normalises only what
each sub-layer reads, which keeps gradients well scaled in deep stacks and
trains without learning-rate warm-up. A Pre-LN stack needs one final LayerNorm
after its last block (see :mod:`plmkit.nn.transformer`).

Submodule names (what checkpoint loaders map weights onto):

    EncoderBlock   attn (MultiHeadAttention: q_proj, k_proj, v_proj, out_proj),
                   norm1 (LayerNorm for attn), ffn (FeedForward: fc1, fc2),
                   norm2 (LayerNorm for ffn); a custom `norm` / `ffn` keeps these names
    DecoderBlock   attn (causal self-attention), norm1,
                   cross_attn + norm_cross (only when cross_attention=True),
                   ffn, norm2

``norm1`` always belongs to self-attention and ``norm2`` to the FFN, in both
blocks and both arrangements. Dropout with probability `dropout` is applied
to the attention weights, inside the FFN, and to each sub-layer's output
before it is added to the stream (``drop``). Letters: B batch, T target
positions, S source (memory) positions, C width.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention import MultiHeadAttention
from .cache import CrossAttentionCache, KVCache, StaticKVCache
from .ffn import FeedForward
from .norms import LayerNorm

__all__ = ["EncoderBlock", "DecoderBlock"]


def _make_norm(norm, d_model: int, eps: float) -> nn.Module:
    if norm is None:
        return LayerNorm(d_model, eps=eps)
    if not callable(norm) or isinstance(norm, nn.Module):
        raise ValueError(f"norm must be a factory called as norm(d_model, eps=...) (e.g. LayerNorm, RMSNorm), "
                         f"got {norm!r}")
    return norm(d_model, eps=eps)


def _make_ffn(ffn, d_model: int, d_ff: int, activation: str, dropout: float, bias: bool) -> nn.Module:
    if ffn is None:
        return FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
    if isinstance(ffn, nn.Module):
        return ffn
    if callable(ffn):
        return ffn(d_model, d_ff)
    raise ValueError(f"ffn must be an nn.Module or a factory called as ffn(d_model, d_ff), got {ffn!r}")


class EncoderBlock(nn.Module):
    """Bidirectional self-attention + FFN, Post-LN (default) or Pre-LN (`norm_first=True`).

    ``forward(x, mask=None, *, position_bias=None, rotary=None)`` with x (B, T, C)
    and a mask as in :func:`~plmkit.nn.attention.scaled_dot_product_attention`
    (e.g. padding, (B, 1, 1, T)); `position_bias` and `rotary` go to the attention.

    Later models swap parts without a new block class: `norm` is a factory
    ``norm(d_model, eps=eps)`` (default :class:`LayerNorm`; e.g. RMSNorm), `ffn`
    an ``nn.Module`` or a factory ``ffn(d_model, d_ff)`` (default
    :class:`FeedForward` with `activation`), and `head_dim`, `n_kv_heads`,
    `scale` are passed to :class:`MultiHeadAttention` (`bias` to attention and
    the default FFN).

    >>> block = EncoderBlock(d_model=8, n_heads=2, d_ff=32, norm_first=True)
    >>> tuple(block(torch.randn(2, 5, 8)).shape)
    (2, 5, 8)
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False,
                 activation: str = "gelu", eps: float = 1e-5, bias: bool = True, *,
                 norm: Callable[..., nn.Module] | None = None, ffn: nn.Module | Callable[..., nn.Module] | None = None,
                 head_dim: int | None = None, n_kv_heads: int | None = None, scale: float | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias,
                                       head_dim=head_dim, n_kv_heads=n_kv_heads, scale=scale)
        self.norm1 = _make_norm(norm, d_model, eps)
        self.ffn = _make_ffn(ffn, d_model, d_ff, activation, dropout, bias)
        self.norm2 = _make_norm(norm, d_model, eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                position_bias: torch.Tensor | None = None, rotary=None) -> torch.Tensor:
        def attn(h):
            return self.attn(h, mask=mask, position_bias=position_bias, rotary=rotary)

        if self.norm_first:                                           # Pre-LN
            x = x + self.drop(attn(self.norm1(x)))
            x = x + self.drop(self.ffn(self.norm2(x)))
        else:                                                         # Post-LN
            x = self.norm1(x + self.drop(attn(x)))
            x = self.norm2(x + self.drop(self.ffn(x)))
        return x                                                      # (B, T, C)


class DecoderBlock(nn.Module):
    """Causal self-attention, optional cross-attention to an encoder's memory, FFN.

    ``forward(x, memory=None, mask=None, memory_mask=None, cache=None, *, is_causal=True,
    cache_position=None, position_bias=None, rotary=None, cross_cache=None)``:
    x (B, T, C); memory (B, S, C) is required when ``cross_attention=True``
    (unless `cross_cache` already holds its keys/values);
    `mask` is an extra self-attention mask (e.g. padding) combined with the
    causal mask (pass a complete mask from
    :func:`~plmkit.nn.attention.build_attention_mask` with ``is_causal=False``
    to build it once per forward), `memory_mask` (e.g. (B, 1, 1, S)) masks cross-attention;
    `cache` (a :class:`~plmkit.nn.cache.KVCache` or :class:`~plmkit.nn.cache.StaticKVCache`,
    written at `cache_position`) keeps past keys/values so that x may hold only
    the new positions; `cross_cache` (a :class:`~plmkit.nn.cache.CrossAttentionCache`)
    keeps the cross-attention keys/values of `memory`. `position_bias` and
    `rotary` go to self-attention. With ``cross_attention=False`` this is a GPT block.
    Constructor options `norm`, `ffn`, `head_dim`, `n_kv_heads`, `scale` as in :class:`EncoderBlock`.

    >>> gpt_block = DecoderBlock(d_model=8, n_heads=2, d_ff=32, norm_first=True, cross_attention=False)
    >>> x = torch.randn(1, 4, 8)
    >>> y = gpt_block(x)
    >>> x2 = x.clone(); x2[0, 3] += 1.0                  # change the last token...
    >>> torch.allclose(gpt_block(x2)[0, :3], y[0, :3])    # ...earlier outputs do not move
    True
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False,
                 cross_attention: bool = True, activation: str = "gelu", eps: float = 1e-5, bias: bool = True, *,
                 norm: Callable[..., nn.Module] | None = None, ffn: nn.Module | Callable[..., nn.Module] | None = None,
                 head_dim: int | None = None, n_kv_heads: int | None = None, scale: float | None = None):
        super().__init__()
        self.norm_first, self.has_cross = norm_first, cross_attention
        options = dict(dropout=dropout, bias=bias, head_dim=head_dim, n_kv_heads=n_kv_heads, scale=scale)
        self.attn = MultiHeadAttention(d_model, n_heads, **options)
        self.norm1 = _make_norm(norm, d_model, eps)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, n_heads, **options)
            self.norm_cross = _make_norm(norm, d_model, eps)
        self.ffn = _make_ffn(ffn, d_model, d_ff, activation, dropout, bias)
        self.norm2 = _make_norm(norm, d_model, eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, cache: KVCache | StaticKVCache | None = None, *,
                is_causal: bool = True, cache_position: torch.Tensor | None = None,
                position_bias: torch.Tensor | None = None, rotary=None,
                cross_cache: CrossAttentionCache | None = None) -> torch.Tensor:
        cached_memory = cross_cache is not None and cross_cache.is_set
        if self.has_cross and memory is None and not cached_memory:
            raise ValueError("memory (B, S, C) is required: this DecoderBlock has cross-attention")
        if not self.has_cross and (memory is not None or cross_cache is not None):
            raise ValueError("memory / cross_cache was given but this DecoderBlock has no cross-attention "
                             "(cross_attention=False)")

        def self_attn(h):
            return self.attn(h, mask=mask, is_causal=is_causal, cache=cache, cache_position=cache_position,
                             position_bias=position_bias, rotary=rotary)

        def cross(h):
            return self.cross_attn(h, context=None if cached_memory else memory, mask=memory_mask, cache=cross_cache)

        if self.norm_first:                                           # Pre-LN
            x = x + self.drop(self_attn(self.norm1(x)))
            if self.has_cross:
                x = x + self.drop(cross(self.norm_cross(x)))
            x = x + self.drop(self.ffn(self.norm2(x)))
        else:                                                         # Post-LN
            x = self.norm1(x + self.drop(self_attn(x)))
            if self.has_cross:
                x = self.norm_cross(x + self.drop(cross(x)))
            x = self.norm2(x + self.drop(self.ffn(x)))
        return x                                                      # (B, T, C)
