"""Decoding speed: a KV cache (one new token per step) vs recomputing the whole prefix every step.

    OMP_NUM_THREADS=1 python bench/bench_generate.py                    # CPU, tiny GPT, 128 and 512 new tokens
    python bench/bench_generate.py --device cuda --new-tokens 128 512 2048 --static

Both runs are plmkit.generate.generate with greedy decoding on the same model and
prompt: ``use_cache=False`` is chapter 4's loop (step t runs the model over all
T + t tokens), ``use_cache=True`` keeps every block's keys and values and feeds only
the new token. With ``--static`` a third run uses pre-allocated static caches.
Prints tokens/s of each, measured side by side in one process, and the ratio
cached / recompute; asserts that every mode produced the same tokens.
"""
from __future__ import annotations

import argparse
import time

import torch

from plmkit.device import get_device
from plmkit.generate import generate
from plmkit.models import GPT, GPTConfig


def timed(model, prompt, n_new, repeats, **kw):
    generate(model, prompt, 4, temperature=0, **kw)                   # warm-up
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(model, prompt, n_new, temperature=0, **kw)
        if prompt.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, n_new / best                                          # tokens, new tokens per second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--prompt", type=int, default=16, help="prompt length")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    ap.add_argument("--static", action="store_true", help="also time static (pre-allocated) caches")
    args = ap.parse_args()
    dev = get_device(args.device)
    torch.manual_seed(0)
    n_positions = args.prompt + max(args.new_tokens)
    cfg = GPTConfig(vocab_size=args.vocab, n_positions=n_positions, n_embd=args.n_embd, n_layer=args.n_layer,
                    n_head=args.n_head)
    model = GPT(cfg).to(dev).eval()
    with torch.no_grad():
        model.wte.weight.mul_(8)                  # peaked next-token distributions: no near-ties for greedy
    prompt = torch.randint(args.vocab, (args.batch, args.prompt), device=dev)
    modes = {"recompute": dict(use_cache=False), "cached": dict(use_cache=True)}
    if args.static:
        modes["static"] = dict(use_cache=True, static_cache=True)
    print(f"device {dev}, GPT n_embd={args.n_embd} n_layer={args.n_layer} n_head={args.n_head} "
          f"vocab={args.vocab} n_positions={n_positions}, batch {args.batch}, prompt {args.prompt}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    header = "".join(f"{name + ' tok/s':>17}" for name in modes)
    print(f"{'new tokens':>10}{header}{'cached/recompute':>18}" + (f"{'static/recompute':>18}" if args.static else ""))
    for n_new in args.new_tokens:
        results = {name: timed(model, prompt, n_new, args.repeats, **kw) for name, kw in modes.items()}
        ref = results["recompute"][0]
        for name, (out, _) in results.items():
            assert torch.equal(out, ref), f"{name} decoding gave different tokens from recompute"
        speed = {name: tps for name, (_, tps) in results.items()}
        line = f"{n_new:>10}" + "".join(f"{speed[name]:>17.1f}" for name in modes)
        line += f"{speed['cached'] / speed['recompute']:>17.1f}x"
        if args.static:
            line += f"{speed['static'] / speed['recompute']:>17.1f}x"
        print(line)
    print("identical tokens in every mode")


if __name__ == "__main__":
    main()
