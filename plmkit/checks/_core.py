"""The machinery every chapter's checker is built on: cases, probe, judge.

A check cell calls ``checks.check_softmax(softmax)``. Behind that call an
exercise's checker is split in three, so that the part deciding the verdict
never has to trust the learner's code:

``cases(g)``
    Plain data the learner's code will be run on (tensors, ints, strings,
    lists, dicts), drawn from ``g``, a `Gen` seeded by (seed, exercise id):
    the same seed always gives the same cases.
``probe(p, learner, cases)``
    Runs in the kernel, next to the learner's code (untrusted). It calls the
    learner's function or object through ``p.call`` — which passes copies,
    watches for forbidden calls (see `_guard`), records exceptions as data and
    notes inputs changed in place — and returns plain data only.
``judge(r, cases, results)``
    Runs in the trusted grader process (or in-process in Jupyter). It computes
    the references first, from the cases, then compares them with the results
    as real tensors / ints / strings of the expected type, counting checks on
    `r` (a `Report`). It never sees a learner object, only data.

Two modes, chosen by the environment of the kernel:

* honour (Jupyter, plain ``pytest --nbval-lax``): cases with a fresh random
  seed, probe, judge, all in-process; prints ONE verdict line,
  ``✅ Exercise 0.1 softmax: 6/6 checks passed``, or ❌ and the reasons.
* grading (``PLMKIT_GRADE_DIR`` and ``PLMKIT_GRADE_SEED`` set by the grader):
  cases and probe only; the results go to ``<dir>/<exercise>.safetensors``
  (tensors) and ``<dir>/<exercise>.json`` (the rest), and the cell prints a
  neutral ``📝 ... answers recorded for grading``. The grader later calls
  `judge_recorded`, which regenerates the cases from the seed, reads the
  files (never pickle: loading a pickle runs code) and judges.

Writing a checker (see ``book/authoring.md``): a *spec*, in two halves. The kernel half
(``plmkit/checks/warmup.py``) declares the exercise, its forbidden calls and its cases::

    check_softmax = Exercise("0.1", "softmax", goal="computes softmax itself from exp, max and sum",
                             forbid=[Rule("`torch.softmax`", [torch.softmax, aten._softmax])])

    @check_softmax.cases
    def _(g):
        return [call(g.randn(3, 7), dim=-1, what="softmax(x, dim=-1) for x of shape (3, 7)"),
                call(g.randn(5, dtype=torch.float64), dim=0, grad=(0,), atol=1e-10)]

    # no probe: the default one calls the learner's function on each call(...) case

The trusted half (``plmkit/checks/_judges/warmup.py``, imported only to judge) holds the
reference and the likely bugs, whose keys are the hints::

    TRUSTED = {"softmax": Trusted(F.softmax, {"exp overflowed: subtract the max first": sm_no_shift})}

The default judge runs the reference through the same probe and compares record by record
(`Report.compare`), checks that no input changed in place, and names the first likely bug
whose record agrees with a wrong one. Exercises with an ``@ex.judge`` of their own (the
older form, chapters 3 to 10) are judged by it instead.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ._guard import Guard, Rule

PASS, FAIL, RECORDED = "✅", "❌", "📝"
MAX_REASONS = 4
GRADE_DIR, GRADE_SEED = "PLMKIT_GRADE_DIR", "PLMKIT_GRADE_SEED"

__all__ = ["Exercise", "Gen", "Probe", "Report", "Trusted", "Verdict", "Rule", "call", "reference_grads", "registry",
           "load_all", "judge_recorded", "NotPlain", "to_plain"]


# ============================================================================ plain data

class NotPlain(TypeError):
    """A learner's result that is not plain data (a custom class, a tensor subclass, a generator...)."""


_SCALARS = (bool, int, float, str, type(None))
_RECORDABLE = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
               torch.bfloat16, torch.float32, torch.float64}             # what safetensors stores


