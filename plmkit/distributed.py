"""Training on several devices: the process group, the data split, DDP and FSDP2, and ZeRO's memory sums.

The Trainer (plmkit/train.py) calls this module; nothing here is a parallel
engine of its own. PyTorch supplies the engine: `torchrun` starts one process
per device and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`torch.distributed` connects them (gloo on CPU, nccl on GPU);
DistributedDataParallel (DDP) keeps a full copy of the model in every process
and averages the gradients with an all-reduce during backward; FSDP2's
`fully_shard` keeps only a 1/N slice of every parameter, gradient and
optimizer state in each process and gathers a layer's full weights just
before it runs.

    world          who am I: rank, world size, local rank (1 process: 0, 1, 0)
    setup          join or start the process group for strategy "ddp" | "fsdp", on
                   this rank's device (cuda:LOCAL_RANK with nccl, or the CPU with gloo)
    shard_batch    this rank's rows of a global batch (the data split)
    wrap           DDP(model) or fully_shard(blocks, then model)
    gradient_sync  a context: no gradient communication on a micro-batch
    all_reduce_sum sum a tensor over all ranks (a no-op in one process)
    zero_memory    bytes per device for parameters, gradients and Adam states
                   under ZeRO stage 0 (DDP), 1, 2 and 3 (= FSDP)
    activation_bytes   bytes of a Llama's saved activations per device

**The data split.** Every rank runs the same data code with the same seed, so
every rank holds the same *global* batch of B rows, and rank r trains on rows
``[r * B / N, (r + 1) * B / N)``. The ranks never share a row, and N processes
with a global batch of B take the same optimizer steps as one process with a
batch of B (the tests check it to 1e-5). An **epoch** is therefore defined as
in one process: for a fixed dataset (a list of batches, a DataLoader) one
pass over its global batches, in which every row is trained on by exactly one
rank, once; for a stream of random windows, which samples with replacement,
one epoch is `len(corpus)` tokens drawn, ``len(ids) // (B * T)`` steps
whatever the number of processes. The cost of that simplicity is that every
process builds the whole global batch; for token windows that is an index
lookup, for a heavy pipeline use a ``DistributedSampler`` per rank instead.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("ddp", "fsdp")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes, and its rank on its own machine."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows the progress bar and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set the variables `init_process_group` reads."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def world() -> World:
    """This process's rank, the world size and its local rank; ``World(0, 1, 0)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def backend_for(device: torch.device) -> str:
    """'nccl' for CUDA devices (GPUs talk over NVLink / InfiniBand), 'gloo' for the CPU (TCP)."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: torch.device | str | None = None) -> torch.device:
    """This process's device: cuda:LOCAL_RANK on a GPU machine (unless `device` says otherwise), else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def setup(strategy: str, device: torch.device | str | None = None) -> tuple[World, torch.device]:
    """Join the process group for `strategy`, starting it from torchrun's variables if needed;
    return this process's place and device (nccl when that device is a GPU, else gloo).

    Raises ValueError for an unknown strategy and for a process that was
    started without torchrun and without ``torch.distributed.init_process_group``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be None or one of {STRATEGIES}, got {strategy!r}")
    if not dist.is_available():
        raise ValueError(f"strategy={strategy!r} needs torch.distributed, which this PyTorch build lacks")
    if not dist.is_initialized() and not launched_by_torchrun():
        raise ValueError(
            f"strategy={strategy!r} needs a process group, and there is none: start the script with "
            f"`torchrun --nproc_per_node N script.py` (which sets {', '.join(TORCHRUN_ENV)}), or call "
            f"torch.distributed.init_process_group(...) before building the Trainer; "
            f"use strategy=None for one process")
    device = device_for(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device))
    return world(), device


def shard_batch(batch, rank: int, world_size: int):
    """This rank's rows of a global batch: rows ``[rank * B / N, (rank + 1) * B / N)`` of every tensor.

    Works on a tensor, a tuple / list, or a dict of them (all with the same
    batch size B along dim 0); anything else is passed through unchanged.

    >>> x = torch.arange(8).view(4, 2)
    >>> shard_batch((x, x + 10), rank=1, world_size=2)[0].tolist()
    [[4, 5], [6, 7]]
    >>> shard_batch({"ids": x}, rank=0, world_size=2)["ids"].shape
    torch.Size([2, 2])
    """
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need an int world_size >= 1 and rank in [0, world_size), got rank={rank!r}, "
                         f"world_size={world_size!r}")
    if world_size == 1:
        return batch
    sizes = {t.shape[0] for t in _tensors(batch) if t.ndim > 0}
    if len(sizes) != 1:
        raise ValueError(f"every tensor of a batch must have the same batch size along dim 0 to be split "
                         f"over {world_size} processes, got sizes {sorted(sizes)}")
    B = sizes.pop()
    if B % world_size:
        raise ValueError(f"the global batch size must be divisible by the world size: got a batch of {B} rows "
                         f"for {world_size} processes; use a batch size that is a multiple of {world_size}")
    n = B // world_size
    return _slice(batch, slice(rank * n, (rank + 1) * n))


def _tensors(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for b in batch:
            yield from _tensors(b)
    elif isinstance(batch, dict):
        for b in batch.values():
            yield from _tensors(b)


def _slice(batch, rows: slice):
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.ndim > 0 else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(b, rows) for b in batch)
    if isinstance(batch, dict):
        return {k: _slice(v, rows) for k, v in batch.items()}
    return batch


def wrap(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """DDP: ``DistributedDataParallel(model)`` (returned; `model` is unchanged).
    FSDP: ``fully_shard`` on every block of the model's ModuleLists, then on the
    model itself, in place (returned: the same object, its parameters now DTensor shards).

    Sharding block by block lets FSDP gather one block's weights at a time; the
    root holds what is left (embeddings, final norm, a tied head).
    """
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def gradient_sync(wrapped: nn.Module, strategy: str | None, enabled: bool):
    """A context for one micro-batch's forward and backward: with ``enabled=False`` the gradients
    stay local (DDP's ``no_sync``; FSDP2's ``set_requires_gradient_sync(False)``) and only add up,
    so that gradient accumulation communicates once per optimizer step, on the last micro-batch."""
    if strategy == "ddp" and not enabled:
        return wrapped.no_sync()
    if strategy == "fsdp":
        wrapped.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over all ranks, in place (and return it); unchanged without a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def local_numel(model: nn.Module) -> int:
    """Parameter elements this process holds: all of them, or its shards under FSDP."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())


