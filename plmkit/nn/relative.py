"""T5's relative position bias: attention learns one number per (head, distance bucket).

T5 (Raffel et al., 2020) adds no position vector to the tokens. Instead every
attention score q·k gets a learned scalar that depends only on how far the key
is from the query, ``relative_position = key_position - query_position``:

    score[h, i, j] = q_i · k_j + bias[h, bucket(j - i)]

Distances are grouped into ``num_buckets`` buckets: half of them hold the
small distances exactly (0, 1, 2, ...), the other half grow logarithmically up
to ``max_distance``; everything farther shares the last bucket. A
bidirectional attention (the encoder) spends half of its buckets on keys to the
right (j > i) and half on keys to the left; a causal attention (the decoder)
only ever sees keys to the left, so all buckets go to that side and every key
to the right lands in bucket 0 (the mask hides it anyway).

    relative_position_bucket   distance -> bucket, the same integers as Hugging Face's
                               ``T5Attention._relative_position_bucket`` (and Mesh TensorFlow)
    RelativePositionBias       the learned table ``weight`` (num_buckets, H) and the
                               additive bias (1, H, T_q, T_k) that attention adds to its scores

T5 computes the bias in the first layer of a stack and reuses it in every
other layer of that stack; cross-attention gets none. Letters: H heads,
T_q query positions, T_k key positions.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["relative_position_bucket", "RelativePositionBias"]


def _check_buckets(num_buckets, max_distance, bidirectional) -> None:
    if not isinstance(num_buckets, int) or isinstance(num_buckets, bool) or num_buckets < (4 if bidirectional else 2):
        raise ValueError(f"num_buckets must be an int >= {4 if bidirectional else 2} "
                         f"({'bidirectional' if bidirectional else 'causal'}), got {num_buckets!r}")
    exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    if not isinstance(max_distance, int) or isinstance(max_distance, bool) or max_distance <= exact:
        raise ValueError(f"max_distance must be an int > {exact} (the distances kept exact), got {max_distance!r}")


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Map ``key_position - query_position`` (any shape, integer) to a bucket in [0, num_buckets).

    Bidirectional: buckets [0, n/2) for keys at or left of the query, [n/2, n) for
    keys to its right (n = num_buckets). Causal: keys to the right all go to 0.
    Within a side of ``m`` buckets, distances below m/2 are their own bucket and
    larger ones share logarithmically wider buckets, up to ``max_distance``.

    >>> d = torch.tensor([-200, -128, -20, -3, 0, 3, 20, 128, 200])
    >>> relative_position_bucket(d)                       # encoder: 16 buckets per side
    tensor([15, 15, 10,  3,  0, 19, 26, 31, 31])
    >>> relative_position_bucket(d, bidirectional=False)   # decoder: 32 buckets, left only
    tensor([31, 31, 17,  3,  0,  0,  0,  0,  0])
    """
    if not isinstance(relative_position, torch.Tensor) or relative_position.is_floating_point() \
            or relative_position.dtype == torch.bool:
        raise ValueError("relative_position must be an integer torch.Tensor of key - query distances")
    _check_buckets(num_buckets, max_distance, bidirectional)
    relative_position = relative_position.long()
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2                                        # one half per side
        bucket = bucket + (relative_position > 0).long() * num_buckets   # keys to the right: upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)             # keys to the right count as distance 0
    # distance >= 0 now. Half of this side's buckets are exact: 0, 1, ..., max_exact - 1.
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # The other half cover [max_exact, max_distance) on a log scale; farther shares the last bucket.
    # (The same float32 operations in the same order as Mesh TensorFlow and Hugging Face, so the
    # integer results agree exactly; log(0) = -inf only happens where is_small picks the exact bucket.)
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    if_large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    if_large = if_large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, distance, if_large)


class RelativePositionBias(nn.Module):
    """One learned bias per (bucket, head): ``weight`` of shape (num_buckets, H).

    ``forward(query_positions, key_length)`` returns the additive bias
    (1, H, T_q, T_k) for queries at the absolute positions ``query_positions``
    (T_q,) and keys at positions 0 .. key_length - 1. During cached decoding
    the query positions are the cache positions of the new tokens, so one
    new token at position t gets row t of the full table.

    >>> rpb = RelativePositionBias(n_heads=2, num_buckets=8, max_distance=16, bidirectional=False)
    >>> rpb(torch.arange(3), key_length=3).shape
    torch.Size([1, 2, 3, 3])
    >>> full = rpb(torch.arange(5), 5); step = rpb(torch.tensor([4]), 5)
    >>> torch.equal(full[:, :, 4:], step)
    True
    """

    def __init__(self, n_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
            raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
        _check_buckets(num_buckets, max_distance, bidirectional)
        self.n_heads, self.num_buckets, self.max_distance = n_heads, num_buckets, max_distance
        self.bidirectional = bool(bidirectional)
        self.weight = nn.Parameter(torch.randn(num_buckets, n_heads))   # HF: relative_attention_bias.weight

    def buckets(self, query_positions: torch.Tensor, key_length: int) -> torch.Tensor:
        """The (T_q, T_k) bucket index of every (query, key) pair."""
        if not isinstance(query_positions, torch.Tensor) or query_positions.ndim != 1 \
                or query_positions.is_floating_point():
            raise ValueError("query_positions must be a 1-D integer tensor (T_q,) of absolute positions")
        if not isinstance(key_length, int) or isinstance(key_length, bool) or key_length < 1:
            raise ValueError(f"key_length must be a positive int, got {key_length!r}")
        keys = torch.arange(key_length, device=query_positions.device)          # (T_k,)
        relative = keys[None, :] - query_positions.long()[:, None]                  # (T_q, T_k) key - query
        return relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)

    def forward(self, query_positions: torch.Tensor, key_length: int) -> torch.Tensor:
        b = self.buckets(query_positions.to(self.weight.device), key_length)     # (T_q, T_k)
        values = self.weight[b]                                                   # (T_q, T_k, H)
        return values.permute(2, 0, 1).unsqueeze(0)                               # (1, H, T_q, T_k)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
                f"bidirectional={self.bidirectional}")
