"""LEGACY (being replaced by _core: cases / probe / judge). The old single-process checker machinery.

A checker takes the learner's function, runs it on fresh random inputs and on
edge cases, compares each result with plmkit's reference, and prints ONE
verdict line that nbval compares with the stored expected output:

    ✅ Exercise 0.1 softmax: 6/6 checks passed

On failure the line starts with ❌ and is followed by the reasons, in words:
which input, what was expected, what came back. Nothing printed on success
depends on the random inputs, timings, devices or addresses, so the stored
output of a solution notebook is stable from run to run.

Writing a checker::

    @checker("0.1", "softmax")
    def check_softmax(r: Report, softmax):
        x = r.randn(4, 7)
        r.close(softmax(x, dim=-1), torch.softmax(x, dim=-1), "softmax(x) for x of shape (4, 7)")
        ...

`r` counts the checks; a learner function that raises stops the checker with
a message naming the call.
"""
from __future__ import annotations

import ast
import functools
import inspect
import os
import textwrap
from typing import Any, Callable, Iterable

import torch

PASS, FAIL = "✅", "❌"
MAX_REASONS = 4


class _Stop(Exception):
    """Raised inside a checker to stop after a learner function crashed."""


class Report:
    """Collects the outcome of each check of one exercise."""

    def __init__(self, exercise: str, name: str):
        self.exercise, self.name = exercise, name
        self.total = 0
        self.failures: list[str] = []
        # Fresh randomness for every run, independent of the learner's seeds.
        self.gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(6), "little"))

    # -- random inputs -------------------------------------------------
    def randn(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=dtype)

    def randint(self, low: int, high: int, shape: Iterable[int]) -> torch.Tensor:
        return torch.randint(low, high, tuple(shape), generator=self.gen)

    def choice(self, options):
        return options[int(torch.randint(len(options), (1,), generator=self.gen))]

    # -- checks ----------------------------------------------------------
    def check(self, ok: bool, reason: str) -> bool:
        """Count one check; `reason` says what is wrong when `ok` is false."""
        self.total += 1
        if not ok:
            self.failures.append(reason)
        return bool(ok)

    def call(self, fn: Callable, *args, what: str, **kwargs) -> Any:
        """Call the learner's `fn`; if it raises, fail and stop with a clear message."""
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            raise
        except Exception as e:  # noqa: BLE001 - any learner error becomes a verdict
            self.total += 1
            self.failures.append(f"{what} raised {type(e).__name__}: {e}")
            raise _Stop from e

    def equal(self, got, expected, what: str) -> bool:
        """Exact equality of plain Python values (ints, strings, lists, dicts, tuples)."""
        return self.check(got == expected, f"{what}: expected {_short(expected)}, got {_short(got)}")

    def close(self, got, expected: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
        """`got` must be a tensor of `expected`'s shape whose values match to tolerance."""
        if not isinstance(got, torch.Tensor):
            return self.check(False, f"{what}: expected a torch.Tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(expected.shape):
            return self.check(False, f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
        got_f, exp_f = got.detach().double(), expected.detach().double()
        if not torch.isfinite(got_f).all() and torch.isfinite(exp_f).all():
            return self.check(False, f"{what}: the result contains inf or nan; expected finite values")
        ok = torch.allclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True)
        if ok:
            return self.check(True, "")
        err = (got_f - exp_f).abs().nan_to_num(float("inf"))
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0]) if err.ndim else ()
        return self.check(False, f"{what}: values differ, largest gap at index {idx}: "
                                 f"expected {exp_f[idx].item():.6g}, got {got_f[idx].item():.6g}")

    def forbid_calls(self, fn: Callable, names: Iterable[str], why: str) -> bool:
        """Fail if `fn` calls a library function named in `names` (the one the exercise rebuilds).

        Attribute calls (`torch.softmax`, `F.softmax`, `x.softmax`) always count; a bare
        call such as `softmax(x)` counts only when that name is a torch or plmkit function, so
        a learner may call their own function of the same name.
        """
        used = sorted(_library_calls(fn) & set(names))
        return self.check(not used, f"{self.name} calls {', '.join(used)}: {why}")


def _library_calls(fn: Callable) -> set[str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return set()
    scope = getattr(fn, "__globals__", {})
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                names.add(f.attr)
            elif isinstance(f, ast.Name):
                target = scope.get(f.id)
                if (getattr(target, "__module__", None) or "").startswith(("torch", "plmkit")):
                    names.add(f.id)
    return names


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


class Verdict:
    """What a checker returns: true when every check passed.

    It shows nothing when it is the last value of a notebook cell, so a check
    cell's only output is the printed verdict line.
    """

    def __init__(self, passed: bool, line: str):
        self.passed, self.line = passed, line

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed}, line={self.line!r})"

    def _ipython_display_(self) -> None:
        pass


def checker(exercise: str, name: str):
    """Turn `fn(report, *learner_objects)` into a checker that prints one verdict line.

    The wrapped checker returns a `Verdict`, true when every check passed.
    """
    def wrap(fn: Callable[..., None]) -> Callable[..., Verdict]:
        @functools.wraps(fn)
        def run(*args, **kwargs) -> Verdict:
            r = Report(exercise, name)
            head = f"Exercise {exercise} {name}"
            try:
                fn(r, *args, **kwargs)
            except NotImplementedError:
                line = f"{FAIL} {head}: not attempted yet (your code still raises NotImplementedError)"
                print(line)
                return Verdict(False, line)
            except _Stop:
                pass
            except Exception as e:  # noqa: BLE001 - a learner object that breaks the checker
                r.failures.append(f"the check itself failed on your code: {type(e).__name__}: {e}")
            if not r.failures:
                line = f"{PASS} {head}: {r.total}/{r.total} checks passed"
                print(line)
                return Verdict(True, line)
            passed = r.total - len(r.failures)
            line = f"{FAIL} {head}: {max(passed, 0)}/{r.total} checks passed"
            print(line)
            for reason in r.failures[:MAX_REASONS]:
                print(f"   • {reason}")
            if len(r.failures) > MAX_REASONS:
                print(f"   • ... and {len(r.failures) - MAX_REASONS} more")
            return Verdict(False, line)
        run.exercise = exercise
        return run
    return wrap