def to_plain(value: Any, depth: int = 0) -> Any:
    """A deep copy of `value` made only of plain types, or `NotPlain` naming what is not.

    Subclasses of int / float / str (numpy scalars, an int with a custom ``__eq__``)
    become the real int / float / str: their own ``__eq__`` is never used again.
    """
    if depth > 20:
        raise NotPlain("a structure nested more than 20 levels deep")
    t = type(value)
    if t in _SCALARS:
        return value
    if isinstance(value, torch.Tensor):
        if t not in (torch.Tensor, torch.nn.Parameter):
            raise NotPlain(f"a {t.__name__} (a subclass of torch.Tensor); return a plain torch.Tensor")
        if value.layout != torch.strided or value.device.type == "meta":
            raise NotPlain(f"a tensor with layout {value.layout} on {value.device}; return a dense tensor")
        if value.dtype not in _RECORDABLE:
            raise NotPlain(f"a tensor of dtype {value.dtype}; expected bool, an integer dtype or "
                           f"float16 / bfloat16 / float32 / float64")
        return _plain_tensor(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):                         # int subclasses become the real int
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    # containers, subclasses included (Counter, defaultdict, namedtuple): read through the
    # base type's own methods, so a subclass's __eq__ / __iter__ is never used
    if isinstance(value, list):
        return [to_plain(v, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return tuple(to_plain(v, depth + 1) for v in tuple.__iter__(value))
    if isinstance(value, dict):
        return {to_plain(k, depth + 1): to_plain(v, depth + 1) for k, v in dict.items(value)}
    if isinstance(value, (set, frozenset)):
        return set(to_plain(v, depth + 1) for v in (set.__iter__(value) if isinstance(value, set)
                                                     else frozenset.__iter__(value)))
    name = getattr(t, "__qualname__", str(t))
    kind = "an object" if not hasattr(value, "__iter__") else "an iterable object"
    raise NotPlain(f"{kind} of type {name}; expected plain data (tensors, ints, floats, strings, lists, "
                   f"tuples, dicts)")


def _plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """The one way a tensor becomes plain data: a detached, contiguous CPU copy, plus where it came from."""
    copy = t.detach().to("cpu", copy=True).contiguous()
    copy.__dict__["plmkit_meta"] = {"requires_grad": bool(t.requires_grad), "device": str(t.device)}
    return copy


def tensor_meta(t: torch.Tensor) -> dict:
    """Where a recorded tensor came from: ``{"requires_grad": bool, "device": str}``."""
    return t.__dict__.get("plmkit_meta", {"requires_grad": bool(t.requires_grad), "device": str(t.device)})


def same(a: Any, b: Any) -> bool:
    """Strict structural equality of plain data: same types all the way down, tensors equal with dtype."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b) or (
            a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and
            torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if type(a) is set:
        return a == b
    if type(a) is float and math.isnan(a):
        return math.isnan(b)
    return a == b


def encode(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Plain data -> (JSON-able structure, tensors by key) for safetensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v):
        t = type(v)
        if isinstance(v, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().contiguous().clone()
            return {"__tensor__": key, **tensor_meta(v)}
        if t in (list,):
            return [enc(x) for x in v]
        if t is tuple:
            return {"__tuple__": [enc(x) for x in v]}
        if t is dict and all(type(k) is str and not k.startswith("__") for k in v):
            return {k: enc(x) for k, x in v.items()}               # readable JSON object
        if t is dict:
            return {"__dict__": [[enc(k), enc(x)] for k, x in v.items()]}
        if t is set:
            return {"__set__": [enc(x) for x in v]}
        if t in _SCALARS:
            return v
        raise NotPlain(f"cannot record a {t.__name__}")

    return enc(value), tensors


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode`; reads only JSON values and tensors (no code runs)."""
    if isinstance(obj, list):
        return [decode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            t = tensors[obj["__tensor__"]].clone()
            t.__dict__["plmkit_meta"] = {"requires_grad": bool(obj.get("requires_grad")),
                                         "device": str(obj.get("device", "cpu"))}
            return t
        if "__tuple__" in obj:
            return tuple(decode(x, tensors) for x in obj["__tuple__"])
        if "__set__" in obj:
            return set(_hashable(decode(x, tensors)) for x in obj["__set__"])
        if "__dict__" in obj:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in obj["__dict__"]}
        if any(k.startswith("__") for k in obj):
            raise ValueError(f"unexpected record {sorted(obj)[:3]}")
        return {k: decode(v, tensors) for k, v in obj.items()}
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    raise ValueError(f"unexpected record of type {type(obj).__name__}")


def _hashable(k):
    if isinstance(k, torch.Tensor):
        raise ValueError("a tensor cannot be a dict key in a recorded result")
    return k


def clone_plain(value: Any) -> Any:
    """A deep copy of plain case data (tensors cloned), to hand to learner code."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if type(value) is list:
        return [clone_plain(v) for v in value]
    if type(value) is tuple:
        return tuple(clone_plain(v) for v in value)
    if type(value) is dict:
        return {k: clone_plain(v) for k, v in value.items()}
    if type(value) in (set, frozenset):
        return set(value)
    return value


# ============================================================================ cases

class Gen:
    """Randomness for cases, seeded by (seed, exercise id): deterministic, independent of the notebook's RNG."""

    def __init__(self, seed: int, exercise: str):
        digest = hashlib.sha256(f"{int(seed)}:{exercise}".encode()).digest()
        self.seed = int.from_bytes(digest[:6], "little")
        self.gen = torch.Generator().manual_seed(self.seed)

    def randn(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=dtype)

    def rand(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, dtype=dtype)

    def randint(self, low: int, high: int, shape: Iterable[int] = ()) -> torch.Tensor:
        return torch.randint(low, high, tuple(shape), generator=self.gen)

    def int(self, low: int, high: int) -> int:
        """A random int in [low, high)."""
        return int(torch.randint(low, high, (1,), generator=self.gen))

    def ints(self, n: int, low: int, high: int) -> list[int]:
        return [int(v) for v in torch.randint(low, high, (n,), generator=self.gen)]

    def choice(self, options):
        return options[self.int(0, len(options))]

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen)

    def seed_int(self) -> int:
        return self.int(0, 2**31 - 1)


def call(*args, what: str | None = None, grad: Iterable[int] = (), cotangent: torch.Tensor | None = None,
         atol: float = 1e-5, rtol: float = 1e-4, **kwargs) -> dict:
    """One call of the learner's function, as case data: ``call(x, dim=-1, what="softmax of a row")``.

    `what`: how the verdict names this call (default: the function and the argument shapes).
    `grad`: positions of float tensor arguments that must receive a gradient; the
    default probe back-propagates `cotangent` (a random tensor of the output's
    shape; ones if None) and records the gradients (see `reference_grads`).
    `atol`, `rtol`: the tolerance the default judge compares values and gradients with.
    Every other keyword is passed to the learner's function.
    """
    return {"args": list(args), "kwargs": dict(kwargs), "grad": list(grad), "cotangent": cotangent,
            "what": what, "atol": atol, "rtol": rtol}


def reference_grads(fn: Callable, case: dict) -> list[torch.Tensor]:
    """The gradients a correct function gives for a `call` case with `grad` (trusted side)."""
    args = [clone_plain(a) for a in case["args"]]
    inputs = []
    for i in case["grad"]:
        args[i] = args[i].detach().clone().requires_grad_(True)
        inputs.append(args[i])
    out = fn(*args, **clone_plain(case.get("kwargs", {})))
    cot = torch.ones_like(out) if case.get("cotangent") is None else case["cotangent"]
    return list(torch.autograd.grad([out], inputs, grad_outputs=[cot.to(out.dtype)], allow_unused=True))


# ============================================================================ probe

class _NotImplemented(Exception):
    """The learner's code still raises NotImplementedError: stop probing."""


class Probe:
    """What a probe calls the learner's code through (runs in the untrusted kernel)."""

    def __init__(self, exercise: "Exercise"):
        self.exercise = exercise
        self.forbidden: list[str] = []
        self.detector_off = False

    def guard(self) -> Guard:
        return Guard(self.exercise.forbid, self.exercise.allow)

    def _watch(self, fn: Callable, args, kwargs):
        guard = self.guard()
        try:
            with guard:
                return fn(*args, **kwargs)
        finally:
            for what in guard.seen:
                if what not in self.forbidden:
                    self.forbidden.append(what)
            self.detector_off |= guard.switched_off

    def run(self, fn: Callable, *args, **kwargs) -> Any:
        """Call learner code under the guard and return its raw result (for probes that build objects).

        Raises what the learner's code raised (NotImplementedError stops the probe).
        """
        try:
            return self._watch(fn, args, kwargs)
        except NotImplementedError as e:
            raise _NotImplemented from e

    def call(self, fn: Callable, *args, grad: Iterable[int] = (), cotangent: torch.Tensor | None = None,
             **kwargs) -> dict:
        """Call ``fn(*args, **kwargs)`` on copies of plain-data arguments; return a record.

        record = {"value": plain result or None, "raised": "TypeError: ..." or None,
                  "mutated": [argument names changed in place], "grads": [...] or None}
        """
        originals = list(args), dict(kwargs)
        a = [clone_plain(x) for x in args]
        k = {n: clone_plain(x) for n, x in kwargs.items()}
        grad = list(grad)
        for i in grad:
            a[i] = a[i].detach().clone().requires_grad_(True)
        rec: dict[str, Any] = {"value": None, "raised": None, "mutated": [], "grads": None}
        try:
            out = self._watch(fn, a, k)
            rec["value"] = to_plain(out)
            if grad:
                rec["grads"] = self._grads(out, [a[i] for i in grad], cotangent)
        except NotImplementedError as e:
            raise _NotImplemented from e
        except NotPlain as e:
            rec["raised"] = f"NotPlain: it returned {e}"
        except Exception as e:  # noqa: BLE001 - a learner error becomes data
            rec["raised"] = f"{type(e).__name__}: {e}"[:400]
        names = [f"argument {i + 1}" for i in range(len(args))] + [f"`{n}`" for n in kwargs]
        given = a + list(k.values())
        for name, before, after in zip(names, originals[0] + list(originals[1].values()), given):
            if type(before) is frozenset:
                before = set(before)
            if isinstance(before, torch.Tensor) or type(before) in (list, dict, tuple, set):
                try:
                    changed = not same(to_plain(after.detach() if isinstance(after, torch.Tensor) else after),
                                       before)
                except NotPlain:
                    changed = True
                if changed:
                    rec["mutated"].append(name)
        return rec

    def _grads(self, out, inputs, cotangent):
        if not isinstance(out, torch.Tensor) or type(out) is not torch.Tensor or not out.requires_grad:
            return "no graph"
        cot = torch.ones_like(out) if cotangent is None else cotangent.to(out.dtype)
        if cot.shape != out.shape:
            return "no graph"
        grads = self._watch(torch.autograd.grad, ([out], inputs),
                            {"grad_outputs": [cot], "allow_unused": True})
        return [None if g is None else to_plain(g) for g in grads]


# ============================================================================ judge

class Report:
    """Counts the checks of one exercise and collects the reasons of the failed ones."""

    def __init__(self, exercise: str, name: str):
        self.exercise, self.name = exercise, name
        self.total = 0
        self.failures: list[str] = []
        self.hints: "_Hints | None" = None          # set for a spec: names the likely bug
        self.canon: Callable | None = None

    def check(self, ok: bool, reason: str) -> bool:
        """Count one check; `reason` says what is wrong when `ok` is false."""
        ok = bool(ok)
        self.total += 1
        if not ok:
            self.failures.append(reason)
        return ok

    def fail(self, reason: str) -> bool:
        return self.check(False, reason)

    def value(self, rec: dict, what: str, kind: type | tuple | None = None) -> Any:
        """The value of a probe record; a failed check (and None) if the call raised or has the wrong type."""
        if rec.get("raised"):
            raised = rec["raised"]
            if raised.startswith("NotPlain: "):
                self.fail(f"{what}: {raised[len('NotPlain: '):]}")
            elif "Dimension out of range" in raised:
                self.fail(f"{what} raised {raised} (count dims from the end, dim=-1, so that any number of "
                          f"leading dims works)")
            else:
                self.fail(f"{what} raised {raised}")
            return None
        v = rec.get("value")
        if v is None:
            self.fail(f"{what} returned None: did you forget the `return`?")
            return None
        if kind is not None and not isinstance(v, kind) or (kind is int and type(v) is bool):
            names = " or ".join(_article(k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
            self.fail(f"{what}: expected {names}, got {_type_name(v)}")
            return None
        return v

    def count(self, rec: dict, what: str) -> int | None:
        """The value of a record that is a count (of parameters, bytes, tokens): an int, or a float
        that is exactly one (``6.0``), as an int; None (and a failed check) otherwise.

        An index or an id stays strict: ask for those with ``value(rec, what, int)``.
        """
        v = rec.get("value")
        if type(v) is float and math.isfinite(v) and v.is_integer() and abs(v) < 2**53 and not rec.get("raised"):
            rec = {**rec, "value": int(v)}
        return self.value(rec, what, int)

    def equal(self, got: Any, expected: Any, what: str) -> bool:
        """Strict equality of plain data (same types: a list is not a tuple, 1 is not 1.0 or True)."""
        if same(got, expected):
            return self.check(True, "")
        if type(got) is not type(expected):
            return self.fail(f"{what}: expected {_article(type(expected).__name__)} {_short(expected)}, "
                             f"got {_article(_type_name(got))} {_short(got)}")
        if type(got) in (list, tuple) and len(got) != len(expected):
            return self.fail(f"{what}: expected {len(expected)} items {_short(expected)}, "
                             f"got {len(got)} {_short(got)}")
        if type(got) in (list, tuple):
            i = next(i for i, (a, b) in enumerate(zip(got, expected)) if not same(a, b))
            return self.fail(f"{what}: first difference at position {i}: expected {_short(expected[i])}, "
                             f"got {_short(got[i])} (expected {_short(expected, 60)}, got {_short(got, 60)})")
        return self.fail(f"{what}: expected {_short(expected)}, got {_short(got)}")

    def close(self, got: Any, expected: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4,
              dtype: bool = True, hint: Callable[[torch.Tensor], str] | None = None) -> bool:
        """`got` must be a tensor of `expected`'s shape (and dtype, unless dtype=False) on the input's
        device, whose values match to tolerance. `hint(got)` may name the likely bug."""
        if not isinstance(got, torch.Tensor):
            return self.fail(f"{what}: expected a torch.Tensor, got {_type_name(got)}")
        meta = tensor_meta(got)
        if meta["device"] != "cpu" and meta["device"] != str(expected.device):
            return self.fail(f"{what}: the result is on {meta['device']}, the inputs were on the CPU; "
                             f"create new tensors on the input's device (device=x.device)")
        if tuple(got.shape) != tuple(expected.shape):
            return self.fail(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
                             + _call_hint(hint, got))
        if dtype and got.dtype != expected.dtype:
            return self.fail(f"{what}: expected dtype {expected.dtype}, got {got.dtype} (keep the input's "
                             f"dtype: no .float(), .double() or new tensors with a fixed dtype)")
        if got.dtype == torch.bool or expected.dtype == torch.bool:
            if torch.equal(got.bool(), expected.bool()):
                return self.check(True, "")
            idx = tuple(int(i) for i in torch.nonzero(got.bool() != expected.bool())[0])
            return self.fail(f"{what}: at index {idx} expected {bool(expected[idx])}, got {bool(got[idx])}"
                             + _call_hint(hint, got))
        got_f, exp_f = got.detach().double(), expected.detach().double()
        if not torch.isfinite(got_f).all() and torch.isfinite(exp_f).all():
            return self.fail(f"{what}: the result contains inf or nan; expected finite values" + _call_hint(hint, got))
        if torch.allclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True):
            return self.check(True, "")
        err = (got_f - exp_f).abs()
        err[(got_f == exp_f) | (got_f.isnan() & exp_f.isnan())] = 0.0           # equal infinities are no gap
        err = err.nan_to_num(float("inf"))
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0]) if err.ndim else ()
        return self.fail(f"{what}: values differ, largest gap at index {idx}: "
                         f"expected {exp_f[idx].item():.6g}, got {got_f[idx].item():.6g}" + _call_hint(hint, got))

    def compare(self, got: Any, want: Any, what: str, atol: float = 1e-5, rtol: float = 1e-4,
                path: tuple = ()) -> None:
        """The default comparison of a spec: the learner's results `got` against the reference's `want`,
        the same structure of probe records. Each record is one check (its value: type, shape, dtype,
        device, values to tolerance), plus one for its gradients; a record that says what it is
        (``"what"``, set by a probe) is named so; a wrong record gets the likely bug's hint."""
        if _is_record(want):
            what, atol = want.get("what") or what, want.get("atol", atol)     # a probe may state them
            n0 = len(self.failures)
            self._compare_record(got, want, what, atol, rtol)
            if len(self.failures) > n0 and self.hints is not None:
                self.hints.name(self, n0, lambda bug: agree(got, _at(bug, path)))
        elif isinstance(want, dict):
            for k, w in want.items():
                self.compare(got[k], w, what, atol, rtol, path + (k,))
        elif isinstance(want, (list, tuple)):
            if len(got) != len(want):
                raise ValueError(f"{len(got)} results for {len(want)} calls")
            for i, w in enumerate(want):
                self.compare(got[i], w, what, atol, rtol, path + (i,))
        else:
            raise TypeError(f"not a probe record: {_short(want, 60)}")

    def _compare_record(self, got: dict, want: dict, what: str, atol: float, rtol: float) -> None:
        if want.get("raised"):                         # the reference raises: so must the learner
            exc, raised = _exception(want["raised"]), got.get("raised") or ""
            self.check(_exception(raised) == exc, f"{what}: must raise {exc}; it " +
                       (f"raised {raised}" if raised else f"returned {_short(got.get('value'), 60)}"))
            return
        value = self.value(got, what)
        if value is None:
            return
        if self.canon is not None:
            try:
                value = self.canon(value)
            except Exception:  # noqa: BLE001 - a value the canon cannot read is compared as it is
                pass
        self.same_value(value, want["value"], what, atol, rtol, parts=want.get("parts"))
        if isinstance(want.get("grads"), list):
            self.grads_close(got, want["grads"], what, atol, rtol)

    def same_value(self, got: Any, want: Any, what: str, atol: float = 1e-5, rtol: float = 1e-4,
                   parts: list | None = None) -> bool:
        """One check: `got` is `want` (tensors by `close`, floats to tolerance, the rest strictly)."""
        if isinstance(want, torch.Tensor):
            return self.close(got, want, what, atol, rtol)
        if parts:                                      # a tuple of named tensors: one check each
            if type(got) is not type(want) or len(got) != len(want):
                return self.fail(f"{what}: expected {_article(type(want).__name__)} ({', '.join(parts)}), "
                                 f"got {_type_name(got)} {_short(got, 60)}")
            return all([self.same_value(g, w, f"{what}, {p}", atol, rtol) for g, w, p in zip(got, want, parts)])
        if agree(got, want, atol, rtol):
            return self.check(True, "")
        if type(got) is type(want) and type(want) is float:
            return self.fail(f"{what}: expected {want:.6g}, got {got:.6g}")
        if type(want) is dict and type(got) is dict and got.keys() == want.keys():
            key = next(k for k in want if not agree(got[k], want[k], atol, rtol))
            if isinstance(want[key], torch.Tensor) and isinstance(got[key], torch.Tensor) \
                    and got[key].shape == want[key].shape:
                gap = (got[key].double() - want[key].double()).abs().max().item()
                return self.fail(f"{what}: {key!r} differs from a correct answer's (largest gap {gap:.3g})")
            return self.fail(f"{what}: {key!r} differs from a correct answer's "
                             f"(expected {_short(want[key], 60)}, got {_short(got[key], 60)})")
        if type(want) in (list, tuple) and type(got) is type(want) and len(got) == len(want):
            i = next(i for i, (a, b) in enumerate(zip(got, want)) if not agree(a, b, atol, rtol))
            return self.fail(f"{what}: first difference at position {i}: expected {_short(want[i])}, "
                             f"got {_short(got[i])} (expected {_short(want, 60)}, got {_short(got, 60)})")
        return self.equal(got, want, what)

    def unchanged_all(self, results: Any, name: str) -> bool:
        """One check over every record: no call changed its inputs in place (names the likely bug)."""
        changed = _mutated(results)
        ok = self.unchanged({"mutated": changed}, name)
        if not ok and self.hints is not None:
            self.hints.name(self, len(self.failures) - 1, lambda bug: _mutated(bug) == changed)
        return ok

    def unchanged(self, rec: dict, what: str) -> bool:
        """The call must not have modified its inputs in place."""
        changed = rec.get("mutated") or []
        return self.check(not changed, f"{what} changed {', '.join(changed)} in place; work on a copy "
                                       f"(e.g. x.clone(), list(ids)) and leave the caller's data alone")

    def grads_close(self, rec: dict, expected: list, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
        """The gradients the probe took through the learner's result must match `expected`."""
        grads = rec.get("grads")
        if rec.get("raised"):
            return self.fail(f"{what}: no gradient (the call raised)")
        if not isinstance(grads, list):
            return self.fail(f"{what}: the result is not connected to the inputs' autograd graph "
                             f"(no .item(), .detach(), .numpy() or torch.tensor(...) of a result on the way)")
        ok = True
        for i, (g, e) in enumerate(zip(grads, expected)):
            if g is None:
                ok = self.fail(f"{what}: no gradient reaches input {i + 1}") and ok
            else:
                ok = self.close(g, e, f"{what}, the gradient with respect to input {i + 1}", atol, rtol) and ok
        return ok


def _call_hint(hint, got) -> str:
    if hint is None:
        return ""
    try:
        text = hint(got)
    except Exception:  # noqa: BLE001 - a hint must never break a verdict
        return ""
    return f" ({text})" if text else ""


def _article(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _type_name(v: Any) -> str:
    return "None" if v is None else type(v).__name__


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


class Verdict:
    """What a check returns: ``.passed``, ``.line`` (the verdict line) and ``.reasons``.

    It shows nothing when it is the last value of a notebook cell, so a check
    cell's only output is the printed line.
    """

    def __init__(self, passed: bool, line: str, reasons: list[str] | None = None, recorded: bool = False):
        self.passed, self.line, self.reasons, self.recorded = bool(passed), line, list(reasons or []), recorded

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed}, line={self.line!r})"

    def text(self) -> str:
        """The line and the reasons, as printed."""
        lines = [self.line] + [f"   • {r}" for r in self.reasons[:MAX_REASONS]]
        if len(self.reasons) > MAX_REASONS:
            lines.append(f"   • ... and {len(self.reasons) - MAX_REASONS} more")
        return "\n".join(lines)

    def _ipython_display_(self) -> None:
        pass


