"""The single-source pipeline: notebooks/ is exactly what `plmkit author` makes of solutions/."""
import json

import nbformat
import pytest

from plmkit.grading import author as authoring
from plmkit.grading import notebook as nbt

from conftest import CHAPTERS, ROOT


def test_there_are_chapters():
    assert "00_warmup" in CHAPTERS


def test_notebooks_are_up_to_date():
    stale = authoring.author(ROOT, check=True)
    assert stale == [], f"run `plmkit author`: out of date: {stale}"


def test_strip_solutions_keeps_indentation_and_everything_outside():
    src = ("# Exercise 1.2: two regions\n"
           "def f(x):\n"
           "    y = 1\n"
           "    ### BEGIN SOLUTION\n"
           "    y = x + 1\n"
           "    ### END SOLUTION\n"
           "    return y\n"
           "\n"
           "### BEGIN SOLUTION\n"
           "z = 3\n"
           "### END SOLUTION")
    out = authoring.strip_solutions(src, "1.2")
    assert out.splitlines() == [
        "# Exercise 1.2: two regions", "def f(x):", "    y = 1",
        '    raise NotImplementedError("Exercise 1.2: replace this line with your code")',
        "    return y", "",
        'raise NotImplementedError("Exercise 1.2: replace this line with your code")']


@pytest.mark.parametrize("src, message", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
])
def test_unbalanced_markers_are_errors(src, message):
    with pytest.raises(nbt.NotebookError, match=message):
        authoring.strip_solutions(src, "0.1")


def test_solution_region_outside_an_exercise_cell_is_an_error():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx=1\n### END SOLUTION")])
    with pytest.raises(nbt.NotebookError, match="does not start with '# Exercise"):
        authoring.prepare_solution(nb, "00_warmup")


def test_exercise_without_check_is_an_error():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# Exercise 0.1: x\n### BEGIN SOLUTION\nx=1\n### END SOLUTION")])
    with pytest.raises(nbt.NotebookError, match="no check cell"):
        authoring.make_exercise_notebook(nb, "00_warmup")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_generated_notebook_structure(chapter):
    sol = nbt.read(ROOT / "solutions" / f"{chapter}.ipynb")
    gen = nbt.read(ROOT / "notebooks" / f"{chapter}.ipynb")
    text = (ROOT / "notebooks" / f"{chapter}.ipynb").read_text()
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert gen.metadata["plmkit"]["chapter"] == chapter
    kept = [c for c in sol.cells if "book-only" not in c.metadata.get("tags", [])]
    assert [c.id for c in gen.cells] == [c.id for c in kept], "cell ids must survive authoring"
    exercises = nbt.exercises(gen)
    assert len(exercises) >= 3
    for ex in exercises:
        cell = gen.cells[ex.cell_index]
        assert f'NotImplementedError("Exercise {ex.number}:' in cell.source
        assert cell.outputs == [] and cell.execution_count is None
        assert ex.number.split(".")[0] == str(int(chapter[:2]))
    for s, g in zip(kept, gen.cells):
        if nbt.is_check(g):
            assert g.source == s.source and g.outputs == s.outputs and g.outputs, \
                "check cells keep their expected verdict"
            verdicts = [o["text"] for o in g.outputs if o.get("output_type") == "stream"]
            assert len(verdicts) == 1 and verdicts[0].startswith("✅ Exercise ") and verdicts[0].count("\n") == 1
        elif not nbt.is_exercise(g):
            assert g.source == s.source


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_notebook_was_executed_in_order(chapter):
    """Every code cell has run, once, top to bottom (nbval refuses unrun cells with outputs)."""
    nb = json.loads((ROOT / "solutions" / f"{chapter}.ipynb").read_text())
    counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), "re-run `plmkit execute` on this chapter"
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"a cell failed: {cell['source'][:80]}"
    exercise_cells = [c for c in nb["cells"] if nbt.exercise_number("".join(c["source"]))]
    for c in exercise_cells:
        assert "hide-input" in c["metadata"].get("tags", [])
        assert c["metadata"]["mystnb"]["code_prompt_show"] == "Show solution"


def test_author_cli_check_reports_stale_notebook(tmp_path):
    import shutil
    from plmkit.cli import main
    (tmp_path / "solutions").mkdir()
    shutil.copy(ROOT / "solutions" / "00_warmup.ipynb", tmp_path / "solutions")
    assert main(["author", "--root", str(tmp_path), "--check"]) == 1
    assert main(["author", "--root", str(tmp_path)]) == 0
    assert main(["author", "--root", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "notebooks" / "00_warmup.ipynb").read_text() == \
        (ROOT / "notebooks" / "00_warmup.ipynb").read_text()
