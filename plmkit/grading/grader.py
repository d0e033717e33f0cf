"""The grader: ``plmkit grade PATH... [--json FILE] [--timeout S] [--reference DIR]``.

For each learner notebook:

1. find its chapter (notebook metadata, else the file name) and the pristine
   exercise notebook of that chapter (generated from ``solutions/``, or taken
   from the instructor's ``--reference`` folder);
2. copy only the learner's *exercise cells* into the pristine notebook (matched
   by cell id, then by the exercise number in the cell's header or stub); prose,
   demo code, check cells and their expected outputs all come from the pristine
   copy, so editing them changes nothing;
3. run the result with nbval in lax mode, in a scratch folder, with a per-cell
   timeout (an endless loop fails its exercise; the rest are still graded);
4. score each exercise: it passes when its cell runs and every check cell after
   it reproduces the expected verdict.

The learner's file is only ever read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import author as authoring
from . import notebook as nbt

DEFAULT_TIMEOUT = 300


@dataclass
class ExerciseResult:
    number: str
    title: str
    points: int
    max_points: int
    passed: bool
    verdict: str


@dataclass
class NotebookResult:
    path: str
    chapter: str | None
    exercises: list[ExerciseResult] = field(default_factory=list)
    error: str | None = None  # set when the input was unusable

    @property
    def score(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def max_score(self) -> int:
        return sum(e.max_points for e in self.exercises)


def book_root() -> Path:
    """The folder holding solutions/ when plmkit runs from the book's checkout."""
    return Path(__file__).resolve().parents[2]


def pristine_notebook(chapter: str, reference: str | Path | None = None):
    """The unmodified exercise notebook of `chapter`.

    `reference` may hold solution notebooks (they are stripped here) or
    generated exercise notebooks; without it, the book's own solutions/ is used.
    """
    folder = Path(reference) if reference else book_root() / "solutions"
    if not folder.is_dir():
        raise nbt.NotebookError(
            f"no reference folder {folder}: pass --reference DIR (a folder of the book's "
            "solutions/ or notebooks/)")
    path = folder / f"{chapter}.ipynb"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("[0-9][0-9]_*.ipynb"))
        raise nbt.NotebookError(f"chapter {chapter!r} is not one of this book's chapters "
                                f"({', '.join(known) or 'none found'} in {folder})")
    nb = nbt.read(path)
    if any(c.cell_type == "code" and authoring.BEGIN in c.source for c in nb.cells):
        authoring.prepare_solution(nb, chapter)
        nb = authoring.make_exercise_notebook(nb, chapter)
    return nb


