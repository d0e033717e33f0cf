"""The chapter-6 scaling grid: tiny LLaMAs on Shakespeare, a Chinchilla fit, and one predicted run.

Trains every (width, token budget, seed) of a grid on the character-level
Shakespeare corpus (Hamlet held out, no training token read twice), fits
L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3), then
trains one model at `--predict-factor` times the grid's largest compute with
the size the fit calls optimal, and compares predicted and measured loss.
The result is one labelled JSON file that ``solutions/06_llama.ipynb`` loads:

    python experiments/scaling_grid.py --out experiments/results/scaling_grid.json            # the full grid
    python experiments/scaling_grid.py --smoke --out /tmp/smoke.json                          # seconds, for CI

Labels: the command line, UTC date, device, torch version, git commit, seeds and every setting.
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
from plmkit.scaling import run_grid  # noqa: E402

FULL = dict(widths=[16, 32, 48, 64, 96, 128, 160], budgets=[131_072, 262_144, 524_288, 1_048_576], seeds=[0, 1])
SMOKE = dict(widths=[16, 32, 48], budgets=[2048, 4096], seeds=[0])


def load_data(text_path: str | None):
    """(train ids, held-out ids, vocabulary size): characters of Shakespeare, Hamlet held out."""
    from plmkit.tokenize import CharTokenizer

    if text_path:
        text = Path(text_path).read_text(encoding="utf-8")
        cut = int(len(text) * 0.95)
        train_text, held_out = text[:cut], text[cut:]
    else:
        from plmkit.data import load_works

        works = load_works("shakespeare")
        held_out = works["Hamlet"]
        train_text = "\n\n".join(t for title, t in works.items() if title != "Hamlet")
    tok = CharTokenizer.train(train_text + held_out)
    return torch.tensor(tok.encode(train_text)), torch.tensor(tok.encode(held_out)), tok.vocab_size


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where to write the JSON")
    p.add_argument("--smoke", action="store_true", help="a grid of seconds (CI), not the full one")
    p.add_argument("--widths", type=int, nargs="+")
    p.add_argument("--budgets", type=int, nargs="+", help="training tokens per run")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--predict-factor", type=float, default=4.0)
    p.add_argument("--text", help="a plain-text corpus instead of plmkit's Shakespeare (last 5%% held out)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    args = p.parse_args(argv)
    grid = dict(SMOKE if args.smoke else FULL)
    for key in ("widths", "budgets", "seeds"):
        if getattr(args, key):
            grid[key] = getattr(args, key)
    torch.set_num_threads(1) if (args.device or "cpu") == "cpu" and not torch.cuda.is_available() else None
    train_ids, val_ids, vocab = load_data(args.text)
    start = time.perf_counter()
    result = run_grid(train_ids, val_ids, vocab, n_layers=args.layers, predict_factor=args.predict_factor,
                      batch_size=args.batch, block_size=args.block, lr=args.lr, device=args.device,
                      eval_tokens=20_000, **grid)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    label = dict(experiment.label("experiments/scaling_grid.py", argv or sys.argv[1:], device, grid["seeds"]),
                 settings=dict(widths=grid["widths"], budgets=grid["budgets"], n_layers=args.layers,
                               batch_size=args.batch, block_size=args.block, lr=args.lr,
                               predict_factor=args.predict_factor, vocab_size=vocab,
                               corpus=args.text or "plmkit shakespeare, Hamlet held out", tokenizer="characters"),
                 wall_seconds=round(time.perf_counter() - start, 1))
    out = dict(label=label, **result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({label['wall_seconds']} s)")
    return out


if __name__ == "__main__":
    main()
