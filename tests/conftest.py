"""Shared helpers for the test suite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
CHAPTERS = [p.stem for p in SOLUTIONS]


def run_notebook_cells(path: Path, tmp_path: Path, timeout: int = 900) -> dict[int, dict]:
    """Run a notebook under nbval (lax) the way the grader does; return {code cell number: result}."""
    from plmkit.grading.honour import run_nbval

    report = tmp_path / "report.json"
    proc = run_nbval(path, timeout, report)
    assert report.exists(), f"nbval did not run {path}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {int(k): v for k, v in json.loads(report.read_text()).items()}


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The models under test are tiny: one thread is many times faster than two
    fighting over a busy 2-core machine (make test also runs two workers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
