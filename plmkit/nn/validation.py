"""Input checks that never stall a GPU.

Reading a tensor's values on the host (``int(ids.max())``, ``if (ids < 0).any():``)
makes the CPU wait for every kernel queued before it: a host-device sync in
every forward pass. So value checks run only where they are free, on CPU
tensors outside ``torch.compile``; on an accelerator an out-of-range id still
fails, inside the embedding kernel (a device-side assert), just with a less
friendly message.

    check_token_ids(ids, size, name, bound)   ids in [0, size): ValueError naming `name`

Every model of :mod:`plmkit.models` and :class:`~plmkit.nn.transformer.Seq2SeqTransformer`
call this one function, so they all behave alike.
"""
from __future__ import annotations

import torch

__all__ = ["check_token_ids", "values_readable"]


def values_readable(t: torch.Tensor) -> bool:
    """True when reading `t`'s values costs no device sync: a CPU tensor, outside torch.compile.

    >>> values_readable(torch.zeros(2)), values_readable(torch.zeros(2, device="meta"))
    (True, False)
    """
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_token_ids(ids: torch.Tensor, size: int, name: str = "input_ids", bound: str = "vocab_size") -> None:
    """Raise ``ValueError`` unless every entry of the integer tensor `ids` lies in [0, size).

    The message names the argument (`name`) and the limit (`bound`, e.g.
    ``vocab_size``). Values are read only when that is free (see
    :func:`values_readable`): on a GPU this checks dtype only and never syncs.

    >>> check_token_ids(torch.tensor([[0, 4]]), 5)
    >>> check_token_ids(torch.tensor([[0, 5]]), 5)
    Traceback (most recent call last):
    ...
    ValueError: input_ids must be in [0, vocab_size=5), got values in [0, 5]
    """
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got "
                         f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    if ids.numel() and values_readable(ids):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} must be in [0, {bound}={size}), got values in [{lo}, {hi}]")
