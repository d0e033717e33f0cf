"""Chapter 0's reference implementations: softmax, log-softmax, cross-entropy
and the smallest useful training loop.

Shapes: any leading dimensions; the class dimension is `dim` (default last).
These are what the chapter's checkers compare a learner's code with (besides
PyTorch itself), and what the chapter's demo cells use.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax: subtract the max before exponentiating.

    >>> softmax(torch.tensor([1000.0, 1000.0]))
    tensor([0.5000, 0.5000])
    """
    _check_tensor(x, "x")
    z = x - x.amax(dim=dim, keepdim=True)
    e = z.exp()
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(softmax(x)) without overflow or log(0): x - max - log(sum(exp(x - max))).

    >>> log_softmax(torch.tensor([0.0, 0.0])).exp()
    tensor([0.5000, 0.5000])
    """
    _check_tensor(x, "x")
    z = x - x.amax(dim=dim, keepdim=True)
    return z - z.exp().sum(dim=dim, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean negative log-probability of the targets; positions equal to `ignore_index` are skipped.

    logits (N, V), targets (N,) of class ids.

    >>> cross_entropy(torch.zeros(2, 4), torch.tensor([1, 3]))  # uniform over 4 classes: log 4
    tensor(1.3863)
    """
    _check_tensor(logits, "logits")
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be (N, V) and targets (N,), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    keep = targets != ignore_index
    if not keep.any():
        raise ValueError("every target equals ignore_index: there is nothing to average")
    t = targets[keep]
    if (t < 0).any() or (t >= logits.shape[1]).any():
        raise ValueError(f"targets must be class ids in [0, {logits.shape[1]}) or ignore_index")
    z = logits[keep]                                     # (N', V)
    z = z - z.amax(dim=-1, keepdim=True)
    logp = z - z.exp().sum(dim=-1, keepdim=True).log()   # log-softmax, inlined
    return -logp.gather(1, t[:, None]).mean()


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[float]:
    """One pass over `batches`: for each (x, y), clear the gradients, compute
    loss_fn(model(x), y), backpropagate and step. Returns the loss of each batch.
    """
    model.train()
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype}")
