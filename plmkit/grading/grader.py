"""The grader: ``plmkit grade PATH... [--json FILE] [--timeout S] [--reference DIR]``.

Points come from code the learner's notebook cannot reach. For each notebook:

1. **What is graded** comes from the *pristine* notebook of its chapter (generated
   from ``solutions/``, or the instructor's ``--reference`` folder): the exercises,
   their titles, points and order, every cell around them. The learner's notebook
   supplies code only: each exercise's answer is the learner cell with the same
   cell id, else the cell that holds the ``# Exercise N.M:`` line anywhere in it.
   Two cells that both hold work for one exercise are reported, not guessed at.
2. **Phase one, in a kernel (untrusted).** The pristine notebook, with the learner's
   answers in place of the stubs, runs cell by cell in a scratch folder (the
   learner's file is only read), skipping cells tagged ``grade-skip``. The kernel's
   environment holds ``PLMKIT_GRADE_DIR`` and a fresh random ``PLMKIT_GRADE_SEED``:
   each check cell then *records* the learner's answers on inputs drawn from that
   seed (safetensors + JSON, never pickle) instead of printing a verdict. The
   grader takes each exercise's record away as soon as its check cell ends.
3. **Phase two, here (trusted).** ``plmkit.checks.judge_recorded`` regenerates the
   inputs from the seed, computes the references and scores the record. The
   checkers were imported before any kernel started; nothing the kernel prints
   or patches reaches them.

A crash is named and fails only its own exercise: an error (``SystemExit``
included), a cell still running after ``--timeout`` seconds, a kernel that died
(``os._exit``, a native crash, the out-of-memory killer). After a crash, and
after any attempted exercise that fails (its code may have patched something),
the grader starts a fresh kernel and replays the setup cells and the exercises
that passed, so the next exercise runs in a clean kernel.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import author as authoring
from . import notebook as nbt
from .honour import run_nbval  # noqa: F401 - the honour-system runner, importable from here as before
from .kernel import DIED, TIMEOUT, Kernel, Outcome

DEFAULT_TIMEOUT = 300
SKIP_TAG = "grade-skip"
HEADER_RE = re.compile(r"^[ \t]*#\s*Exercise\s+(\d+\.\d+)\s*:", re.MULTILINE)

# status of an exercise in the results
PASS, FAIL, NOT_ATTEMPTED = "pass", "fail", "not attempted"
CRASH, MISSING, DUPLICATE, NOT_GRADED = "crash", "missing", "duplicate", "not graded"


@dataclass
class ExerciseResult:
    number: str
    title: str
    points: int
    max_points: int
    passed: bool
    verdict: str                       # one line, starting with ✅ or ❌
    status: str = FAIL                 # pass, fail, not attempted, crash, missing, duplicate, not graded
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class NotebookResult:
    path: str
    chapter: str | None
    exercises: list[ExerciseResult] = field(default_factory=list)
    error: str | None = None           # set when the input was unusable (exit code 2)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def max_score(self) -> int:
        return sum(e.max_points for e in self.exercises)


# ============================================================================ the pristine notebook

def book_root() -> Path:
    """The folder holding solutions/ when plmkit runs from the book's checkout."""
    return Path(__file__).resolve().parents[2]


