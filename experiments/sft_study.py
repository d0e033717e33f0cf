"""Chapter 7's sweeps on the biography models: knowledge injected in pretraining vs unlocked by SFT.

Parts (each a list of `plmkit.align.study.sft_run` results):
    headline  base = bios-llama (5 phrasings, shuffled) and bios-llama-v1 (1 phrasing), seeds 0..2
    loss      loss on every token instead of the responses only (bios-llama), seeds 0, 1
    lora      LoRA ranks 1 and 8 on q_proj and v_proj (bios-llama), seed 0 (full fine-tuning: headline)
    examples  SFT on 50 and 150 people (bios-llama), seed 0 (500 people: headline)
Every run is scored on the 5 questions about each of 100 people SFT saw and 100 it did not.

Writes one labelled JSON (command, date, device, seeds, git commit, settings, results) that
solutions/07_sft.ipynb loads and plots.

    OMP_NUM_THREADS=1 python experiments/sft_study.py --parts headline --out experiments/sft_headline.json
        (or one base at a time: --bases bios-llama, then --bases bios-llama-v1, into the same file)
    OMP_NUM_THREADS=1 python experiments/sft_study.py --parts lora examples loss --out experiments/sft_study.json
    python experiments/sft_study.py --smoke --out /tmp/smoke.json                            # CI: seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plmkit import experiment  # noqa: E402
from plmkit.align.study import sft_run  # noqa: E402

CK = ROOT / "checkpoints"
FULL = dict(seeds=[0, 1, 2], ranks=[1, 8], sizes=[50, 150], n_eval=100, epochs=4.0)
SMOKE = dict(seeds=[0], ranks=[2], sizes=[10], n_eval=4, epochs=0.05)


def run_part(part: str, s: dict, base: str, bases: list[str]) -> list[dict]:
    kw = dict(n_eval=s["n_eval"], epochs=s["epochs"])
    if part == "headline":
        return [sft_run(str(CK / b), seed=seed, **kw) for b in bases for seed in s["seeds"]]
    if part == "loss":
        return [sft_run(str(CK / base), seed=seed, response_only=False, base_metrics=False, **kw)
                for seed in s["seeds"][:2]]
    if part == "lora":
        return [sft_run(str(CK / base), seed=0, lora_rank=r, base_metrics=False, **kw) for r in s["ranks"]]
    if part == "examples":
        return [sft_run(str(CK / base), seed=0, n_people=n, base_metrics=False, **kw) for n in s["sizes"]]
    raise ValueError(part)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run of every part (CI)")
    ap.add_argument("--parts", nargs="+", default=["headline", "loss", "lora", "examples"])
    ap.add_argument("--base", default="bios-llama", help="checkpoint name under checkpoints/")
    ap.add_argument("--bases", nargs="+", default=["bios-llama", "bios-llama-v1"],
                    help="the pretrained models of the headline part (rows of other bases already in --out are kept)")
    args = ap.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    base = "bios-llama-draft" if args.smoke else args.base
    torch.set_num_threads(1)
    record = {**experiment.label("experiments/sft_study.py", argv if argv is not None else sys.argv[1:], "cpu",
                                 s["seeds"]), "settings": s, "base": base, "results": {}}
    if os.path.exists(args.out) and not args.smoke:
        record["results"] = json.load(open(args.out)).get("results", {})     # keep parts run earlier
    for part in args.parts:
        start = time.time()
        bases = [base] if args.smoke else args.bases
        rows = run_part(part, s, base, bases)
        if part == "headline":                     # keep the other bases' rows from an earlier invocation
            rows = [r for r in record["results"].get(part, []) if r["base"] not in bases] + rows
        record["results"][part] = rows
        print(f"{part}: {time.time() - start:.0f} s", flush=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    return record


if __name__ == "__main__":
    main()
