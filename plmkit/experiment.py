"""Labels for the JSON files that experiments/ writes and the chapters load.

Every result file says how it was made, so that a figure in the book can be
traced and rerun: the command line, the UTC date, the device, the torch
version, the git commit and the seeds.

    >>> lab = label("experiments/demo.py", ["--smoke"], "cpu", seeds=[0, 1])
    >>> lab["command"], lab["seeds"], sorted(lab)
    ('python experiments/demo.py --smoke', [0, 1], ['command', 'date', 'device', 'git_commit', 'seeds', 'torch'])
"""
from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: str | os.PathLike = ROOT) -> str:
    """The checkout's HEAD commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str | torch.device | None = None) -> str:
    """"NVIDIA H100 80GB HBM3" on a GPU; on a CPU the cores and torch threads."""
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def label(script: str, argv: Sequence[str], device: str | torch.device | None, seeds: Sequence[int]) -> dict:
    """The label every experiment JSON carries: command, date, device, torch, git commit, seeds."""
    return {"command": " ".join(["python", script, *argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device": device_name(device), "torch": torch.__version__,
            "git_commit": git_commit(), "seeds": list(seeds)}
