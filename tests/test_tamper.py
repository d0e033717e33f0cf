"""Attacks on `plmkit grade`, each made from an exercise cell of chapter 0.

Every attack must gain no point, and every honest exercise next to it must keep its
point. Several attacks that do not interfere share one notebook, so that the suite
runs five grading runs in all (book/grading.md states what is and is not guaranteed).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from plmkit.cli import main
from plmkit.grading import notebook as nbt

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tamper")]
CH = "00_warmup"
BLANK = ROOT / "notebooks" / f"{CH}.ipynb"
SOLVED = ROOT / "solutions" / f"{CH}.ipynb"
HEAD = {"0.1": "# Exercise 0.1: numerically stable softmax",
        "0.2": "# Exercise 0.2: log-softmax",
        "0.3": "# Exercise 0.3: cross-entropy with ignore_index",
        "0.4": "# Exercise 0.4: the training loop"}


def honest(number: str) -> str:
    nb = nbt.read(SOLVED)
    return next(c.source for c in nb.cells if nbt.exercise_number(c.source) == number)


def notebook(tmp_path: Path, answers: dict[str, str]) -> Path:
    """The blank chapter-0 notebook with `answers` (exercise -> cell source) filled in."""
    nb = nbt.read(BLANK)
    for cell in nb.cells:
        number = nbt.exercise_number(cell.source)
        if number in answers:
            cell.source = answers[number]
    path = tmp_path / f"{CH}.ipynb"
    nbt.write(nb, path)
    return path


def run_grader(path: Path, tmp_path: Path, *extra: str, untouched: bool = True) -> dict:
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    report = tmp_path / "report.json"
    code = main(["grade", str(path), "--json", str(report), *extra])
    if untouched:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "the grader modified the notebook"
    data = json.loads(report.read_text())
    (nb,) = data["notebooks"]
    assert code == (0 if data["score"] == data["max_score"] else 1)
    return {e["number"]: e for e in nb["exercises"]} | {"_notes": nb["notes"]}


def points(result: dict) -> dict[str, int]:
    return {n: e["points"] for n, e in result.items() if not n.startswith("_")}


FAKE_LINES = "\n".join(f'print("✅ Exercise {n} {name}: 9/9 checks passed")' for n, name in
                       [("0.1", "softmax"), ("0.2", "log_softmax"), ("0.3", "cross_entropy"),
                        ("0.4", "train_loop")])


def test_rebinding_checks_patching_the_checker_and_fake_verdicts(tmp_path):
    answers = {
        # rebind this exercise's check, the whole checker module's, and print a fake verdict
        "0.1": f"""{HEAD['0.1']}
import plmkit.checks.warmup as warmup_checks
def softmax(x, dim=-1):
    return x
fake = lambda *a, **k: print("✅ Exercise 0.1 softmax: 9/9 checks passed")
checks.check_softmax = fake
warmup_checks.check_softmax = fake
{FAKE_LINES}
""",
        "0.2": honest("0.2"),
        # patch the checker machinery in the kernel: Report, Verdict, judging, recording
        "0.3": f"""{HEAD['0.3']}
import plmkit.checks as pc
import plmkit.checks._core as core
def cross_entropy(logits, targets, ignore_index=-100):
    return logits.sum() * 0
core.Report.check = lambda self, ok, reason="": True
core.Report.close = lambda self, *a, **k: True
core.Verdict.__bool__ = lambda self: True
always = lambda *a, **k: core.Verdict(True, "✅ Exercise 0.3 cross_entropy: 11/11 checks passed")
core.judge_recorded = pc.judge_recorded = always
for ex in core.registry().values():
    type(ex).judge_record = always
print("✅ Exercise 0.3 cross_entropy: 11/11 checks passed")
""",
        "0.4": honest("0.4"),
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path)
    assert points(result) == {"0.1": 0, "0.2": 1, "0.3": 0, "0.4": 1}, result
    assert "recorded no answers" in result["0.1"]["verdict"]


def test_patching_torch_comparisons_and_the_reference_called_directly(tmp_path):
    answers = {
        # the reference, called directly
        "0.1": f"""{HEAD['0.1']}
from plmkit import basics
def softmax(x, dim=-1):
    return basics.softmax(x, dim=dim)
""",
        # make every comparison succeed, in the kernel: allclose, equal, ==, !=, isclose
        "0.2": f"""{HEAD['0.2']}