def pristine_notebook(chapter: str, reference: str | Path | None = None):
    """The unmodified exercise notebook of `chapter`.

    `reference` may hold solution notebooks (they are stripped here) or
    generated exercise notebooks; without it, the book's own solutions/ is used.
    A notebook whose check cells have no stored output was never executed: it is
    refused, since nothing shows that its checks ever passed on the solutions.
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
    unrun = [i for i, c in enumerate(nb.cells) if nbt.is_check(c) and not c.get("outputs")]
    if unrun:
        raise nbt.NotebookError(
            f"{path} was never executed: its check cells have no stored output (run "
            f"`plmkit execute` on the solutions, or pass the book's executed solutions/ or notebooks/)")
    return nb


# ============================================================================ the learner's code

def claimed_exercises(source: str) -> set[str]:
    """The exercises a cell holds: a ``# Exercise N.M:`` line anywhere, or a stub naming N.M.

    >>> sorted(claimed_exercises("# my notes\\n# Exercise 0.2: log-softmax\\ndef f(): ..."))
    ['0.2']
    """
    found = set(HEADER_RE.findall(source))
    found.update(m.group(1) for m in nbt.STUB_RE.finditer(source))
    return found


@dataclass
class Answer:
    source: str                        # the code to run in place of the stub
    attempted: bool                    # False: the pristine stub (nothing to grade)
    problem: str | None = None         # set: the exercise fails with this verdict, unrun
    status: str = FAIL
    notes: list[str] = field(default_factory=list)


def _same_code(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def find_answers(pristine, exercises: list[nbt.Exercise], learner) -> dict[str, Answer]:
    """For each exercise of the pristine notebook, the learner's code (found by id, then by header)."""
    cells = [(i, c) for i, c in enumerate(learner.cells) if c.cell_type == "code" and not nbt.is_check(c)]
    claims = {i: claimed_exercises(c.source) for i, c in cells}
    answers = {}
    for ex in exercises:
        stub = pristine.cells[ex.cell_index].source
        candidates = []
        for i, c in cells:
            by_id = bool(ex.cell_id) and c.get("id") == ex.cell_id
            if ex.number in claims[i] or (by_id and not claims[i]):
                candidates.append((i, c))
        if not candidates:
            answers[ex.number] = Answer(stub, False, (
                f"❌ no cell of your notebook holds exercise {ex.number} (keep its "
                f"`# Exercise {ex.number}:` line in the cell with your answer)"), MISSING)
            continue
        worked, seen = [], set()
        for i, c in candidates:
            key = c.source.strip()
            if not _same_code(c.source, stub) and key not in seen:
                worked.append((i, c))
                seen.add(key)
        if len(worked) > 1:
            where = ", ".join(str(i + 1) for i, _ in worked)
            answers[ex.number] = Answer(stub, False, (
                f"❌ {len(worked)} cells of your notebook hold exercise {ex.number} (cells {where}, "
                f"counting from 1): delete or merge the extra ones so that one answer is graded"), DUPLICATE)
            continue
        if not worked:
            answers[ex.number] = Answer(stub, False)
            continue
        answer = Answer(worked[0][1].source, True)
        if len(candidates) > 1:
            answer.notes.append("another cell still holds the untouched exercise stub; it was ignored")
        answers[ex.number] = answer
    return answers


# ============================================================================ phase one: the kernel

class KernelStartError(RuntimeError):
    """No Jupyter kernel could be started (ipykernel missing or broken): exit code 2."""


@dataclass
class Step:
    index: int                         # position in the pristine notebook
    role: str                          # "context", "exercise" or "check"
    number: str | None
    source: str


def plan(pristine, exercises: list[nbt.Exercise], answers: dict[str, Answer]) -> list[Step]:
    """The cells to run, in order: untagged context cells, each exercise and its checks.

    Cells tagged ``grade-skip`` and everything after the last check cell are left out.
    """
    role = {}
    for ex in exercises:
        role[ex.cell_index] = ("exercise", ex.number)
        for i in ex.check_indices:
            role[i] = ("check", ex.number)
    last = max((i for ex in exercises for i in ex.check_indices), default=-1)
    steps = []
    for i, cell in enumerate(pristine.cells[: last + 1]):
        if cell.cell_type != "code":
            continue
        kind, number = role.get(i, ("context", None))
        if kind == "context" and (SKIP_TAG in cell.metadata.get("tags", []) or not cell.source.strip()):
            continue
        source = answers[number].source if kind == "exercise" else cell.source
        steps.append(Step(i, kind, number, source))
    return steps


