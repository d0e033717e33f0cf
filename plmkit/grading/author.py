"""Generate the learners' notebooks/ from the chapter sources in solutions/.

For every code cell, each region between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` becomes one line at the region's indentation::

    raise NotImplementedError("Exercise 0.1: replace this line with your code")

Cells whose code was removed lose their outputs; ``book-only`` cells are
dropped; every other cell keeps its id, source and stored outputs (so check
cells keep their expected verdict). The notebook's metadata records its
chapter, which the grader reads.

For the chapters whose checkers are specs, the task text above each exercise ends with the
spec's "Not allowed here: ..." line, written from its forbid list (`forbid_lines`), in
notebooks/ (what learners edit and what is graded).

Cells tagged ``grade-skip`` (demos: training runs, plots, widgets) are not run
by ``plmkit grade``; `grading_gaps` makes sure no exercise or check cell needs
a name that only such a cell defines.
"""
from __future__ import annotations

import builtins
import copy
import hashlib
import re
import symtable
from pathlib import Path

from . import notebook as nbt

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise {num}: replace this line with your code")'
BOOK_ONLY, EXERCISE_TAG, GRADE_SKIP = "book-only", "exercise", "grade-skip"
SOLUTION_PROMPTS = {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}
FORBID_PREFIX = "Not allowed here:"


