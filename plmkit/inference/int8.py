"""Weight-only int8: store each weight matrix in one byte per value, compute in the activations' dtype.

At batch 1 a decode step reads every weight once and does two FLOPs per weight
read, so the time is set by bytes moved, not by arithmetic. Halving the bytes
(bf16 -> int8) is worth almost twice the speed there, even though the weight
is turned back into floats before it is used.

**Per-output-channel absmax, round to nearest.** Row j of W (the weights that
make output j) gets its own scale s_j = max_i |W_ji| / 127, and

    q_ji = round(W_ji / s_j)  in [-127, 127]          W_ji ≈ q_ji * s_j

Rounding to the nearest integer makes the error at most half a step:
|W_ji - q_ji s_j| <= s_j / 2 = absmax_j / 254. (Truncating toward zero would
allow a whole step, absmax_j / 127.) One scale per row rather than one per
matrix keeps a row of small weights from being crushed by another row's
outlier; LLM.int8() (Dettmers et al. 2022) goes further and keeps the rare
outlier *feature* dimensions of the activations in 16 bits.

Because the scale belongs to the output, it can be applied after the matrix
product: y_j = s_j * sum_i x_i q_ji, i.e. ``F.linear(x, q) * s``.

    >>> w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.1]])
    >>> q, s = quantize_int8(w)
    >>> q
    tensor([[  64, -127,   32],
            [ 127,    0,   -6]], dtype=torch.int8)
    >>> bool(((dequantize_int8(q, s) - w).abs() <= w.abs().amax(1, keepdim=True) / 254).all())
    True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["quantize_int8", "dequantize_int8", "Int8Linear", "quantize_model_int8_", "linear_weight_bytes"]


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) float -> (q (out, in) int8, scale (out,) float32), per-row absmax, round to nearest.

    A row of zeros gets scale 1 (any scale reproduces it exactly)."""
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-d floating-point tensor (out, in), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)                                              # (out,)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))  # (out,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)       # round half to even
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (out, in) int8, scale (out,) -> q * scale as `dtype` (out, in)."""
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8 or q.ndim != 2:
        raise ValueError(f"q must be a 2-d int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    if not isinstance(scale, torch.Tensor) or scale.shape != (q.shape[0],):
        raise ValueError(f"scale must have shape (out,) = ({q.shape[0]},), got "
                         f"{getattr(scale, 'shape', type(scale).__name__)}")
    return (q.float() * scale.float()[:, None]).to(dtype)


class Int8Linear(nn.Module):
    """A linear layer whose weight is stored as int8 + one float32 scale per output channel.

    ``Int8Linear.from_linear(linear)`` quantises an ``nn.Linear``; ``forward(x)``
    computes ``F.linear(x, q) * scale + bias`` in x's dtype (the int8 matrix is
    converted on the fly; a real int8 kernel would read the bytes directly).
    Inference only: the weight has no gradient.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, s = quantize_int8(linear.weight)
        layer.weight_int8.copy_(q)
        layer.scale.copy_(s)
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer.to(linear.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (out, in), float32 (for inspection)."""
        return dequantize_int8(self.weight_int8, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight_int8.to(x.dtype)) * self.scale.to(x.dtype)   # (..., out)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_model_int8_(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Replace every ``nn.Linear`` of `model` (in place) by an :class:`Int8Linear`; returns `model`.

    Modules whose name ends with an entry of `skip` stay as they are (by
    default the LM head, which is often tied to the embedding). A model with
    fused q/k/v (:func:`plmkit.inference.fuse_qkv_`) must be unfused first.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(getattr(m, "qkv_weight", None) is not None for m in model.modules()):
        raise ValueError("unfuse q/k/v first (plmkit.inference.unfuse_qkv_): the fused matrix would stay float")
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not full.endswith(skip):
                setattr(module, child_name, Int8Linear.from_linear(child))
    return model


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights of the model's linear layers as stored (int8 + scales, or float)."""
    total = 0
    for m in model.modules():
        if isinstance(m, Int8Linear):
            total += m.weight_int8.numel() + m.scale.numel() * m.scale.element_size()
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total
