"""The solution notebooks' own exercise code, for testing checkers in-process.

`solutions(stem)` runs every ``# Exercise N.M`` code cell of ``solutions/<stem>.ipynb``
(only those cells, in order) in a namespace holding the chapter's usual imports,
and returns that namespace: ``solutions("00_warmup")["softmax"]``. No notebook
kernel, no demo cells, so a checker test costs milliseconds, and the code
tested is exactly the code the book publishes.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = re.compile(r"^# Exercise (\d+\.\d+)", re.M)

PRELUDE = """
import collections, json, math, random, re
from pathlib import Path
from collections import Counter, defaultdict
import torch
import torch.nn as nn
import torch.nn.functional as F
import plmkit.nn as pn
"""


def exercise_cells(stem: str) -> dict[str, str]:
    """Exercise id -> the source of its exercise cell in the solution notebook."""
    nb = json.loads((ROOT / "solutions" / f"{stem}.ipynb").read_text())
    found = {}
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        m = HEADER.search(src)
        if cell["cell_type"] == "code" and m and "checks.check_" not in src:
            found[m.group(1)] = src
    return found


@lru_cache(maxsize=None)
def solutions(stem: str) -> dict:
    ns: dict = {}
    exec(PRELUDE, ns)
    for exercise, src in exercise_cells(stem).items():
        exec(compile(src, f"<solution {stem} {exercise}>", "exec"), ns)
    return ns
