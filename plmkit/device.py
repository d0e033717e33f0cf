"""Devices, seeds and size profiles: the one place where hardware is decided.

Every notebook asks this module where to run and how big to go, so that the
same cell trains a small model on a laptop CPU and a larger one on a GPU::

    >>> from plmkit.device import profile
    >>> P = profile()
    >>> P.name                      # 'cpu' on a laptop, 'gpu' with CUDA
    'cpu'
    >>> P.pick(cpu=200, gpu=5000)   # e.g. the number of training steps
    200

Set the environment variable PLMKIT_PROFILE=cpu to get the small sizes on a
GPU machine too (quick runs, tests), or PLMKIT_DEVICE=cpu to keep off the GPU.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_DEVICES = ("cuda", "mps", "cpu")


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: cuda, then mps, then cpu.

    `prefer` (or the environment variable PLMKIT_DEVICE) forces one of
    'cuda', 'mps', 'cpu'; asking for one that is not available is an error.

    >>> get_device('cpu')
    device(type='cpu')
    """
    prefer = prefer or os.environ.get("PLMKIT_DEVICE") or None
    if prefer is not None:
        if prefer not in _DEVICES:
            raise ValueError(f"prefer must be one of {_DEVICES}, got {prefer!r}")
        if not _available(prefer):
            raise ValueError(f"prefer={prefer!r} but no {prefer} device is available on this machine")
        return torch.device(prefer)
    for name in _DEVICES:
        if _available(name):
            return torch.device(name)
    return torch.device("cpu")  # pragma: no cover


def _available(name: str) -> bool:
    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return True


def autocast_dtype(device: torch.device | str | None = None) -> torch.dtype | None:
    """The reduced-precision dtype to autocast to on `device`, or None for full float32.

    bf16 on a CUDA GPU that supports it (Ampere and newer), fp16 on older CUDA
    GPUs, None on mps and cpu (where autocast gains little for small models).
    """
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def seed_everything(seed: int = 0) -> None:
    """Seed Python's `random`, NumPy (if installed) and torch on every device.

    >>> seed_everything(0); a = torch.rand(2)
    >>> seed_everything(0); b = torch.rand(2)
    >>> bool((a == b).all())
    True
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Profile:
    """A size preset: 'cpu' (a laptop, CI) or 'gpu' (a CUDA machine)."""

    name: str
    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def pick(self, cpu: T, gpu: T) -> T:
        """Return `cpu` or `gpu` according to this profile.

        >>> Profile('cpu', torch.device('cpu'), None).pick(cpu=2, gpu=12)
        2
        """
        return gpu if self.is_gpu else cpu

    def autocast(self) -> Any:
        """A context manager running matrix work in reduced precision where it pays (bf16 on GPUs)."""
        if self.autocast_dtype is None:
            import contextlib
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def profile() -> Profile:
    """The size profile for this machine (see the module docstring)."""
    device = get_device()
    forced = os.environ.get("PLMKIT_PROFILE")
    if forced is not None and forced not in ("cpu", "gpu"):
        raise ValueError(f"PLMKIT_PROFILE must be 'cpu' or 'gpu', got {forced!r}")
    name = forced or ("gpu" if device.type == "cuda" else "cpu")
    if name == "gpu" and device.type != "cuda":
        raise ValueError("PLMKIT_PROFILE=gpu but no CUDA device is available")
    return Profile(name=name, device=device, autocast_dtype=autocast_dtype(device))


def describe() -> str:
    """One line about the machine, for the top of a notebook."""
    d = get_device()
    if d.type == "cuda":
        p = torch.cuda.get_device_properties(d)
        return f"cuda: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    return f"{d.type}: {torch.get_num_threads()} CPU threads, torch {torch.__version__}"