# ============================================================================ exercise

_JUDGE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class default_dtype:
    """``with default_dtype(torch.float64): ...`` sets torch's default dtype and restores it after."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __enter__(self):
        self.before = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.before)


_REGISTRY: dict[str, "Exercise"] = {}


class Exercise:
    """One graded exercise: its cases, probe and judge, and what it must not call.

    Calling it (``check_softmax(softmax)`` in a check cell) runs the honour or the
    grading mode, depending on the environment (see the module docstring).

    exercise  "0.1"; name: "softmax" (the verdict line's words)
    goal      what the exercise asks, as "computes softmax itself from exp, max and sum":
              the reason given when a forbidden call is seen
    forbid    `Rule`s: the reference and its library twins (also the task text's "Not allowed here" line)
    allow     functions whose insides may use forbidden things (plmkit modules a capstone uses)
    trusted   the module holding the trusted half (`Trusted`: reference, likely bugs, judge), imported
              only when judging; by default ``plmkit.checks._judges.<this module>``. An exercise
              without an ``@judge`` of its own is a *spec*: the trusted half judges it.
    """

    def __init__(self, exercise: str, name: str, *, goal: str = "", forbid: Iterable[Rule] = (),
                 allow: Iterable[Any] = (), trusted: str | None = None):
        self.exercise, self.name, self.goal = exercise, name, goal
        self.forbid, self.allow = list(forbid), list(allow)
        if trusted is None:
            package, _, leaf = sys._getframe(1).f_globals.get("__name__", "").rpartition(".")
            trusted = f"{package}._judges.{leaf}"
        self.trusted = trusted
        self._cases: Callable | None = None
        self._probe: Callable | None = None
        self._judge: Callable | None = None
        self.__name__ = f"check_{name}"
        if exercise in _REGISTRY and _REGISTRY[exercise].name != name:
            raise ValueError(f"exercise {exercise} is registered twice ({_REGISTRY[exercise].name}, {name})")
        _REGISTRY[exercise] = self

    # -- the three parts, set by decorators ---------------------------------
    def cases(self, fn: Callable) -> Callable:
        self._cases = fn
        return fn

    def probe(self, fn: Callable) -> Callable:
        self._probe = fn
        return fn

    def judge(self, fn: Callable) -> Callable:
        self._judge = fn
        return fn

    @property
    def head(self) -> str:
        return f"Exercise {self.exercise} {self.name}"

    @property
    def is_spec(self) -> bool:
        """True when the trusted half (`Trusted`, in `self.trusted`) judges this exercise."""
        return self._judge is None

    def trusted_part(self) -> "Trusted":
        """The reference, likely bugs and judge of this exercise (imports the trusted half)."""
        import importlib
        table = getattr(importlib.import_module(self.trusted), "TRUSTED", {})
        if self.name not in table:
            raise LookupError(f"{self.trusted}.TRUSTED has no entry {self.name!r} (exercise {self.exercise})")
        return table[self.name]

    def forbid_line(self) -> str:
        """The task text's line, made from `forbid`: ``Not allowed here: torch's softmax (...); ...``."""
        return "Not allowed here: " + "; ".join(rule.what for rule in self.forbid) + "."

    def results_of(self, learner: Any, cases: Any) -> Any:
        """Trusted side: run `learner` (the reference or a likely bug) through this exercise's probe, unwatched."""
        record = self.run_probe(learner if isinstance(learner, tuple) else (learner,), cases, _Unwatched)
        if record["not_implemented"] or record["probe_error"]:
            raise RuntimeError(f"{self.head}: the probe failed on trusted code: {record['probe_error']}")
        return record["results"]

    def make_cases(self, seed: int) -> Any:
        return self._cases(Gen(seed, self.exercise))

    # -- kernel side -----------------------------------------------------------
    def run_probe(self, learner: tuple, cases: Any, probe: type = None) -> dict:
        """cases + learner objects -> the record (plain data) the judge scores."""
        p = (probe or Probe)(self)
        record: dict[str, Any] = {"exercise": self.exercise, "name": self.name, "not_implemented": False,
                                  "probe_error": None, "results": None}
        try:
            if self._probe is not None:
                results = self._probe(p, *learner, cases)
            else:
                (fn,) = learner
                results = [p.call(fn, *c["args"], grad=c["grad"], cotangent=c.get("cotangent"), **c["kwargs"])
                           for c in cases]
            record["results"] = to_plain(results)
        except _NotImplemented:
            record["not_implemented"] = True
        except Exception as e:  # noqa: BLE001 - the learner's object broke the probe
            record["probe_error"] = f"{type(e).__name__}: {e}"[:400]
        record["forbidden"] = list(p.forbidden)
        record["detector_off"] = bool(p.detector_off)
        record["default_dtype"] = str(torch.get_default_dtype()).replace("torch.", "")
        return record

    # -- trusted side ------------------------------------------------------------
    def judge_record(self, seed: int, record: dict) -> Verdict:
        """Regenerate the cases from `seed` and score a probe record (plain data only)."""
        r = Report(self.exercise, self.name)
        if record.get("not_implemented"):
            return Verdict(False, f"{FAIL} {self.head}: not attempted yet (your code still raises "
                                  f"NotImplementedError)", ["not attempted yet"])
        for what in record.get("forbidden") or []:
            r.fail(f"Exercise {self.exercise} {self.goal or 'asks you to write this yourself'}: your code "
                   f"calls {what}, which is the reference here (aliases, partial and wrappers count too)")
        if record.get("detector_off"):
            r.fail("the check's call detector was switched off while your code ran (sys.setprofile); "
                   "leave the profiler alone")
        if record.get("probe_error"):
            r.fail(f"the check could not run your code: {record['probe_error']}")
        else:
            # cases and references under the default dtype the learner's code ran under, as in
            # Jupyter (an exercise cell may call torch.set_default_dtype(torch.float64))
            dtype = _JUDGE_DTYPES.get(record.get("default_dtype"), torch.float32)
            try:
                with default_dtype(dtype):
                    cases = self.make_cases(seed)
                    if self._judge is not None:
                        self._judge(r, cases, record["results"])
                    else:
                        _judge_spec(self, r, cases, record["results"])
            except Exception as e:  # noqa: BLE001 - malformed results: fail, never crash the grader
                r.fail(f"your results could not be judged ({type(e).__name__}: {e}); "
                       f"return the types the exercise asks for")
        if not r.failures and r.total == 0:
            r.fail("nothing could be checked")
        if not r.failures:
            return Verdict(True, f"{PASS} {self.head}: {r.total}/{r.total} checks passed")
        passed = max(r.total - len(r.failures), 0)
        return Verdict(False, f"{FAIL} {self.head}: {passed}/{r.total} checks passed", r.failures)

    # -- the check cell -------------------------------------------------------------
    def __call__(self, *learner) -> Verdict:
        folder, seed = os.environ.get(GRADE_DIR), os.environ.get(GRADE_SEED)
        if folder and seed is not None:
            return self.record(*learner, seed=int(seed), folder=folder)
        verdict = self.honour(*learner)
        print(verdict.text())
        return verdict

    def honour(self, *learner, seed: int | None = None) -> Verdict:
        """cases -> probe -> judge in this process, through the same plain-data encoding as grading."""
        seed = int.from_bytes(os.urandom(6), "little") if seed is None else seed
        record = self.run_probe(learner, self.make_cases(seed))
        meta, tensors = encode(record)
        return self.judge_record(seed, decode(json.loads(json.dumps(meta)), tensors))

    def record(self, *learner, seed: int, folder: str | os.PathLike) -> Verdict:
        """Grading mode: probe and write ``<folder>/<exercise>.json`` and ``.safetensors``."""
        from safetensors.torch import save_file

        record = self.run_probe(learner, self.make_cases(seed))
        record["seed"] = int(seed)
        try:
            meta, tensors = encode(record)
        except NotPlain as e:
            meta, tensors = encode({**record, "results": None, "probe_error": f"NotPlain: {e}"})
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            save_file(tensors, str(folder / f"{self.exercise}.safetensors"))
        except Exception as e:  # noqa: BLE001 - an unrecordable result fails its exercise, not the cell
            meta, tensors = encode({**record, "results": None,
                                    "probe_error": f"the results could not be recorded: {type(e).__name__}: {e}"})
            save_file(tensors, str(folder / f"{self.exercise}.safetensors"))
        (folder / f"{self.exercise}.json").write_text(json.dumps(meta))
        line = f"{RECORDED} {self.head}: answers recorded for grading"
        print(line)
        return Verdict(False, line, recorded=True)


# ============================================================================ specs: the trusted half

class _Unwatched(Probe):
    """The probe's runner for trusted code (the reference, the likely bugs): no guard, same records."""

    def _watch(self, fn: Callable, args, kwargs):
        return fn(*args, **kwargs)


@dataclass
class Trusted:
    """The half of a spec that only the judge sees (``plmkit/checks/_judges/<chapter>.py``).

    reference    the correct implementation, with the learner's signature (a tuple for an exercise
                 that takes several functions, a class for one that takes a class); it is run through
                 the exercise's own probe, unwatched, and its records are what the learner's must match
    likely_bugs  ``{hint: buggy implementation}``: when the learner's record of a call is wrong and a
                 bug's record of the same call agrees with it, the verdict names the first such bug
                 by its hint; `tests/test_specs.py` proves every bug fails with its own hint. A list
                 of implementations under one hint: bugs that no output can tell apart
    judge        optional ``judge(r, cases, results, expected)`` for what the default cannot say;
                 it may call ``r.compare`` (the default comparison) and add checks of its own
    canon        optional: the learner's plain value -> the form to compare (a list of lists ->
                 a list of tuples); trusted code, on plain data only
    """

    reference: Any = None
    likely_bugs: dict = field(default_factory=dict)
    judge: Callable | None = None
    canon: Callable | None = None


def _is_record(v: Any) -> bool:
    return type(v) is dict and "value" in v and "raised" in v and "mutated" in v


def _exception(raised: str | None) -> str:
    return (raised or "").split(":", 1)[0]


def agree(a: Any, b: Any, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Plain data `a` equals `b` up to float tolerance (same types, shapes and dtypes); records by outcome."""
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not b.is_floating_point():
            return bool(torch.equal(a, b))
        return bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))
    if type(a) is not type(b):
        return False
    if type(b) is float:
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (math.isnan(a) and math.isnan(b))
    if type(b) in (list, tuple):
        return len(a) == len(b) and all(agree(x, y, atol, rtol) for x, y in zip(a, b))
    if _is_record(b):
        if a.get("raised") or b.get("raised"):
            return bool(a.get("raised") and b.get("raised")) and _exception(a["raised"]) == _exception(b["raised"]) \
                and list(a.get("mutated") or []) == list(b.get("mutated") or [])
        return (agree(a.get("value"), b.get("value"), atol, rtol) and agree(a.get("grads"), b.get("grads"), atol, rtol)
                and list(a.get("mutated") or []) == list(b.get("mutated") or []))
    if type(b) is dict:
        return a.keys() == b.keys() and all(agree(a[k], b[k], atol, rtol) for k in b)
    return a == b


def _at(results: Any, path: tuple) -> Any:
    for key in path:
        results = results[key]
    return results


def _records(results: Any):
    """Every probe record in a result structure, in order."""
    if _is_record(results):
        yield results
    elif isinstance(results, dict):
        for v in results.values():
            yield from _records(v)
    elif isinstance(results, (list, tuple)):
        for v in results:
            yield from _records(v)


def _mutated(results: Any) -> list[str]:
    out: list[str] = []
    for rec in _records(results):
        out += [m for m in rec.get("mutated") or [] if m not in out]
    return out


class _Hints:
    """Names the likely bug: runs each of a spec's bugs through the probe (once, when needed) and finds
    the first whose record agrees with the learner's."""

    def __init__(self, ex: "Exercise", trusted: Trusted, cases: Any):
        self.ex, self.trusted, self.cases = ex, trusted, cases
        self._results: dict[str, Any] = {}
        self.used: set[str] = set()

    def results(self, hint: str) -> list:
        """The results of the bug(s) behind `hint` (a list stands for bugs no output can tell apart)."""
        if hint not in self._results:
            bugs = self.trusted.likely_bugs[hint]
            self._results[hint] = []
            for bug in (bugs if isinstance(bugs, list) else [bugs]):
                try:
                    self._results[hint].append(self.ex.results_of(bug, self.cases))
                except Exception:  # noqa: BLE001 - a bug that cannot run names nothing
                    pass
        return self._results[hint]

    def first(self, matches: Callable[[Any], bool]) -> str | None:
        for hint in self.trusted.likely_bugs:
            for res in self.results(hint):
                try:
                    if matches(res):
                        return hint
                except (KeyError, IndexError, TypeError):
                    continue
        return None

    def name(self, r: "Report", index: int, matches: Callable[[Any], bool]) -> None:
        """Append the first agreeing bug's hint to failure `index` (each hint once per verdict)."""
        hint = self.first(matches)
        if hint is not None and hint not in self.used and index < len(r.failures):
            self.used.add(hint)
            r.failures[index] += f" (likely bug: {hint})"


def _arg_text(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        dt = "" if v.dtype in (torch.float32, torch.int64, torch.bool) else f" {v.dtype}"
        return f"a tensor {tuple(v.shape)}{dt}" if v.ndim else f"{v.item()!r}"
    if isinstance(v, (dict, set, frozenset)) and len(v) > 4:
        return f"a {type(v).__name__} of {len(v)} items"
    return _short(v, 48)


def describe(name: str, case: dict) -> str:
    """How the verdict names a `call` case without `what`: ``softmax(a tensor (3, 7), dim=-1)``."""
    args = [_arg_text(a) for a in case["args"]] + [f"{k}={_arg_text(v)}" for k, v in case["kwargs"].items()]
    return f"{name}({', '.join(args)})"


def _judge_spec(ex: "Exercise", r: "Report", cases: Any, results: Any) -> None:
    """The default judge of a spec: the learner's records against the reference's, through the same probe."""
    trusted = ex.trusted_part()
    expected = ex.results_of(trusted.reference, cases) if trusted.reference is not None else None
    r.hints, r.canon = _Hints(ex, trusted, cases), trusted.canon
    if trusted.judge is not None:
        trusted.judge(r, cases, results, expected)
        if r.failures and not r.hints.used:                      # a custom judge: match the whole results
            r.hints.name(r, 0, lambda bug: agree(results, bug))
        return
    if ex._probe is None:                                          # one record per call(...) case
        for i, (case, rec, want) in enumerate(zip(cases, results, expected, strict=True)):
            r.compare(rec, want, case.get("what") or describe(ex.name, case), case.get("atol", 1e-5),
                      case.get("rtol", 1e-4), (i,))
        if not any(_mutable(a) for c in cases for a in [*c["args"], *c["kwargs"].values()]):
            return                                                 # ints and strings cannot change in place
    else:
        r.compare(results, expected, ex.name)
    r.unchanged_all(results, ex.name)


def _mutable(v: Any) -> bool:
    return isinstance(v, (torch.Tensor, list, dict, set)) or (type(v) is tuple and any(map(_mutable, v)))


# ============================================================================ grader API

def registry() -> dict[str, Exercise]:
    """Exercise id -> its `Exercise` (call `load_all` first to see every chapter's)."""
    return dict(_REGISTRY)


def load_all() -> dict[str, Exercise]:
    """Import every checker module of plmkit.checks (each registers its exercises)."""
    import importlib
    import pkgutil

    from .. import checks
    for info in pkgutil.iter_modules(checks.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{checks.__name__}.{info.name}")
    return registry()


def judge_recorded(exercise: str, seed: int, folder: str | os.PathLike) -> Verdict:
    """Judge what the kernel recorded for `exercise` under `seed` in `folder`.

    Reads only ``<exercise>.json`` and ``<exercise>.safetensors`` (no pickle, no
    learner code) and regenerates the cases from the seed itself.
    """
    from safetensors.torch import load_file

    ex = registry().get(exercise) or load_all().get(exercise)   # the grader loaded all before any kernel
    if ex is None:
        return Verdict(False, f"{FAIL} Exercise {exercise}: no such exercise in plmkit.checks",
                       ["no checker is registered for this exercise"])
    folder = Path(folder)
    meta_path, tensor_path = folder / f"{exercise}.json", folder / f"{exercise}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        return Verdict(False, f"{FAIL} {ex.head}: the check cell did not run (no answers were recorded)",
                       ["the check cell did not run: an earlier cell failed, timed out or stopped the kernel"])
    try:
        meta = json.loads(meta_path.read_text())
        record = decode(meta, load_file(str(tensor_path)))
        if not isinstance(record, dict) or record.get("exercise") != exercise or record.get("seed") != int(seed):
            raise ValueError("the recorded answers belong to another exercise or another grading run")
    except Exception as e:  # noqa: BLE001 - unreadable or forged files fail this exercise only
        return Verdict(False, f"{FAIL} {ex.head}: the recorded answers could not be read",
                       [f"the recorded answers could not be read: {type(e).__name__}: {e}"])
    return ex.judge_record(int(seed), record)
