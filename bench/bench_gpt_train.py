"""Time to a validation loss: nanoGPT's "baby GPT" on Tiny Shakespeare, trained with plmkit.

    python bench/bench_gpt_train.py --text ../shared/data/tinyshakespeare.txt          # GPU: to val loss <= 1.47
    python bench/bench_gpt_train.py --text ../shared/data/tinyshakespeare.txt --cpu    # reduced, a few steps

The task is nanoGPT's `config/train_shakespeare_char.py`: characters as tokens,
the first 90% of the text for training and the last 10% for validation, a GPT
with 6 layers, 6 heads, width 384, context 256, batch 64, dropout 0.2, AdamW
(lr 1e-3, betas 0.9/0.99, weight decay 0.1, clip 1.0, 100 warm-up steps).
Reference on one H100 (nanoGPT, torch.compile): 28.5 s of compilation, then
~12.6 ms per step, validation loss 1.4708 at step 1500: about 60-70 s of wall
clock to reach 1.47.

On a GPU the script trains until the validation loss is <= --target and prints
the wall-clock seconds from the start of model construction to that evaluation
(compilation, warm-up and all evaluations included), the steps taken, tokens/s
(overall and in steady state) and the model FLOPs utilisation (MFU, nanoGPT's
6N + 12 L C T FLOPs per token over the GPU's dense bf16 peak). What plmkit does
differently from nanoGPT, all of it visible below:

- bf16 autocast, fused AdamW, PyTorch's fused scaled-dot-product attention
  (flash attention on an H100): the Trainer and plmkit.nn do this on any GPU;
- regional compilation (--compile blocks, the default): torch.compile each
  Transformer block instead of the whole model; the six blocks share one
  compiled graph, which cuts compile time;
- a cosine schedule that ends at --max-steps (default 2000) instead of 5000,
  so the learning rate anneals while the loss is still falling;
- evaluation on the fixed set of non-overlapping validation windows (384 of
  256 tokens, 88% of the validation text) every --eval-every steps, instead of
  200 random batches of each split every 250 steps: the same quantity,
  estimated with less work, and checked more often;
- the whole token stream lives on the GPU, so batches never cross the bus.

On a CPU (or with --cpu) the script runs a reduced configuration (2 layers,
width 128, context 64, batch 16) for --steps optimizer steps, eager unless
--compile is given, evaluates on 8 validation batches, and prints tokens/s;
it makes no claim about the target.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from plmkit.device import describe, get_device
from plmkit.models import GPT, GPTConfig
from plmkit.train import Trainer

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def load_chars(path: str, device: torch.device):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    return ids[:n].to(device), ids[n:].to(device), len(chars)


def val_batches(val: torch.Tensor, block: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows of the validation stream, in full batches only."""
    n_windows = (len(val) - 1) // block
    n_windows -= n_windows % batch
    starts = torch.arange(n_windows, device=val.device) * block
    offsets = torch.arange(block + 1, device=val.device)
    windows = val[starts[:, None] + offsets]                        # (N, T+1)
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch)]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="path of the text (Tiny Shakespeare)")
    ap.add_argument("--cpu", action="store_true", help="force the reduced CPU run")
    ap.add_argument("--target", type=float, default=1.47, help="validation loss to reach (GPU run)")
    ap.add_argument("--max-steps", type=int, default=2000, help="length of the cosine schedule (GPU run)")
    ap.add_argument("--eval-every", type=int, default=50, help="steps between evaluations (GPU run)")
    ap.add_argument("--compile", choices=["blocks", "model", "none"], default=None,
                    help="regional compilation (each block; the GPU default), the whole model, "
                         "or eager (the CPU default)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of the reduced CPU run")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    if not os.path.isfile(args.text):
        ap.error(f"--text {args.text!r} is not a file")

    device = torch.device("cpu") if args.cpu else get_device()
    gpu = device.type == "cuda"
    torch.manual_seed(args.seed)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train, val, vocab = load_chars(args.text, device)
    if gpu:
        cfg = GPTConfig(vocab_size=vocab, n_positions=256, n_embd=384, n_layer=6, n_head=6, dropout=0.2)
        batch, max_steps, eval_every = 64, args.max_steps, args.eval_every
    else:
        cfg = GPTConfig(vocab_size=vocab, n_positions=64, n_embd=128, n_layer=2, n_head=4, dropout=0.2)
        batch, max_steps, eval_every = 16, args.steps, max(1, args.steps // 3)
    block = cfg.n_positions
    offsets = torch.arange(block + 1, device=device)

    def get_batch():
        starts = torch.randint(len(train) - block, (batch,), device=device)
        w = train[starts[:, None] + offsets]                          # (B, T+1)
        return w[:, :-1], w[:, 1:]

    if args.compile is None:
        args.compile = "blocks" if gpu else "none"
    evals = val_batches(val, block, batch)
    if not gpu:
        evals = evals[:8]                                               # a quick look, not the full split
    print(f"device   {describe() if gpu else 'cpu: ' + str(torch.get_num_threads()) + ' threads'}")
    print(f"model    {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context {block}, batch {batch}, "
          f"vocab {vocab}, dropout {cfg.dropout}")

    t_start = time.perf_counter()                                       # the clock starts here
    model = GPT(cfg).to(device)
    if args.compile == "blocks":
        for b in model.blocks:
            b.compile()
    trainer = Trainer(model, get_batch, eval_data=evals, max_steps=max_steps, lr=1e-3, betas=(0.9, 0.99),
                      weight_decay=0.1, warmup_steps=min(100, max_steps // 10), min_lr_ratio=0.1, grad_clip=1.0,
                      device=device, compile=args.compile == "model", progress=False)
    n_params = model.num_parameters() - model.wpe.weight.numel()
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * block
    tokens_per_step = batch * block
    print(f"params   {model.num_parameters() / 1e6:.2f} M; precision {trainer.amp_dtype or torch.float32}; "
          f"compile {args.compile}")

    steady_time, steady_steps, first_chunk, chunk_first_step = 0.0, 0, True, 0
    chunk_start = time.perf_counter()
    val_loss, reached = math.nan, False
    while trainer.step < max_steps:
        trainer.train_step()
        if trainer.step % eval_every == 0 or trainer.step == max_steps:
            sync(device)
            now = time.perf_counter()
            if not first_chunk:                                         # the first chunk holds compilation
                steady_time += now - chunk_start
                steady_steps += trainer.step - chunk_first_step
            first_chunk = False
            val_loss = trainer.evaluate()
            elapsed = time.perf_counter() - t_start
            print(f"step {trainer.step:5d}  val loss {val_loss:.4f}  {elapsed:7.1f} s", flush=True)
            chunk_start, chunk_first_step = time.perf_counter(), trainer.step
            if gpu and val_loss <= args.target:
                reached = True
                break
    sync(device)
    wall = time.perf_counter() - t_start

    tokens = trainer.step * tokens_per_step
    print()
    if gpu:
        verdict = f"reached val loss {val_loss:.4f} <= {args.target}" if reached else \
            f"did NOT reach {args.target} (last val loss {val_loss:.4f})"
        print(f"result   {verdict}")
        print(f"time     {wall:.1f} s wall clock to that evaluation (model build, compile, warm-up, evals included)")
    else:
        print(f"result   reduced CPU run, {trainer.step} steps, val loss {val_loss:.4f} (no target on CPU)")
        print(f"time     {wall:.1f} s wall clock")
    print(f"steps    {trainer.step}")
    print(f"tokens/s {tokens / wall:,.0f} overall", end="")
    if steady_steps:
        steady = steady_steps * tokens_per_step / steady_time
        print(f"; {steady:,.0f} in steady state ({1000 * steady_time / steady_steps:.1f} ms/step)")
        peak = peak_flops(device)
        mfu = f"{100 * steady * flops_per_token / peak:.1f}%" if peak else "n/a (unknown peak for this device)"
        print(f"MFU      {mfu}  ({flops_per_token / 1e6:.1f} MFLOP per token)")
    else:
        print()
    return 0 if (reached or not gpu) else 1


if __name__ == "__main__":
    sys.exit(main())
