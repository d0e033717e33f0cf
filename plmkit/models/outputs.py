"""What a model returns when asked for more than its logits.

By default every model in :mod:`plmkit.models` returns a plain logits tensor
(chapters 0-4 index it directly). With ``output_hidden_states=True`` it returns
a :class:`ModelOutput` instead, so that a reward head, a value head or a probe
can read the residual stream without a second forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ModelOutput"]


@dataclass
class ModelOutput:
    """``logits`` (B, T, V) and ``hidden_states``, a list of n_layer + 1 tensors (B, T, C).

    Hugging Face's convention: ``hidden_states[0]`` is the embedding output (what
    the first block reads), ``hidden_states[i]`` the output of block i, except
    that for a Pre-LN model the last entry is taken after the final norm (it is
    what the LM head reads).
    """

    logits: torch.Tensor
    hidden_states: list[torch.Tensor] | None = None
