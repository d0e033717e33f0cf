"""SmolLM2-135M-Instruct, a real pretrained LLM, served by plmkit and by Hugging Face from the same GGUF file.

    python bench/bench_real_model.py                          # CPU, fp32: ~2 min on 2 cores
    python bench/bench_real_model.py --device cuda --json bench/real_model_gpu.json

One process, side by side:

1. **Load time**: ``plmkit.models.smollm2.load()`` (model + tokenizer + chat template from the file,
   dequantized by `gguf`) against transformers' own GGUF loaders,
   ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` and ``AutoTokenizer.from_pretrained(...)``.
   Peak resident memory of the process is printed after each.
2. **Prefill** tok/s: one forward pass over a `--prompt`-token prompt (plmkit, HF).
3. **Decode** tok/s at batch 1, greedy, for plmkit with growing caches (dynamic), pre-allocated caches
   (static), chapter 9's :class:`plmkit.inference.FastDecoder` (static caches, fused q/k/v; compiled with
   CUDA graphs on a GPU), and HF ``generate``. Decode speed = (n - 1) / (time for n tokens - time for 1
   token), so the prefill is not counted; the modes take turns for `--repeats` rounds, each keeping its
   best time. Every mode must give the same tokens (asserted on CPU in fp32;
   on a GPU in bf16 the agreement with HF is printed: rounding can flip a near-tie).
4. **The floor**: at batch 1 each new token reads every weight once (the tied head reads the whole
   embedding table) plus the KV cache, so no implementation beats copy bandwidth / bytes per token. The
   copy bandwidth (reads + writes of a large device-to-device copy) is measured in the same run
   (``bench_decode.copy_bandwidth``). Our weights are dequantized (4 bytes each in fp32); the file's
   4-bit blocks would need ~0.6 bytes per weight, a floor also printed (what llama.cpp's kernels could reach).

``--json FILE`` writes the figures with plmkit.experiment's label (command, date, device, commit).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import copy_bandwidth, sync, timed  # noqa: E402  (the same helpers as the decode bench)

from plmkit.experiment import label  # noqa: E402
from plmkit.generate import generate  # noqa: E402
from plmkit.inference import FastDecoder  # noqa: E402
from plmkit.models import smollm2  # noqa: E402

PROMPT_TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
               "combined movable metal type, oil-based ink and a wooden press adapted from those used for wine. ")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # Linux: KiB


seconds = timed   # (result, best wall time of `repeats` runs after one warm-up): the decode bench's timer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 32 on CPU, 128 on GPU")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many rounds (after a warm-up)")
    ap.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    n_new = args.new_tokens or (128 if gpu else 32)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    from transformers import AutoModelForCausalLM, AutoTokenizer, __version__ as hf_version

    path = smollm2.gguf_path()
    folder, name = os.path.split(path)
    print(f"{label('bench/bench_real_model.py', sys.argv[1:], device, [])['device']}; torch {torch.__version__}, "
          f"transformers {hf_version}; {dtype}")

    # -- 1. load ----------------------------------------------------------------------------
    rss_start = peak_rss_mb()                                # torch and transformers imported
    t = time.perf_counter()
    smol = smollm2.load(map_location=device, dtype=dtype)
    load_ours = time.perf_counter() - t
    rss_ours = peak_rss_mb()                                 # high-water mark of the process so far
    t = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype).to(device).eval()
    load_hf = time.perf_counter() - t
    t = time.perf_counter()
    hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    load_hf_tok = time.perf_counter() - t
    rss_both = peak_rss_mb()
    cfg = smol.model.config
    weight_mb = sum(p.numel() * p.element_size() for p in smol.model.parameters()) / 1e6
    print(f"\npeak RSS before loading {rss_start:.0f} MB")
    print(f"load   plmkit (model + tokenizer + template) {load_ours:6.1f} s   peak RSS {rss_ours:6.0f} MB "
          f"({weight_mb:.0f} MB of {dtype} weights)")
    print(f"       HF model {load_hf:6.1f} s + HF tokenizer {load_hf_tok:5.1f} s = {load_hf + load_hf_tok:6.1f} s   "
          f"peak RSS with both models {rss_both:6.0f} MB;  plmkit {(load_hf + load_hf_tok) / load_ours:.1f}x faster")

    bandwidth = copy_bandwidth(device, (1 << 30) if gpu else (256 << 20))     # after the memory readings
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")

    # -- 2. prefill ---------------------------------------------------------------------------
    ids = smol.tokenizer.encode(PROMPT_TEXT * (args.prompt // 30 + 2))[:args.prompt]
    assert ids == hf_tok.encode(PROMPT_TEXT * (args.prompt // 30 + 2), add_special_tokens=False)[:args.prompt]
    prompt = torch.tensor([ids], device=device)
    T = prompt.shape[1]
    with torch.no_grad():
        _, pre_ours = seconds(lambda: smol.model(prompt), device, args.repeats)
        _, pre_hf = seconds(lambda: hf(prompt).logits, device, args.repeats)
    print(f"\nprefill {T} tokens: plmkit {T / pre_ours:8.0f} tok/s, HF {T / pre_hf:8.0f} tok/s "
          f"({pre_hf / pre_ours:.2f}x)")

    # -- 3. decode ----------------------------------------------------------------------------
    fast_model = copy.deepcopy(smol.model)
    fast = FastDecoder(fast_model, batch_size=1, max_length=T + n_new)

    def hf_generate(n):
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, eos_token_id=None, pad_token_id=2)

    modes = {"dynamic": lambda n: generate(smol.model, prompt, n, temperature=0),
             "static": lambda n: generate(smol.model, prompt, n, temperature=0, static_cache=True),
             "fast": lambda n: generate(fast, prompt, n, temperature=0),
             "hf": hf_generate}
    # modes take turns, round after round, each keeping its best time: a busy machine slows all alike
    for fn in modes.values():
        fn(2)                                                # warm-up (and compilation on a GPU)
    best = {m: [float("inf"), float("inf")] for m in modes}
    tokens = {}
    for _ in range(args.repeats):
        for mode, fn in modes.items():
            for k, n in enumerate((n_new, 1)):
                sync(device)
                t = time.perf_counter()
                out = fn(n)
                sync(device)
                best[mode][k] = min(best[mode][k], time.perf_counter() - t)
                if n == n_new:
                    tokens[mode] = out[0, T:].tolist()
    results = {m: (tokens[m], (n_new - 1) / max(t_n - t_1, 1e-9)) for m, (t_n, t_1) in best.items()}
    ref = results["hf"][0]
    agree = {m: sum(a == b for a, b in zip(toks, ref)) / n_new for m, (toks, _) in results.items()}
    if not gpu and dtype == torch.float32:
        for m in results:
            assert agree[m] == 1.0, f"{m} gave different tokens from HF generate"

    bpv = torch.finfo(dtype).bits // 8
    weights = cfg.num_parameters() * bpv                     # tied head: the whole table is read every token
    kv = cfg.kv_cache_bytes_per_token(bpv) * (T + n_new / 2)
    floor = bandwidth / (weights + kv)
    import gguf

    tensors = gguf.GGUFReader(path).tensors                  # the file's quantized bytes (the head = token_embd)
    q_bytes = sum(int(t.n_bytes) for t in tensors)
    floor_q = bandwidth / (q_bytes + kv)
    print(f"\ndecode {n_new} tokens after a {T}-token prompt, batch 1, greedy. Floor: {weights / 1e6:.0f} MB of "
          f"weights + {kv / 1e6:.1f} MB KV per token -> {floor:.0f} tok/s "
          f"(the file's 4-bit blocks, {q_bytes / 1e6:.0f} MB: {floor_q:.0f} tok/s)")
    print(f"{'mode':>10}{'tok/s':>10}{'x HF':>8}{'% of floor':>12}{'same tokens as HF':>19}")
    for m, (_, tps) in results.items():
        print(f"{m:>10}{tps:>10.1f}{tps / results['hf'][1]:>8.2f}{100 * tps / floor:>11.1f}%{agree[m]:>18.0%}")
    print("\nfast:", "compiled with CUDA graphs" if fast.compiled else "eager (static caches + fused q/k/v)")
    print("text:", repr(smol.tokenizer.decode(results["fast"][0])))

    if args.json:
        figures = {**label("bench/bench_real_model.py", sys.argv[1:], device, []),
                   "dtype": str(dtype), "prompt_tokens": T, "new_tokens": n_new,
                   "load_s": {"plmkit": load_ours, "hf_model": load_hf, "hf_tokenizer": load_hf_tok},
                   "peak_rss_mb": {"before": rss_start, "after_plmkit": rss_ours, "after_both": rss_both},
                   "prefill_tok_s": {"plmkit": T / pre_ours, "hf": T / pre_hf},
                   "decode_tok_s": {m: tps for m, (_, tps) in results.items()},
                   "same_tokens_as_hf": agree, "copy_bandwidth_gb_s": bandwidth / 1e9,
                   "floor_tok_s": floor, "floor_q4_tok_s": floor_q, "fast_compiled": fast.compiled}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