class _Session:
    """Phase one and two for one notebook: runs the plan, collects records, judges."""

    def __init__(self, steps, exercises, answers, timeout, folder: Path, judge):
        self.steps, self.timeout, self.judge = steps, timeout, judge
        self.answers = answers
        self.exercises = {ex.number: ex for ex in exercises}
        self.record_dir = folder / "records"          # where the kernel writes
        self.kept = Path(tempfile.mkdtemp(prefix="plmkit-judge-"))  # where the grader keeps them
        self.folder = folder
        self.kernel: Kernel | None = None
        self.seed = 0
        self.replay: list[str] = []
        self.results: dict[str, ExerciseResult] = {}
        self.notes: list[str] = []

    # -- the kernel ----------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PLMKIT_GRADE_"))}
        env.update(PLMKIT_GRADE_DIR=str(self.record_dir), PLMKIT_GRADE_SEED=str(self.seed),
                   MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
        return env

    def _start(self) -> bool:
        """A fresh kernel with a fresh seed, the replayed cells run; False if that failed."""
        self.seed = secrets.randbelow(2**31 - 1) + 1
        self.kernel = Kernel(self.folder, self._env(), self.timeout)
        try:
            self.kernel.start()
        except Exception as e:  # noqa: BLE001 - no kernel at all: the notebook cannot be graded
            self.kernel = None
            raise KernelStartError(f"could not start a Jupyter kernel: {type(e).__name__}: {e}") from e
        for source in self.replay:
            out = self.kernel.run(source)
            if not out.ok:
                self._stop()
                self.notes.append(f"a fresh kernel could not be set up again: a cell that had run "
                                  f"before now gives {out.message}")
                return False
        return True

    def _stop(self) -> None:
        if self.kernel is not None:
            self.kernel.stop()
        self.kernel = None

    # -- records ---------------------------------------------------------------------
    def _record_files(self, number: str, folder: Path) -> list[Path]:
        return [folder / f"{number}.json", folder / f"{number}.safetensors"]

    def _clear(self, number: str) -> None:
        for p in self._record_files(number, self.record_dir):
            p.unlink(missing_ok=True)

    def _take(self, number: str) -> bool:
        """Move the kernel's record of `number` out of its folder into the grader's; False if none."""
        found = True
        for src, dst in zip(self._record_files(number, self.record_dir), self._record_files(number, self.kept)):
            dst.unlink(missing_ok=True)
            if src.is_file() and not src.is_symlink():
                dst.write_bytes(src.read_bytes())
            else:
                found = False
            src.unlink(missing_ok=True)
        return found

    # -- results ---------------------------------------------------------------------
    def _finish(self, number: str, result: ExerciseResult) -> None:
        result.notes = self.answers[number].notes + result.notes
        self.results[number] = result
        answer = self.answers[number]
        if result.passed or not answer.attempted:
            self.replay.append(answer.source)          # its definitions, for later exercises
        elif self.kernel is not None:
            self._stop()                               # its code may have patched the kernel

    def _failed(self, number: str, verdict: str, status: str, reasons=()) -> ExerciseResult:
        ex = self.exercises[number]
        return ExerciseResult(ex.number, ex.title, 0, ex.points, False, verdict, status, list(reasons))

    def _judged(self, number: str) -> ExerciseResult:
        ex = self.exercises[number]
        try:
            v = self.judge(number, self.seed, self.kept)
            passed, line, reasons = bool(v.passed), str(v.line), [str(r) for r in v.reasons]
        except Exception as e:  # noqa: BLE001 - a record the judge cannot read fails its exercise only
            passed, line, reasons = False, f"❌ the recorded answers could not be judged: {type(e).__name__}: {e}", []
        if passed:
            status = PASS
        elif not self.answers[number].attempted or "not attempted" in line:
            status = NOT_ATTEMPTED
        else:
            status = FAIL
        return ExerciseResult(ex.number, ex.title, ex.points if passed else 0, ex.points, passed, line,
                              status, reasons)

    @staticmethod
    def _crash_words(out: Outcome, where: str) -> tuple[str, str]:
        if out.status == TIMEOUT:
            return f"❌ {where} timed out after {out.message.split('after ', 1)[-1]}", CRASH
        if out.status == DIED:
            return f"❌ {where} stopped the kernel: {out.message}", CRASH
        return f"❌ {where} raised {out.message}", FAIL

    # -- the run ------------------------------------------------------------------
    def run(self) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        broken = False
        for step in self.steps:
            number = step.number
            if number is not None and number in self.results:
                continue                               # its exercise already failed
            answer = self.answers.get(number) if number else None
            if answer is not None and answer.problem and step.role == "check":
                continue
            if not broken and self.kernel is None and not self._start():
                broken = True
            if broken:
                if number is not None:
                    self.results[number] = self._failed(
                        number, "❌ not graded: the kernel could not be set up again after an earlier crash",
                        NOT_GRADED)
                continue
            if step.role == "check":
                self._clear(number)
            out = self.kernel.run(step.source)
            if out.status in (TIMEOUT, DIED):
                self.kernel = None
            if step.role == "context":
                if out.ok:
                    self.replay.append(step.source)
                else:
                    self.notes.append(f"cell {step.index + 1} (not an exercise) failed: {out.message}")
                continue
            if step.role == "exercise":
                if answer.problem:                     # the stub ran, for its names; nothing to grade
                    self._finish(number, self._failed(number, answer.problem, answer.status))
                elif not out.ok:
                    verdict, status = self._crash_words(out, "your exercise cell")
                    if not answer.attempted:
                        verdict, status = f"❌ the exercise stub raised {out.message}", NOT_ATTEMPTED
                    self._finish(number, self._failed(number, verdict, status))
                continue
            # a check cell
            if not out.ok:
                verdict, status = self._crash_words(out, "the check of your code")
                self._finish(number, self._failed(number, verdict, status))
                continue
            last_check = self.exercises[number].check_indices[-1]
            if step.index == last_check:
                if self._take(number):
                    self._finish(number, self._judged(number))
                else:
                    self._finish(number, self._failed(
                        number, "❌ the check cell ran but recorded no answers (was the check replaced "
                                "or patched by your code?)", FAIL))
        self._stop()

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self.kept, ignore_errors=True)


