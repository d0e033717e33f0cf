"""`plmkit grade` end to end on chapter 0: what is graded, how answers are found, crashes,
unusable input. The deliberate attacks from exercise cells are in test_tamper.py."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import nbformat
import pytest

from plmkit.cli import main
from plmkit.grading import notebook as nbt

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grader")]
CH = "00_warmup"
BLANK = ROOT / "notebooks" / f"{CH}.ipynb"
SOLVED = ROOT / "solutions" / f"{CH}.ipynb"
ALL = ["0.1", "0.2", "0.3", "0.4"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def grade(path: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    """Run `plmkit grade` on `path`; check the file is untouched; return (exit code, json report)."""
    before = sha(path)
    report = tmp_path / f"{path.stem}-report.json"
    code = main(["grade", str(path), "--json", str(report), *extra])
    assert sha(path) == before, "the grader must never modify the learner's notebook"
    data = json.loads(report.read_text()) if report.exists() else {}
    return code, data


def outcomes(data: dict) -> dict[str, bool]:
    (nb,) = data["notebooks"]
    return {e["number"]: e["passed"] for e in nb["exercises"]}


def verdicts(data: dict) -> dict[str, str]:
    (nb,) = data["notebooks"]
    return {e["number"]: e["verdict"] for e in nb["exercises"]}


def variant(tmp_path: Path, name: str, edit, base: Path = BLANK) -> Path:
    nb = nbt.read(base)
    edit(nb)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def exercise_cell(nb, number: str):
    return next(c for c in nb.cells if nbt.exercise_number(c.source) == number)


def statuses(data: dict) -> dict[str, str]:
    (nb,) = data["notebooks"]
    return {e["number"]: e["status"] for e in nb["exercises"]}


def check_cell(nb, number: str):
    ex = next(e for e in nbt.exercises(nb) if e.number == number)
    return nb.cells[ex.check_indices[0]]


def solution_source(number: str) -> str:
    return exercise_cell(nbt.read(SOLVED), number).source


def fill(nb, numbers, source_for=solution_source):
    for n in numbers:
        exercise_cell(nb, n).source = source_for(n)


def test_solutions_pass_everything(tmp_path, capsys):
    code, data = grade(SOLVED, tmp_path)
    out = capsys.readouterr().out
    assert code == 0, out
    assert outcomes(data) == dict.fromkeys(ALL, True)
    assert data["score"] == data["max_score"] == 4
    assert "total: 4/4 points" in out
    assert all(v.startswith("✅ Exercise") for v in verdicts(data).values())


def test_blank_notebook_fails_everything(tmp_path, capsys):
    code, data = grade(BLANK, tmp_path)
    assert code == 1
    assert outcomes(data) == dict.fromkeys(ALL, False)
    assert data["score"] == 0
    assert all("not attempted yet" in v for v in verdicts(data).values()), verdicts(data)


def test_a_wrong_answer_fails_only_its_exercise(tmp_path):
    def edit(nb):
        fill(nb, ALL)
        exercise_cell(nb, "0.1").source = (
            "# Exercise 0.1: numerically stable softmax\n"
            "def softmax(x, dim=-1):\n"
            "    return x.exp() / x.exp().sum(dim=dim, keepdim=True)\n")
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", edit), tmp_path)
    assert code == 1
    assert outcomes(data) == {"0.1": False, "0.2": True, "0.3": True, "0.4": True}
    assert "0.1" in verdicts(data)["0.1"] and verdicts(data)["0.1"].startswith("❌")


def test_editing_expected_outputs_or_check_cells_does_not_fake_a_pass(tmp_path):
    def edit(nb):
        for n in ALL:  # make every stored expected output match what the blank code prints
            check_cell(nb, n).outputs = [nbformat.v4.new_output(
                "stream", name="stdout",
                text=f"❌ Exercise {n} x: not attempted yet (your code still raises NotImplementedError)\n")]
        for n in ALL[:2]:  # and replace two checks by a print of the passing verdict
            check_cell(nb, n).source = f"# NBVAL_CHECK_OUTPUT\nprint('✅ Exercise {n}: 9/9 checks passed')"
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", edit), tmp_path)
    assert code == 1 and outcomes(data) == dict.fromkeys(ALL, False)


def test_deleting_check_cells_changes_nothing(tmp_path):
    def drop_checks(nb):
        nb.cells = [c for c in nb.cells if not nbt.is_check(c)]
    code, data = grade(variant(tmp_path, "blank-nochecks.ipynb", drop_checks), tmp_path)
    assert code == 1 and outcomes(data) == dict.fromkeys(ALL, False)
    # the learner's notebook has no chapter name in its file name: metadata decides
    code, data = grade(variant(tmp_path, "solved-nochecks.ipynb", drop_checks, base=SOLVED), tmp_path)
    assert code == 0 and outcomes(data) == dict.fromkeys(ALL, True)


def test_a_notebook_of_another_chapter_is_refused(tmp_path, capsys):
    def other(nb):
        nb.metadata["plmkit"]["chapter"] = "01_tokenization"
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", other), tmp_path)
    assert code == 2
    assert "named for chapter 00_warmup but the notebook is chapter 01_tokenization" in capsys.readouterr().out

    def unknown(nb):
        nb.metadata["plmkit"]["chapter"] = "42_unknown"
    code, _ = grade(variant(tmp_path, "submission.ipynb", unknown), tmp_path)
    assert code == 2
    assert "'42_unknown' is not one of this book's chapters" in capsys.readouterr().out


@pytest.mark.parametrize("content, reason", [
    (b"this is not json", "not valid JSON"),
    (b'{"hello": "world"}', "not a Jupyter notebook"),
    (b"\xff\xfe\x00garbage", "not a text file"),
])
def test_unusable_input_exits_2_with_a_reason(tmp_path, capsys, content, reason):
    path = tmp_path / f"{CH}.ipynb"
    path.write_bytes(content)
    code, data = grade(path, tmp_path)
    assert code == 2
    out = capsys.readouterr().out
    assert reason in out and out.count("\n") == 1
    assert data["notebooks"][0]["error"]


def test_plain_notebook_without_chapter_is_refused(tmp_path, capsys):
    path = tmp_path / "mine.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    assert grade(path, tmp_path)[0] == 2
    assert "not a notebook of this book" in capsys.readouterr().out


def test_bad_timeout_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["grade", str(BLANK), "--timeout", "0"])
    assert "--timeout must be a positive number" in capsys.readouterr().err


def test_reference_folder_of_exercise_notebooks(tmp_path):
    code, data = grade(SOLVED, tmp_path, "--reference", str(ROOT / "notebooks"))
    assert code == 0 and outcomes(data) == dict.fromkeys(ALL, True)
    code, _ = grade(SOLVED, tmp_path, "--reference", str(tmp_path / "missing"))
    assert code == 2


def test_a_reference_folder_that_was_never_executed_is_refused(tmp_path, capsys):
    ref = tmp_path / "unexecuted"
    ref.mkdir()
    nb = nbt.read(BLANK)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbt.write(nb, ref / f"{CH}.ipynb")
    code, data = grade(BLANK, tmp_path, "--reference", str(ref))
    out = capsys.readouterr().out
    assert code == 2, out
    assert "never executed" in out and out.count("\n") == 1
    assert data["notebooks"][0]["error"] and data["max_score"] == 0


# ---------------------------------------------------------------- how answers are found

def test_a_comment_above_the_header_and_new_ids_still_grade(tmp_path):
    def edit(nb):
        fill(nb, ALL)
        for n in ALL:
            cell = exercise_cell(nb, n)
            cell.source = f"# my answer, written on the train\n\n{cell.source}"
            cell.id = "mine" + n.replace(".", "")
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", edit), tmp_path)
    assert code == 0, verdicts(data)
    assert outcomes(data) == dict.fromkeys(ALL, True)


def test_the_pristine_notebook_decides_what_is_graded(tmp_path):
    """Titles, points and the list of exercises come from the pristine notebook, not the learner's."""
    def edit(nb):
        fill(nb, ALL)
        ex1 = next(c for c in nb.cells if nbt.exercise_number(c.source) == "0.1")
        ex1.source = ex1.source.replace("numerically stable softmax", "worth a lot")
        ex1.metadata.setdefault("plmkit", {})["points"] = 100
        ex2 = exercise_cell(nb, "0.2")   # renamed and re-identified: 0.2 is now missing
        ex2.source = ex2.source.replace("# Exercise 0.2:", "# Exercise 0.9:")
        ex2.id = "renamed"
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", edit), tmp_path)
    assert code == 1
    (nb,) = data["notebooks"]
    assert [e["number"] for e in nb["exercises"]] == ALL
    assert nb["exercises"][0]["title"] == "numerically stable softmax"
    assert data["max_score"] == 4 and data["score"] == 3
    assert outcomes(data) == {"0.1": True, "0.2": False, "0.3": True, "0.4": True}
    assert statuses(data)["0.2"] == "missing"
    assert "no cell of your notebook holds exercise 0.2" in verdicts(data)["0.2"]


