"""The prefix-LM mask: bidirectional over a prefix, causal after it (UniLM, Dong et al. 2019; T5's "prefix LM").

One stack of decoder layers can play an encoder-decoder: the first P tokens
(the input, or "prefix") see each other in both directions, and every later
token sees the whole prefix plus the tokens before it. The loss is taken on
the positions after the prefix only.

    key k is visible to query q   iff   k < P   or   k <= q

With P = 0 it is the causal mask of a GPT; with P = T it is BERT's full mask.
Masks are boolean, True = "may attend", like everywhere in plmkit. This is a
front end to :func:`plmkit.nn.attention.prefix_lm_mask` (a (B,) tensor of prefix
lengths) that also takes one int and checks the lengths.
"""
from __future__ import annotations

import torch

from ..nn.attention import prefix_lm_mask as _batched_prefix_lm_mask

__all__ = ["prefix_lm_mask"]


def prefix_lm_mask(prefix_length: int | torch.Tensor, length: int) -> torch.Tensor:
    """Bool mask of a prefix LM: (T, T) for an int prefix length, (B, 1, T, T) for a (B,) tensor of them.

    >>> prefix_lm_mask(2, 4).int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    batched = isinstance(prefix_length, torch.Tensor)
    if batched:
        if prefix_length.ndim != 1 or prefix_length.is_floating_point() or prefix_length.dtype == torch.bool:
            raise ValueError("prefix_length must be an int or a 1-D integer tensor (B,)")
        P = prefix_length.long()
    else:
        if not isinstance(prefix_length, int) or isinstance(prefix_length, bool):
            raise ValueError(f"prefix_length must be an int or a 1-D integer tensor (B,), got {prefix_length!r}")
        P = torch.tensor([prefix_length])
    if P.numel() and (int(P.min()) < 0 or int(P.max()) > length):
        raise ValueError(f"prefix_length must lie in [0, length={length}], got {P.tolist()}")
    mask = _batched_prefix_lm_mask(P, length)                          # (B, 1, T, T)
    return mask if batched else mask[0, 0]
