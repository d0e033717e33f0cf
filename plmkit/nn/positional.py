"""Positional encodings: attention is blind to order, so positions are added to the input.

Self-attention treats its input as a *set*: permute the tokens and the outputs
permute the same way. A position signal added to each token embedding breaks
that symmetry. Two classic choices:

    sinusoidal_table / SinusoidalPositionalEncoding   fixed sines and cosines
        (Vaswani et al., 2017): PE[t, 2i] = sin(t / 10000^(2i/C)),
                                PE[t, 2i+1] = cos(t / 10000^(2i/C))
    LearnedPositionalEmbedding                       one trained vector per
        position (BERT, GPT-2), parameter ``weight`` of shape (max_len, C)

Both modules are called as ``pe(x, offset=0)`` on x (B, T, C) and return
``x + table[offset : offset + T]``; ``offset`` is the number of positions
already processed (decoding with a cache). A sequence that does not fit in
``max_len`` raises ValueError. Letters: B batch, T positions, C width.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sinusoidal_table", "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding"]


def sinusoidal_table(T: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The (T, d_model) sinusoidal table: even channels sin, odd channels cos.

    Channel pair i turns with angular frequency base^(-2i/d_model): the first
    pair once per position (in radians), the last almost not at all.

    >>> sinusoidal_table(2, 4)
    tensor([[0.0000, 1.0000, 0.0000, 1.0000],
            [0.8415, 0.5403, 0.0100, 0.9999]])
    """
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if not isinstance(d_model, int) or d_model < 2 or d_model % 2:
        raise ValueError(f"d_model must be a positive even int, got {d_model!r}")
    pos = torch.arange(T, dtype=torch.float32)[:, None]                   # (T, 1)
    freq = torch.exp(-math.log(base) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (C/2,)
    angle = pos * freq                                                     # (T, C/2)
    table = torch.empty(T, d_model)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table


def _check_input(x: torch.Tensor, offset: int, max_len: int, d_model: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (B, T, C) with C = d_model = {d_model}, got {shape}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    if offset + x.shape[1] > max_len:
        raise ValueError(f"sequence too long: positions {offset}..{offset + x.shape[1] - 1} do not fit in "
                         f"max_len = {max_len}; use at most {max_len - offset} positions")


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table (a buffer ``pe`` of shape (max_len, C)) to x (B, T, C).

    >>> pe = SinusoidalPositionalEncoding(d_model=4, max_len=16)
    >>> pe(torch.zeros(1, 2, 4))[0]
    tensor([[0.0000, 1.0000, 0.0000, 1.0000],
            [0.8415, 0.5403, 0.0100, 0.9999]])
    """

    def __init__(self, d_model: int, max_len: int = 512, base: float = 10000.0):
        super().__init__()
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", sinusoidal_table(max_len, d_model, base), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_input(x, offset, self.max_len, self.d_model)
        return x + self.pe[offset: offset + x.shape[1]].to(x.dtype)          # (B, T, C)


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position: parameter ``weight`` (max_len, C), added to x (B, T, C).

    >>> pe = LearnedPositionalEmbedding(max_len=8, d_model=4)
    >>> torch.equal(pe(torch.zeros(1, 3, 4))[0], pe.weight[:3])
    True
    """

    def __init__(self, max_len: int, d_model: int, init_std: float = 0.02):
        super().__init__()
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model, self.max_len = d_model, max_len
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * init_std)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_input(x, offset, self.max_len, self.d_model)
        return x + self.weight[offset: offset + x.shape[1]]                   # (B, T, C)