def strip_solutions(source: str, num: str) -> str:
    """Replace every solution region of a cell's source by a stub.

    >>> print(strip_solutions("def f(x):\\n    ### BEGIN SOLUTION\\n    return x\\n    ### END SOLUTION", "0.1"))
    def f(x):
        raise NotImplementedError("Exercise 0.1: replace this line with your code")
    """
    out, inside, indent = [], False, ""
    for lineno, line in enumerate(source.split("\n"), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise nbt.NotebookError(f"exercise {num}: nested {BEGIN} at line {lineno}")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.append(indent + STUB.format(num=num))
        elif stripped == END:
            if not inside:
                raise nbt.NotebookError(f"exercise {num}: {END} without {BEGIN} at line {lineno}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise nbt.NotebookError(f"exercise {num}: {BEGIN} is never closed")
    return "\n".join(out)


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def prepare_solution(nb, chapter: str) -> bool:
    """Give a solution notebook the metadata the book needs; return True if anything changed.

    Exercise cells are collapsed in the book behind a "Show solution" button.
    """
    changed = False
    if nb.metadata.get("plmkit", {}).get("chapter") != chapter:
        nb.metadata.setdefault("plmkit", {})["chapter"] = chapter
        changed = True
    for cell in nb.cells:
        if nbt.is_exercise(cell):
            tags = _tags(cell)
            if "hide-input" not in tags:
                cell.metadata["tags"] = tags + ["hide-input"]
                changed = True
            if cell.metadata.get("mystnb") != SOLUTION_PROMPTS:
                cell.metadata["mystnb"] = dict(SOLUTION_PROMPTS)
                changed = True
        elif cell.cell_type == "code" and BEGIN in cell.source:
            raise nbt.NotebookError(f"a cell holds {BEGIN} but does not start with '# Exercise N.M: title'")
    return changed


def _names(source: str) -> tuple[set[str], set[str]]:
    """(global names a cell reads, names it defines at top level), from Python's symbol tables."""
    try:
        top = symtable.symtable(source, "<cell>", "exec")
    except SyntaxError:
        return set(), set()
    reads: set[str] = set()

    def walk(table):
        for sym in table.get_symbols():
            module = table.get_type() == "module"
            if sym.is_referenced() and (sym.is_global() or (module and not sym.is_assigned())):
                reads.add(sym.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    return reads - set(dir(builtins)), defined


def grading_gaps(nb) -> list[str]:
    """Problems with ``grade-skip`` tags: an exercise or check cell that reads a global name
    which, above it, only skipped cells define (the grader would fail it with a NameError).
    """
    graded = set()
    for ex in nbt.exercises(nb):
        graded.add(ex.cell_index)
        graded.update(ex.check_indices)
    run, skipped, problems = set(), {}, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        reads, defined = _names(cell.source)
        tags = _tags(cell)
        if i in graded:
            if GRADE_SKIP in tags:
                problems.append(f"cell {i + 1} is an exercise or check cell: it cannot be tagged {GRADE_SKIP}")
            for name in sorted(reads - run):
                if name in skipped:
                    problems.append(f"cell {i + 1} reads `{name}`, which only cell {skipped[name] + 1} "
                                    f"defines, and that cell is tagged {GRADE_SKIP}")
        if GRADE_SKIP in tags and i not in graded:
            for name in defined - run:
                skipped.setdefault(name, i)
        else:
            run |= defined
    return problems


def tag_demo_cells(nb) -> int:
    """Tag ``grade-skip`` every code cell the grader does not need; return how many were tagged.

    Kept untagged: the first code cell (the setup), exercise and check cells, and any
    cell that defines a name an exercise or check cell (or another kept cell) reads.
    """
    graded = {ex.cell_index for ex in nbt.exercises(nb)}
    graded |= {i for ex in nbt.exercises(nb) for i in ex.check_indices}
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    tagged = 0
    for i in reversed(code[1:]):                 # later cells first: their needs are known sooner
        cell = nb.cells[i]
        tags = _tags(cell)
        if i in graded or GRADE_SKIP in tags:
            continue
        cell.metadata["tags"] = tags + [GRADE_SKIP]
        if grading_gaps(nb):
            cell.metadata["tags"] = tags
            if not tags:
                del cell.metadata["tags"]
        else:
            tagged += 1
    return tagged


def forbid_lines(chapter: str) -> dict[str, str]:
    """Exercise number -> the "Not allowed here: ..." line of its spec, for a chapter whose checkers are specs.

    The line is made from the spec's `forbid` rules (`Exercise.forbid_line`), so the task text and
    the check can never disagree. Chapters whose checkers are not specs yet get ``{}``.
    """
    import importlib
    import importlib.util

    slug, number = chapter.split("_", 1)[1], str(int(chapter[:2]))
    module = f"plmkit.checks.{slug}"
    if importlib.util.find_spec(module) is None:
        return {}
    from ..checks import registry
    importlib.import_module(module)
    return {e: ex.forbid_line() for e, ex in registry().items()
            if ex.is_spec and e.split(".")[0] == number and ex.trusted.endswith(f"._judges.{slug}")}


def with_forbid_line(task: str, line: str) -> str:
    """The task text with `line` as its last paragraph (an older "Not allowed here" paragraph is replaced).

    >>> with_forbid_line("Write f.\\n\\nNot allowed here: g.", "Not allowed here: h.")
    'Write f.\\n\\nNot allowed here: h.'
    """
    keep = [p for p in task.rstrip().split("\n\n") if not p.startswith(FORBID_PREFIX)]
    return "\n\n".join(keep + [line])


def _write_forbid_lines(nb, chapter: str) -> None:
    lines = forbid_lines(chapter)
    for ex in nbt.exercises(nb):
        if ex.number in lines:
            task = nb.cells[ex.cell_index - 1] if ex.cell_index else None
            if task is None or task.cell_type != "markdown":
                raise nbt.NotebookError(f"{chapter}: exercise {ex.number} needs its task text (a markdown "
                                        f"cell) directly above the exercise cell")
            task.source = with_forbid_line(task.source, lines[ex.number])


def make_exercise_notebook(solution, chapter: str):
    """Return the learner's notebook for a (prepared) solution notebook."""
    nbt.exercises(solution)  # validates the structure
    gaps = grading_gaps(solution)
    if gaps:
        raise nbt.NotebookError(f"{chapter}: {gaps[0]}")
    nb = copy.deepcopy(solution)
    _write_forbid_lines(nb, chapter)
    cells = []
    for cell in nb.cells:
        tags = _tags(cell)
        if BOOK_ONLY in tags:
            continue
        if nbt.is_exercise(cell):
            num = nbt.exercise_number(cell.source)
            if BEGIN not in cell.source:
                raise nbt.NotebookError(f"exercise {num} has no {BEGIN} region")
            cell.source = strip_solutions(cell.source, num)
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("mystnb", None)
            cell.metadata["tags"] = [t for t in tags if t != "hide-input"] + (
                [EXERCISE_TAG] if EXERCISE_TAG not in tags else [])
            cell.metadata["plmkit"] = {**cell.metadata.get("plmkit", {}), "exercise": num}
        cells.append(cell)
    nb.cells = cells
    hide_expected_verdicts(nb)
    stamp_stubs(nb)
    nb.metadata["plmkit"] = {"chapter": chapter, "generated_from": f"solutions/{chapter}.ipynb"}
    return nb


def hide_expected_verdicts(nb) -> int:
    """Fold the stored output of every check cell of a learner's notebook; return how many.

    The stored line ("✅ Exercise 0.1 softmax: 9/9 checks passed") must stay, since plain
    ``pytest --nbval-lax`` compares a check cell's new output with it: a solved notebook passes,
    a blank one fails. Folded (``jupyter.outputs_hidden``, and ``collapsed`` for the classic
    notebook), a learner opening the notebook sees no green line under an unsolved stub; running
    the cell shows its own verdict (Jupyter unfolds an output when its cell runs).

    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\\ncheck(f)")])
    >>> hide_expected_verdicts(nb), nb.cells[0].metadata["jupyter"]
    (1, {'outputs_hidden': True})
    """
    n = 0
    for cell in nb.cells:
        if nbt.is_check(cell):
            cell.metadata["jupyter"] = {**cell.metadata.get("jupyter", {}), "outputs_hidden": True}
            cell.metadata["collapsed"] = True
            n += 1
    return n


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def stamp_stubs(nb) -> None:
    """Record in each exercise cell's metadata (``plmkit.stub``) a digest of the stub as generated,
    so that `learner_edits` can tell a learner's work from a stub that the book has since changed."""
    for cell in nb.cells:
        if nbt.is_exercise(cell):
            cell.metadata["plmkit"] = {**cell.metadata.get("plmkit", {}), "stub": _digest(cell.source)}


def learner_edits(current, generated) -> list[str]:
    """The exercises (N.M) whose cell in `current` (a notebooks/ file on disk) holds a learner's work:
    its source is neither the stub it was generated with nor the stub `generated` has now.

    >>> import nbformat
    >>> def nb(src): return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])
    >>> new = nb("# Exercise 0.1: softmax\\nraise NotImplementedError"); stamp_stubs(new)
    >>> learner_edits(copy.deepcopy(new), new), learner_edits(nb("# Exercise 0.1: softmax\\nreturn x"), new)
    ([], ['0.1'])
    """
    now = {nbt.exercise_number(c.source): c.source for c in generated.cells if nbt.is_exercise(c)}
    edited = []
    for cell in current.cells:
        num = nbt.exercise_number(cell.source) if cell.cell_type == "code" else None
        if num is None:
            continue
        stamped = cell.metadata.get("plmkit", {}).get("stub")
        if cell.source != now.get(num) and _digest(cell.source) != stamped:
            edited.append(num)
    return edited


class LearnerWorkError(Exception):
    """`author` left notebooks alone whose exercise cells hold a learner's work (``files``: path -> exercises)."""

    def __init__(self, files: dict[str, list[str]]):
        self.files = files
        lines = [f"{path}: exercise{'s' if len(nums) > 1 else ''} {', '.join(nums)} edited"
                 for path, nums in files.items()]
        super().__init__("not overwritten, they hold your work:\n  " + "\n  ".join(lines) +
                         "\nkeep it with `plmkit start DIR` (copies the notebooks to a folder of your own) "
                         "or overwrite with --force")


def class_edition(solution, chapter: str):
    """A (prepared) solution notebook as the *class edition* of the book shows it.

    Each answer becomes the learner's stub (outputs cleared, nothing folded away);
    check cells lose their stored verdicts and the end-of-chapter questions their
    folded answers (`unsolved_edition`); prose, demo cells and their outputs, and
    ``book-only`` cells stay. An instructor publishes this edition so that a class
    sees the tasks but not the answers.
    """
    nbt.exercises(solution)
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        if nbt.is_exercise(cell):
            cell.source = strip_solutions(cell.source, nbt.exercise_number(cell.source))
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("mystnb", None)
            tags = [t for t in _tags(cell) if t != "hide-input"]
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
        elif cell.cell_type == "code" and BEGIN in cell.source:
            raise nbt.NotebookError(f"{chapter}: a cell holds {BEGIN} but is not an exercise cell")
    unsolved_edition(nb)
    return nb


ANSWERS_RE = re.compile(r"<details>\s*<summary>\s*Answers?\s*</summary>.*?</details>", re.S | re.I)
ANSWERS_NOTE = "*The answers are not printed in this edition: your teacher discusses them.*"


def unsolved_edition(nb) -> None:
    """What the class edition removes besides the answers to exercises: the stored verdict of every
    check cell (a green "checks passed" under a stub would be false) and the folded answers
    (``<details><summary>Answers</summary>...</details>``) of the end-of-chapter questions.

    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
    ...     "## Questions\\n1. Why?\\n\\n<details>\\n<summary>Answers</summary>\\n\\n1. Because.\\n</details>")])
    >>> unsolved_edition(nb); "Because" in nb.cells[0].source
    False
    """
    for cell in nb.cells:
        if nbt.is_check(cell):
            cell.outputs, cell.execution_count = [], None
        elif cell.cell_type == "markdown" and ANSWERS_RE.search(cell.source):
            cell.source = ANSWERS_RE.sub(ANSWERS_NOTE, cell.source)


# The intro's paragraph about the "Show solution" button, between these markers, is replaced
# in the class edition (book/intro.md).
SOLUTIONS_NOTE_RE = re.compile(r"<!-- solutions-note -->.*?<!-- /solutions-note -->", re.S)
CLASS_SOLUTIONS_NOTE = ("Each exercise shows its task and the stub you replace with your code; this edition of the "
                        "book prints no solutions. Try first, then grade your notebook.")


def class_edition_page(text: str) -> str:
    """A prose page (markdown) as the class edition shows it: no promise of a *Show solution* button."""
    return SOLUTIONS_NOTE_RE.sub(CLASS_SOLUTIONS_NOTE, text)


CLASS_EDITION_FILES = ["_config.yml", "_toc.yml", "book", "notebooks", "_vendor"]


def write_class_edition(root: str | Path, dest: str | Path) -> list[str]:
    """Write the book's sources to `dest` with every chapter in its class edition; return the chapters.

    `jupyter-book build DEST` then builds a book without solutions.
    """
    import shutil

    root, dest = Path(root), Path(dest)
    src_dir = root / "solutions"
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir} does not exist: run this from the book's root folder")
    r, d = root.resolve(), dest.resolve()
    if d == r or d in r.parents or d in [r / name for name in CLASS_EDITION_FILES + ["solutions", "plmkit"]]:
        raise ValueError(f"dest must be a new folder outside the book's sources (it is replaced), got {dest}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in CLASS_EDITION_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    for page in (dest / "book").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        if class_edition_page(text) != text:
            page.write_text(class_edition_page(text), encoding="utf-8")
    (dest / "solutions").mkdir()
    chapters = []
    for src in sorted(src_dir.glob("*.ipynb")):
        sol = nbt.read(src)
        prepare_solution(sol, src.stem)
        nbt.write(class_edition(sol, src.stem), dest / "solutions" / src.name)
        chapters.append(src.stem)
    return chapters


def author(root: str | Path = ".", check: bool = False, chapters: list[str] | None = None,
           tag_demos: bool = False, force: bool = False) -> list[str]:
    """Regenerate notebooks/ under `root`; return the chapters whose notebook changed (or would).

    With `check=True` nothing is written: the return value lists what is out of date.
    A notebooks/ file whose exercise cells a learner edited (`learner_edits`) is not
    overwritten unless `force=True`: the others are written, then `LearnerWorkError` names it.
    With `tag_demos=True` the solutions' demo cells are first tagged ``grade-skip``
    (`tag_demo_cells`; metadata only, outputs untouched).
    """
    root = Path(root)
    src_dir, out_dir = root / "solutions", root / "notebooks"
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir} does not exist: run this from the book's root folder")
    stale, kept = [], {}
    for src in sorted(src_dir.glob("*.ipynb")):
        chapter = src.stem
        if not nbt.CHAPTER_RE.match(chapter):
            raise nbt.NotebookError(f"{src}: a chapter file must be named NN_slug.ipynb")
        if chapters and chapter not in chapters:
            continue
        sol = nbt.read(src)
        changed = prepare_solution(sol, chapter)
        if tag_demos and tag_demo_cells(sol):
            changed = True
        if changed:
            stale.append(f"solutions/{chapter}.ipynb")
            if not check:
                nbt.write(sol, src)
        generated = make_exercise_notebook(sol, chapter)
        text = nbt.dumps(generated)
        dest = out_dir / src.name
        if not dest.exists() or dest.read_text(encoding="utf-8") != text:
            stale.append(f"notebooks/{chapter}.ipynb")
            if not check:
                edits = [] if force or not dest.exists() else _edits_on_disk(dest, generated)
                if edits:
                    kept[f"notebooks/{chapter}.ipynb"] = edits
                    continue
                out_dir.mkdir(exist_ok=True)
                dest.write_text(text, encoding="utf-8")
    if kept:
        raise LearnerWorkError(kept)
    return stale


def _edits_on_disk(dest: Path, generated) -> list[str]:
    try:
        return learner_edits(nbt.read(dest), generated)
    except nbt.NotebookError:
        return ["(the file is not a readable notebook)"]
