"""Key/value caches: the working memory of a decoder while it generates.

A causal decoder computes the keys and values of a position once and never
changes them. Generating token t+1 therefore needs only the new token's
query, key and value, plus the stored keys/values of positions 0..t. A cache
holds those; :class:`~plmkit.nn.attention.MultiHeadAttention` writes the new
keys/values into it and attends over everything it holds.

Three caches, one idea each:

    KVCache              grows by concatenation (chapter 4): simplest, but every step
                         makes tensors of a new shape
    StaticKVCache        pre-allocated (B, H_kv, max_length, D) buffers written in place
                         at a position tensor: fixed shapes, so a compiled / CUDA-graph
                         decode step can be replayed; no host-device sync
    CrossAttentionCache  an encoder-decoder's cross-attention keys/values: computed once
                         from the encoder output, reused by every decode step

All three offer ``reorder(index)`` (keep/duplicate batch rows, as beam search
does) and ``crop(length)`` (forget positions from `length` on, as speculative
decoding does after rejecting draft tokens).

``cache_position`` is a 1-d LongTensor (T_new,) holding the absolute position
of each new token in the cache, shared by the batch (ragged prompts are
left-padded, so every row writes the same slots). The growing cache only
appends, so for it the positions must be ``len(cache), ..., len(cache) + T_new - 1``.

Letters: B batch, H_kv key/value heads, T_new new positions, L max_length, D head width.
"""
from __future__ import annotations

import torch

__all__ = ["KVCache", "StaticKVCache", "CrossAttentionCache"]


def _check_kv(k, v) -> None:
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-d tensor of shape (B, H_kv, T_new, D), got {shape}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must share (B, H_kv, T_new), got {tuple(k.shape)} and {tuple(v.shape)}")


def _check_positions(cache_position, T_new: int, lo: int | None, hi: int) -> None:
    """cache_position must be a (T_new,) LongTensor. Its values are checked only on the CPU and
    outside torch.compile (reading them from a GPU would stall the decode loop); `lo` pins the first one."""
    if not isinstance(cache_position, torch.Tensor) or cache_position.dtype != torch.long \
            or cache_position.shape != (T_new,):
        got = (f"{cache_position.dtype} {tuple(cache_position.shape)}" if isinstance(cache_position, torch.Tensor)
               else type(cache_position).__name__)
        raise ValueError(f"cache_position must be a 1-d LongTensor of shape (T_new,) = ({T_new},), got {got}")
    if cache_position.device.type == "cpu" and T_new and not torch.compiler.is_compiling():
        first, low, high = int(cache_position[0]), int(cache_position.min()), int(cache_position.max())
        if lo is not None and (first != lo or not torch.equal(cache_position, torch.arange(lo, lo + T_new))):
            raise ValueError(f"cache_position must be {lo}..{lo + T_new - 1} (a growing cache only appends), "
                             f"got {cache_position.tolist()}")
        if low < 0 or high >= hi:
            raise ValueError(f"cache_position values must lie in [0, {hi - 1}], got [{low}, {high}]")


def _check_index(index, batch_size: int | None) -> None:
    if not isinstance(index, torch.Tensor) or index.dtype != torch.long or index.ndim != 1:
        raise ValueError(f"index must be a 1-d LongTensor of batch rows, got "
                         f"{index.dtype if isinstance(index, torch.Tensor) else type(index).__name__}")
    if batch_size is not None and index.shape[0] != batch_size:
        raise ValueError(f"index must have one entry per batch row of the static cache ({batch_size}), "
                         f"got {index.shape[0]}")


def _check_length(length, upper: int) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= upper:
        raise ValueError(f"length must be an int in [0, {upper}], got {length!r}")


class KVCache:
    """Keys and values of the positions seen so far, grown by concatenation.

    Each :class:`~plmkit.nn.attention.MultiHeadAttention` call with ``cache=``
    appends its new keys and values and attends over everything stored.

    >>> cache = KVCache()
    >>> k, v = cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    >>> k, v = cache.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    >>> len(cache), tuple(k.shape)
    (4, (1, 2, 4, 4))
    >>> cache.crop(2); len(cache)
    2
    """

    def __init__(self):
        self.k: torch.Tensor | None = None   # (B, H_kv, T_past, D)
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor,
               cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H_kv, T_new, D); return all keys and values (B, H_kv, T_past + T_new, D)."""
        _check_kv(k, v)
        if cache_position is not None:
            _check_positions(cache_position, k.shape[2], len(self), 2 ** 62)
        if self.k is not None:
            if k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3] or v.shape[3] != self.v.shape[3]:
                raise ValueError(f"k, v must match the cached (B, H_kv, ., D) = {tuple(self.k.shape)}, "
                                 f"got {tuple(k.shape)}")
            k = torch.cat([self.k, k], dim=2)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (B_new,), in that order; a row may repeat (beam search)."""
        _check_index(index, None)
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""
        _check_length(length, len(self))
        if self.k is not None:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]


