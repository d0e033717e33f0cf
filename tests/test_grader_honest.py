"""Honest learners keep their points, and unusable or hostile notebook *files* give exit 2.

Most tests here are in-process (milliseconds); two grade chapter 0 end to end (~10 s each).
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import torch

from plmkit.cli import main
from plmkit.grading import grader
from plmkit.grading import notebook as nbt
from solution_code import solutions

from conftest import ROOT

from test_tamper import BLANK, CH, HEAD, SOLVED, honest  # noqa: F401  (the same chapter-0 fixtures)


def notebook(tmp_path: Path, answers: dict[str, str], name: str = f"{CH}.ipynb") -> Path:
    nb = nbt.read(BLANK)
    for cell in nb.cells:
        number = nbt.exercise_number(cell.source)
        if number in answers:
            cell.source = answers[number]
    path = tmp_path / name
    nbt.write(nb, path)
    return path


def graded(path: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    report = tmp_path / "report.json"
    code = main(["grade", str(path), "--json", str(report), *extra])
    data = json.loads(report.read_text())
    (nb,) = data["notebooks"]
    return code, {e["number"]: e for e in nb["exercises"]} | {"_notes": nb["notes"], "_error": nb["error"]}


# ---------------------------------------------------------------- end to end (chapter 0)

USES_MY_LOG_SOFTMAX = f"""{HEAD['0.3']}
def cross_entropy(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    return -log_softmax(logits[keep], dim=-1).gather(1, targets[keep][:, None]).mean()
"""


@pytest.mark.slow
def test_a_failing_exercise_keeps_its_definitions_and_default_dtype_is_fine(tmp_path):
    """The cascade: 0.2 is wrong only for dim != -1; 0.3 calls the learner's own log_softmax."""
    answers = {
        "0.1": honest("0.1").replace(HEAD["0.1"], HEAD["0.1"] + "\nimport torch\ntorch.set_default_dtype(torch.float64)"),
        "0.2": f"""{HEAD['0.2']}
def log_softmax(x, dim=-1):
    z = x - x.amax(dim=-1, keepdim=True)          # ignores `dim`: wrong for dim=0
    return z - z.exp().sum(dim=-1, keepdim=True).log()
""",
        "0.3": USES_MY_LOG_SOFTMAX,
        # 0.4's check builds a model under the default dtype (in Jupyter too): back to float32
        "0.4": honest("0.4").replace(HEAD["0.4"], HEAD["0.4"] + "\ntorch.set_default_dtype(torch.float32)"),
    }
    code, r = graded(notebook(tmp_path, answers), tmp_path)
    assert code == 1
    assert {n: r[n]["points"] for n in HEAD} == {"0.1": 1, "0.2": 0, "0.3": 1, "0.4": 1}, r


@pytest.mark.slow
def test_a_crashed_exercise_is_named_by_the_ones_that_need_it(tmp_path):
    """0.2's cell raises: it is not replayed, and 0.3 says it needs 0.2's log_softmax.

    0.4's cell also mentions `# Exercise 0.3:` in a comment: that does not make it a 0.3 answer."""
    answers = {
        "0.1": honest("0.1"),
        "0.2": f"""{HEAD['0.2']}
def log_softmax(x, dim=-1):
    return x - x.logsumexp(dim=dim, keepdim=True)
raise RuntimeError("half-written cell")
""",
        "0.3": USES_MY_LOG_SOFTMAX,
        "0.4": honest("0.4").replace(HEAD["0.4"], HEAD["0.4"] + "\n# Exercise 0.3: cross-entropy is the loss_fn here"),
    }
    code, r = graded(notebook(tmp_path, answers), tmp_path)
    assert code == 1
    assert {n: r[n]["points"] for n in HEAD} == {"0.1": 1, "0.2": 0, "0.3": 0, "0.4": 1}, r
    assert r["0.3"]["verdict"] == "❌ needs `log_softmax` from Exercise 0.2, which crashed", r["0.3"]
    assert r["0.3"]["status"] != "duplicate" and r["0.2"]["status"] == "fail"


# ---------------------------------------------------------------- in-process

def test_a_remark_naming_another_exercise_does_not_claim_it():
    heads = {"6.2": "# Exercise 6.2: SwiGLU feed-forward", "6.3": "# Exercise 6.3: rotary embeddings"}
    cell = "# Exercise 6.3: rotary embeddings\n# Exercise 6.2: ... I reuse my swiglu here\ndef apply_rope(): ..."
    assert grader.claimed_exercises(cell, heads) == {"6.3"}
    assert grader.claimed_exercises("# notes\n# Exercise 6.2: SwiGLU feed-forward\n", heads) == {"6.2"}
    stub = 'def f():\n    raise NotImplementedError("Exercise 6.2: write swiglu")'
    assert grader.claimed_exercises(stub, heads) == {"6.2"}
    assert grader.claimed_exercises("# Exercise 6.9: renamed\n", heads) == {"6.9"}


def test_a_failed_answer_is_replayed_as_its_definitions_only():
    src = ("import torch\n@torch.no_grad()\ndef f(x):\n    return x\nW = torch.ones(2)\n"
           "torch.Tensor.__eq__ = lambda a, b: True\nf(W)\n%time f(W)\nfor i in range(3):\n    pass\n")
    out = grader.definitions_only(src)
    assert "def f" in out and "@torch.no_grad()" in out and "W = torch.ones(2)" in out
    assert "__eq__" not in out and "f(W)" not in out.replace("def f(x)", "") and "for" not in out
    compile(out, "<replay>", "exec")
    assert grader.defined_names(src) >= {"torch", "f", "W"}


def test_a_count_given_as_an_exact_float_is_accepted_consistently(capsys):
    from plmkit.checks import inference, llama

    sol = solutions("06_llama")["kv_cache_bytes"]
    as_float = lambda *a, **k: float(sol(*a, **k))                 # noqa: E731
    assert llama.check_kv_cache_bytes.honour(as_float, seed=3).passed
    half = lambda *a, **k: sol(*a, **k) / 2 + 0.5                  # noqa: E731 - not an integer: still wrong
    v = llama.check_kv_cache_bytes.honour(half, seed=3)
    assert not v.passed and "expected an int, got float" in " ".join(v.reasons)
    sol9 = solutions("09_inference")["kv_cache_bytes"]
    assert inference.check_kv_cache_bytes.honour(lambda *a, **k: float(sol9(*a, **k)), seed=3).passed


def test_the_judge_follows_the_learners_default_dtype():
    from plmkit.checks import _core, warmup

    sol = solutions("00_warmup")["softmax"]
    ex = warmup.check_softmax
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)                    # as an exercise cell may do
        record = ex.run_probe((sol,), ex.make_cases(11))
        assert record["default_dtype"] == "float64"
    finally:
        torch.set_default_dtype(before)
    meta, tensors = _core.encode({**record, "seed": 11})
    verdict = ex.judge_record(11, _core.decode(json.loads(json.dumps(meta)), tensors))  # the grader: float32
    assert verdict.passed, verdict.text()
    assert torch.get_default_dtype() == before


