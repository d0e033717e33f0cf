"""Attention cost against sequence length: the explicit path (stores the T x T weights) vs PyTorch's fused kernel.

    python bench/bench_attention.py                 # the best device here, default lengths
    python bench/bench_attention.py --device cpu --lengths 256 512 1024 2048

Both paths are plmkit.nn.scaled_dot_product_attention: with return_weights=True
it computes softmax(q k^T / sqrt(D)) v step by step and keeps the weights; without,
it calls torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient
kernels on a GPU). Prints, per length, milliseconds per call for each path measured
side by side, the ratio explicit / fused, and on CUDA the peak memory of each.
Nothing is asserted: the numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import time

import torch

from plmkit.device import get_device
from plmkit.nn import scaled_dot_product_attention


def explicit(q, k, v):
    return scaled_dot_product_attention(q, k, v, return_weights=True)[0]


def fused(q, k, v):
    return scaled_dot_product_attention(q, k, v)


def measure(fn, q, k, v, repeats):
    dev = q.device
    fn(q, k, v)                                          # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(q, k, v)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = 1e3 * (time.perf_counter() - start) / repeats
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else float("nan")
    return ms, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dev = get_device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    lengths = args.lengths or ([512, 1024, 2048, 4096, 8192, 16384] if dev.type == "cuda" else [128, 256, 512, 1024, 2048])
    print(f"device {dev}, dtype {dtype}, B={args.batch} H={args.heads} D={args.head_dim}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'T':>6} {'explicit ms':>12} {'fused ms':>10} {'explicit/fused':>15} {'explicit MiB':>13} {'fused MiB':>10}")
    for T in lengths:
        q, k, v = (torch.randn(args.batch, args.heads, T, args.head_dim, device=dev, dtype=dtype) for _ in range(3))
        t_e, m_e = measure(explicit, q, k, v, args.repeats)
        t_f, m_f = measure(fused, q, k, v, args.repeats)
        mem = f"{m_e:>13.1f} {m_f:>10.1f}" if dev.type == "cuda" else f"{'n/a':>13} {'n/a':>10}"
        print(f"{T:>6} {t_e:>12.2f} {t_f:>10.2f} {t_e / t_f:>14.2f}x {mem}")


if __name__ == "__main__":
    main()
