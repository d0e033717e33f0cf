"""A class batch through the sandbox: one submission cannot hurt another, and the gradebook.

One batch of chapter-0 notebooks (``--jobs 2``, about 30 s on 2 cores) holds each batch
sabotage of issue 30 next to honest submissions; the honest ones must keep every point.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from plmkit.cli import main
from plmkit.grading import grader, sandbox
from plmkit.grading import notebook as nbt

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sandbox")]
CH = "00_warmup"
BLANK = ROOT / "notebooks" / f"{CH}.ipynb"
SOLVED = ROOT / "solutions" / f"{CH}.ipynb"
ALL = ["0.1", "0.2", "0.3", "0.4"]


def honest(number: str) -> str:
    nb = nbt.read(SOLVED)
    return next(c.source for c in nb.cells if nbt.exercise_number(c.source) == number)


def submission(folder: Path, name: str, answers: dict[str, str]) -> Path:
    nb = nbt.read(BLANK)
    for cell in nb.cells:
        number = nbt.exercise_number(cell.source)
        if number in answers:
            cell.source = answers[number]
    path = folder / name
    nbt.write(nb, path)
    return path


def with_prelude(number: str, prelude: str) -> str:
    """The honest answer, after some code that runs first in the same cell."""
    head, rest = honest(number).split("\n", 1)
    return f"{head}\n{prelude}\n{rest}"


SANDBOX_PROBE = """
import os, socket, pathlib
assert not (pathlib.Path({root!r}) / "solutions" / "00_warmup.ipynb").exists(), "solutions/ is visible"
try:
    open({root!r} + "/written-by-a-submission", "w")
    raise AssertionError("the book is writable")
except OSError:
    pass
try:
    socket.create_connection(("pypi.org", 443), timeout=3)
    raise AssertionError("the network is reachable")
except OSError:
    pass
assert os.getpid() < 100, "not in its own PID namespace"
"""

RECORDS_SABOTAGE = """
import os, shutil, pathlib
def softmax(x, dim=-1):                          # while the check runs: records/ becomes a file
    d = pathlib.Path(os.environ.get("PLMKIT_GRADE_DIR", "/nonexistent/x")).parent
    shutil.rmtree(d, ignore_errors=True)
    d.write_text("not a folder")
    return x
"""

RECORD_FOLDER = """
import os
def log_softmax(x, dim=-1):
    d = os.environ.get("PLMKIT_GRADE_DIR", "/nonexistent")
    os.makedirs(os.path.join(d, "0.2.json"), exist_ok=True)   # the record becomes a folder
    os.makedirs(os.path.join(d, "0.2.safetensors"), exist_ok=True)
    return x
"""

BIG_RECORD = """
def cross_entropy(logits, targets, ignore_index=-100):
    return [float(i) for i in range(3_000_000)]   # a ~45 MB record
"""

TOO_MUCH_MEMORY = """
import torch
def train_loop(model, optimizer, batches, loss_fn):
    big = torch.ones(4 * 2**30, dtype=torch.uint8)     # 4 GiB, over the 2 GB limit of this batch
    return [float(big.sum())]
"""

NEIGHBOUR_ATTACK = """
import os, signal, subprocess, sys, glob
victims = {victims!r}
for pid in os.listdir("/proc"):                  # read every process's argv, write every notebook named
    try:
        args = open(f"/proc/{{pid}}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    victims += [a.decode() for a in args if a.endswith(b".ipynb")]
for v in victims + glob.glob("/tmp/**/*.ipynb", recursive=True):
    try:
        open(v, "w").write("{{}}")
    except OSError:
        pass
for pid in os.listdir("/proc"):                  # kill every other process it can see (the grader)
    if pid.isdigit() and int(pid) not in (os.getpid(),):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
# a daemon that outlives the cell and would keep hurting later runs
subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)  # {marker}"],
                 start_new_session=True)
