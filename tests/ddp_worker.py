"""The runs tests/test_distributed.py compares: one process with global batch B against N under torchrun.

Every run builds its data the same way in every process (the data gives global
batches; the Trainer splits them), so ``run(name, None)`` in the test process is
the reference for ``run(name, "ddp")`` under ``torchrun --nproc_per_node 2``.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR ddp:pairs fsdp:pairs_accum ...

writes OUT_DIR/<strategy>_<name>.pt on rank 0 (rows runs: one file per rank).
"""
from __future__ import annotations

import os
import sys

import torch

if __name__ == "__main__":                                   # run as a script by torchrun: find plmkit
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plmkit import distributed                              # noqa: E402
from plmkit.align.sft import sft_loss_fn                     # noqa: E402
from plmkit.models import GPT, GPTConfig                     # noqa: E402
from plmkit.objectives.clm import random_windows             # noqa: E402
from plmkit.train import Trainer, lm_loss                    # noqa: E402

V, T = 23, 10


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2, dropout=0.0))


def pair_batches(n, B=4, seed=0):
    """(inputs, targets) with a different number of loss-carrying tokens in every row: a masked prompt of
    random length in front, -100 padding of random length behind (what SFT batches look like)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        w = torch.randint(V, (B, T + 1), generator=g)
        x, y = w[:, :-1].clone(), w[:, 1:].clone()
        for row in range(B):
            start = int(torch.randint(0, T // 2, (1,), generator=g))
            end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
            y[row, :start] = -100
            y[row, end:] = -100
        out.append((x, y))
    return out


def sft_batches(n, B=4, seed=1):
    """pad_batch-style dicts: labels -100 on the prompt and the padding, so rows carry 1..T-1 tokens."""
    return [{"input_ids": x, "labels": torch.cat([torch.full((B, 1), -100), y[:, :-1]], dim=1)}
            for x, y in pair_batches(n, B, seed)]


def full_state(model):
    """The whole (unsharded) state dict, on CPU, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.cpu() for k, v in state.items()}


def result(trainer):
    return {"loss": trainer.history["loss"], "eval_loss": trainer.history["eval_loss"],
            "tokens": trainer.history.get("tokens", []), "state": full_state(trainer.model),
            "local_numel": distributed.local_numel(trainer.model),
            "numel": sum(p.numel() for p in trainer.model.parameters())}


DEVICE = os.environ.get("PLMKIT_WORKER_DEVICE", "cpu")     # "cuda" for the GPU test (nccl)
COMMON = dict(lr=3e-3, grad_clip=0.5, warmup_steps=1, precision="fp32", device=DEVICE, progress=False, log_every=1)


def run(name, strategy, out=None):
    """One training run by name; returns what the test compares (rank 0's view)."""
    if name == "pairs":                                       # default loss, one batch per step
        t = Trainer(tiny_gpt(), pair_batches(6), max_steps=6, strategy=strategy, **COMMON)
    elif name == "pairs_accum":                               # + 2 micro-batches per step, + evaluation
        t = Trainer(tiny_gpt(), pair_batches(8), max_steps=4, grad_accum_steps=2, eval_data=pair_batches(2, seed=5),
                    eval_every=1, strategy=strategy, **COMMON)
    elif name == "sft_accum":                                 # a loss_fn that reports its token count
        t = Trainer(tiny_gpt(), sft_batches(6), max_steps=3, grad_accum_steps=2, loss_fn=sft_loss_fn,
                    strategy=strategy, **COMMON)
    elif name == "checkpoint":                                # random windows from the global RNG; save at step 4
        ids = torch.randint(V, (400,), generator=torch.Generator().manual_seed(3))
        torch.manual_seed(7)
        t = Trainer(tiny_gpt(), lambda: random_windows(ids, T, 4), max_steps=8, strategy=strategy, **COMMON)
        t.fit(steps=4)
        if out is not None:
            t.save_checkpoint(os.path.join(out, f"{strategy}_checkpoint_step4.pt"))
    else:
        raise ValueError(f"unknown run {name!r}")
    t.fit()
    return result(t)


def rows_seen(strategy, out):
    """Which rows each rank trains on, over one epoch of a fixed dataset and over 3 steps of random windows."""
    seen = {"fixed": [], "windows": []}
    key = "fixed"

    def recording_loss(model, batch):
        seen[key].append(batch[0].clone())
        return lm_loss(model, batch)

    data = pair_batches(3)                                   # one epoch = these 3 global batches
    Trainer(tiny_gpt(), data, max_steps=3, loss_fn=recording_loss, strategy=strategy, **COMMON).fit()
    key = "windows"
    ids = torch.arange(200) % V
    Trainer(tiny_gpt(), lambda: random_windows(ids, T, 4), max_steps=3, loss_fn=recording_loss,
            strategy=strategy, **COMMON).fit()
    return seen


def errors(strategy):
    """The message for a global batch that does not split over the ranks."""
    try:
        Trainer(tiny_gpt(), pair_batches(1, B=3), max_steps=1, strategy=strategy, **COMMON).fit()
    except ValueError as e:
        return str(e)
    return None


MAIN_ARGS = ["--corpus", "pydoc", "--max-chars", "20000", "--model", "llama", "--n-embd", "16", "--n-layer", "1",
             "--n-head", "2", "--block-size", "16", "--batch-size", "4", "--grad-accum", "2", "--steps", "3",
             "--log-every", "1", "--eval-every", "3", "--no-progress"]


if __name__ == "__main__":
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    for job in sys.argv[2:]:
        strategy, name = job.split(":")
        if name == "main":                                   # the command line; last: it ends the process group
            from plmkit.train import main

            main(MAIN_ARGS + ["--strategy", strategy, "--history", os.path.join(out, f"{strategy}_main.json")])
            sys.exit(0)
        if name == "rows":
            torch.save(rows_seen(strategy, out), os.path.join(out, f"{strategy}_rows_rank{rank}.pt"))
            continue
        value = errors(strategy) if name == "errors" else run(name, strategy, out)
        if rank == 0:
            torch.save(value, os.path.join(out, f"{strategy}_{name}.pt"))
    torch.distributed.destroy_process_group()