def test_two_cells_with_work_for_one_exercise_are_reported(tmp_path):
    def edit(nb):
        fill(nb, ALL)
        ex = exercise_cell(nb, "0.2")
        copy_ = copy.deepcopy(ex)
        copy_.id = "copy02"
        copy_.source = ex.source.replace("return", "return 0 *", 1)   # a second, different attempt
        nb.cells.insert(nb.cells.index(ex) + 1, copy_)
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", edit), tmp_path)
    assert code == 1
    assert outcomes(data) == {"0.1": True, "0.2": False, "0.3": True, "0.4": True}
    assert statuses(data)["0.2"] == "duplicate"
    assert "2 cells of your notebook hold exercise 0.2" in verdicts(data)["0.2"]


def test_a_copied_cell_is_graded_and_the_untouched_stub_ignored(tmp_path):
    """The learner duplicated the stub cell and answered in the copy: the copy is graded."""
    def edit(nb):
        ex = exercise_cell(nb, "0.1")
        answer = copy.deepcopy(ex)
        answer.id = "answer01"
        answer.source = solution_source("0.1")
        nb.cells.insert(nb.cells.index(ex) + 1, answer)
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", edit), tmp_path)
    assert outcomes(data) == {"0.1": True, "0.2": False, "0.3": False, "0.4": False}
    (nb,) = data["notebooks"]
    assert any("untouched exercise stub" in n for n in nb["exercises"][0]["notes"])


