"""LoRA (Hu et al., 2021): fine-tune a frozen linear layer through a low-rank update.

    y = W x + (alpha / r) * B (A dropout(x))       W (out, in) frozen; A (r, in), B (out, r) trained

A starts random (Kaiming-uniform, as in the `peft` library) and B at zero, so a
freshly wrapped model computes exactly what the base model does. Merging folds
the update into the weight, W <- W + (alpha / r) B A, so inference costs
nothing extra; unmerging subtracts it again.

    >>> base = nn.Linear(8, 4)
    >>> lora = LoRALinear(base, r=2, alpha=4)
    >>> x = torch.randn(3, 8)
    >>> torch.allclose(lora(x), base(x))            # B = 0 at the start
    True
    >>> sum(p.numel() for p in lora.parameters() if p.requires_grad)   # r * (in + out)
    24
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "lora_state_dict", "count_parameters"]


class LoRALinear(nn.Module):
    """A frozen `base` nn.Linear plus a trainable rank-`r` update scaled by alpha / r.

    Submodules ``base`` (the original layer), ``lora_A`` (in -> r) and ``lora_B``
    (r -> out), both bias-free nn.Linear like `peft`'s, and ``dropout`` on the
    adapter's input.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= min(base.in_features, base.out_features):
            raise ValueError(f"r must be an int in [1, min(in, out) = {min(base.in_features, base.out_features)}], "
                             f"got {r!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r
        base.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=dev, dtype=dt)
        self.dropout = nn.Dropout(dropout)
        self.merged = False
        self.reset_lora()

    def reset_lora(self) -> None:
        """A Kaiming-uniform (a = sqrt 5, `peft`'s default), B zero: the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A, shape (out, in): what merging adds to the base weight."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        y = self.base(x)
        if self.merged:
            return y
        return y + self.scaling * self.lora_B(self.lora_A(self.dropout(x)))

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (alpha / r) B A; forward then runs the base layer only."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (W <- W - (alpha / r) B A)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def add_lora(model: nn.Module, targets=("q_proj", "v_proj"), r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0) -> list[str]:
    """Freeze `model` and wrap every nn.Linear whose name ends with one of `targets` in a LoRALinear.

    Returns the dotted names of the wrapped layers. Only the adapters train afterwards.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty list of module-name endings, got {targets!r}")
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child_name in targets:
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                wrapped.append(full)
    if not wrapped:
        raise ValueError(f"targets {list(targets)} match no nn.Linear in the model")
    return wrapped


def _lora_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter of `model` into its base weight."""
    for m in _lora_layers(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for m in _lora_layers(model):
        m.unmerge()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (what a LoRA fine-tune needs to save)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