"""


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    ok, how = sandbox.probe()
    assert ok, f"CI has user namespaces: the sandbox must be active here ({how})"
    folder = tmp_path_factory.mktemp("class")
    subs = folder / "submissions"
    subs.mkdir()
    marker = f"plmkit-daemon-{os.getpid()}"
    alice = submission(subs, "alice.ipynb", {n: honest(n) for n in ALL})
    bob = submission(subs, "bob.ipynb", {"0.1": with_prelude("0.1", SANDBOX_PROBE.format(root=str(ROOT))),
                                         **{n: honest(n) for n in ALL[1:]}})
    mallory = submission(subs, "mallory.ipynb", {
        "0.1": "# Exercise 0.1: numerically stable softmax\n" + RECORDS_SABOTAGE,
        "0.2": "# Exercise 0.2: log-softmax\n" + RECORD_FOLDER,
        "0.3": "# Exercise 0.3: cross-entropy with ignore_index\n" + BIG_RECORD,
        "0.4": "# Exercise 0.4: the training loop\n" + TOO_MUCH_MEMORY})
    eve = submission(subs, "eve.ipynb", {
        "0.1": with_prelude("0.1", NEIGHBOUR_ATTACK.format(victims=[str(alice), str(bob)], marker=marker)),
        **{n: honest(n) for n in ALL[1:]}})
    broken = subs / "zed.ipynb"
    broken.write_text('{"cells": [], "metadata": {"plmkit": null}, "nbformat": 4, "nbformat_minor": 5}')
    other = subs / "yan.ipynb"
    other.write_bytes((ROOT / "notebooks" / "01_tokenization.ipynb").read_bytes())
    roster = folder / "roster.csv"
    roster.write_text("file,student\nalice.ipynb,s001 Alice\nbob.ipynb,s002 Bob\n")
    before = {p.name: p.read_bytes() for p in subs.iterdir()}
    paths = [alice, mallory, eve, bob, broken, other]
    out = folder / "out"
    out.mkdir()
    code = main(["grade", *map(str, paths), "--jobs", "2", "--chapter", CH, "--roster", str(roster),
                 "--json", str(out / "grades.json"), "--csv", str(out / "grades.csv"),
                 "--feedback", str(out / "feedback"), "--memory", "2", "--timeout", "120"])
    data = json.loads((out / "grades.json").read_text())
    rows = {Path(n["path"]).stem: n for n in data["notebooks"]}
    return {"code": code, "rows": rows, "out": out, "subs": subs, "before": before, "marker": marker}


def pts(row) -> dict:
    return {e["number"]: e["points"] for e in row["exercises"]}


def test_the_sandbox_was_active_and_honest_neighbours_keep_every_point(batch):
    rows = batch["rows"]
    for name in ("alice", "bob", "mallory", "eve"):
        assert rows[name]["sandbox"].startswith("user, PID, mount and network namespaces"), rows[name]
    assert pts(rows["alice"]) == dict.fromkeys(ALL, 1), rows["alice"]
    assert pts(rows["bob"]) == dict.fromkeys(ALL, 1), rows["bob"]       # saw no solutions/, no network, read-only
    assert pts(rows["eve"])["0.2"] == pts(rows["eve"])["0.3"] == 1, rows["eve"]
    assert {p.name: p.read_bytes() for p in batch["subs"].iterdir()} == batch["before"]
    assert not (ROOT / "written-by-a-submission").exists()


def test_sabotage_becomes_that_submissions_row(batch):
    m = batch["rows"]["mallory"]
    assert m["error"] is None and sum(pts(m).values()) == 0, m
    verdicts = {e["number"]: e["verdict"] for e in m["exercises"]}
    assert "Not a directory" in verdicts["0.1"], verdicts                  # records/ became a file
    assert "Is a directory" in verdicts["0.2"], verdicts                   # a record became a folder
    assert "larger than 16 MiB" in verdicts["0.3"], verdicts               # a 45 MB record, refused unread
    reasons = " ".join(e["verdict"] + " ".join(e["reasons"]) for e in m["exercises"] if e["number"] == "0.4")
    assert "allocate" in reasons or "memory" in reasons, reasons


def test_no_process_outlives_its_submission(batch):
    left = []
    for pid in os.listdir("/proc"):
        try:
            if batch["marker"].encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
        except OSError:
            pass
    assert left == []


def test_unusable_and_wrong_chapter_notebooks_are_rows_with_exit_2(batch):
    assert batch["code"] == 2
    assert "not a notebook of this book" in batch["rows"]["zed"]["error"]
    assert "wrong chapter" in batch["rows"]["yan"]["error"]


def test_the_gradebook_has_one_row_per_student(batch):
    with open(batch["out"] / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"s001 Alice", "s002 Bob", "mallory", "eve", "zed", "yan"}
    assert [rows["s001 Alice"][n] for n in ALL] == ["1"] * 4 and rows["s001 Alice"]["total"] == "4"
    assert rows["s001 Alice"]["status"] == "complete" and float(rows["s001 Alice"]["seconds"]) > 0
    assert rows["mallory"]["total"] == "0" and rows["mallory"]["status"] == "incomplete"
    assert rows["zed"]["status"] == "error" and rows["zed"]["reason"]
    feedback = batch["out"] / "feedback"
    assert sorted(p.name for p in feedback.iterdir()) == sorted(
        ["s001_Alice.md", "s002_Bob.md", "mallory.md", "eve.md", "zed.md", "yan.md"])
    text = (feedback / "mallory.md").read_text()
    assert "| 0.1 |" in text and "0/1" in text
    assert "could not be graded" in (feedback / "zed.md").read_text()


def test_partial_credit_counts_checks():
    e = grader.ExerciseResult("0.1", "softmax", 0, 2, False, "❌ Exercise 0.1 softmax: 6/8 checks passed")
    e.count_checks()
    assert (e.checks_passed, e.checks_total) == (6, 8)
    e.give_partial_credit()
    assert e.points == 1.5
    crash = grader.ExerciseResult("0.2", "x", 0, 1, False, "❌ your exercise cell raised NameError: x")
    crash.count_checks()
    crash.give_partial_credit()
    assert crash.points == 0


def test_without_namespaces_the_grader_says_so_loudly(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sandbox, "probe", lambda: (False, "no user namespaces (test)"))
    path = tmp_path / "bad.ipynb"
    path.write_text("not json")
    assert main(["grade", str(path)]) == 2
    assert "WARNING: NO SANDBOX: no user namespaces (test)" in capsys.readouterr().err
