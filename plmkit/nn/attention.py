"""Attention: a differentiable lookup in a memory of keys and values.

A query asks a question, every key says how well it answers (a dot product),
a softmax turns those scores into weights that sum to one, and the answer is
the weighted sum of the values::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D) + mask) V

Letters used in the shape comments of this module:
    B batch, H heads, H_kv key/value heads (H_kv = H unless grouped),
    T_q query positions, T_k key/value positions,
    T sequence length (when T_q == T_k), C model width (d_model),
    D head width (C // H unless set).

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
    build_attention_mask           padding + causal + packed-sequence masks from
                                   positions, built once per forward (works with caches)
    prefix_lm_mask                 bidirectional over a prefix, causal after it
    split_heads, merge_heads       (B, T, C) <-> (B, H, T, D)
    repeat_kv                      (B, H_kv, T, D) -> (B, H, T, D) for grouped-query attention
    KVCache, StaticKVCache,        keys/values of past positions, for decoding
    CrossAttentionCache            (defined in :mod:`plmkit.nn.cache`)
    MultiHeadAttention             projections + heads + output projection,
                                   self- or cross-attention; submodules
                                   ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
                                   (``nn.Linear(C, C)`` by default), so checkpoint
                                   weights in Hugging Face layouts map 1:1.

The later chapters add five options, all off by default: ``scale`` (T5 uses
1.0), ``head_dim`` (T5's d_kv), ``n_kv_heads`` (grouped-query attention,
Ainslie et al. 2023: H_kv key/value heads, each shared by H / H_kv query
heads; H_kv = 1 is multi-query attention, Shazeer 2019), an additive
``position_bias`` (T5's relative positions, Raffel et al. 2020) and a
``rotary`` function applied to q and k before they are cached (RoPE, Su et al. 2021).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cache import CrossAttentionCache, KVCache, StaticKVCache

__all__ = [
    "scaled_dot_product_attention", "causal_mask", "padding_mask", "build_attention_mask", "prefix_lm_mask",
    "split_heads", "merge_heads", "repeat_kv", "KVCache", "StaticKVCache", "CrossAttentionCache",
    "MultiHeadAttention",
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
    if q.shape[0] != k.shape[0] or k.shape[:2] != v.shape[:2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"q, k, v must share the batch size B, and k, v the head count H_kv, which must divide "
                         f"q's head count H; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
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


def _check_bias(position_bias: torch.Tensor, B: int, H: int, T_q: int, T_k: int) -> None:
    if not isinstance(position_bias, torch.Tensor) or not position_bias.is_floating_point():
        got = position_bias.dtype if isinstance(position_bias, torch.Tensor) else type(position_bias).__name__
        raise ValueError(f"position_bias must be a floating-point tensor added to the scores, got {got}")
    target = (B, H, T_q, T_k)
    if position_bias.ndim > 4 or any(size not in (1, want) for size, want in
                                     zip(reversed(position_bias.shape), reversed(target))):
        raise ValueError(f"position_bias of shape {tuple(position_bias.shape)} does not broadcast to "
                         f"(B, H, T_q, T_k) = {target}")


def _check_scale(scale) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not 0 < scale < math.inf):
        raise ValueError(f"scale must be a positive finite number or None (1/sqrt(D)), got {scale!r}")


def _as_4d(m: torch.Tensor) -> torch.Tensor:
    return m.view((1,) * (4 - m.ndim) + tuple(m.shape))        # broadcastable to (B, H, T_q, T_k)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D): key/value head j serves query heads j*n_rep .. (j+1)*n_rep - 1.

    Grouped-query attention written out; the same layout as Hugging Face's
    ``repeat_kv`` and ``torch.repeat_interleave(x, n_rep, dim=1)``.

    >>> repeat_kv(torch.tensor([10., 20.]).view(1, 2, 1, 1), 2).flatten()
    tensor([10., 10., 20., 20.])
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, H_kv, T, D), got {tuple(x.shape)}")
    if not isinstance(n_rep, int) or isinstance(n_rep, bool) or n_rep < 1:
        raise ValueError(f"n_rep must be a positive int, got {n_rep!r}")
    if n_rep == 1:
        return x
    B, H_kv, T, D = x.shape
    return x[:, :, None].expand(B, H_kv, n_rep, T, D).reshape(B, H_kv * n_rep, T, D)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, return_weights: bool = False,
                                 *, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, position_bias: torch.Tensor | None = None):
    """softmax(q k^T * scale + position_bias + mask) v for q (B, H, T_q, D), k (B, H_kv, T_k, D), v (B, H_kv, T_k, D_v).

    `mask` is boolean (True = may attend) or additive float, broadcastable to
    (B, H, T_q, T_k). `is_causal=True` adds :func:`causal_mask` (T_q, T_k).
    `dropout_p` drops attention weights (pass 0.0 at evaluation time).
    `scale` defaults to 1/sqrt(D). `position_bias`, a float tensor broadcastable
    to (B, H, T_q, T_k), is added to the scores (T5's relative positions).
    With fewer key/value heads than query heads (H_kv dividing H: grouped-query
    attention) each key/value head serves H / H_kv consecutive query heads.
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
    H_kv, T_k = k.shape[1], k.shape[2]
    _check_scale(scale)
    if mask is not None:
        _check_mask(mask, B, H, T_q, T_k)
    if position_bias is not None:
        _check_bias(position_bias, B, H, T_q, T_k)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if is_causal:
        if T_k < T_q:
            raise ValueError(f"is_causal needs at least as many keys as queries, got T_q={T_q}, T_k={T_k}")
        if mask is None and position_bias is None and T_q == T_k and not return_weights:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale,
                                                  enable_gqa=H_kv != H)
        mask = _combine_masks(causal_mask(T_q, T_k, device=q.device), mask)
    if mask is not None:
        mask = _as_4d(mask)
        if mask.is_floating_point():
            mask = mask.to(q.dtype)
    bias = None if position_bias is None else _as_4d(position_bias).to(q.dtype)
    if not return_weights:
        # Fused kernel: never materialises the (T_q, T_k) weights on GPU back ends that can avoid it.
        attn_mask = _combine_masks(bias, mask)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
                                             enable_gqa=H_kv != H)
        if mask is not None and mask.dtype == torch.bool:
            # some kernels return NaN for a query with no key to read: make it 0, as in the explicit path
            out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
        return out

    k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)  # (B, H, T_k, D): each K/V head serves H/H_kv queries
    scores = q @ k.transpose(-2, -1)                         # (B, H, T_q, T_k)
    scores = scores / math.sqrt(D) if scale is None else scores * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = torch.softmax(scores, dim=-1)                  # each row sums to 1 over the keys
    weights = weights.nan_to_num(0.0)                        # a fully blocked row: zeros, not NaN
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    return dropped @ v, weights                              # (B, H, T_q, D_v), (B, H, T_q, T_k)


