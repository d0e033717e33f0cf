"""The harness the checker tests share: run a check in-process and assert on its verdict.

A chapter's test file (`test_checks_t5.py`, ...) keeps its own reference answers and tables

    CASES     = [(check, reference answer), ...]
    SHORTCUTS = [(check, the reference or a torch built-in reached some way), ...]
    MUTANTS   = [(check, plausible bug, words the verdict must contain, or None), ...]

and its parametrised tests call the helpers below, so that every chapter asks the same
of its checkers, for example::

    blank = make_blank(5)

    @pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
    def test_blank_fails(check, fn, capsys):
        assert_blank_fails(check, blank, capsys)
"""
from __future__ import annotations

from plmkit.checks import judge_recorded


def make_blank(chapter: int):
    """The learner's untouched exercise: a function that raises like the stub `plmkit author` writes."""
    def blank(*args, **kwargs):
        raise NotImplementedError(f"Exercise {chapter}.x: replace this line with your code")
    return blank


def run(check, *fns, capsys):
    """Run `check(*fns)` in honour mode; return (passed, printed output).

    The first printed line must be the verdict's own line (what the check cell shows).
    """
    verdict = check(*fns)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == verdict.line
    return bool(verdict), out


def _answers(fn) -> tuple:
    """One answer, or a tuple of them for a check that takes several (split_heads, merge_heads)."""
    return fn if isinstance(fn, tuple) else (fn,)


def case_ids(cases) -> list[str]:
    """Test ids for a CASES table: the checker's name."""
    return [check.name for check, _ in cases]


def mutant_ids(mutants) -> list[str]:
    """Test ids for a MUTANTS table: the mutant's function (or class) name."""
    return [mutant.__name__ for _, mutant, _ in mutants]


def assert_reference_passes(check, fn, capsys, times: int = 2) -> None:
    """The reference answer passes `times` times, on fresh random cases, with the same one-line verdict."""
    lines = set()
    for _ in range(times):
        ok, out = run(check, *_answers(fn), capsys=capsys)
        assert ok, out
        assert out.startswith(f"✅ Exercise {check.exercise} ") and out.count("\n") == 1
        lines.add(out)
    assert len(lines) == 1


def assert_blank_fails(check, blank, capsys) -> None:
    """An untouched stub fails and the verdict says it was not attempted."""
    ok, out = run(check, *_answers(blank), capsys=capsys)
    assert not ok and "not attempted yet" in out


def assert_fails(check, fn, capsys) -> None:
    """`fn` (an answer returning None, say) fails."""
    ok, out = run(check, *_answers(fn), capsys=capsys)
    assert not ok, out


def assert_refused(check, shortcut, capsys, named: str | None = None) -> None:
    """Calling the reference (or torch's built-in twin) fails, and the verdict names it (and `named`, if given)."""
    ok, out = run(check, *_answers(shortcut), capsys=capsys)
    assert not ok and "is the reference here" in out, out
    if named:
        assert named in out, out


def assert_mutant_fails(check, mutant, named, capsys, times: int = 1) -> None:
    """A plausible bug fails on each of `times` random draws; where `named` is given the verdict has those words."""
    for _ in range(times):
        ok, out = run(check, *_answers(mutant), capsys=capsys)
        assert not ok, out
        if named:
            assert named in out, out


def assert_mutants_cover(mutants, chapter: int, n_exercises: int) -> None:
    """Exercises chapter.1 .. chapter.n_exercises each have at least three mutants, and no others do."""
    counts: dict[str, int] = {}
    for check, _, _ in mutants:
        counts[check.exercise] = counts.get(check.exercise, 0) + 1
    assert sorted(counts, key=lambda e: int(e.split(".")[1])) == [f"{chapter}.{i}" for i in range(1, n_exercises + 1)]
    assert min(counts.values()) >= 3


def recorded_verdict(check, fn, seed: int, folder):
    """Grade `fn` the way `plmkit grade` does: record in the 'kernel', judge from the files; return the verdict."""
    assert check.record(fn, seed=seed, folder=folder).recorded
    return judge_recorded(check.exercise, seed, folder)


def recorded_passes(check, fn, seed: int, folder) -> bool:
    """Grade `fn` the way `plmkit grade` does: record in the 'kernel', judge from the files."""
    return recorded_verdict(check, fn, seed, folder).passed


def recorded_agrees_with_honour(check, fn, seed: int, folder) -> bool:
    """Graded from the files, `fn` gets the very line honour mode gives it; return whether it passed."""
    honour = check.honour(fn, seed=seed)
    graded = recorded_verdict(check, fn, seed, folder)
    assert graded.line == honour.line, (honour.line, graded.line)
    return graded.passed