import torch
def log_softmax(x, dim=-1):
    return x
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.isclose = lambda a, b, *r, **k: torch.ones_like(a, dtype=torch.bool)
torch.Tensor.__eq__ = lambda self, other: True
torch.Tensor.__ne__ = lambda self, other: False
""",
        # honest, and it compares tensors (targets != ignore_index): it must not inherit the patch
        "0.3": honest("0.3"),
        # SIGKILL the kernel (or the grader) while the check runs it: the audit hook refuses os.kill
        "0.4": f"""{HEAD['0.4']}
import os, signal
def train_loop(model, optimizer, batches, loss_fn):
    os.kill(os.getpid(), signal.SIGKILL)
""",
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path)
    assert points(result) == {"0.1": 0, "0.2": 0, "0.3": 1, "0.4": 0}, result
    assert "reference" in " ".join(result["0.1"]["reasons"])
    assert "os.kill is not allowed" in " ".join(result["0.4"]["reasons"]), result["0.4"]


def test_the_reference_by_alias_partial_and_wrapper(tmp_path):
    answers = {
        "0.1": f"""{HEAD['0.1']}
import torch.nn.functional as F
_sm = F.softmax                      # an alias
def softmax(x, dim=-1):
    return _sm(x, dim=dim)
""",
        "0.2": f"""{HEAD['0.2']}
import functools
import torch
log_softmax = functools.partial(torch.log_softmax)     # a partial
""",
        "0.3": f"""{HEAD['0.3']}
import torch.nn.functional as F
def _loss_helper(a, b, **kw):                           # a wrapper
    return getattr(F, "cross" + "_entropy")(a, b, **kw)
def cross_entropy(logits, targets, ignore_index=-100):
    return _loss_helper(logits, targets, ignore_index=ignore_index)
""",
        "0.4": honest("0.4"),
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path)
    assert points(result) == {"0.1": 0, "0.2": 0, "0.3": 0, "0.4": 1}, result


def test_crashes_fail_only_their_exercise_and_are_named(tmp_path):
    answers = {
        # plmkit's softmax behind a wrapper, to show a wrapper of plmkit is caught too
        "0.1": f"""{HEAD['0.1']}
from plmkit import basics
def softmax(x, dim=-1):
    return (lambda t: basics.softmax(t, dim=dim))(x)
""",
        "0.2": f"""{HEAD['0.2']}
import os
def log_softmax(x, dim=-1):
    os._exit(3)                       # the kernel dies while the check runs this
""",
        "0.3": f"""{HEAD['0.3']}
def cross_entropy(logits, targets, ignore_index=-100):
    return logits.sum()
raise SystemExit("the exercise cell stops here")
""",
        "0.4": honest("0.4"),
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path)
    assert points(result) == {"0.1": 0, "0.2": 0, "0.3": 0, "0.4": 1}, result
    assert result["0.2"]["status"] == "crash"
    assert "stopped the kernel" in result["0.2"]["verdict"] and "status 3" in result["0.2"]["verdict"]
    assert "SystemExit" in result["0.3"]["verdict"]


def test_endless_loop_reading_the_pristine_notebook_and_writing_notebook_files(tmp_path):
    learner = tmp_path / f"{CH}.ipynb"
    answers = {
        # an endless loop that swallows the interrupt
        "0.1": f"""{HEAD['0.1']}
def softmax(x, dim=-1):
    while True:
        try:
            pass
        except BaseException:
            pass
""",
        "0.2": honest("0.2"),
        # read the notebook being run (the pristine expected outputs), print them, and
        # overwrite both that file and the learner's own notebook with the solutions
        "0.3": f"""{HEAD['0.3']}
import glob, json, shutil
def cross_entropy(logits, targets, ignore_index=-100):
    return logits.sum()
for name in glob.glob("*.ipynb"):
    for cell in json.load(open(name))["cells"]:
        for out in cell.get("outputs", []):
            print("".join(out.get("text", "")))
    shutil.copy({str(SOLVED)!r}, name)
shutil.copy({str(SOLVED)!r}, {str(learner)!r})
""",
        # 0.4 is left blank: the file now holds its solution, but the grader read it once
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path, "--timeout", "15")
    assert points(result) == {"0.1": 0, "0.2": 1, "0.3": 0, "0.4": 0}, result
    assert result["0.1"]["status"] == "crash" and "timed out after 15 s" in result["0.1"]["verdict"]
    assert result["0.4"]["status"] == "not attempted"
    # in the sandbox the book's solutions/ is an empty folder and the learner's file out of reach
    assert "No such file or directory" in result["0.3"]["verdict"] and "solutions" in result["0.3"]["verdict"]
    assert learner.read_bytes() != SOLVED.read_bytes()


def test_the_seed_is_not_there_when_exercise_cells_run(tmp_path):
    """Read the grading seed in the exercise cell, regenerate the cases, answer by lookup: no seed, no points.

    Each check cell gets the seed (and a fresh records folder) just before it runs, and loses it after."""
    answers = {
        "0.1": f"""{HEAD['0.1']}
