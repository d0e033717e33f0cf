"""The position-wise feed-forward network: the same two-layer MLP applied to every token.

    FFN(x) = fc2(dropout(act(fc1(x))))      fc1: C -> d_ff, fc2: d_ff -> C

Attention mixes information *between* positions; this MLP transforms each
position on its own, and holds much of a model's parametric memory (two thirds
of a block's weights when d_ff = 4C). Activations:

    'relu'       max(0, x)                          original Transformer
    'gelu'       x * Phi(x), exact (erf)            BERT
    'gelu_tanh'  the tanh approximation of GELU     GPT-2 ("gelu_new"), T5 v1.1's gate
    'silu'       x * sigmoid(x)  (a.k.a. swish)     LLaMA's gate

Submodules ``fc1`` and ``fc2`` are ``nn.Linear``. Letters: B batch, T time, C width.

The gated feed-forward (Shazeer, 2020) multiplies two projections of x, one
passed through the activation, before projecting back:

    GatedFFN(x) = down_proj(act(gate_proj(x)) * up_proj(x))

With act = SiLU it is SwiGLU (LLaMA); with act = GELU it is GEGLU (T5 v1.1).
It has three matrices instead of two, so at equal parameters its hidden width is
2/3 of the plain MLP's: LLaMA uses d_ff ~ 8/3 C instead of 4 C.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "activation_fn", "silu", "FeedForward", "GatedFeedForward"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x): smooth, non-monotonic near -1.28, close to ReLU for large |x|.

    >>> silu(torch.tensor([-1., 0., 2.]))
    tensor([-0.2689,  0.0000,  1.7616])
    """
    return x * torch.sigmoid(x)


def activation_fn(name: str):
    """The activation function called `name` (one of ACTIVATIONS).

    >>> activation_fn('relu')(torch.tensor([-1., 2.]))
    tensor([0., 2.])
    """
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu                                              # fused; equal to silu() above
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _check_sizes(d_model: int, d_ff: int, dropout: float) -> None:
    for name, val in (("d_model", d_model), ("d_ff", d_ff)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class FeedForward(nn.Module):
    """fc2(dropout(act(fc1(x)))) on x (B, T, C) -> (B, T, C).

    >>> ffn = FeedForward(d_model=4, d_ff=16, activation='gelu')
    >>> tuple(ffn(torch.randn(2, 3, 4)).shape), tuple(ffn.fc1.weight.shape)
    ((2, 3, 4), (16, 4))
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        _check_sizes(d_model, d_ff, dropout)
        self.activation = activation
        self.act = activation_fn(activation)
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))          # (B, T, C)


class GatedFeedForward(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)) on x (B, T, C) -> (B, T, C); SwiGLU when activation='silu'.

    >>> ffn = GatedFeedForward(d_model=4, d_ff=12)
    >>> tuple(ffn(torch.randn(2, 3, 4)).shape), tuple(ffn.gate_proj.weight.shape), ffn.up_proj.bias
    ((2, 3, 4), (12, 4), None)
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        _check_sizes(d_model, d_ff, dropout)
        self.activation = activation
        self.act = activation_fn(activation)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.gate_proj(x)) * self.up_proj(x)       # (B, T, d_ff)
        return self.down_proj(self.dropout(hidden))                   # (B, T, C)