def test_a_version_3_notebook_is_read_and_its_answers_found(tmp_path):
    v3 = nbformat.convert(nbformat.read(SOLVED, as_version=4), 3)
    path = tmp_path / "old.ipynb"
    path.write_text(nbformat.writes(v3, version=3))
    assert json.loads(path.read_text())["nbformat"] == 3
    nb = nbt.read(path)
    pristine = grader.pristine_notebook(CH)
    exercises = nbt.exercises(pristine)
    answers = grader.find_answers(pristine, exercises, nb)
    assert all(a.attempted and a.problem is None for a in answers.values()), answers
    assert grader._check_chapter(nb, path) == CH


def _meta(chapter):
    def edit(data):
        data["metadata"]["plmkit"]["chapter"] = chapter
    return edit


def _set(key, value):
    def edit(data):
        data["metadata"][key] = value
    return edit


def _cell(fn):
    def edit(data):
        fn(next(c for c in data["cells"] if c["cell_type"] == "code"))
    return edit


MALFORMED = {
    "plmkit null": (_set("plmkit", None), "not a notebook of this book"),
    "plmkit a string": (_set("plmkit", "00_warmup"), "metadata.plmkit must be an object"),
    "cell without source": (_cell(lambda c: c.pop("source")), "has no source"),
    "non-string source": (_cell(lambda c: c.__setitem__("source", 42)), "source is a int"),
    "list source with a number": (_cell(lambda c: c.__setitem__("source", ["x", 1])), "source is a list"),
    "chapter as an absolute path": (_meta(str(SOLVED.with_suffix(""))), "must be a chapter name"),
    "chapter with ../": (_meta("../solutions/00_warmup"), "must be a chapter name"),
    "chapter via /proc": (_meta("/proc/self/cwd/solutions/00_warmup"), "must be a chapter name"),
    "chapter not a string": (_meta(["00_warmup"]), "must be a chapter name"),
    "unknown chapter": (_meta("42_unknown"), "is not one of this book's chapters"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_notebooks_exit_2_with_one_line(tmp_path, capsys, name):
    edit, reason = MALFORMED[name]
    data = json.loads(BLANK.read_text())
    edit(data)
    path = tmp_path / "submission.ipynb"
    path.write_text(json.dumps(data))
    code = main(["grade", str(path)])
    out = capsys.readouterr().out
    assert code == 2 and reason in out and out.count("\n") == 1, out


def test_json_nested_100000_deep_exits_2(tmp_path, capsys):
    path = tmp_path / f"{CH}.ipynb"
    path.write_text('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["grade", str(path)]) == 2
    out = capsys.readouterr().out
    assert "nested more than" in out and out.count("\n") == 1


def test_the_chapter_is_looked_up_only_inside_the_reference_folder():
    with pytest.raises(nbt.NotebookError, match="not a chapter name"):
        grader.pristine_notebook("../notebooks/00_warmup", ROOT / "solutions")