def _key_mask_from(attention_mask: torch.Tensor, name: str = "attention_mask") -> torch.Tensor:
    """A 0/1 or bool mask as bool; an additive float mask (0 keep, -inf or the dtype's minimum block) as bool."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_floating_point():
        return attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if attention_mask.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        return attention_mask != 0
    raise ValueError(f"{name} must be boolean, 0/1 integers or an additive float mask, "
                     f"got dtype {attention_mask.dtype}")


def build_attention_mask(attention_mask: torch.Tensor | None, cache_position: torch.Tensor | None,
                         key_length: int, *, causal: bool = True,
                         segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """One boolean mask (B, 1, T_q, K) for a whole forward pass: True where query q may read key k.

    Key k is visible to query q iff
      * ``attention_mask[b, k]`` is 1 (a real token, not padding), and
      * ``k <= cache_position[q]`` when `causal` (no peeking at later positions), and
      * ``segment_ids[b, k] == segment_ids[b, cache_position[q]]`` when given (packed sequences).

    attention_mask: None; (B, K') of 1/0 (or bool), with K' <= K: keys from K'
        on (unwritten static-cache slots) are governed by the causal rule alone;
        or a per-example (B, T_q, K) / (B, 1, T_q, K) mask, boolean or additive
        (0 keep, -inf or the dtype's minimum block; put real biases in ``position_bias``).
    cache_position: (T_q,) LongTensor, the absolute position of each query; None
        means a full pass, positions 0..K-1 (T_q = K).
    key_length: K, the number of keys attention will see (the static cache's
        max_length, or past + new for a growing cache).
    segment_ids: (B, K) integer ids of the sequence each position belongs to.

    No value is read back to the host, so the call is safe inside a compiled decode step.

    >>> build_attention_mask(torch.tensor([[0, 1, 1]]), None, 3)[0, 0].int()   # left padding + causal
    tensor([[0, 0, 0],
            [0, 1, 0],
            [0, 1, 1]], dtype=torch.int32)
    >>> build_attention_mask(None, None, 4, segment_ids=torch.tensor([[0, 0, 1, 1]]))[0, 0].int()
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 0, 1, 1]], dtype=torch.int32)
    """
    if not isinstance(key_length, int) or isinstance(key_length, bool) or key_length < 1:
        raise ValueError(f"key_length must be a positive int, got {key_length!r}")
    if cache_position is None:
        device = next((t.device for t in (attention_mask, segment_ids) if isinstance(t, torch.Tensor)), None)
        cache_position = torch.arange(key_length, device=device)
    elif not isinstance(cache_position, torch.Tensor) or cache_position.dtype != torch.long \
            or cache_position.ndim != 1 or cache_position.numel() < 1:
        got = cache_position if not isinstance(cache_position, torch.Tensor) else \
            f"{cache_position.dtype} {tuple(cache_position.shape)}"
        raise ValueError(f"cache_position must be a non-empty 1-d LongTensor (T_q,), got {got!r}")
    T_q = cache_position.shape[0]
    keys = torch.arange(key_length, device=cache_position.device)              # (K,)
    mask = torch.ones(1, 1, T_q, key_length, dtype=torch.bool, device=cache_position.device)
    if causal:
        mask = mask & (keys[None, :] <= cache_position[:, None])                  # (T_q, K)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim not in (2, 3, 4):
            raise ValueError("attention_mask must be a (B, K) padding mask or a (B, T_q, K) / (B, 1, T_q, K) "
                             "per-example mask")
        keep = _key_mask_from(attention_mask)
        if keep.ndim == 2:
            B, K_a = keep.shape
            if K_a > key_length or (K_a < key_length and not causal):
                raise ValueError(f"attention_mask (B, K') must have K' = key_length = {key_length} "
                                 f"(or fewer with causal=True), got shape {tuple(keep.shape)}")
            if K_a < key_length:
                keep = torch.cat([keep, keep.new_ones(B, key_length - K_a)], dim=1)
            keep = keep[:, None, None, :]                                         # (B, 1, 1, K)
        else:
            keep = keep if keep.ndim == 4 else keep[:, None]                      # (B, 1, T_q, K)
            if keep.shape[1] != 1 or keep.shape[2] not in (1, T_q) or keep.shape[3] != key_length:
                raise ValueError(f"a per-example attention_mask must have shape (B, T_q, K) or (B, 1, T_q, K) "
                                 f"= (B, 1, {T_q}, {key_length}), got {tuple(attention_mask.shape)}")
        mask = mask & keep
    if segment_ids is not None:
        if not isinstance(segment_ids, torch.Tensor) or segment_ids.ndim != 2 or segment_ids.shape[1] != key_length \
                or segment_ids.is_floating_point():
            raise ValueError(f"segment_ids must be an integer tensor (B, K) = (B, {key_length}), got "
                             f"{tuple(segment_ids.shape) if isinstance(segment_ids, torch.Tensor) else segment_ids!r}")
        seg_q = segment_ids[:, cache_position]                                   # (B, T_q)
        mask = mask & (seg_q[:, None, :, None] == segment_ids[:, None, None, :])  # (B, 1, T_q, K)
    return mask


def prefix_lm_mask(prefix_lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Boolean (B, 1, T, T) prefix-LM mask: bidirectional inside each row's prefix, causal after it.

    Query i reads key j iff j <= i or j < prefix_lengths[b] (T5's prefix LM, UniLM).

    >>> prefix_lm_mask(torch.tensor([2]), 4)[0, 0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if not isinstance(prefix_lengths, torch.Tensor) or prefix_lengths.ndim != 1 or prefix_lengths.is_floating_point():
        raise ValueError("prefix_lengths must be a 1-d integer tensor (B,) of prefix lengths in [0, T]")
    pos = torch.arange(T, device=prefix_lengths.device)
    causal = pos[None, :] <= pos[:, None]                                        # (T, T)
    in_prefix = pos[None, None, :] < prefix_lengths[:, None, None]               # (B, 1, T): key inside prefix
    return (causal[None] | in_prefix)[:, None]                                   # (B, 1, T, T)


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


class MultiHeadAttention(nn.Module):
    """H attention heads in parallel, each on its own D channels (D = C / H by default).

    ``forward(x, context=None, mask=None, return_weights=False, *, is_causal=False,
    cache=None, cache_position=None, position_bias=None, rotary=None)``

    * self-attention: queries, keys and values all come from `x` (B, T, C);
    * cross-attention: queries from `x`, keys and values from `context` (B, T_k, C).
    * `mask` as in :func:`scaled_dot_product_attention`, (T_q, T_k) or (B, 1, 1, T_k) etc.
    * `return_weights=True` returns ``(out, weights)``, weights (B, H, T_q, T_k).
      Setting the attribute ``need_weights = True`` instead keeps the weights of
      every call in ``last_weights`` (detached) without changing the return value,
      which is how a whole model's attention maps are recorded.
    * `cache`: a :class:`KVCache` or :class:`StaticKVCache` stores self-attention
      keys/values for incremental decoding (`cache_position` (T_q,) says where
      the new ones go; with `is_causal` the causal rule then uses these positions);
      a :class:`CrossAttentionCache` keeps cross-attention keys/values of
      `context`, projected on the first call only (later calls may omit `context`).
    * `position_bias`: additive (1 or B, H, T_q, T_k) float, added to the scores (T5).
    * `rotary`: a function (q, k) -> (q, k) on (B, H, T, D) tensors, applied
      before the keys enter the cache (RoPE).

    Options: `head_dim` D (default C // H; then H * D need not equal C),
    `n_kv_heads` H_kv (default H; fewer = grouped-query attention, 1 = multi-query),
    `scale` of the scores (default 1/sqrt(D); T5 uses 1.0).
    Submodules: ``q_proj`` (C -> H*D), ``k_proj``, ``v_proj`` (C -> H_kv*D),
    ``out_proj`` (H*D -> C); ``dropout`` is the probability applied to the
    attention weights while training.

    >>> mha = MultiHeadAttention(d_model=8, n_heads=2)
    >>> x = torch.randn(3, 5, 8)                              # (B, T, C)
    >>> out, w = mha(x, mask=causal_mask(5), return_weights=True)
    >>> tuple(out.shape), tuple(w.shape)
    ((3, 5, 8), (3, 2, 5, 5))
    >>> bool(w[0, 0, 0, 1:].eq(0).all())                     # position 0 only sees itself
    True
    >>> gqa = MultiHeadAttention(d_model=8, n_heads=4, n_kv_heads=2)
    >>> tuple(gqa.q_proj.weight.shape), tuple(gqa.k_proj.weight.shape)
    ((8, 8), (4, 8))
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, *,
                 head_dim: int | None = None, n_kv_heads: int | None = None, scale: float | None = None):
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if head_dim is None:
            if not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
                raise ValueError(f"n_heads must be a positive int that divides d_model={d_model}, got {n_heads!r}")
            head_dim = d_model // n_heads
        elif not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
            raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if not isinstance(n_kv_heads, int) or isinstance(n_kv_heads, bool) or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads must be a positive int that divides n_heads={n_heads}, got {n_kv_heads!r}")
        _check_scale(scale)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, head_dim
        self.n_kv_heads, self.scale = n_kv_heads, scale
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        self.need_weights = False
        self.last_weights: torch.Tensor | None = None
        self.qkv_weight: torch.Tensor | None = None      # set by plmkit.inference.fuse_qkv_ (inference only)
        self.qkv_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, return_weights: bool = False,
                *, is_causal: bool = False, cache: KVCache | StaticKVCache | CrossAttentionCache | None = None,
                cache_position: torch.Tensor | None = None, position_bias: torch.Tensor | None = None,
                rotary=None):
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, C) with C = d_model = {self.d_model}, got {tuple(x.shape)}")
        cross = context is not None or isinstance(cache, CrossAttentionCache)
        if cross and rotary is not None:
            raise ValueError("rotary applies to self-attention only; got it together with context / a cross cache")
        if isinstance(cache, StaticKVCache) and cache_position is None:
            raise ValueError("cache_position (T_q,) is required with a StaticKVCache: it says which slots to write")
        fused = getattr(self, "qkv_weight", None) is not None and context is None \
            and not isinstance(cache, CrossAttentionCache)
        if fused:                                                # one matmul for q, k, v (plmkit.inference.fuse_qkv_)
            q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).split(
                [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim], -1)
            q = split_heads(q, self.n_heads)                     # (B, H, T_q, D)
        else:
            q = split_heads(self.q_proj(x), self.n_heads)        # (B, H, T_q, D)
        if isinstance(cache, CrossAttentionCache) and cache.is_set:
            k, v = cache.k, cache.v                              # projected on the first step: reuse
        else:
            src = x if context is None else context
            if isinstance(cache, CrossAttentionCache) and context is None:
                raise ValueError("context (B, S, C) is needed to fill an empty CrossAttentionCache")
            if src.ndim != 3 or src.shape[0] != x.shape[0] or src.shape[-1] != self.d_model:
                raise ValueError(f"context must have shape (B, T_k, C) = ({x.shape[0]}, T_k, {self.d_model}), "
                                 f"got {tuple(src.shape)}")
            if fused:
                k, v = split_heads(k, self.n_kv_heads), split_heads(v, self.n_kv_heads)
            else:
                k = split_heads(self.k_proj(src), self.n_kv_heads)   # (B, H_kv, T_k, D)
                v = split_heads(self.v_proj(src), self.n_kv_heads)   # (B, H_kv, T_k, D)
            if rotary is not None:
                q, k = rotary(q, k)                              # positions enter q and k before caching
            if isinstance(cache, CrossAttentionCache):
                k, v = cache.update(k, v)
            elif cache is not None:
                k, v = cache.update(k, v, cache_position)        # (B, H_kv, T_past + T_q or L, D)
        if is_causal and cache_position is not None:
            # query i sits at cache_position[i] and may read keys 0..cache_position[i] (static caches included)
            keys = torch.arange(k.shape[2], device=x.device)
            mask = _combine_masks(keys[None, :] <= cache_position[:, None], mask)   # (T_q, T_k)
            is_causal = False
        want = return_weights or self.need_weights
        p = self.dropout if self.training else 0.0
        res = scaled_dot_product_attention(q, k, v, mask, return_weights=want, dropout_p=p, is_causal=is_causal,
                                           scale=self.scale, position_bias=position_bias)
        out, weights = res if want else (res, None)
        if self.need_weights:
            self.last_weights = weights.detach()
        out = self.out_proj(merge_heads(out))                    # (B, T_q, C)
        return (out, weights) if return_weights else out
