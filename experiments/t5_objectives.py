"""Chapter 5's objective study: which pre-training objective helps a small model most on text-to-text tasks?

For each objective (T5 span corruption, BART text infilling, prefix LM on an
encoder-decoder; plain CLM on a decoder-only model of the same per-token cost)
and each seed: pre-train at equal training FLOPs, fine-tune on three prefixed
tasks (reverse, sort, fill), and record held-out loss and exact match. Writes
one labelled JSON (command, date, device, seeds, git commit, settings,
results) that the notebook loads and plots.

    python experiments/t5_objectives.py --out experiments/t5_objectives.json            # the full study
    python experiments/t5_objectives.py --smoke --out /tmp/smoke.json                   # CI: seconds
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plmkit import experiment  # noqa: E402
from plmkit.text2text import OBJECTIVES, run_objective, word_list  # noqa: E402

# Sized for a 2-core CPU (about 5 minutes on one thread); on a GPU raise d_model and the steps.
FULL = dict(seeds=[0, 1, 2], d_model=64, n_layers=2, pretrain_steps=400, finetune_steps=400, batch_size=32,
            n_eval=150)
SMOKE = dict(seeds=[0], d_model=16, n_layers=1, pretrain_steps=3, finetune_steps=2, batch_size=4, n_eval=6)


def summarise(results: list[dict]) -> dict:
    """Mean and spread (min, max) over seeds of held-out loss and exact match, per objective."""
    out = {}
    for obj in OBJECTIVES:
        rows = [r for r in results if r["objective"] == obj]
        if not rows:
            continue
        def stats(key):
            vals = [r[key] for r in rows]
            return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
        out[obj] = {"model": rows[0]["model"], "parameters": rows[0]["parameters"],
                    "pretrain_flops": rows[0]["pretrain_flops"], "eval_loss": stats("eval_loss"),
                    "exact_match": stats("exact_match_mean"),
                    "exact_match_per_task": {t: sum(r["exact_match"][t] for r in rows) / len(rows)
                                             for t in rows[0]["exact_match"]}}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "t5_objectives.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one seed: checks the pipeline in seconds")
    ap.add_argument("--seeds", type=int, nargs="*", help="override the seeds")
    ap.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=OBJECTIVES)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--words", help="a file of corpus words, one per line (default: plmkit's pydoc corpus of this "
                                    "Python, which differs between Python versions)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine the results of several runs into --out")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    settings = dict(SMOKE if args.smoke else FULL)
    if args.seeds:
        settings["seeds"] = args.seeds
    words = Path(args.words).read_text().split() if args.words else word_list()
    results = []
    for seed in settings["seeds"]:
        for obj in args.objectives:
            results.append(run_objective(obj, seed, words=words, device=args.device,
                                         **{k: v for k, v in settings.items() if k != "seeds"}))
    record = {
        "what": "chapter 5 objective study: pre-train at equal FLOPs, fine-tune on reverse/sort/fill, held-out metrics",
        **experiment.label("experiments/t5_objectives.py", argv if argv is not None else sys.argv[1:],
                           args.device, settings["seeds"]),
        "settings": settings, "smoke": args.smoke,
        "summary": summarise(results), "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return record


def merge(files: list[str], out: str) -> dict:
    """One record from several runs of this script (e.g. one per seed, run in parallel)."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    results = [r for p in parts for r in p["results"]]
    record = {k: parts[0][k] for k in ("what", "device", "git_commit", "torch", "settings", "smoke")}
    record.update(command=" && ".join(p["command"] for p in parts), date=max(p["date"] for p in parts),
                  seeds=sorted({s for p in parts for s in p["seeds"]}), summary=summarise(results), results=results)
    Path(out).write_text(json.dumps(record, indent=1))
    print(f"wrote {out}: {len(results)} runs")
    return record


if __name__ == "__main__":
    main()
