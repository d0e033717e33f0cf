"""Every registered exercise, in every chapter, has at least three plausible bugs that must fail it.

Chapters 0-4 keep their mutation table in test_mutants.py (rows keyed by exercise id);
later chapters keep theirs as ``MUTANTS`` in ``tests/test_checks_<chapter>.py`` (rows whose
first item is the check function, which carries ``.exercise``). This test gathers all tables
so that a new exercise without mutants fails the run instead of going unnoticed.
"""
from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

from plmkit import checks


def _exercise_of(row) -> str:
    key = row[0]
    return key if isinstance(key, str) else key.exercise


def _all_rows():
    here = Path(__file__).parent
    modules = ["test_mutants"] + sorted(p.stem for p in here.glob("test_checks_*.py"))
    for name in modules:
        for row in getattr(importlib.import_module(name), "MUTANTS", []):
            yield row


def test_every_registered_exercise_has_three_mutants():
    registry = checks.load_all()
    counts = Counter(_exercise_of(row) for row in _all_rows())
    missing = {ex: counts.get(ex, 0) for ex in registry if counts.get(ex, 0) < 3}
    assert not missing, f"exercises with fewer than 3 mutants: {missing}"
    unknown = sorted(set(counts) - set(registry))
    assert not unknown, f"mutants for exercises that no checker registers: {unknown}"
