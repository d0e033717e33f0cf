"""Attention: a differentiable lookup in a memory of keys and values.

A query asks a question, every key says how well it answers (a dot product),
a softmax turns those scores into weights that sum to one, and the answer is
the weighted sum of the values::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D) + mask) V

Letters used in the shape comments of this module:
    B batch, H heads, T_q query positions, T_k key/value positions,
    T sequence length (when T_q == T_k), C model width (d_model),
    D head width (C // H).

Mask conventions (the same as ``torch.nn.functional.scaled_dot_product_attention``):
    * a **boolean** mask holds True where a query MAY attend to a key;
    * a **float** mask is *added* to the scores (0 to keep, -inf to block);
    * either one broadcasts to (B, H, T_q, T_k): (T_q, T_k) for a causal mask,
      (B, 1, 1, T_k) for padding (see :func:`padding_mask`).
A query row whose keys are all blocked gets all-zero weights and a zero output,
never NaN (a boolean mask is needed for this on the fused path).

Note the opposite convention in ``torch.nn.MultiheadAttention``, whose boolean
``attn_mask`` holds True where attention is *forbidden*.

What is here:
    scaled_dot_product_attention   the formula above, with an explicit path that
                                   can return the weights and a fused fast path
    causal_mask, padding_mask      the two masks every model needs
    split_heads, merge_heads       (B, T, C) <-> (B, H, T, D)
    KVCache                        keys/values of past positions, for decoding
    MultiHeadAttention             projections + heads + output projection,
                                   self- or cross-attention; submodules
                                   ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
                                   (all ``nn.Linear(C, C)``), so checkpoint
                                   weights in Hugging Face layouts map 1:1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "scaled_dot_product_attention", "causal_mask", "padding_mask",
    "split_heads", "merge_heads", "KVCache", "MultiHeadAttention",
]


def _check_mask(mask: torch.Tensor, B: int, H: int, T_q: int, T_k: int) -> None:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor (bool or float) or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"mask must be boolean (True = may attend) or floating point (added to the scores), "
                         f"got dtype {mask.dtype}")
    if mask.ndim > 4:
        raise ValueError(f"mask must have at most 4 dimensions, broadcastable to (B, H, T_q, T_k) = "
                         f"{(B, H, T_q, T_k)}, got shape {tuple(mask.shape)}")
    target = (B, H, T_q, T_k)
    for size, want in zip(reversed(mask.shape), reversed(target)):
        if size not in (1, want):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, T_q, T_k) = {target}")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-d tensor of shape (B, H, T, D), got {shape}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"q, k, v must share batch and head sizes (B, H), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head width D, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same number of positions T_k, got {k.shape[2]} and {v.shape[2]}")


def causal_mask(T: int, T_k: int | None = None, device=None) -> torch.Tensor:
    """Boolean (T, T_k) mask, True where query i may attend to key j (j <= i).

    With ``T_k > T`` (decoding with a cache of ``T_k - T`` earlier positions)
    query i sits at absolute position ``T_k - T + i``.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> causal_mask(1, 3).int()     # one new token after two cached ones sees all three
    tensor([[1, 1, 1]], dtype=torch.int32)
    """
    T_k = T if T_k is None else T_k
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if not isinstance(T_k, int) or isinstance(T_k, bool) or T_k < T:
        raise ValueError(f"T_k must be an int >= T = {T}, got {T_k!r}")
    return torch.ones(T, T_k, dtype=torch.bool, device=device).tril(diagonal=T_k - T)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Turn a (B, T_k) 1/0 "real token / padding" mask into a (B, 1, 1, T_k) boolean mask.

    >>> padding_mask(torch.tensor([[1, 1, 0]])).int()
    tensor([[[[1, 1, 0]]]], dtype=torch.int32)
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a 2-d tensor of shape (B, T_k) with 1 for real tokens, got {shape}")
    return attention_mask.bool()[:, None, None, :]


def _combine_masks(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Both must hold: AND for booleans, sum for additive masks (a boolean is converted)."""
    if a is None or b is None:
        return b if a is None else a
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    def additive(m, like):
        if m.dtype != torch.bool:
            return m
        return torch.zeros(m.shape, dtype=like.dtype, device=m.device).masked_fill(~m, float("-inf"))
    like = a if a.dtype != torch.bool else b
    return additive(a, like) + additive(b, like)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, return_weights: bool = False,
                                 *, dropout_p: float = 0.0, is_causal: bool = False):
    """softmax(q k^T / sqrt(D) + mask) v for q (B, H, T_q, D), k (B, H, T_k, D), v (B, H, T_k, D_v).

    `mask` is boolean (True = may attend) or additive float, broadcastable to
    (B, H, T_q, T_k). `is_causal=True` adds :func:`causal_mask` (T_q, T_k).
    `dropout_p` drops attention weights (pass 0.0 at evaluation time).
    Returns the output (B, H, T_q, D_v), or ``(output, weights)`` with weights
    (B, H, T_q, T_k) when `return_weights` is true (weights before dropout). Without weights the call
    goes to PyTorch's fused kernel (flash / memory-efficient attention on a GPU).

    A query that matches one key much better than the rest copies that key's value:

    >>> q = torch.tensor([[[[10., 0.]]]])                 # (1, 1, 1, 2)
    >>> k = torch.tensor([[[[1., 0.], [0., 1.]]]])        # (1, 1, 2, 2)
    >>> v = torch.tensor([[[[1., 2.], [3., 4.]]]])
    >>> out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    >>> w.squeeze().round(decimals=3)
    tensor([0.9990, 0.0010])
    >>> scaled_dot_product_attention(q, k, v, mask=torch.tensor([False, True])).squeeze()
    tensor([3., 4.])
    """
    _check_qkv(q, k, v)
    B, H, T_q, D = q.shape
    T_k = k.shape[2]
    if mask is not None:
        _check_mask(mask, B, H, T_q, T_k)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if is_causal:
        if T_k < T_q:
            raise ValueError(f"is_causal needs at least as many keys as queries, got T_q={T_q}, T_k={T_k}")
        if mask is None and T_q == T_k and not return_weights:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        mask = _combine_masks(causal_mask(T_q, T_k, device=q.device), mask)
    if mask is not None:
        mask = mask.view((1,) * (4 - mask.ndim) + tuple(mask.shape))   # broadcastable to (B, H, T_q, T_k)
        if mask.is_floating_point():
            mask = mask.to(q.dtype)
    if not return_weights:
        # Fused kernel: never materialises the (T_q, T_k) weights on GPU back ends that can avoid it.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        if mask is not None and mask.dtype == torch.bool:
            # some kernels return NaN for a query with no key to read: make it 0, as in the explicit path
            out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
        return out

    scores = q @ k.transpose(-2, -1) / math.sqrt(D)           # (B, H, T_q, T_k)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = torch.softmax(scores, dim=-1)                  # each row sums to 1 over the keys
    weights = weights.nan_to_num(0.0)                        # a fully blocked row: zeros, not NaN
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    return dropped @ v, weights                              # (B, H, T_q, D_v), (B, H, T_q, T_k)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, D): head h gets channels [h*D, (h+1)*D).

    >>> split_heads(torch.arange(4.).view(1, 1, 4), 2)
    tensor([[[[0., 1.]],
    <BLANKLINE>
             [[2., 3.]]]])
    """
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, T, C), got {tuple(x.shape)}")
    B, T, C = x.shape
    if not isinstance(n_heads, int) or n_heads < 1 or C % n_heads:
        raise ValueError(f"n_heads must be a positive int dividing the width C={C}, got {n_heads!r}")
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)   # (B, H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, C), the inverse of :func:`split_heads`.

    >>> x = torch.randn(2, 5, 12)
    >>> torch.equal(merge_heads(split_heads(x, 3)), x)
    True
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, H, T, D), got {tuple(x.shape)}")
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)                # (B, T, C)


class KVCache:
    """Keys and values of the positions seen so far, for step-by-step decoding.

    Each :class:`MultiHeadAttention` call with ``cache=`` appends its new keys
    and values and attends over everything stored.

    >>> cache = KVCache()
    >>> k, v = cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    >>> k, v = cache.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    >>> len(cache), tuple(k.shape)
    (4, (1, 2, 4, 4))
    """

    def __init__(self):
        self.k: torch.Tensor | None = None   # (B, H, T_past, D)
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class MultiHeadAttention(nn.Module):
    """H attention heads in parallel, each on its own D = C / H channels.

    ``forward(x, context=None, mask=None, return_weights=False, *, is_causal=False, cache=None)``

    * self-attention: queries, keys and values all come from `x` (B, T, C);
    * cross-attention: queries from `x`, keys and values from `context` (B, T_k, C).
    * `mask` as in :func:`scaled_dot_product_attention`, (T_q, T_k) or (B, 1, 1, T_k) etc.
    * `return_weights=True` returns ``(out, weights)``, weights (B, H, T_q, T_k).
      Setting the attribute ``need_weights = True`` instead keeps the weights of
      every call in ``last_weights`` (detached) without changing the return value,
      which is how a whole model's attention maps are recorded.
    * `cache`, a :class:`KVCache`, stores keys/values for incremental decoding.

    Submodules: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (``nn.Linear(C, C)``),
    ``dropout`` is the probability applied to the attention weights while training.

    >>> mha = MultiHeadAttention(d_model=8, n_heads=2)
    >>> x = torch.randn(3, 5, 8)                              # (B, T, C)
    >>> out, w = mha(x, mask=causal_mask(5), return_weights=True)
    >>> tuple(out.shape), tuple(w.shape)
    ((3, 5, 8), (3, 2, 5, 5))
    >>> bool(w[0, 0, 0, 1:].eq(0).all())                     # position 0 only sees itself
    True
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads must be a positive int that divides d_model={d_model}, got {n_heads!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.need_weights = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, return_weights: bool = False,
                *, is_causal: bool = False, cache: KVCache | None = None):
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, C) with C = d_model = {self.d_model}, got {tuple(x.shape)}")
        src = x if context is None else context
        if src.ndim != 3 or src.shape[0] != x.shape[0] or src.shape[-1] != self.d_model:
            raise ValueError(f"context must have shape (B, T_k, C) = ({x.shape[0]}, T_k, {self.d_model}), "
                             f"got {tuple(src.shape)}")
        q = split_heads(self.q_proj(x), self.n_heads)            # (B, H, T_q, D)
        k = split_heads(self.k_proj(src), self.n_heads)          # (B, H, T_k, D)
        v = split_heads(self.v_proj(src), self.n_heads)          # (B, H, T_k, D)
        if cache is not None:
            k, v = cache.update(k, v)                            # (B, H, T_past + T_k, D)
        want = return_weights or self.need_weights
        p = self.dropout if self.training else 0.0
        res = scaled_dot_product_attention(q, k, v, mask, return_weights=want, dropout_p=p, is_causal=is_causal)
        out, weights = res if want else (res, None)
        if self.need_weights:
            self.last_weights = weights.detach()
        out = self.out_proj(merge_heads(out))                    # (B, T_q, C)
        return (out, weights) if return_weights else out
