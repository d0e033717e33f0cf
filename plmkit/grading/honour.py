"""The honour-system path: run a notebook under plain nbval (lax), as a learner would with
``pytest --nbval-lax notebooks/NN_slug.ipynb``, and report each cell's outcome.

nbval compares the printed verdict of each check cell with the stored one. That is
feedback, not grading: code in the notebook can print anything (see book/grading.md).
The book's own tests use it to prove that every solution cell runs and that a blank
notebook fails exactly its check cells.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_nbval(nb_path: Path, timeout: int, report: Path) -> subprocess.CompletedProcess:
    """Run `nb_path` under nbval; write {code cell number: {passed, output, ...}} to `report`."""
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
           f"--nbval-cell-timeout={timeout}", "-p", "plmkit.grading._nbval_capture",
           "-p", "no:cacheprovider", "-o", "addopts=", "-q", "--rootdir", str(nb_path.parent),
           str(nb_path)]
    env = {**os.environ, "PLMKIT_GRADE_REPORT": str(report), "PYTHONUNBUFFERED": "1"}
    for name in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PLMKIT_GRADE_DIR", "PLMKIT_GRADE_SEED"):
        env.pop(name, None)
    return subprocess.run(cmd, cwd=nb_path.parent, env=env, capture_output=True, text=True)
