"""One test over the whole registry of specs, driven by each spec's own likely-bugs table.

A *spec* is an exercise judged by its trusted half (`plmkit/checks/_judges/<chapter>.py`):
a reference, a ``likely_bugs`` table ``{hint: buggy implementation}``, and (rarely) a judge
of its own. For every spec:

* every likely bug fails its exercise, and the verdict names it by its own hint;
* the book's solution (extracted from solutions/*.ipynb) passes, on two seeds;
* the blank exercise (the stub cells of notebooks/*.ipynb, as `plmkit author` wrote them)
  is "not attempted yet";

each both in honour mode and through the grading path (record to files, `judge_recorded`),
with the same verdict line. Also: a chapter's kernel half never imports its trusted half,
and every converted exercise's task text carries the "Not allowed here" line of its spec.
"""
from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import pytest

from plmkit import checks
from plmkit.grading import notebook as nbt
from solution_code import PRELUDE, ROOT, solutions
from test_mutants import CHAPTER, NAMES, both_ways

REGISTRY = checks.load_all()
SPECS = {e: ex for e, ex in REGISTRY.items() if ex.is_spec}
SPEC_MODULES = sorted({ex.trusted.rpartition(".")[2] for ex in SPECS.values()})


def _bugs(exercise: str) -> list[tuple[str, int, object]]:
    rows = []
    for hint, bug in SPECS[exercise].trusted_part().likely_bugs.items():
        for i, b in enumerate(bug if isinstance(bug, list) else [bug]):
            rows.append((hint, i, b))
    return rows


BUGS = [(e, hint, i) for e in SPECS for hint, i, _ in _bugs(e)]


def _learner(fn) -> tuple:
    return fn if isinstance(fn, tuple) else (fn,)


@pytest.mark.parametrize("exercise, hint, index", BUGS, ids=[f"{e} {h[:48]} {i}" for e, h, i in BUGS])
def test_likely_bug_fails_with_its_own_hint(exercise, hint, index, tmp_path):
    bug = next(b for h, i, b in _bugs(exercise) if h == hint and i == index)
    verdict = both_ways(exercise, _learner(bug), tmp_path, seed=len(hint))
    assert not verdict.passed and verdict.line.startswith("❌"), verdict.text()
    assert any(f"(likely bug: {hint})" in r for r in verdict.reasons), verdict.text()


@pytest.mark.parametrize("exercise", sorted(SPECS))
def test_every_spec_has_three_likely_bugs(exercise):
    assert len(_bugs(exercise)) >= 3 and SPECS[exercise].trusted_part().reference is not None


@pytest.mark.parametrize("exercise", sorted(SPECS))
def test_solution_passes_both_ways(exercise, tmp_path):
    ns = solutions(CHAPTER[exercise.split(".")[0]])
    for seed in (1, 2):
        verdict = both_ways(exercise, tuple(ns[n] for n in NAMES[exercise]), tmp_path, seed)
        assert verdict.passed, verdict.text()


@lru_cache(maxsize=None)
def blanks(stem: str) -> dict:
    """The learner's untouched notebook: its exercise cells (stubs) run in the usual namespace."""
    ns: dict = {}
    exec(PRELUDE, ns)
    for cell in json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.startswith("# Exercise") and "checks.check_" not in src:
            exec(compile(src, f"<blank {stem}>", "exec"), ns)
    return ns


@pytest.mark.parametrize("exercise", sorted(SPECS))
def test_blank_is_not_attempted(exercise, tmp_path):
    ns = blanks(CHAPTER[exercise.split(".")[0]])
    verdict = both_ways(exercise, tuple(ns[n] for n in NAMES[exercise]), tmp_path, seed=3)
    assert not verdict.passed and "not attempted yet" in verdict.line, verdict.text()


def test_kernel_halves_never_import_the_trusted_halves():
    code = ("import sys, plmkit.checks as c; c.load_all(); "
            "print(sorted(m for m in sys.modules if m.startswith('plmkit.checks._judges')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("module", SPEC_MODULES)
def test_task_text_carries_the_generated_forbid_line(module):
    """`plmkit author` writes each spec's "Not allowed here" line into the task cell above its exercise."""
    stem = next(s for s in CHAPTER.values() if s.endswith("_" + module))
    nb = nbt.read(ROOT / "notebooks" / f"{stem}.ipynb")
    found = {}
    for ex in nbt.exercises(nb):
        task = nb.cells[ex.cell_index - 1]
        found[ex.number] = task.source if task.cell_type == "markdown" else ""
    for e, spec in SPECS.items():
        if e in found:
            assert found[e].count("Not allowed here:") == 1 and spec.forbid_line() in found[e], (e, found[e][-300:])
