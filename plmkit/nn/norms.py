"""Normalising each token's vector: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019).

    LayerNorm  y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias
    RMSNorm    y = x / sqrt(mean(x**2) + eps) * weight              (no centring, no bias)

Statistics are taken over the last dimension only (the C channels of one
token), so a token's result never depends on other tokens or the batch; the
variance is the biased one (divide by C), as in ``torch.nn.LayerNorm``.
Parameter names ``weight`` and ``bias`` match PyTorch and Hugging Face.

``layer_norm`` and ``rms_norm`` are the formulas written out for reading; the
``LayerNorm`` module calls PyTorch's fused ``F.layer_norm`` (one kernel instead
of six), which the tests prove equal to the formula. RMSNorm computes its mean
square in float32 whatever the input dtype (as LLaMA and T5 do), because the
sum of squares of a bf16/fp16 vector loses most of its digits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["layer_norm", "LayerNorm", "rms_norm", "RMSNorm"]


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Normalise the last dimension of `x` (..., C), then scale by `weight` (C,) and shift by `bias` (C,).

    >>> layer_norm(torch.tensor([[1., 2., 3.]]))
    tensor([[-1.2247,  0.0000,  1.2247]])
    """
    mean = x.mean(dim=-1, keepdim=True)                          # (..., 1)
    var = x.var(dim=-1, keepdim=True, unbiased=False)            # (..., 1), divide by C
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension; same parameters and results as ``torch.nn.LayerNorm(d)``.

    >>> ln = LayerNorm(3)
    >>> ln(torch.tensor([[1., 2., 3.]]))
    tensor([[-1.2247,  0.0000,  1.2247]], grad_fn=<NativeLayerNormBackward0>)
    """

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.d, self.eps = d, eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d:
            raise ValueError(f"x must end in dimension d = {self.d}, got shape {tuple(x.shape)}")
        return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)   # fused; equal to layer_norm()

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Divide the last dimension of `x` (..., C) by its root mean square, then scale by `weight` (C,).

    The mean square is taken in float32 (float64 input stays float64); the result
    is cast back to x's dtype before the scale (the order Hugging Face's LlamaRMSNorm uses).

    >>> rms_norm(torch.tensor([[3., 4.]]))        # rms = sqrt((9 + 16) / 2)
    tensor([[0.8485, 1.1314]])
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    mean_square = x32.pow(2).mean(dim=-1, keepdim=True)          # (..., 1)
    y = (x32 * torch.rsqrt(mean_square + eps)).to(x.dtype)
    return y if weight is None else weight * y


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned scale ``weight`` (C,); no bias, no mean subtraction.

    >>> norm = RMSNorm(2)
    >>> norm(torch.tensor([[3., 4.]]))
    tensor([[0.8485, 1.1314]], grad_fn=<MulBackward0>)
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.d, self.eps = d, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d:
            raise ValueError(f"x must end in dimension d = {self.d}, got shape {tuple(x.shape)}")
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"
