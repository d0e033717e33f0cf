"""Code-size figures of the package and its checkers, from the files (no imports): run it anywhere.

    python bench/code_size.py            # this checkout
    python bench/code_size.py ROOT       # another checkout (e.g. `git worktree add /tmp/old <commit>`)

Prints lines (as `wc -l` counts them) of the package, of plmkit/checks/ and of the checker
tests, the number of `raise ValueError` statements in the package, and per checker module
the exercises, custom probes and custom judges (an ``@x.judge`` or a ``Trusted(judge=...)``).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

CHECKER_TESTS = ["tests/test_checks_*.py", "tests/test_mutants.py", "tests/checker_harness.py", "tests/test_specs.py"]


def lines(paths) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in paths)


def raises_value_error(tree) -> int:
    def name(e):
        e = e.func if isinstance(e, ast.Call) else e
        return e.id if isinstance(e, ast.Name) else None
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Raise) and n.exc is not None
               and name(n.exc) == "ValueError")


def checker_parts(tree) -> tuple[int, int, int]:
    """(exercises, custom probes, custom judges) declared in one checker module."""
    exercises = probes = judges = 0
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            if n.func.id == "Exercise":
                exercises += 1
            if n.func.id == "Trusted" and any(k.arg == "judge" for k in n.keywords):
                judges += 1
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in n.decorator_list:
                if isinstance(d, ast.Attribute) and d.attr in ("probe", "judge"):
                    probes += d.attr == "probe"
                    judges += d.attr == "judge"
    return exercises, probes, judges


def main(root: Path) -> None:
    package = sorted((root / "plmkit").rglob("*.py"))
    checks = sorted((root / "plmkit" / "checks").rglob("*.py"))
    tests = sorted({p for pattern in CHECKER_TESTS for p in root.glob(pattern)})
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in package}
    print(f"package lines          {lines(package):6d}  ({len(package)} files under plmkit/)")
    print(f"checks/ lines          {lines(checks):6d}  ({len(checks)} files)")
    print(f"checker-test lines     {lines(tests):6d}  ({', '.join(p.name for p in tests)})")
    print(f"raise ValueError       {sum(raises_value_error(t) for t in trees.values()):6d}")
    total = [0, 0, 0]
    for p in checks:
        parts = checker_parts(trees[p])
        total = [a + b for a, b in zip(total, parts)]
    print(f"checkers: {total[0]} exercises declared, {total[1]} custom probes, {total[2]} custom judges")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
