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
    tasks = {ex.cell_index - 1: line for ex in exercises
             for e, line in authoring.forbid_lines(chapter).items() if e == ex.number}
    for i, (s, g) in enumerate(zip(kept, gen.cells)):
        if i in tasks:                           # the task text gains its spec's "Not allowed here" line
            assert g.source == authoring.with_forbid_line(s.source, tasks[i])
        elif nbt.is_check(g):
            assert g.source == s.source and g.outputs == s.outputs and g.outputs, \
                "check cells keep their expected verdict"
            assert g.metadata["jupyter"]["outputs_hidden"] is True and g.metadata["collapsed"] is True, \
                "a learner must not see the stored green verdict under an unsolved stub"
            assert not s.metadata.get("jupyter", {}).get("outputs_hidden"), "the book shows it"
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


# ---------------------------------------------------------------- grade-skip tags

@pytest.mark.parametrize("chapter", CHAPTERS)
def test_grade_skip_tags_leave_every_exercise_what_it_needs(chapter):
    nb = nbt.read(ROOT / "solutions" / f"{chapter}.ipynb")
    assert authoring.grading_gaps(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(authoring.GRADE_SKIP in c.metadata.get("tags", []) for c in code), (
        f"{chapter}: no cell is tagged {authoring.GRADE_SKIP}: tag the demo cells (training, plots, widgets) "
        "so that `plmkit grade` runs only the setup, exercise and check cells (book/authoring.md)")


def test_a_skipped_cell_that_an_exercise_needs_is_reported():
    nb = nbt.read(ROOT / "solutions" / "00_warmup.ipynb")
    setup = next(c for c in nb.cells if c.cell_type == "code")
    demo = nbformat.v4.new_code_cell("SCALE = 3.0", metadata={"tags": [authoring.GRADE_SKIP]})
    nb.cells.insert(nb.cells.index(setup) + 1, demo)
    ex = next(c for c in nb.cells if nbt.exercise_number(c.source) == "0.1")
    ex.source = ex.source.replace("    e = z.exp()", "    e = (z * SCALE / SCALE).exp()")
    gaps = authoring.grading_gaps(nb)
    assert len(gaps) == 1 and "`SCALE`" in gaps[0] and "grade-skip" in gaps[0]
    with pytest.raises(nbt.NotebookError, match="SCALE"):
        authoring.make_exercise_notebook(nb, "00_warmup")
    demo.metadata["tags"] = []                      # run by the grader: fine
    assert authoring.grading_gaps(nb) == []
    ex.metadata["tags"] = ex.metadata.get("tags", []) + [authoring.GRADE_SKIP]
    assert any("cannot be tagged" in g for g in authoring.grading_gaps(nb))


# ---------------------------------------------------------------- the class edition (no solutions)

def solution_regions(source: str) -> list[str]:
    """The text between each BEGIN/END SOLUTION pair, stripped of blank lines."""
    regions, inside = [], None
    for line in source.split("\n"):
        if line.strip() == authoring.BEGIN:
            inside = []
        elif line.strip() == authoring.END:
            regions.append("\n".join(ln for ln in inside if ln.strip()))
            inside = None
        elif inside is not None:
            inside.append(line)
    return regions


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_class_edition_shows_no_solution(chapter):
    sol = nbt.read(ROOT / "solutions" / f"{chapter}.ipynb")
    edition = authoring.class_edition(sol, chapter)
    text = json.dumps([c.source for c in edition.cells] + [c.get("outputs", []) for c in edition.cells])
    regions = [r for c in sol.cells if nbt.is_exercise(c) for r in solution_regions(c.source)]
    assert regions
    for region in regions:
        assert json.dumps(region)[1:-1] not in text, f"a solution is in the class edition:\n{region}"
    assert "BEGIN SOLUTION" not in text
    learner = nbt.read(ROOT / "notebooks" / f"{chapter}.ipynb")
    stubs = [c.source for c in learner.cells if nbt.is_exercise(c)]
    assert [c.source for c in edition.cells if nbt.is_exercise(c)] == stubs
    for cell in edition.cells:
        if nbt.is_exercise(cell):
            assert not cell.outputs and "hide-input" not in cell.metadata.get("tags", [])
    # nothing green under a stub, no answers to the questions
    for cell in edition.cells:
        if nbt.is_check(cell):
            assert cell.outputs == [], "the class edition shows a stored verdict under a stub"
    text = json.dumps([c.source for c in edition.cells])
    assert "<summary>Answers" not in text
    if any("<summary>Answers" in c.source for c in sol.cells):
        assert authoring.ANSWERS_NOTE in text
    # the page is otherwise the book's: prose, book-only cells, demo outputs
    assert len(edition.cells) == len(sol.cells)
    assert [c.source for c in edition.cells if not nbt.is_exercise(c)] == \
           [authoring.ANSWERS_RE.sub(authoring.ANSWERS_NOTE, c.source) for c in sol.cells if not nbt.is_exercise(c)]
    demo = [(e.outputs, s.outputs) for e, s in zip(edition.cells, sol.cells)
            if e.cell_type == "code" and not nbt.is_exercise(e) and not nbt.is_check(e)]
    assert all(a == b for a, b in demo), "demo outputs stay"


def test_class_edition_sources_build_a_book_tree(tmp_path):
    dest = tmp_path / "class"
    assert authoring.write_class_edition(ROOT, dest) == CHAPTERS
    for name in ("_config.yml", "_toc.yml", "book/intro.md", "notebooks/00_warmup.ipynb"):
        assert (dest / name).is_file(), name
    for chapter in CHAPTERS:
        nb = nbt.read(dest / "solutions" / f"{chapter}.ipynb")
        assert not any(authoring.BEGIN in c.source for c in nb.cells)
    intro = (dest / "book" / "intro.md").read_text()
    assert "Show solution" not in intro and authoring.CLASS_SOLUTIONS_NOTE in intro
    assert "Show solution" in (ROOT / "book" / "intro.md").read_text(), "the full edition keeps its note"
    with pytest.raises(ValueError, match="outside the book's sources"):
        authoring.write_class_edition(ROOT, ROOT)
    with pytest.raises(ValueError, match="outside the book's sources"):
        authoring.write_class_edition(ROOT, ROOT / "book")


def test_tag_demo_cells_tags_exactly_what_grading_does_not_need():
    nb = nbt.read(ROOT / "solutions" / "00_warmup.ipynb")
    for cell in nb.cells:                       # start from an untagged chapter
        if authoring.GRADE_SKIP in cell.metadata.get("tags", []):
            cell.metadata["tags"].remove(authoring.GRADE_SKIP)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    needed = nbformat.v4.new_code_cell("SCALE = 3.0")
    nb.cells.insert(nb.cells.index(setup) + 1, needed)
    ex = next(c for c in nb.cells if nbt.exercise_number(c.source) == "0.1")
    ex.source = ex.source.replace("    e = z.exp()", "    e = (z * SCALE / SCALE).exp()")
    n = authoring.tag_demo_cells(nb)
    assert n > 0 and authoring.grading_gaps(nb) == []
    skipped = lambda c: authoring.GRADE_SKIP in c.metadata.get("tags", [])  # noqa: E731
    assert not skipped(setup) and not skipped(needed)
    assert not any(skipped(c) for c in nb.cells if nbt.is_exercise(c) or nbt.is_check(c))
    assert authoring.tag_demo_cells(nb) == 0    # idempotent
    # the shipped chapter is tagged the same way
    shipped = nbt.read(ROOT / "solutions" / "00_warmup.ipynb")
    assert [skipped(c) for c in shipped.cells] == [skipped(c) for c in nb.cells if c is not needed]


# ---------------------------------------------------------------- learners keep their work

def _book_copy(tmp_path):
    import shutil
    (tmp_path / "solutions").mkdir()
    shutil.copy(ROOT / "solutions" / "00_warmup.ipynb", tmp_path / "solutions")
    assert authoring.author(tmp_path)                       # notebooks/00_warmup.ipynb written
    return tmp_path / "solutions" / "00_warmup.ipynb", tmp_path / "notebooks" / "00_warmup.ipynb"


def _edit(path, edit):
    nb = nbt.read(path)
    edit(nb)
    nbt.write(nb, path)


def _exercise(nb, number):
    return next(c for c in nb.cells if nbt.exercise_number(c.source) == number)


def test_author_refuses_to_overwrite_a_learners_exercise_cells(tmp_path, capsys):
    from plmkit.cli import main
    sol, learner = _book_copy(tmp_path)
    answer = _exercise(nbt.read(sol), "0.1").source
    _edit(learner, lambda nb: setattr(_exercise(nb, "0.1"), "source", answer))   # the learner's work
    _edit(sol, lambda nb: nb.cells[0].__setitem__("source", nb.cells[0].source + "\n\nA new sentence."))
    work = learner.read_text()
    assert main(["author", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "notebooks/00_warmup.ipynb: exercise 0.1 edited" in err and "--force" in err and "plmkit start" in err
    assert learner.read_text() == work, "the learner's notebook was overwritten"
    # running cells and saving changes no exercise cell: that notebook is regenerated
    assert main(["author", "--root", str(tmp_path), "--force"]) == 0
    assert "A new sentence." in learner.read_text() and answer not in learner.read_text()
    _edit(learner, lambda nb: _exercise(nb, "0.2").outputs.append(
        nbformat.v4.new_output("stream", name="stdout", text="ran\n")))
    _edit(sol, lambda nb: nb.cells[0].__setitem__("source", nb.cells[0].source + " Another."))
    assert main(["author", "--root", str(tmp_path)]) == 0


def test_a_stub_the_book_changed_is_not_mistaken_for_work(tmp_path):
    sol, learner = _book_copy(tmp_path)
    def new_stub(nb):
        cell = _exercise(nb, "0.1")
        header, rest = cell.source.split("\n", 1)
        cell.source = header + "\n# A new first comment\n" + rest
    _edit(sol, new_stub)                 # the exercise cell's stub changes, the learner did nothing
    assert authoring.author(tmp_path) == ["notebooks/00_warmup.ipynb"]
    assert "# A new first comment" in learner.read_text()
    gen = nbt.read(learner)
    assert authoring.learner_edits(gen, gen) == []
    _exercise(gen, "0.3").source += "\n# my note"
    assert authoring.learner_edits(gen, nbt.read(learner)) == ["0.3"]


def test_plmkit_start_copies_the_notebooks_once(tmp_path, capsys):
    from plmkit.cli import main
    from plmkit.grading.start import start
    dest = tmp_path / "mine"
    assert main(["start", str(dest), "--root", str(ROOT)]) == 0
    assert sorted(p.stem for p in dest.glob("*.ipynb")) == CHAPTERS
    assert (dest / "00_warmup.ipynb").read_text() == (ROOT / "notebooks" / "00_warmup.ipynb").read_text()
    (dest / "00_warmup.ipynb").write_text("my work")
    copied, kept = start(dest, root=ROOT)
    assert copied == [] and kept == [str(dest / f"{c}.ipynb") for c in CHAPTERS]
    assert (dest / "00_warmup.ipynb").read_text() == "my work"
    assert start(dest, root=ROOT, chapters=["00_warmup"], force=True)[0] == [str(dest / "00_warmup.ipynb")]
    with pytest.raises(ValueError, match="chapters must be among"):
        start(dest, root=ROOT, chapters=["99_nope"])
    with pytest.raises(ValueError, match="folder of your own"):
        start(ROOT / "notebooks", root=ROOT)


@pytest.mark.slow
def test_plmkit_grade_works_in_the_learners_folder(tmp_path):
    """~15 s: grade chapter 0 copied by `plmkit start`, with exercise 0.1 solved there."""
    from plmkit.cli import main
    dest = tmp_path / "mine"
    assert main(["start", str(dest), "00_warmup", "--root", str(ROOT)]) == 0
    answer = _exercise(nbt.read(ROOT / "solutions" / "00_warmup.ipynb"), "0.1").source
    _edit(dest / "00_warmup.ipynb", lambda nb: setattr(_exercise(nb, "0.1"), "source", answer))
    report = tmp_path / "grades.json"
    assert main(["grade", str(dest / "00_warmup.ipynb"), "--json", str(report)]) == 1
    (nb,) = json.loads(report.read_text())["notebooks"]
    status = {e["number"]: e["status"] for e in nb["exercises"]}
    assert status == {"0.1": "pass", "0.2": "not attempted", "0.3": "not attempted", "0.4": "not attempted"}