def _learner_cells(nb) -> tuple[dict, dict]:
    by_id, by_number = {}, {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("id"):
            by_id[cell["id"]] = cell
        num = nbt.exercise_number(cell.source)
        if num is None:
            m = nbt.STUB_RE.search(cell.source)
            num = m.group(1) if m else None
        if num is not None:
            by_number.setdefault(num, cell)
    return by_id, by_number


def transplant(pristine, learner) -> tuple[object, dict[str, str]]:
    """Return (composite notebook, {exercise number: note}) for exercises not found."""
    import copy
    composite = copy.deepcopy(pristine)
    by_id, by_number = _learner_cells(learner)
    missing = {}
    for ex in nbt.exercises(composite):
        target = composite.cells[ex.cell_index]
        cell = by_id.get(ex.cell_id)
        if cell is not None and nbt.first_line(cell.source).strip() == nbt.CHECK_MARK:
            cell = None  # an id collision with a check cell is never an exercise
        if cell is None:
            cell = by_number.get(ex.number)
        if cell is None:
            missing[ex.number] = "exercise cell not found in your notebook"
            continue
        target.source = cell.source
    return composite, missing


def _check_chapter(nb, path: Path) -> str:
    meta = nb.metadata.get("plmkit", {}).get("chapter")
    from_name = nbt.chapter_from_filename(path)
    if meta and from_name and meta != from_name:
        raise nbt.NotebookError(
            f"{path}: the file is named for chapter {from_name} but the notebook is chapter {meta}; "
            "grade each chapter's notebook under its own name")
    chapter = meta or from_name
    if not chapter:
        raise nbt.NotebookError(
            f"{path}: not a notebook of this book (no plmkit chapter in its metadata, and the "
            "file name is not NN_slug.ipynb)")
    return chapter


def run_nbval(nb_path: Path, timeout: int, report: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
           f"--nbval-cell-timeout={timeout}", "-p", "plmkit.grading._nbval_capture",
           "-p", "no:cacheprovider", "-o", "addopts=", "-q", "--rootdir", str(nb_path.parent),
           str(nb_path)]
    env = {**os.environ, "PLMKIT_GRADE_REPORT": str(report), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(cmd, cwd=nb_path.parent, env=env, capture_output=True, text=True)


def _verdict(result: dict | None, timeout: int) -> str:
    if result is None:
        return "did not run"
    lines = [ln.strip() for ln in result["output"].splitlines() if ln.strip()]
    marks = [ln for ln in lines if ln.startswith(("✅", "❌"))]
    if result["passed"] and marks:
        return marks[0]
    if result.get("timed_out"):
        return f"❌ timed out after {timeout} s (an endless loop?)"
    if result.get("xfailed"):
        return "❌ failed after an earlier cell timed out" + (f": {marks[0]}" if marks else "")
    if marks:
        return marks[0]
    if lines:
        return "❌ " + lines[-1][:200]
    return "❌ the check cell's output differs from the expected verdict"


def grade_one(path: str | Path, reference=None, timeout: int = DEFAULT_TIMEOUT) -> NotebookResult:
    path = Path(path)
    try:
        learner = nbt.read(path)
        chapter = _check_chapter(learner, path)
        pristine = pristine_notebook(chapter, reference)
        composite, missing = transplant(pristine, learner)
        exercises = nbt.exercises(composite)
    except nbt.NotebookError as e:
        return NotebookResult(str(path), None, error=str(e))
    code_index = {}  # notebook cell index -> nbval's "Cell N" (counts code cells only)
    for i, cell in enumerate(composite.cells):
        if cell.cell_type == "code":
            code_index[i] = len(code_index)
    with tempfile.TemporaryDirectory(prefix="plmkit-grade-") as tmp:
        nb_path = Path(tmp) / f"{chapter}.ipynb"
        nbt.write(composite, nb_path)
        report = Path(tmp) / "report.json"
        proc = run_nbval(nb_path, timeout, report)
        if not report.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            return NotebookResult(str(path), chapter, error="the notebook could not be run: " + " | ".join(tail))
        cells = json.loads(report.read_text(encoding="utf-8"))
    result = NotebookResult(str(path), chapter)
    for ex in exercises:
        if ex.number in missing:
            result.exercises.append(ExerciseResult(ex.number, ex.title, 0, ex.points, False,
                                                   "❌ " + missing[ex.number]))
            continue
        own = cells.get(str(code_index[ex.cell_index]))
        checks = [cells.get(str(code_index[i])) for i in ex.check_indices]
        ok = own is not None and own["passed"] and all(c is not None and c["passed"] for c in checks)
        if ok:
            verdict = _verdict(checks[0], timeout)
        elif own is not None and not own["passed"]:
            verdict = _verdict(own, timeout)
            if verdict.startswith("❌ ") and "Exercise" not in verdict:
                verdict = "❌ your exercise cell failed: " + verdict[2:]
        else:
            verdict = next(_verdict(c, timeout) for c in checks if c is None or not c["passed"])
        result.exercises.append(ExerciseResult(ex.number, ex.title, ex.points if ok else 0,
                                               ex.points, ok, verdict))
    return result


def format_table(results: list[NotebookResult]) -> str:
    out = []
    for r in results:
        if r.error:
            out.append(f"{r.path}: cannot grade: {r.error}")
            continue
        out.append(f"{r.path} (chapter {r.chapter})")
        w = max([len(e.title) for e in r.exercises] + [5])
        out.append(f"  {'exercise':<9} {'title':<{w}}  {'points':>6}  verdict")
        for e in r.exercises:
            out.append(f"  {e.number:<9} {e.title:<{w}}  {f'{e.points}/{e.max_points}':>6}  {e.verdict}")
        n_pass = sum(e.passed for e in r.exercises)
        out.append(f"  total: {r.score}/{r.max_score} points, {n_pass} of {len(r.exercises)} exercises pass")
    graded = [r for r in results if not r.error]
    if len(graded) > 1:
        out.append(f"overall: {sum(r.score for r in graded)}/{sum(r.max_score for r in graded)} points")
    return "\n".join(out)


def to_json(results: list[NotebookResult]) -> dict:
    graded = [r for r in results if not r.error]
    return {
        "notebooks": [{**asdict(r), "score": r.score, "max_score": r.max_score} for r in results],
        "score": sum(r.score for r in graded),
        "max_score": sum(r.max_score for r in graded),
    }


def exit_code(results: list[NotebookResult]) -> int:
    if any(r.error for r in results):
        return 2
    return 0 if all(e.passed for r in results for e in r.exercises) else 1


def grade(paths, json_path=None, timeout: int = DEFAULT_TIMEOUT, reference=None, out=print) -> int:
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    results = [grade_one(p, reference, timeout) for p in paths]
    out(format_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(to_json(results), indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    return exit_code(results)
