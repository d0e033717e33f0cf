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
                   norm2 (LayerNorm for ffn)
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

import torch
from torch import nn

from .attention import KVCache, MultiHeadAttention
from .ffn import FeedForward
from .norms import LayerNorm

__all__ = ["EncoderBlock", "DecoderBlock"]


class EncoderBlock(nn.Module):
    """Bidirectional self-attention + FFN, Post-LN (default) or Pre-LN (`norm_first=True`).

    ``forward(x, mask=None)`` with x (B, T, C) and a mask as in
    :func:`~plmkit.nn.attention.scaled_dot_product_attention` (e.g. padding, (B, 1, 1, T)).

    >>> block = EncoderBlock(d_model=8, n_heads=2, d_ff=32, norm_first=True)
    >>> tuple(block(torch.randn(2, 5, 8)).shape)
    (2, 5, 8)
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False,
                 activation: str = "gelu", eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.norm1 = LayerNorm(d_model, eps=eps)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:                                           # Pre-LN
            x = x + self.drop(self.attn(self.norm1(x), mask=mask))
            x = x + self.drop(self.ffn(self.norm2(x)))
        else:                                                         # Post-LN
            x = self.norm1(x + self.drop(self.attn(x, mask=mask)))
            x = self.norm2(x + self.drop(self.ffn(x)))
        return x                                                      # (B, T, C)


class DecoderBlock(nn.Module):
    """Causal self-attention, optional cross-attention to an encoder's memory, FFN.

    ``forward(x, memory=None, mask=None, memory_mask=None, cache=None)``:
    x (B, T, C); memory (B, S, C) is required when ``cross_attention=True``;
    `mask` is an extra self-attention mask (e.g. padding) combined with the
    causal mask, `memory_mask` (e.g. (B, 1, 1, S)) masks cross-attention;
    `cache` (a :class:`~plmkit.nn.attention.KVCache`) keeps past keys/values so
    that x may hold only the new positions. With ``cross_attention=False`` this
    is a GPT block.

    >>> gpt_block = DecoderBlock(d_model=8, n_heads=2, d_ff=32, norm_first=True, cross_attention=False)
    >>> x = torch.randn(1, 4, 8)
    >>> y = gpt_block(x)
    >>> x2 = x.clone(); x2[0, 3] += 1.0                  # change the last token...
    >>> torch.allclose(gpt_block(x2)[0, :3], y[0, :3])    # ...earlier outputs do not move
    True
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False,
                 cross_attention: bool = True, activation: str = "gelu", eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.norm_first, self.has_cross = norm_first, cross_attention
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.norm1 = LayerNorm(d_model, eps=eps)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
            self.norm_cross = LayerNorm(d_model, eps=eps)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        if self.has_cross and memory is None:
            raise ValueError("memory (B, S, C) is required: this DecoderBlock has cross-attention")
        if not self.has_cross and memory is not None:
            raise ValueError("memory was given but this DecoderBlock has no cross-attention (cross_attention=False)")

        def self_attn(h):
            return self.attn(h, mask=mask, is_causal=True, cache=cache)

        def cross(h):
            return self.cross_attn(h, context=memory, mask=memory_mask)

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
