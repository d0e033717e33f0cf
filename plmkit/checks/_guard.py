"""Catch a learner's code calling the very thing an exercise asks them to build.

An exercise that asks for softmax must not pass by calling ``torch.softmax``;
one that asks for a BPE trainer must not pass by calling plmkit's. Looking at
the source text for names is easy to fool (``sm = torch.softmax``,
``functools.partial``, ``getattr(torch, "soft" + "max")``, a wrapper function
in another cell). This module watches what actually *runs*, and compares by
identity:

* Python functions by their code object, seen by a ``sys.setprofile`` hook
  (Python 3.11; no ``sys.monitoring``): an alias, a ``partial`` or a wrapper
  still runs the same code object.
* C functions (``torch.softmax``, ``F.scaled_dot_product_attention``) by
  identity, from the hook's ``c_call`` events.
* threads started while the guard is on (``threading.Thread``, a ``ThreadPoolExecutor``)
  get the same profile hook (``threading.setprofile``); the ATen watch below is per thread,
  so in such a thread only Python functions and C functions are seen.
* torch operators at the ATen level, seen by a ``TorchDispatchMode``:
  ``F.softmax(x)``, ``torch.softmax(x)``, ``x.softmax()`` and
  ``nn.Softmax()(x)`` all arrive as ``aten._softmax``, however they were
  reached.

A forbidden call made from inside an *allowed* function is fine: a capstone
may use ``plmkit.nn.LayerNorm`` even though it calls ``F.layer_norm``.

Writing the rules of an exercise::

    from ._guard import Rule, aten
    FORBID = [
        Rule("torch's softmax (`torch.softmax`, `F.softmax`, `x.softmax()`)",
             [torch.softmax, F.softmax, aten._softmax]),
        Rule("plmkit's `basics.softmax`", [basics.softmax]),
    ]
    ALLOW = [plmkit.nn.LayerNorm.forward]          # functions whose insides may use anything

    with Guard(FORBID, ALLOW) as guard:
        learner_softmax(x)
    guard.seen        # ["torch's softmax (...)"]: the rules broken, in order, each once

A target may be a Python function or method (its code object is watched; a
``functools.partial``, ``staticmethod``, bound method or decorator is unwrapped),
a class (its ``__init__``, ``forward`` and ``__call__``), a C builtin or C method
(``tokenizers.Tokenizer.train_from_iterator``: watched by identity, including
when called as ``tok.train_from_iterator(...)``), an ATen operator
(``aten._softmax`` or ``aten._softmax.default``; every overload of the packet
counts) or ``Module("transformers.generation")``: every Python function whose
code lives in that module or package, resolved without importing it. The guard
only *records*; the checker decides.
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

__all__ = ["Rule", "Guard", "Module", "aten", "aten_ops", "code_objects"]


def aten_ops(*names: str) -> list:
    """The ATen operator packets of these names that this torch build has (others are skipped).

    Fused kernels differ between versions and back ends, so list every variant:
    ``aten_ops("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention")``.
    """
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


@dataclass(frozen=True)
class Rule:
    """One thing an exercise must not reach: `what` names it for the learner, `targets` identify it."""

    what: str
    targets: tuple = field(default_factory=tuple)

    def __init__(self, what: str, targets: Iterable[Any]):
        object.__setattr__(self, "what", what)
        object.__setattr__(self, "targets", tuple(targets))


def code_objects(target: Any) -> list[types.CodeType]:
    """The code objects that running `target` executes (empty for C functions).

    Decorated functions are unwrapped (``__wrapped__``): every ``@torch.no_grad()``
    function shares one wrapper code object, which must never be watched itself.
    """
    if callable(target) and hasattr(target, "__wrapped__") and not inspect.isclass(target):
        target = inspect.unwrap(target)
    if isinstance(target, functools.partial):
        return code_objects(target.func)
    if isinstance(target, (staticmethod, classmethod)):
        return code_objects(target.__func__)
    if isinstance(target, types.MethodType):
        return code_objects(target.__func__)
    if isinstance(target, property):
        return [c for f in (target.fget, target.fset) if f is not None for c in code_objects(f)]
    if inspect.isclass(target):
        found = []
        for name in ("__init__", "forward", "__call__"):
            member = target.__dict__.get(name)
            if member is not None:
                found += code_objects(member)
        return found
    code = getattr(target, "__code__", None)
    return [code] if isinstance(code, types.CodeType) else []


@dataclass(frozen=True)
class Module:
    """Every function of a module (or package), by where its code lives: ``Module("transformers.generation")``.

    Resolved without importing the module, so a checker can forbid a library that
    is expensive to import; code that the learner imports later is still seen.
    """

    name: str

    def path(self) -> str | None:
        import importlib.util
        top, _, rest = self.name.partition(".")
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return spec.origin if spec is not None and not rest else None
        base = os.fspath(list(spec.submodule_search_locations)[0])   # a Path once transformers is imported
        return os.path.join(base, *rest.split(".")) if rest else base + os.sep


def _aten_packet(target: Any):
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target
    return None


class _AtenWatch(TorchDispatchMode):
    def __init__(self, guard: "Guard"):
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        rule = self.guard._by_packet.get(func.overloadpacket)
        if rule is not None:
            self.guard._hit(rule, sys._getframe(1))
        return func(*args, **(kwargs or {}))


class Guard:
    """A context manager that records every rule broken by code run inside it.

    ``seen``: the `what` of each rule broken, in the order first seen.
    ``switched_off``: true if something replaced the profile hook while the guard was on.
    """

    def __init__(self, forbid: Iterable[Rule] = (), allow: Iterable[Any] = ()):
        self.rules = list(forbid)
        self._by_code: dict[types.CodeType, Rule] = {}
        self._by_builtin: dict[int, Rule] = {}
        self._by_packet: dict[Any, Rule] = {}
        self._by_method: dict[str, dict[int, Rule]] = {}   # C methods: name -> id(descriptor) -> rule
        self._by_path: list[tuple[str, Rule]] = []
        self._path_seen: dict[types.CodeType, Rule | None] = {}
        self._keep: list[Any] = []                     # keep builtins alive: ids must stay unique
        for rule in self.rules:
            for t in rule.targets:
                packet = _aten_packet(t)
                codes = [] if isinstance(t, Module) else code_objects(t)
                if isinstance(t, Module):
                    path = t.path()
                    if path:
                        self._by_path.append((path, rule))
                elif packet is not None:
                    self._by_packet[packet] = rule
                elif codes:
                    for c in codes:
                        self._by_code[c] = rule
                elif callable(t):
                    self._by_builtin[id(t)] = rule
                    if getattr(t, "__objclass__", None) is not None:      # a C method: x.method(...)
                        self._by_method.setdefault(t.__name__, {})[id(t)] = rule
                    self._keep.append(t)
                else:
                    raise TypeError(f"cannot watch {t!r}: give a function, a class, a builtin, an aten op "
                                    f"or a Module")
        self._allowed = {c for a in allow for c in code_objects(a)}
        self.seen: list[str] = []
        self.switched_off = False
        self._mode: _AtenWatch | None = None
        self._previous = None

    # -- recording ---------------------------------------------------------
    def _inside_allowed(self, frame) -> bool:
        while frame is not None:
            if frame.f_code in self._allowed:
                return True
            frame = frame.f_back
        return False

    def _hit(self, rule: Rule, frame) -> None:
        if rule.what not in self.seen and not self._inside_allowed(frame):
            self.seen.append(rule.what)

    def _in_module(self, code: types.CodeType) -> Rule | None:
        if code not in self._path_seen:
            file = code.co_filename
            self._path_seen[code] = next((rule for path, rule in self._by_path if file.startswith(path)), None)
        return self._path_seen[code]

    def _c_method(self, fn) -> Rule | None:
        """`x.method` arrives as a new bound builtin: find the descriptor it came from, by identity."""
        watched = self._by_method.get(getattr(fn, "__name__", None))
        owner = getattr(fn, "__self__", None)
        if not watched or owner is None or inspect.ismodule(owner):
            return None
        for cls in type(owner).__mro__:
            if fn.__name__ in cls.__dict__:
                return watched.get(id(cls.__dict__[fn.__name__]))
        return None

    def _profile(self, frame, event, arg):
        if event == "call":
            rule = self._by_code.get(frame.f_code)
            if rule is None and self._by_path:
                rule = self._in_module(frame.f_code)
            if rule is not None:
                self._hit(rule, frame.f_back)
        elif event == "c_call":
            rule = self._by_builtin.get(id(arg))
            if rule is None and self._by_method:
                rule = self._c_method(arg)
            if rule is not None:
                self._hit(rule, frame)

    # -- context manager -----------------------------------------------------
    def __enter__(self) -> "Guard":
        self._previous = sys.getprofile()
        self._previous_threads = threading.getprofile()
        if self._by_packet:
            self._mode = _AtenWatch(self)
            self._mode.__enter__()
        threading.setprofile(self._profile)     # threads started inside (a ThreadPoolExecutor) are watched too
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc) -> None:
        current = sys.getprofile()
        threading.setprofile(self._previous_threads)
        sys.setprofile(self._previous)
        # a bound method compares equal to another bound method of the same function and object
        if current != self._profile:
            self.switched_off = True
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None