class StaticKVCache:
    """Pre-allocated key/value buffers (B, H_kv, L, D), written in place at ``cache_position``.

    ``update(k, v, cache_position)`` copies the new keys/values into slots
    `cache_position` with ``index_copy_`` and returns the *whole* buffers, so
    attention always sees L keys: the same shapes at every step, which is what
    ``torch.compile(mode="reduce-overhead")`` / CUDA graphs need. Slots not yet
    written hold zeros; the caller must mask them out (the causal rule of
    :func:`~plmkit.nn.attention.build_attention_mask` does: a query at position
    p sees only keys at positions <= p, all of them written).

    ``valid`` is a bool (L,) tensor on the cache's device, True at written
    slots; ``len(cache)`` counts them (reading that number syncs with a GPU,
    so the decode loop should carry positions itself). Meant for inference,
    under ``torch.no_grad()``.

    >>> cache = StaticKVCache(batch_size=1, n_kv_heads=2, max_length=6, head_dim=4)
    >>> k, v = cache.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.arange(3))
    >>> tuple(k.shape), len(cache), cache.valid.int().tolist()
    ((1, 2, 6, 4), 3, [1, 1, 1, 0, 0, 0])
    >>> k, v = cache.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), torch.tensor([3]))
    >>> len(cache)
    4
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_length: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device=None):
        for name, val in (("batch_size", batch_size), ("n_kv_heads", n_kv_heads),
                          ("max_length", max_length), ("head_dim", head_dim)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        shape = (batch_size, n_kv_heads, max_length, head_dim)
        self.max_length = max_length
        self.k = torch.zeros(shape, dtype=dtype, device=device)             # (B, H_kv, L, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(max_length, dtype=torch.bool, device=device)   # (L,) written slots
        if not torch.compiler.is_compiling():
            # tell torch.compile these buffers keep their address, so a CUDA graph reads them in place
            for buf in (self.k, self.v, self.valid):
                torch._dynamo.mark_static_address(buf)

    def __len__(self) -> int:
        return int(self.valid.sum())

    def update(self, k: torch.Tensor, v: torch.Tensor,
               cache_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T_new, D) at slots cache_position (T_new,); return the (B, H_kv, L, D) buffers."""
        _check_kv(k, v)
        B, H, _, D = self.k.shape
        if k.shape[:2] != (B, H) or k.shape[3] != D or v.shape[3] != D:
            raise ValueError(f"k, v must have shape (B, H_kv, T_new, D) = ({B}, {H}, T_new, {D}), "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        if k.dtype != self.k.dtype or v.dtype != self.k.dtype or k.device != self.k.device:
            raise ValueError(f"k, v must be {self.k.dtype} on {self.k.device} like the cache, "
                             f"got {k.dtype} on {k.device}")
        _check_positions(cache_position, k.shape[2], None, self.max_length)
        self.k.index_copy_(2, cache_position, k)
        self.v.index_copy_(2, cache_position, v)
        self.valid.index_fill_(0, cache_position, True)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Row b becomes old row index[b] (index has B entries; rows may repeat).

        In place: the buffers keep their memory (and a captured CUDA graph stays valid)."""
        _check_index(index, self.k.shape[0])
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))

    def crop(self, length: int) -> None:
        """Forget slots from `length` on (zeroed and marked unwritten)."""
        _check_length(length, self.max_length)
        self.k[:, :, length:] = 0
        self.v[:, :, length:] = 0
        self.valid[length:] = False


class CrossAttentionCache:
    """Cross-attention keys/values of an encoder's output, computed on the first decode step and reused.

    The encoder output does not change while the decoder generates, so neither
    do the cross-attention keys and values. :class:`~plmkit.nn.attention.MultiHeadAttention`
    projects `context` into them once (``update``) and afterwards reads them
    back and skips its ``k_proj``/``v_proj``.

    >>> cache = CrossAttentionCache()
    >>> cache.is_set
    False
    >>> k, v = cache.update(torch.zeros(2, 4, 7, 8), torch.zeros(2, 4, 7, 8))
    >>> cache.is_set, len(cache)
    (True, 7)
    """

    def __init__(self):
        self.k: torch.Tensor | None = None   # (B, H_kv, S, D)
        self.v: torch.Tensor | None = None

    @property
    def is_set(self) -> bool:
        return self.k is not None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the encoder keys/values (B, H_kv, S, D) once; return them."""
        _check_kv(k, v)
        if self.is_set:
            raise ValueError("this CrossAttentionCache is already set; make a new one per input (or call reset())")
        self.k, self.v = k, v
        return k, v

    def reset(self) -> None:
        self.k = self.v = None

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (B_new,), in that order (beam search)."""
        _check_index(index, None)
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)

    def crop(self, length: int) -> None:
        """A no-op: `length` counts decoder positions, and the encoder's keys/values do not depend on them.

        Present so that a decoder state can crop all its caches alike."""
        _check_length(length, 2 ** 62)