# ----------------------------------------------------------------------------- memory arithmetic

def zero_memory(n_params: int, n_devices: int, stage: int, *, param_bytes: int = 2, grad_bytes: int = 2,
                optimizer_bytes: int = 12) -> dict[str, float]:
    """Bytes per device for a model's parameters, gradients and optimizer states under ZeRO `stage`.

    Mixed-precision Adam (Rajbhandari et al. 2020) keeps per parameter 2 bytes
    of bf16 weights, 2 bytes of bf16 gradients and 12 bytes of optimizer
    state (an fp32 master copy, Adam's m and v). Stage 0 is plain data
    parallelism (DDP): everything replicated on all `n_devices`. Stage 1
    shards the optimizer states over the devices, stage 2 the gradients as
    well, stage 3 (which FSDP implements) the parameters too; a sharded part
    costs 1/`n_devices` of its full size.

    >>> {k: v / 1e9 for k, v in zero_memory(10**9, 4, 2).items()}      # GB per device
    {'params': 2.0, 'grads': 0.5, 'optimizer': 3.0}
    """
    for name, value in (("n_params", n_params), ("n_devices", n_devices)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    for name, value in (("param_bytes", param_bytes), ("grad_bytes", grad_bytes),
                        ("optimizer_bytes", optimizer_bytes)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return {"params": n_params * param_bytes / (n_devices if stage >= 3 else 1),
            "grads": n_params * grad_bytes / (n_devices if stage >= 2 else 1),
            "optimizer": n_params * optimizer_bytes / (n_devices if stage >= 1 else 1)}


def activation_bytes(config, micro_batch: int, seq_len: int, *, bytes_per_value: int = 2,
                     checkpointing: bool = False) -> float:
    """Bytes of activations a Llama block stack saves for backward, per device, for one micro-batch.

    Counted per token and layer, in values (bytes_per_value each, 2 for bf16),
    with a fused attention kernel (no T x T score matrix is kept):

        attention half   the block input and its normalised copy (2C), q (C), k, v
                         (2 * kv heads * head dim), the attention output before
                         its projection (C)
        SwiGLU half      the residual stream and its normalised copy (2C), gate and
                         up projections (2F), silu(gate) and the product (2F)

    plus the final normalised stream (C) and fp32 logits (4 bytes x V) per token.
    With activation checkpointing only each block's input (C) is kept, plus
    the full activations of the one block being recomputed during backward.
    Activations are not sharded by ZeRO or FSDP: they depend on the
    micro-batch each device runs.

    >>> from plmkit.models.llama import LlamaConfig
    >>> c = LlamaConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    >>> activation_bytes(c, micro_batch=1, seq_len=1, bytes_per_value=1)    # (8C + 4F) + C + 4V
    108.0
    """
    for name, value in (("micro_batch", micro_batch), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    C, F, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = config.head_dim or C // config.num_attention_heads
    kv = 2 * (config.num_key_value_heads or config.num_attention_heads) * head_dim
    block = (2 * C + C + kv + C) + (2 * C + 4 * F)               # values one block saves, per token
    kept = L * C + block if checkpointing else L * block
    tokens = micro_batch * seq_len
    return float(tokens * ((kept + C) * bytes_per_value + 4 * config.vocab_size))
