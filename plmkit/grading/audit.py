"""A PEP 578 audit hook in the grading kernel: while a check cell runs, the learner's own code may not
switch the call detector off, start processes, send signals or load native code.

The grader runs `AUDIT_CELL` first in every kernel it starts, before any cell of the notebook.
An audit hook cannot be removed once installed. It acts only while the kernel holds the grading
seed (that is, while a check cell runs the learner's code) and only on events whose *origin*
is learner code: the first frame outside the standard library is a notebook cell (or code
built from a string). So the guard's own ``sys.setprofile`` (plmkit), torch loading a library
(site-packages) or ``torch.compile`` starting its workers pass, while an exercise's
``sys.setprofile(None)``, ``subprocess.run``, ``os.kill`` or ``ctypes.CDLL`` raise
``PermissionError``, which the probe records as the call's error, so the exercise fails and says why.

The same hook keeps an *integrity snapshot* of the recording machinery (the methods of
`Probe`, `Exercise`, `Guard`, `to_plain`, `encode`, ``sys.setprofile`` ...) taken before any
notebook cell runs: when a check cell writes its record and any of them has been replaced
(``Probe._watch = ...``, ``Guard._hit.__code__ = ...``), the write raises and the exercise
records nothing.

What it cannot see (Python 3.11 raises no event for it): a thread started by the learner's
code; such a thread runs outside the profile hook (see book/grading.md).

>>> sorted(WATCHED)[:3]
['ctypes.addressof', 'ctypes.cdata', 'ctypes.dlopen']
"""
from __future__ import annotations

WATCHED = frozenset({
    "sys.setprofile", "sys.settrace", "threading.setprofile", "threading.settrace",
    "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at",
    "ctypes.cdata",
})

AUDIT_CELL = """
def _plmkit_install_audit():
    import os, sys, sysconfig
    watched = frozenset(%r)
    environ = os.environ
    stdlib = tuple({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
    try:
        from ipykernel.compiler import get_tmp_directory
        cells = get_tmp_directory()
    except Exception:
        cells = "/ipykernel_"
    def in_stdlib(name):
        return name.startswith("<frozen") or (name.startswith(stdlib) and "-packages" not in name)
    def learner(name):
        return name.startswith(("<", cells)) or "/ipykernel_" in name
    # the integrity snapshot: the recording machinery as it was before any notebook cell ran
    import threading
    from plmkit.checks import _core, _guard
    snapshot = []
    for owner in (_core.Probe, _core.Exercise, _guard.Guard, _guard._AtenWatch):
        for name, member in list(vars(owner).items()):
            if callable(member):
                snapshot.append((owner, name, member, getattr(member, "__code__", None)))
    for module, names in ((_core, ("to_plain", "_plain_tensor", "encode", "clone_plain", "same")),
                          (_guard, ("code_objects",))):
        for name in names:
            member = getattr(module, name)
            snapshot.append((module, name, member, member.__code__))
    for module, names in ((sys, ("setprofile", "getprofile", "settrace")), (threading, ("setprofile",))):
        for name in names:
            snapshot.append((module, name, getattr(module, name), None))
    def changed():
        for owner, name, member, code in snapshot:
            now = vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name, None)
            if now is not member or (code is not None and getattr(member, "__code__", None) is not code):
                return f"{getattr(owner, '__name__', owner)}.{name}"
        return None
    def hook(event, args):
        if event == "open" and args and isinstance(args[0], str) and args[0].endswith(".json") \
                and "PLMKIT_GRADE_DIR" in environ and args[0].startswith(environ["PLMKIT_GRADE_DIR"]):
            what = changed()
            if what:
                raise PermissionError(f"the check's recording machinery was changed ({what}) by code "
                                      "in this notebook; no answers are recorded")
            return
        if event not in watched or "PLMKIT_GRADE_SEED" not in environ:
            return
        f = sys._getframe(1)
        while f is not None and in_stdlib(f.f_code.co_filename):
            f = f.f_back
        if f is not None and learner(f.f_code.co_filename):
            raise PermissionError(f"{event} is not allowed in an exercise while it is graded")
    sys.addaudithook(hook)
_plmkit_install_audit()
del _plmkit_install_audit
""" % (sorted(WATCHED),)