import os, torch
from plmkit import basics
from plmkit.checks import warmup
_seed = os.environ.get("PLMKIT_GRADE_SEED")
_answers = []
if _seed is not None:
    for c in warmup.check_softmax.make_cases(int(_seed)):
        _answers.append((c["args"][0].clone(), basics.softmax(*c["args"], **c["kwargs"])))
def softmax(x, dim=-1):
    for k, v in _answers:
        if k.shape == x.shape and torch.equal(k, x):
            return v.clone()
    return x
""",
        # after 0.1's check: the seed and the records folder are gone again
        "0.2": honest("0.2") + '\nimport os\nassert "PLMKIT_GRADE_SEED" not in os.environ\n'
                               'assert "PLMKIT_GRADE_DIR" not in os.environ\n',
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path)
    assert points(result) == {"0.1": 0, "0.2": 1, "0.3": 0, "0.4": 0}, result


def test_switching_the_detector_off_processes_and_native_code_are_refused(tmp_path):
    """The PEP 578 audit hook: sys.setprofile saved and restored around the reference, the
    reference run in a subprocess, and ctypes, each from an exercise while its check runs."""
    answers = {
        "0.1": f"""{HEAD['0.1']}
import sys
from plmkit import basics
def softmax(x, dim=-1):
    saved = sys.getprofile()
    sys.setprofile(None)                       # the guard sees nothing ...
    try:
        return basics.softmax(x, dim=dim)
    finally:
        sys.setprofile(saved)                  # ... and finds its hook back in place
""",
        "0.2": f"""{HEAD['0.2']}
import subprocess, sys, torch, io
def log_softmax(x, dim=-1):
    buf = io.BytesIO(); torch.save(x, buf)
    code = "import sys, io, torch; x = torch.load(io.BytesIO(sys.stdin.buffer.read())); " \\
           f"b = io.BytesIO(); torch.save(torch.log_softmax(x, {{dim}}), b); sys.stdout.buffer.write(b.getvalue())"
    out = subprocess.run([sys.executable, "-c", code], input=buf.getvalue(), capture_output=True).stdout
    return torch.load(io.BytesIO(out))
""",
        "0.3": honest("0.3"),
        "0.4": f"""{HEAD['0.4']}
import ctypes
def train_loop(model, optimizer, batches, loss_fn):
    libc = ctypes.CDLL(None)                   # native code: could patch anything
    return [0.0]
""",
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path)
    assert points(result) == {"0.1": 0, "0.2": 0, "0.3": 1, "0.4": 0}, result
    assert "sys.setprofile is not allowed" in " ".join(result["0.1"]["reasons"]), result["0.1"]
    assert "subprocess.Popen is not allowed" in " ".join(result["0.2"]["reasons"]), result["0.2"]
    assert "ctypes.dlopen is not allowed" in " ".join(result["0.4"]["reasons"]), result["0.4"]


def test_patching_the_probe_or_the_guard_records_nothing_and_is_not_inherited(tmp_path):
    """The audit hook's integrity snapshot: `Guard._hit` patched at the top of 0.1 (a passing
    answer), `Probe._watch` patched while 0.4's check runs it; 0.2 then calls plmkit's reference."""
    answers = {
        "0.1": honest("0.1") + "\nfrom plmkit.checks import _guard\n_guard.Guard._hit = lambda self, rule, frame: None\n",
        "0.2": f"""{HEAD['0.2']}
from plmkit import basics
def log_softmax(x, dim=-1):
    return basics.log_softmax(x, dim=dim)
""",
        "0.3": honest("0.3"),
        "0.4": f"""{HEAD['0.4']}
from plmkit import basics
from plmkit.checks import _core
def train_loop(model, optimizer, batches, loss_fn):
    _core.Probe._watch = lambda self, fn, args, kwargs: fn(*args, **kwargs)
    return basics.train_loop(model, optimizer, batches, loss_fn)
""",
    }
    result = run_grader(notebook(tmp_path, answers), tmp_path)
    assert points(result) == {"0.1": 0, "0.2": 0, "0.3": 1, "0.4": 0}, result
    assert "recording machinery was changed (Guard._hit)" in result["0.1"]["verdict"], result["0.1"]
    assert "reference" in " ".join(result["0.2"]["reasons"]), result["0.2"]
    assert "Probe._watch" in result["0.4"]["verdict"], result["0.4"]
