"""Layer normalisation (Ba et al., 2016): each token's vector to mean 0, variance 1, then a learned scale and shift.

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

Statistics are taken over the last dimension only (the C channels of one
token), so a token's result never depends on other tokens or the batch; the
variance is the biased one (divide by C), as in ``torch.nn.LayerNorm``.
Parameter names ``weight`` and ``bias`` match PyTorch and Hugging Face.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["layer_norm", "LayerNorm"]


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
    tensor([[-1.2247,  0.0000,  1.2247]], grad_fn=<AddBackward0>)
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
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"