# ============================================================================ grading a notebook

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


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def load_checkers():
    """Import every checker module now, before any kernel runs, and return the judge.

    Whatever a kernel later writes into plmkit's files on disk changes nothing here.
    """
    from .. import checks

    checks.load_all()
    return checks.judge_recorded


def grade_one(path: str | Path, reference=None, timeout: int = DEFAULT_TIMEOUT, judge=None) -> NotebookResult:
    """Grade one notebook (never modified) against the pristine notebook of its chapter."""
    path = Path(path)
    start = time.perf_counter()
    try:
        digest = _sha256(path)
        learner = nbt.read(path)
        chapter = _check_chapter(learner, path)
        pristine = pristine_notebook(chapter, reference)
        exercises = nbt.exercises(pristine)
    except nbt.NotebookError as e:
        return NotebookResult(str(path), None, error=str(e))
    judge = judge or load_checkers()
    answers = find_answers(pristine, exercises, learner)
    composite = copy.deepcopy(pristine)
    for ex in exercises:
        composite.cells[ex.cell_index].source = answers[ex.number].source
    with tempfile.TemporaryDirectory(prefix="plmkit-grade-") as tmp:
        folder = Path(tmp)
        nbt.write(composite, folder / f"{chapter}.ipynb")   # for a look; never read back
        session = _Session(plan(composite, exercises, answers), exercises, answers, timeout, folder, judge)
        try:
            session.run()
        except KernelStartError as e:
            return NotebookResult(str(path), chapter, error=str(e))
        finally:
            session.close()
    result = NotebookResult(str(path), chapter, notes=session.notes)
    if _sha256(path) != digest:
        result.notes.append("the notebook file changed while it was graded (by its own code?); "
                            "the version read before grading began was graded")
    for ex in exercises:
        result.exercises.append(session.results.get(ex.number) or ExerciseResult(
            ex.number, ex.title, 0, ex.points, False, "❌ not graded", NOT_GRADED))
    result.seconds = round(time.perf_counter() - start, 1)
    return result


# ============================================================================ output

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
            pad = " " * (9 + w + 14)
            for reason in [r for r in e.reasons if r not in e.verdict][:4]:
                out.append(f"{pad} • {reason}")
            for note in e.notes:
                out.append(f"{pad} (note: {note})")
        for note in r.notes:
            out.append(f"  note: {note}")
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
    judge = load_checkers()
    results = [grade_one(p, reference, timeout, judge) for p in paths]
    out(format_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(to_json(results), indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    return exit_code(results)