def test_a_debug_print_in_an_honest_solution_keeps_full_points(tmp_path):
    def edit(nb):
        fill(nb, ALL)
        for n in ALL:
            cell = exercise_cell(nb, n)
            cell.source += f'\nprint("debug: exercise {n} defined")\nprint("❌ Exercise {n}: not a verdict")\n'
        ex = exercise_cell(nb, "0.1")   # and inside the function, on every call
        ex.source = ex.source.replace("    z = x", "    print('softmax called with', tuple(x.shape))\n    z = x")
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", edit), tmp_path)
    assert code == 0, verdicts(data)
    assert data["score"] == 4


def test_no_kernel_is_an_unusable_setup_not_a_crash(tmp_path, capsys, monkeypatch):
    from plmkit.grading import kernel

    def broken(self):
        raise FileNotFoundError("no such file: ipykernel_launcher")
    monkeypatch.setattr(kernel.Kernel, "start", broken)
    code, data = grade(SOLVED, tmp_path, "--no-sandbox")
    out = capsys.readouterr().out
    assert code == 2 and "could not start a Jupyter kernel" in out and out.count("\n") == 1


def test_an_oversized_record_is_refused_unread(tmp_path, monkeypatch):
    from plmkit.grading import grader

    monkeypatch.setattr(grader, "MAX_RECORD_BYTES", 64)
    code, data = grade(variant(tmp_path, f"{CH}.ipynb", lambda nb: fill(nb, ["0.4"])), tmp_path, "--no-sandbox")
    assert code == 1 and outcomes(data) == dict.fromkeys(ALL, False)
    assert "recorded answers are larger than" in verdicts(data)["0.4"]


def test_judging_never_looks_for_new_checker_modules_on_disk(monkeypatch, tmp_path):
    """After the grader's load_all(), a module file a kernel drops into plmkit/checks is never imported."""
    from plmkit import checks
    from plmkit.checks import _core
    from plmkit.grading.grader import load_checkers

    judge = load_checkers()
    listed = []
    monkeypatch.setattr(_core, "load_all", lambda: listed.append(1) or checks.registry())
    verdict = judge("0.1", 7, tmp_path)                 # no record there: fails, without re-listing
    assert not verdict.passed and listed == []


@pytest.mark.parametrize("module", ["notebook", "author", "grader", "kernel", "audit", "sandbox", "worker"])
def test_grading_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"plmkit.grading.{module}"))
    assert result.failed == 0


def test_the_kernel_names_each_way_a_cell_ends(tmp_path):
    import os

    from plmkit.grading.kernel import DIED, ERROR, OK, TIMEOUT, Kernel, death_reason

    assert "SIGSEGV" in death_reason(-11) and "native" in death_reason(-11)
    assert death_reason(None) == "the kernel died"
    with Kernel(tmp_path, dict(os.environ), timeout=20) as k:
        out = k.run("x = 41\nprint('hello')")
        assert (out.status, out.output) == (OK, "hello\n")
        out = k.run("raise MemoryError()")
        assert out.status == ERROR and out.message == "MemoryError (out of memory)"
        out = k.run("raise SystemExit(2)")
        assert out.status == ERROR and out.ename == "SystemExit"
        assert k.run("print(x + 1)").output == "42\n"           # the kernel lived on
        out = k.run("import os\nos._exit(4)")
        assert out.status == DIED and "status 4" in out.message and not k.alive
    with Kernel(tmp_path, dict(os.environ), timeout=2) as k:
        out = k.run("while True:\n    try:\n        pass\n    except KeyboardInterrupt:\n        pass")
        assert out.status == TIMEOUT and "2 s" in out.message and not k.alive
