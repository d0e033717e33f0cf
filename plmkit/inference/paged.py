"""A paged KV cache, written to be read: fixed-size blocks and a block table (Kwon et al. 2023).

A server does not know how long each answer will be. Reserving a contiguous
buffer of the maximum length for every request (what a static cache does)
wastes the unused tail of each one; growing a buffer by concatenation copies it
again and again. PagedAttention (vLLM) borrows the operating system's answer,
virtual memory: the cache is one pool of equal *blocks* of `block_size`
positions, a sequence gets blocks only as it grows, and a per-sequence *block
table* maps its logical block i to a physical block anywhere in the pool:

    position p of a sequence  ->  block_table[p // block_size], offset p % block_size

At most the last block of a sequence is partly empty, so the waste is under one
block per sequence instead of (max_length - length) positions. Blocks can also
be shared between sequences (a common prompt, beams), which this teaching
version leaves out. A real engine reads the blocks inside its attention kernel;
:meth:`PagedKVCache.update` instead gathers them into a contiguous tensor, so
that the ordinary attention of :mod:`plmkit.nn` can run on it unchanged.

    >>> pool = BlockPool(num_blocks=8, block_size=4)
    >>> cache = PagedKVCache(pool, batch_size=1, n_kv_heads=2, head_dim=3)
    >>> k, v = cache.update(torch.ones(1, 2, 6, 3), torch.ones(1, 2, 6, 3))   # 6 positions: 2 blocks
    >>> cache.block_tables, len(cache), pool.num_free
    ([[0, 1]], 6, 6)
    >>> cache.slot(0, 5)                                                     # (physical block, offset)
    (1, 1)
"""
from __future__ import annotations

import torch

__all__ = ["BlockPool", "PagedKVCache", "lookup_slot", "fragmentation"]


def lookup_slot(block_table: list[int], position: int, block_size: int) -> tuple[int, int]:
    """Where position `position` of a sequence lives: (physical block, offset inside it).

    >>> lookup_slot([7, 2, 5], 9, 4)          # logical block 2 -> physical block 5, offset 1
    (5, 1)
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not isinstance(position, int) or not 0 <= position < len(block_table) * block_size:
        raise ValueError(f"position must be an int in [0, {len(block_table) * block_size}) for a block table of "
                         f"{len(block_table)} blocks, got {position!r}")
    return block_table[position // block_size], position % block_size


class BlockPool:
    """The free list of a pool of `num_blocks` blocks of `block_size` positions (shared by every layer's cache)."""

    def __init__(self, num_blocks: int, block_size: int):
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free = list(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> int:
        if not self.free:
            raise RuntimeError("out of KV-cache blocks: a server would now preempt a request")
        return self.free.pop(0)

    def release(self, blocks: list[int]) -> None:
        self.free.extend(blocks)


class PagedKVCache:
    """One layer's keys/values in pool blocks (num_blocks, H_kv, block_size, D), one block table per row.

    Follows the cache interface of :mod:`plmkit.nn.cache` (``update``, ``len``, ``crop``),
    so a model takes a list of them as ``caches=``. Every row holds the same number of
    positions (left-padded batches do). Each layer has its own tensors but all layers
    of a model may share one :class:`BlockPool` only if they allocate in lockstep;
    simplest is one pool per layer (the block tables then coincide).
    """

    def __init__(self, pool: BlockPool, batch_size: int, n_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device=None):
        for name, value in (("batch_size", batch_size), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(pool, BlockPool):
            raise ValueError(f"pool must be a BlockPool, got {type(pool).__name__}")
        self.pool, self.block_size = pool, pool.block_size
        shape = (pool.num_blocks, n_kv_heads, pool.block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)                    # the physical blocks
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_tables: list[list[int]] = [[] for _ in range(batch_size)]       # logical -> physical
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def slot(self, row: int, position: int) -> tuple[int, int]:
        """(physical block, offset) of `position` in batch row `row`."""
        return lookup_slot(self.block_tables[row], position, self.block_size)

    def update(self, k: torch.Tensor, v: torch.Tensor,
               cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H_kv, T_new, D), allocating blocks as needed; return all (B, H_kv, T_all, D)."""
        B, H, T_new, D = k.shape
        if B != len(self.block_tables) or k.shape != v.shape or self.k.shape[1] != H or self.k.shape[3] != D:
            raise ValueError(f"k, v must have shape (B, H_kv, T_new, D) = ({len(self.block_tables)}, "
                             f"{self.k.shape[1]}, T_new, {self.k.shape[3]}), got {tuple(k.shape)}")
        if cache_position is not None and cache_position.tolist() != list(range(self.length, self.length + T_new)):
            raise ValueError(f"a paged cache appends: cache_position must be {self.length}..{self.length + T_new - 1}")
        for b, table in enumerate(self.block_tables):
            for t in range(T_new):
                p = self.length + t
                if p // self.block_size == len(table):                             # the last block is full
                    table.append(self.pool.allocate())
                block, offset = self.slot(b, p)
                self.k[block, :, offset] = k[b, :, t]
                self.v[block, :, offset] = v[b, :, t]
        self.length += T_new
        return self.gather()

    def gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored keys/values of every row, contiguous: (B, H_kv, length, D) each."""
        ks, vs = [], []
        for table in self.block_tables:
            index = torch.tensor(table, dtype=torch.long, device=self.k.device)
            # (n_blocks, H, bs, D) -> (H, n_blocks * bs, D), then cut to the stored length
            ks.append(self.k[index].transpose(0, 1).flatten(1, 2)[:, :self.length])
            vs.append(self.v[index].transpose(0, 1).flatten(1, 2)[:, :self.length])
        return torch.stack(ks), torch.stack(vs)

    def crop(self, length: int) -> None:
        """Keep the first `length` positions; whole blocks past them go back to the pool."""
        if not isinstance(length, int) or not 0 <= length <= self.length:
            raise ValueError(f"length must be an int in [0, {self.length}], got {length!r}")
        keep = -(-length // self.block_size)                                       # ceil
        for table in self.block_tables:
            self.pool.release(table[keep:])
            del table[keep:]
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        raise NotImplementedError("beam search on a paged cache shares blocks copy-on-write; not in this version")


def fragmentation(lengths: list[int], max_length: int, block_size: int) -> dict:
    """KV-cache positions reserved vs used when sequences of `lengths` are served.

    contiguous: each sequence reserves `max_length` positions up front (a static cache);
    paged: each reserves ceil(length / block_size) blocks. Returns the reserved
    slots and the fraction wasted for both.

    >>> fragmentation([3, 10], max_length=16, block_size=4)
    {'used': 13, 'contiguous_reserved': 32, 'paged_reserved': 16, 'contiguous_waste': 0.59375, 'paged_waste': 0.1875}
    """
    if not isinstance(max_length, int) or max_length < 1 or not isinstance(block_size, int) or block_size < 1:
        raise ValueError("max_length and block_size must be positive ints")
    if any(not isinstance(n, int) or not 0 <= n <= max_length for n in lengths):
        raise ValueError(f"every length must be an int in [0, max_length={max_length}]")
    used = sum(lengths)
    contiguous = max_length * len(lengths)
    paged = sum(-(-n // block_size) * block_size for n in lengths)
    return {"used": used, "contiguous_reserved": contiguous, "paged_reserved": paged,
            "contiguous_waste": 1 - used / contiguous if contiguous else 0.0,
            "paged_waste": 1 - used / paged if paged else 0.0}
