"""Batch-1 decode speed against the memory-bandwidth floor (chapter 9).

    OMP_NUM_THREADS=1 python bench/bench_decode.py                     # CPU: a reduced Llama, fp32
    python bench/bench_decode.py --device cuda                           # GPU: ~125M and 1.1B (TinyLlama shape), bf16

For each model (random weights, Llama-shaped) it times greedy decoding of the same
prompt five ways, side by side in one process:

    hf        Hugging Face ``LlamaForCausalLM.generate`` (transformers as pinned), same weights
    uncached  plmkit.generate, use_cache=False: the whole prefix recomputed every step
    dynamic   plmkit.generate with growing KV caches
    static    plmkit.generate with pre-allocated static caches
    fast      plmkit.inference.FastDecoder: static caches, fused q/k/v and, on CUDA only,
              the decode step compiled with CUDA graphs (torch.compile mode="reduce-overhead")

and prints tokens/s, the ratio to HF, and the fraction of the **bandwidth floor**: at
batch 1 every generated token reads all weights and the whole KV cache once, so no
implementation can beat

    floor tok/s = copy bandwidth / (weight bytes + KV-cache bytes read per token)

(weight bytes: every matrix, the LM head included, but not the embedding table, of
which a step reads one row)
where the copy bandwidth (bytes read + written per second by a large device-to-device
copy) is measured in the same run and the cache bytes are averaged over the generated
positions. Every plmkit mode must give the same tokens as the uncached loop on CPU
(fp32; asserted); on GPU in bf16 the agreement with it is printed instead (rounding can
flip a near-tie of random weights).
"""
from __future__ import annotations

import argparse
import time

import torch
import transformers

from plmkit.generate import generate
from plmkit.inference import FastDecoder
from plmkit.models import hub
from plmkit.models.llama import Llama, LlamaConfig, _keymap

SHAPES = {   # name: (hidden, layers, heads, kv heads, intermediate, vocab)
    "cpu-small": (256, 4, 8, 2, 688, 4096),
    "125M": (768, 12, 12, 12, 2048, 32000),
    "1.1B (TinyLlama)": (2048, 22, 32, 4, 5632, 32000),
}


def config(name: str, max_positions: int) -> LlamaConfig:
    C, L, H, H_kv, F, V = SHAPES[name]
    return LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                       num_key_value_heads=H_kv, max_position_embeddings=max_positions)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, n_bytes: int) -> float:
    """Bytes read + written per second by a large device-to-device copy (best of 5)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def timed(fn, device, repeats):
    fn()                                                       # warm-up (and compilation)
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return out, best


def bench_model(name, args, device, dtype, bandwidth):
    n_new, T = args.new_tokens, args.prompt
    cfg = config(name, T + n_new)
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("architectures", "model_type", "torch_dtype")})
    hf = transformers.LlamaForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()
    ours = Llama(cfg)
    hub.load_hf_state(ours, {k: v.float().cpu() for k, v in hf.state_dict().items()}, _keymap(cfg))
    ours = ours.to(device=device, dtype=dtype).eval()
    prompt = torch.randint(3, cfg.vocab_size, (1, T), device=device)
    fast_model = Llama(cfg).to(device=device, dtype=dtype).eval()
    fast_model.load_state_dict(ours.state_dict())
    fast = FastDecoder(fast_model, batch_size=1, max_length=T + n_new,
                       compile="auto" if not args.no_compile else False)

    def run_hf():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                               min_new_tokens=n_new, do_sample=False, pad_token_id=0, eos_token_id=None)

    modes = {"hf": run_hf,
             "uncached": lambda: generate(ours, prompt, n_new, temperature=0, use_cache=False),
             "dynamic": lambda: generate(ours, prompt, n_new, temperature=0),
             "static": lambda: generate(ours, prompt, n_new, temperature=0, static_cache=True),
             "fast": lambda: generate(fast, prompt, n_new, temperature=0)}
    skip = set(args.skip)
    results = {m: timed(fn, device, args.repeats) for m, fn in modes.items() if m not in skip}
    ref = results.get("uncached", results.get("dynamic"))[0]
    agree = {m: float((out[0, T:] == ref[0, T:]).float().mean()) for m, (out, _) in results.items()}
    if device.type == "cpu" and dtype == torch.float32:
        for m in results:
            if m != "hf":
                assert agree[m] == 1.0, f"{m} gave different tokens from the reference loop"

    bytes_per_value = torch.finfo(dtype).bits // 8
    # every weight matrix is read once per token; of the embedding table only one row
    weights = (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size) * bytes_per_value
    kv_read = cfg.kv_cache_bytes_per_token(bytes_per_value) * (T + n_new / 2)     # mean context while decoding
    floor = bandwidth / (weights + kv_read)
    print(f"\n{name}: {cfg.num_parameters() / 1e6:.0f}M parameters, {dtype}, prompt {T}, {n_new} new tokens, "
          f"weights {weights / 1e6:.0f} MB + KV {kv_read / 1e6:.1f} MB read per token -> "
          f"floor {floor:.0f} tok/s" + (" (fast: compiled, CUDA graphs)" if fast.compiled else " (fast: eager)"))
    print(f"{'mode':>10}{'tok/s':>10}{'x HF':>8}{'x uncached':>12}{'% of floor':>12}{'same tokens':>13}")
    tps = {m: n_new / secs for m, (_, secs) in results.items()}
    for m in results:
        x_hf = f"{tps[m] / tps['hf']:.2f}" if "hf" in tps else "-"
        x_un = f"{tps[m] / tps['uncached']:.2f}" if "uncached" in tps else "-"
        print(f"{m:>10}{tps[m]:>10.1f}{x_hf:>8}{x_un:>12}{100 * tps[m] / floor:>11.1f}%{agree[m]:>12.0%}")
    return tps, floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=None, choices=list(SHAPES),
                    help="default: cpu-small on CPU; 125M and 1.1B (TinyLlama) on GPU")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=None, help="default 64 on CPU, 256 on GPU")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    ap.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--skip", nargs="*", default=[], help="modes to leave out (e.g. uncached)")
    ap.add_argument("--no-compile", action="store_true", help="run the fast path eagerly on GPU too")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.models = args.models or (["125M", "1.1B (TinyLlama)"] if gpu else ["cpu-small"])
    args.new_tokens = args.new_tokens or (256 if gpu else 64)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    bandwidth = copy_bandwidth(device, (1 << 30) if gpu else (256 << 20))
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"device-to-device copy {bandwidth / 1e9:.1f} GB/s (read + write)")
    for model_name in args.models:
        bench_model(model_name, args, device, dtype, bandwidth)


if __name__ == "__main__":
    main()
