"""The Trainer: one training loop for every model of the book.

Pre-training a language model is the same loop whatever the objective: draw a
batch, compute a loss, step the optimizer. What makes it work well is the
detail around that loop, and this file gathers it in one place:

    param_groups     AdamW weight decay on weight matrices only, not on biases,
                     norms or embeddings
    warmup_cosine    learning rate: linear warm-up, then cosine decay to a floor
    Trainer          gradient clipping and accumulation, bf16 autocast on a GPU,
                     fused AdamW on CUDA, optional torch.compile, periodic
                     evaluation, a tqdm bar with the loss, checkpoints that
                     resume exactly, and a loss history for plotting
    strategy         the same loop under `torchrun` on N devices: "ddp"
                     (DistributedDataParallel) or "fsdp" (FSDP2's fully_shard);
                     each rank trains on its rows of the global batch, the loss
                     is averaged per token over all ranks (plmkit/distributed.py)
    main             ``python -m plmkit.train``: a character GPT or Llama on
                     Shakespeare from the command line, under torchrun or not

A batch is whatever the data gives; the loss function turns (model, batch)
into a scalar, or into ``(scalar, {name: value})`` whose metrics (a DPO
accuracy, a reward margin) are averaged and logged next to the loss. The
default expects ``(inputs, targets)`` with targets already aligned to the
model's output positions (-100 = ignore), which covers causal LM windows
(targets = inputs shifted by one) and masked LM labels alike::

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
    >>> data = [(torch.randint(10, (4, 6)), torch.randint(10, (4, 6)))]
    >>> trainer = Trainer(model, data, max_steps=3, progress=False, device="cpu")
    >>> history = trainer.fit()
    >>> trainer.step, len(history["loss"])
    (3, 1)

A loop of another shape (PPO collects samples, then takes several steps on
them) reuses the same machinery through :meth:`Trainer.backward` and
:meth:`Trainer.optimizer_step`; models that must not learn (a frozen
reference policy) are passed as ``frozen=[...]``.

Under ``torchrun --nproc_per_node N`` the same script runs N times; passing
``strategy="ddp"`` (or ``"fsdp"``) is the only change::

    torchrun --nproc_per_node 8 -m plmkit.train --strategy ddp --batch-size 64

Letters in shape comments: B batch, T time, V vocabulary.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .device import autocast_dtype, get_device

IGNORE_INDEX = -100
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_RESERVED = ("step", "loss", "lr")        # history keys a metric may not take


# ----------------------------------------------------------------------------- optimizer

def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split a model's trainable parameters into a decayed and a non-decayed group for AdamW.

    Weight decay pulls weights towards zero. That is a sensible prior for the
    weight matrices of linear layers, but not for biases and normalisation
    gains (which set offsets and scales) nor for embedding rows (a rare token's
    row would shrink every step it is not seen). Parameters shared between
    modules (a tied LM head) are counted once.

    >>> m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    >>> groups = param_groups(m, 0.1)
    >>> [(g["weight_decay"], len(g["params"])) for g in groups]
    [(0.1, 1), (0.0, 4)]
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    no_decay_ids: set[int] = set()
    for module in model.modules():
        kind = type(module).__name__                     # Embedding, LearnedPositionalEmbedding, LayerNorm, RMSNorm...
        if isinstance(module, nn.Embedding) or "Embedding" in kind or "Norm" in kind:
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based).

    Linear warm-up from 1/warmup_steps to 1 over the first `warmup_steps`
    steps (Adam's moment estimates are poor at first, so big steps are
    risky), then a half cosine from 1 down to `min_lr_ratio` at `max_steps`,
    and flat after that.

    >>> [round(warmup_cosine(s, warmup_steps=2, max_steps=6, min_lr_ratio=0.0), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    if warmup_steps < 0 or max_steps < 1 or warmup_steps > max_steps:
        raise ValueError(f"need 0 <= warmup_steps <= max_steps and max_steps >= 1, "
                         f"got warmup_steps={warmup_steps}, max_steps={max_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lm_loss(model: Callable, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The default loss: cross-entropy of ``model(inputs)`` against aligned `targets` (-100 ignored).

    >>> model = nn.Sequential(nn.Embedding(5, 5))
    >>> x = torch.tensor([[0, 1, 2]]); y = torch.tensor([[1, 2, -100]])
    >>> round(lm_loss(model, (x, y)).item(), 4) == round(F.cross_entropy(model(x)[0, :2], y[0, :2]).item(), 4)
    True
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("the default loss expects each batch to be a pair (inputs, targets); "
                         "pass loss_fn=... for other batch formats")
    inputs, targets = batch
    logits = model(inputs)                                    # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------- data

def _batches(source, skip: int = 0) -> Iterator[Any]:
    """Endless stream of batches: call a zero-argument function, or cycle through an iterable
    (skipping its first `skip` batches, to resume where a checkpoint stopped)."""
    if _is_function(source):
        while True:
            yield source()
    seen = 0
    while True:
        empty = True
        for batch in source:
            empty = False
            seen += 1
            if seen > skip:
                yield batch
        if empty:
            raise ValueError("the training data yielded no batches")


def _is_function(source) -> bool:
    return callable(source) and not hasattr(source, "__iter__")


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """Train `model` on `train_data` for `max_steps` optimizer steps.

    Data: `train_data` (and `eval_data`) is an iterable of batches, cycled when
    it runs out (a list, a DataLoader), or a function with no arguments that
    returns a fresh batch (random windows of a corpus).

    Arguments, by theme:

    - objective: `loss_fn(model, batch) -> scalar` or ``-> (scalar, {name: scalar})``
      (default: `lm_loss`); metrics are averaged like the loss and logged in
      ``history[name]`` (training) and ``history["eval_" + name]`` (evaluation);
    - frozen models: `frozen` (modules the loss uses but must not train, e.g. a
      reference policy) are moved to the device, kept in eval mode (even when
      they live inside `model`) and get ``requires_grad=False``;
    - optimizer: AdamW with `lr`, `betas`, `weight_decay` (see `param_groups`),
      fused on CUDA; `grad_clip` (max global gradient norm, None = off);
      `grad_accum_steps` batches per optimizer step;
    - schedule: `warmup_steps`, then cosine to `min_lr_ratio * lr` (see `warmup_cosine`);
    - speed: `device` (default: the best available), `precision` ('auto' =
      bf16 autocast on a GPU that has it and float32 elsewhere; 'fp32',
      'bf16', 'fp16'), `compile` (True: torch.compile the model; a string
      names the torch.compile backend);
    - evaluation: every `eval_every` steps and at `max_steps`, the mean loss over
      `eval_batches` batches of `eval_data` (all of an iterable if None, 10
      calls of a function); `target_eval_loss` stops training as soon as an
      evaluation reaches it;
    - bookkeeping: `log_every` (steps per history point, each the mean
      training loss since the last one), `progress` (a tqdm bar),
      `checkpoint_path` and `checkpoint_every` (save periodically);
    - several devices: `strategy` None (one process), "ddp" or "fsdp". Under
      `torchrun` the Trainer joins (or starts, from torchrun's variables) the
      process group, gloo on CPU and nccl on GPU; the data yields *global*
      batches, of which each rank trains on its 1/N of the rows
      (`distributed.shard_batch`; the batch size must divide by N); gradients
      are synced once per optimizer step, on the last micro-batch; the
      progress bar shows on rank 0 only.

    **The loss average.** A step's loss is the mean over every token that
    carries a loss in the global batch, across ranks and micro-batches: the
    sum of the token losses over the number of such tokens (all-reduced). A
    micro-batch's token count is ``(targets != -100).sum()`` for the default
    loss and the metric ``"tokens"`` for a `loss_fn` that reports one (the SFT
    loss does); a `loss_fn` without a count gets weight 1 per micro-batch and
    rank (the mean of the batch means). Only then do N processes with batch B
    equal one process with batch B when rows carry different numbers of tokens.

    After `fit()`, `history` holds lists ``step, loss, lr, eval_step, eval_loss``
    (plus one per metric). Custom loops call :meth:`backward` and
    :meth:`optimizer_step` (clipping, loss scaling, the schedule) themselves.
    `save_checkpoint` / `load_checkpoint` store and restore model, optimizer,
    scheduler, step, history, data position and random-number state, so that
    a resumed run continues exactly like an uninterrupted one. The state is
    gathered in full on rank 0 (`torch.distributed.checkpoint.state_dict`),
    so a checkpoint written by N processes loads in M; call both on every rank.
    """

    def __init__(self, model: nn.Module, train_data: Iterable | Callable[[], Any], *,
                 max_steps: int, eval_data: Iterable | Callable[[], Any] | None = None,
                 loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                 lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1,
                 warmup_steps: int = 0, min_lr_ratio: float = 0.1, grad_clip: float | None = 1.0,
                 grad_accum_steps: int = 1, eval_every: int | None = None, eval_batches: int | None = None,
                 target_eval_loss: float | None = None, log_every: int = 10,
                 device: torch.device | str | None = None, precision: str = "auto", compile: bool | str = False,
                 progress: bool = True, checkpoint_path: str | os.PathLike | None = None,
                 checkpoint_every: int | None = None, frozen: Iterable[nn.Module] = (),
                 strategy: str | None = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(frozen, nn.Module):
            frozen = [frozen]
        frozen = list(frozen)
        for m in frozen:
            if not isinstance(m, nn.Module) or m is model:
                raise ValueError(f"frozen must be a list of torch.nn.Modules other than model, got {m!r:.60}")
        for name, value in (("train_data", train_data), ("eval_data", eval_data)):
            if value is not None and not (callable(value) or hasattr(value, "__iter__")):
                raise ValueError(f"{name} must be an iterable of batches or a function returning a batch, "
                                 f"got {type(value).__name__}")
        _positive_int("max_steps", max_steps)
        _positive_int("grad_accum_steps", grad_accum_steps)
        _positive_int("log_every", log_every)
        for name, value in (("eval_every", eval_every), ("eval_batches", eval_batches),
                            ("checkpoint_every", checkpoint_every)):
            if value is not None:
                _positive_int(name, value)
        if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= max_steps:
            raise ValueError(f"warmup_steps must be an int in [0, max_steps={max_steps}], got {warmup_steps!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be None (off) or a number > 0, got {grad_clip!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        if (eval_every is not None or target_eval_loss is not None) and eval_data is None:
            raise ValueError("eval_every and target_eval_loss need eval_data")
        if checkpoint_every is not None and checkpoint_path is None:
            raise ValueError("checkpoint_every needs checkpoint_path")

        # Several processes: join the group first (it fixes this rank's device).
        if strategy is None:
            if int(os.environ.get("WORLD_SIZE", 1)) > 1:
                raise ValueError(f"this process is one of WORLD_SIZE={os.environ['WORLD_SIZE']} (started by "
                                 f"torchrun?) but strategy=None would train each alone: pass strategy='ddp' "
                                 f"or 'fsdp'")
            self.world = distributed.World()
            self.device = get_device(device.type if isinstance(device, torch.device) else device)
        else:
            self.world, self.device = distributed.setup(strategy, device)
        self.strategy = strategy
        self.model = model.to(self.device)
        # Frozen models: on the device, no gradients, never in train mode (not in the optimizer either,
        # since param_groups skips parameters that do not require grad).
        self.frozen = [m.to(self.device).eval().requires_grad_(False) for m in frozen]
        # DDP wraps the model (self.model stays the bare module, which shares its parameters);
        # FSDP shards it in place, so the optimizer below must see the sharded parameters.
        wrapped = model if strategy is None else distributed.wrap(self.model, strategy, self.device)
        self.train_data, self.eval_data = train_data, eval_data
        self.loss_fn = loss_fn or lm_loss
        self.max_steps, self.grad_accum_steps, self.grad_clip = max_steps, grad_accum_steps, grad_clip
        self.eval_every, self.eval_batches, self.target_eval_loss = eval_every, eval_batches, target_eval_loss
        self.log_every, self.progress = log_every, progress
        self.checkpoint_path, self.checkpoint_every = checkpoint_path, checkpoint_every

        # Reduced precision: bf16 needs no loss scaling; fp16 does (its range is small).
        if precision == "auto":
            self.amp_dtype = autocast_dtype(self.device)
        else:
            self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32' here")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)

        # A fused AdamW kernel updates all parameters in one launch on CUDA.
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas),
                                           fused=fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, warmup_steps=warmup_steps, max_steps=max_steps,
                                                    min_lr_ratio=min_lr_ratio))
        # The compiled module shares its parameters with `model`; checkpoints use `model`.
        self._wrapped = wrapped
        if compile is True:
            self.forward_model = torch.compile(wrapped)
        elif isinstance(compile, str):                       # a backend name, e.g. "eager" for a quick test
            self.forward_model = torch.compile(wrapped, backend=compile)
        elif compile is False:
            self.forward_model = wrapped
        else:
            raise ValueError(f"compile must be True, False or a torch.compile backend name, got {compile!r}")

        self.step = 0
        self.batches_seen = 0
        self.reached_target = False
        self.history: dict[str, list] = {"step": [], "loss": [], "lr": [], "eval_step": [], "eval_loss": []}
        self.last_metrics: dict[str, torch.Tensor] = {}      # the last train_step's metrics (on the device)
        self.last_eval_metrics: dict[str, float] = {}        # the last evaluate()'s metrics
        self._train_iter = _batches(train_data)

    # -- one step ----------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _set_training(self, mode: bool) -> None:
        """`model` to train (or eval) mode; frozen models stay in eval mode even inside `model`."""
        self.model.train(mode)
        for m in self.frozen:
            m.eval()

    def _loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run loss_fn under autocast; split off its metrics (detached float tensors on the device)."""
        with self._autocast():
            out = self.loss_fn(self.forward_model, batch)
        if isinstance(out, tuple) and len(out) != 2:
            raise ValueError(f"loss_fn must return a scalar tensor or a pair (loss, metrics dict), "
                             f"got a tuple of {len(out)}")
        loss, metrics = out if isinstance(out, tuple) else (out, {})
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar tensor or (scalar tensor, metrics dict), got "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        if not isinstance(metrics, dict):
            raise ValueError(f"loss_fn's metrics must be a dict {{name: scalar}}, got {type(metrics).__name__}")
        clean = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or name in _RESERVED or name.startswith("eval_"):
                raise ValueError(f"metric names must be strings other than {sorted(_RESERVED)} and not start "
                                 f"with 'eval_', got {name!r}")
            value = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
            if value.numel() != 1:
                raise ValueError(f"metric {name!r} must be a scalar, got shape {tuple(value.shape)}")
            clean[name] = value.to(self.device, torch.float32).reshape(())
        return loss, clean

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` / grad_accum_steps, through the fp16 loss scaler when it is on.

        Call it once per batch, then :meth:`optimizer_step` once per
        `grad_accum_steps` batches: the gradients add up to those of the mean loss.
        """
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not loss.requires_grad:
            raise ValueError("loss must be a scalar tensor that requires grad")
        self.scaler.scale(loss / self.grad_accum_steps).backward()

    def optimizer_step(self) -> torch.Tensor | None:
        """Clip, step the optimizer and the learning-rate schedule, clear the gradients; ``self.step += 1``.

        Returns the global gradient norm before clipping (a tensor, not synced)
        when `grad_clip` is on, else None. With fp16 the gradients are unscaled
        first, and a step whose gradients overflowed is skipped by the scaler.
        """
        norm = None
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return norm

    def train_step(self) -> torch.Tensor:
        """One optimizer step over `grad_accum_steps` batches; returns the mean loss (a tensor, not synced).

        The loss is the per-token mean over the global batch (see the class
        docstring); the batches' mean metrics are left in ``self.last_metrics``.
        """
        self._set_training(True)
        self.optimizer.zero_grad(set_to_none=True)
        if self.world.size == 1 and self.grad_accum_steps == 1:          # one batch: no weights to apply
            batch = _to_device(next(self._train_iter), self.device)
            self.batches_seen += 1
            loss, m = self._loss(batch)
            self.backward(loss)
            self.optimizer_step()
            self.last_metrics = m
            return loss.detach().float()
        # Each micro-batch's loss is weighted by its token count n_i: backward(loss_i * n_i) adds up the
        # gradient of the *sum* of token losses; DDP / FSDP average it over the N ranks, so multiplying
        # by N / (all tokens of all ranks and micro-batches) leaves the gradient of the per-token mean.
        sums = torch.zeros(2, device=self.device)                          # [sum of token losses, tokens]
        metrics: dict[str, torch.Tensor] = {}
        for i in range(self.grad_accum_steps):
            batch = distributed.shard_batch(next(self._train_iter), self.world.rank, self.world.size)
            batch = _to_device(batch, self.device)
            self.batches_seen += 1
            with distributed.gradient_sync(self._wrapped, self.strategy, enabled=i == self.grad_accum_steps - 1):
                loss, m = self._loss(batch)
                n = self._token_count(batch, m)
                self.scaler.scale(loss * n).backward()
            sums += torch.stack([loss.detach().float() * n, n])
            for name, value in m.items():
                metrics[name] = metrics.get(name, 0.0) + value
        names = list(metrics)
        totals = distributed.all_reduce_sum(torch.cat([sums, torch.stack([metrics[k] for k in names])])
                                            if names else sums)
        factor = self.world.size / max(totals[1].item(), 1.0)              # a float: FSDP's grads are DTensors
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
        self.optimizer_step()
        self.last_metrics = {name: self._metric_mean(name, value, self.grad_accum_steps)
                             for name, value in zip(names, totals[2:])}
        return totals[0] / totals[1].clamp(min=1)

    def _token_count(self, batch, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tokens a micro-batch's loss averages over: the "tokens" metric, the default loss's
        non-ignored targets, or 1 (a loss_fn that reports no count)."""
        if "tokens" in metrics:
            return metrics["tokens"].float()
        if self.loss_fn is lm_loss:
            return (batch[1] != IGNORE_INDEX).sum().float()
        return torch.ones((), device=self.device)

    def _metric_mean(self, name: str, total: torch.Tensor, batches: int) -> torch.Tensor:
        """A metric summed over ranks and batches -> its mean per batch; a count ("tokens") stays summed
        over the ranks, as one process with the whole batch would count it."""
        return total / batches if name == "tokens" else total / (batches * self.world.size)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss on the evaluation data (model in eval mode, so no dropout).

        Losses and metrics are summed on the device and read once at the end;
        the mean metrics are left in ``self.last_eval_metrics``. Under several
        processes each evaluation batch is split over the ranks like a training
        batch, and its loss is the per-token mean over all of them.
        """
        if self.eval_data is None:
            raise ValueError("evaluate() needs eval_data")
        was_training = self.model.training
        self._set_training(False)
        rows: list[torch.Tensor] = []                                   # per batch: [loss * n, n, metrics...]
        names: list[str] | None = None
        if _is_function(self.eval_data):
            batches = (self.eval_data() for _ in range(self.eval_batches or 10))
        else:
            batches = self.eval_data
        for i, batch in enumerate(batches):
            if self.eval_batches is not None and i >= self.eval_batches:
                break
            batch = _to_device(distributed.shard_batch(batch, self.world.rank, self.world.size), self.device)
            loss, m = self._loss(batch)
            n = self._token_count(batch, m) if self.world.size > 1 else torch.ones((), device=self.device)
            names = list(m) if names is None else names
            rows.append(torch.stack([loss.detach().float() * n, n, *(m[k] for k in names)]))
        self._set_training(was_training)
        if not rows:
            raise ValueError("eval_data yielded no batches")
        table = distributed.all_reduce_sum(torch.stack(rows))             # (batches, 2 + metrics)
        loss = (table[:, 0] / table[:, 1].clamp(min=1)).mean()
        metric_means = [self._metric_mean(k, table[:, 2 + j].sum(), len(rows)) for j, k in enumerate(names)]
        values = torch.stack([loss, *metric_means]).tolist()                # the one sync
        self.last_eval_metrics = dict(zip(names, values[1:]))
        return values[0]

    # -- the loop ----------------------------------------------------------
    def fit(self, steps: int | None = None) -> dict[str, list]:
        """Train until `max_steps` (or for `steps` more, at most up to `max_steps`); return `history`."""
        if steps is not None:
            _positive_int("steps", steps)
        end = self.max_steps if steps is None else min(self.max_steps, self.step + steps)
        bar = None
        if self.progress and self.world.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.max_steps, initial=self.step, desc="training", unit="step")
        running, count = torch.zeros((), device=self.device), 0
        metrics: dict[str, torch.Tensor] = {}
        while self.step < end and not self.reached_target:
            running += self.train_step()
            for name, value in self.last_metrics.items():
                metrics[name] = metrics.get(name, 0.0) + value
            count += 1
            last = self.step == end
            if self.step % self.log_every == 0 or last:
                names = list(metrics)
                values = torch.stack([running, *(metrics[n] for n in names)]).div(count).tolist()  # one sync
                self.history["step"].append(self.step)
                self.history["loss"].append(values[0])
                self.history["lr"].append(self.scheduler.get_last_lr()[0])
                for name, value in zip(names, values[1:]):
                    self.history.setdefault(name, []).append(value)
                running, count, metrics = torch.zeros((), device=self.device), 0, {}
                if bar is not None:
                    bar.set_postfix(self._postfix(), refresh=False)
            if self.eval_data is not None and ((self.eval_every and self.step % self.eval_every == 0)
                                               or self.step == self.max_steps):
                self._record_eval()
                if bar is not None:
                    bar.set_postfix(self._postfix(), refresh=False)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save_checkpoint(self.checkpoint_path)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return self.history

    def _record_eval(self) -> None:
        if self.history["eval_step"] and self.history["eval_step"][-1] == self.step:
            return
        loss = self.evaluate()
        self.history["eval_step"].append(self.step)
        self.history["eval_loss"].append(loss)
        for name, value in self.last_eval_metrics.items():
            self.history.setdefault("eval_" + name, []).append(value)
        if self.target_eval_loss is not None and loss <= self.target_eval_loss:
            self.reached_target = True

    def _postfix(self) -> dict[str, str]:
        post = {}
        if self.history["loss"]:
            post["loss"] = f"{self.history['loss'][-1]:.3f}"
        if self.history["eval_loss"]:
            post["eval"] = f"{self.history['eval_loss'][-1]:.3f}"
        return post

    # -- checkpoints -------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write model, optimizer, scheduler, step, history, data position and RNG state to `path`.

        Under several processes call it on every rank: the full (unsharded)
        model and optimizer state is gathered to rank 0, which alone writes the file.
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_state, optimizer_state = get_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.world.is_main:
            return
        state = {
            "model": model_state,
            "optimizer": optimizer_state,           # keyed by parameter name, the same at any world size
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "batches_seen": self.batches_seen,
            "history": self.history,
            "world_size": self.world.size,
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        torch.save(state, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by `save_checkpoint` so that `fit()` resumes where it stopped.

        It may come from a run with another number of processes: rank 0 reads
        the file and sends every rank its part (only rank 0 needs the file).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        several = self.world.size > 1
        state = None
        if self.world.is_main and os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
        found = [state is not None]
        if several:
            torch.distributed.broadcast_object_list(found, src=0)
        if not found[0]:
            raise ValueError(f"no checkpoint file at {os.fspath(path)!r}")
        arrays = {k: state.pop(k) for k in ("model", "optimizer")} if state is not None else {}
        meta = [state]
        if several:                                          # the small part (step, history, RNG) as one object
            torch.distributed.broadcast_object_list(meta, src=0)
        state = meta[0]
        set_state_dict(self.model, self.optimizer, model_state_dict=arrays.get("model", {}),
                       optim_state_dict=arrays.get("optimizer", {}),
                       options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=several))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.batches_seen = state["step"], state["batches_seen"]
        self.history = state["history"]
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
        # Skip the batches already used, so an iterable resumes at the same place.
        self._train_iter = _batches(self.train_data, skip=0 if _is_function(self.train_data) else self.batches_seen)


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------- the command line

def main(argv: list[str] | None = None) -> dict[str, list]:
    """``python -m plmkit.train``: a character-level GPT (chapter 4) or Llama (chapter 6) on a corpus.

    The same command runs in one process or under torchrun; `--batch-size` is
    the global batch, split over the processes::

        python -m plmkit.train --steps 200                                   # one process (CPU or GPU)
        torchrun --nproc_per_node 8 -m plmkit.train --strategy ddp --batch-size 256
        torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST0 --master_port 29500 \\
            -m plmkit.train --strategy fsdp --model llama --batch-size 512    # and --node_rank 1 on HOST1

    Rank 0 prints the final losses and writes `--history` (JSON) and `--checkpoint`.
    """
    import argparse
    import json
    import time

    from .data import load_corpus
    from .models import GPT, GPTConfig
    from .models.llama import Llama, LlamaConfig
    from .objectives.clm import random_windows
    from .tokenize import CharTokenizer

    ap = argparse.ArgumentParser(prog="python -m plmkit.train", description=main.__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("gpt", "llama"), default="gpt")
    ap.add_argument("--corpus", default="shakespeare", help="a plmkit.data corpus name or a text file")
    ap.add_argument("--max-chars", type=int, default=None, help="use only the first N characters of the corpus")
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="the global batch: rows per step over all processes")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of --steps)")
    ap.add_argument("--strategy", choices=("none", "ddp", "fsdp"), default="none")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available; cuda:LOCAL_RANK "
                                                   "under torchrun)")
    ap.add_argument("--precision", choices=_PRECISIONS, default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (CPU)")
    ap.add_argument("--history", default=None, help="write the loss history here as JSON (rank 0)")
    ap.add_argument("--checkpoint", default=None, help="save the Trainer state here at the end (and resume from it)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    text = load_corpus(args.corpus)[:args.max_chars]
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text))
    cut = int(0.9 * len(ids))
    train_ids, val_ids = ids[:cut], ids[cut:]
    torch.manual_seed(args.seed)                 # the same model and data stream in every process
    if args.model == "gpt":
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=args.block_size, n_embd=args.n_embd,
                              n_layer=args.n_layer, n_head=args.n_head, dropout=0.0))
    else:
        model = Llama(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=args.n_embd,
                                  intermediate_size=max(8, round(8 * args.n_embd / 3 / 8) * 8),   # SwiGLU: 8C/3
                                  num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                                  max_position_embeddings=args.block_size))
    g = torch.Generator().manual_seed(args.seed + 1)
    val = [random_windows(val_ids, args.block_size, args.batch_size, generator=g) for _ in range(4)]
    trainer = Trainer(model, lambda: random_windows(train_ids, args.block_size, args.batch_size),
                      eval_data=val if args.eval_every else None, eval_every=args.eval_every,
                      max_steps=args.steps, lr=args.lr, grad_accum_steps=args.grad_accum,
                      warmup_steps=args.steps // 20 if args.warmup is None else args.warmup,
                      log_every=args.log_every, device=args.device, precision=args.precision, compile=args.compile,
                      progress=not args.no_progress, strategy=None if args.strategy == "none" else args.strategy)
    if args.checkpoint and os.path.isfile(args.checkpoint):
        trainer.load_checkpoint(args.checkpoint)
    start, first = time.perf_counter(), trainer.step
    history = trainer.fit()
    seconds = time.perf_counter() - start
    if args.checkpoint:
        trainer.save_checkpoint(args.checkpoint)
    if trainer.world.is_main:
        tokens = (trainer.step - first) * args.batch_size * args.grad_accum * args.block_size
        print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters on "
              f"{trainer.world.size} process(es) ({trainer.device.type}); step {trainer.step}, "
              f"loss {history['loss'][-1]:.3f}" + (f", eval {history['eval_loss'][-1]:.3f}" if history["eval_loss"]
                                                    else "") + f"; {tokens / max(seconds, 1e-9):,.0f} tokens/s")
        if args.history:
            with open(args.history, "w") as f:
                json.dump({"world_size": trainer.world.size, "strategy": args.strategy, **history}, f)
    if trainer.strategy is not None:
        torch.distributed.destroy_process_group()
    return history


if __name__ == "__main__":
    main()
