"""Rotary position embedding, RoPE (Su et al., 2021): encode a token's position by rotating its query and key.

Split a head's vector into D/2 pairs; pair i at position m is rotated by the
angle m * theta_i, with theta_i = theta ** (-2i / D) (theta = 10000 by default,
500000 in LLaMA 3). Because a rotation by a and then the inverse of a rotation
by b is a rotation by a - b,

    <R(m) q, R(n) k> = <q, R(n - m) k>

so the attention score depends on the positions only through their offset:
relative position, obtained with absolute rotations and no extra parameters.
Nothing is added to the token embeddings; values are not rotated.

Which coordinates form a pair is a convention:

    interleaved  (x0, x1), (x2, x3), ...          the paper, Meta's original LLaMA code
    rotate-half  (x0, x_{D/2}), (x1, x_{D/2+1}), ...  Hugging Face, used here

They compute the same scores once the rows of W_q and W_k are permuted
(``interleaved_to_half`` / ``half_to_interleaved``), which is what converting a
Meta checkpoint to Hugging Face format does.

Position interpolation (Chen et al., 2023) runs a model past its training
length by dividing positions by ``scaling_factor`` so that they fall back into
the trained range (Hugging Face's rope_type "linear").

Letters: B batch, H heads, T time, D head width.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["rotary_inv_freq", "RotaryEmbedding", "rotate_half", "apply_rotary", "apply_rotary_interleaved",
           "interleaved_to_half", "half_to_interleaved"]


def _check_head_dim(head_dim):
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")


def rotary_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The D/2 angular frequencies theta ** (-2i / D), i = 0 .. D/2 - 1, fastest first.

    >>> rotary_inv_freq(4, theta=100.0)
    tensor([1.0000, 0.1000])
    """
    _check_head_dim(head_dim)
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta!r}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta ** exponents)


class RotaryEmbedding(nn.Module):
    """cos and sin tables for the given positions: forward(position_ids (B, T) or (T,)) -> (cos, sin), each (B, T, D).

    Both halves of the last dimension hold the same D/2 angles (rotate-half layout).

    >>> rope = RotaryEmbedding(head_dim=4, max_position_embeddings=16)
    >>> cos, sin = rope(torch.arange(3)[None])
    >>> tuple(cos.shape), sin[0, 1]
    ((1, 3, 4), tensor([0.8415, 0.0100, 0.8415, 0.0100]))
    """

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, max_position_embeddings: int = 2048, theta: float = 10000.0,
                 scaling_factor: float = 1.0):
        super().__init__()
        if not isinstance(max_position_embeddings, int) or max_position_embeddings < 1:
            raise ValueError(f"max_position_embeddings must be a positive int, got {max_position_embeddings!r}")
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {scaling_factor!r}")
        self.head_dim, self.theta = head_dim, theta
        self.max_position_embeddings, self.scaling_factor = max_position_embeddings, scaling_factor
        # position m / s at frequency f  ==  position m at frequency f / s
        self.register_buffer("inv_freq", rotary_inv_freq(head_dim, theta) / scaling_factor, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype | None = None):
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2 or position_ids.dtype.is_floating_point:
            raise ValueError(f"position_ids must be an integer tensor (B, T) or (T,), got {tuple(position_ids.shape)} "
                             f"{position_ids.dtype}")
        angles = position_ids[..., None].float() * self.inv_freq.float()   # (B, T, D/2), always float32
        angles = torch.cat((angles, angles), dim=-1)                          # (B, T, D)
        dtype = dtype or torch.float32
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, max_position_embeddings={self.max_position_embeddings}, "
                f"theta={self.theta}, scaling_factor={self.scaling_factor}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90-degree turn of every pair.

    >>> rotate_half(torch.tensor([1., 2., 3., 4.]))
    tensor([-3., -4.,  1.,  2.])
    """
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _check_tables(q, cos, sin):
    if q.dim() != 4:
        raise ValueError(f"q and k must be (B, H, T, D), got shape {tuple(q.shape)}")
    if cos.shape != sin.shape or cos.dim() != 3 or cos.shape[-1] != q.shape[-1] or cos.shape[-2] != q.shape[-2]:
        raise ValueError(f"cos and sin must be (B, T, D) = (B, {q.shape[-2]}, {q.shape[-1]}), "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q (B, H, T, D) and k (B, H_kv, T, D) by the tables (B, T, D); rotate-half layout.

    Each pair (a, b) becomes (a cos - b sin, a sin + b cos), written for all pairs at once.

    >>> q = torch.tensor([1., 0.]).view(1, 1, 1, 2)
    >>> cos, sin = RotaryEmbedding(2, theta=1.0)(torch.tensor([[1]]))   # angle 1 rad
    >>> apply_rotary(q, q, cos, sin)[0].flatten()
    tensor([0.5403, 0.8415])
    """
    _check_tables(q, cos, sin)
    _check_tables(k, cos, sin)
    cos, sin = cos[:, None], sin[:, None]                       # (B, 1, T, D): same for every head
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def apply_rotary_interleaved(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """The paper's layout: pairs are (x0, x1), (x2, x3), ...; tables as from RotaryEmbedding (B, T, D).

    Equals ``apply_rotary`` after moving coordinates with ``interleaved_to_half``.
    """
    _check_tables(q, cos, sin)
    _check_tables(k, cos, sin)
    half = cos.shape[-1] // 2
    c, s = cos[:, None, :, :half], sin[:, None, :, :half]       # (B, 1, T, D/2): one angle per pair

    def rotate(x):
        a, b = x[..., 0::2], x[..., 1::2]                        # (B, H, T, D/2) each
        return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)

    return rotate(q), rotate(k)


def interleaved_to_half(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reorder a head's coordinates (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...) along `dim`.

    For a weight W_q (H * D, C), apply it per head: ``interleaved_to_half(W.view(H, D, C), dim=1).reshape(H * D, C)``.

    >>> interleaved_to_half(torch.arange(6))
    tensor([0, 2, 4, 1, 3, 5])
    """
    d = x.shape[dim]
    _check_head_dim(d)
    x = x.movedim(dim, -1)
    return x.unflatten(-1, (d // 2, 2)).transpose(-1, -2).flatten(-2).movedim(-1, dim)


def half_to_interleaved(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The inverse of ``interleaved_to_half``.

    >>> half_to_interleaved(torch.tensor([0, 2, 4, 1, 3, 5]))
    tensor([0, 1, 2, 3, 4, 5])
    """
    d = x.shape[dim]
    _check_head_dim(d)
    x = x.movedim(dim, -1)
    return x.unflatten(-1, (2, d // 2)).transpose(-1, -2).flatten(-2).movedim(-1, dim)
