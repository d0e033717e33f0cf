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
   learner's file is only read), skipping cells tagged ``grade-skip``, after an
   audit hook (`audit`). Just before each check cell the kernel's environment gets
   ``PLMKIT_GRADE_DIR`` (a fresh records folder) and a fresh random
   ``PLMKIT_GRADE_SEED``, taken out again after it: the check cell then *records*
   the learner's answers on inputs drawn from that seed (safetensors + JSON, never
   pickle) instead of printing a verdict. The grader takes each exercise's record
   away as soon as its check cell ends.
3. **Phase two, here (trusted).** ``plmkit.checks.judge_recorded`` regenerates the
   inputs from the seed, computes the references and scores the record. The
   checkers were imported before any kernel started; nothing the kernel prints
   or patches reaches them.

A crash is named and fails only its own exercise: an error (``SystemExit``
included), a cell still running after ``--timeout`` seconds, a kernel that died
(``os._exit``, a native crash, the out-of-memory killer). After a crash, and
after any attempted exercise that fails, the grader starts a fresh kernel and
replays the setup cells and the exercise cells so far: whole if they passed or
were untouched, their definitions only if they failed (`definitions_only`), not
at all if the cell itself crashed; a later exercise that then misses one of its
names says which crashed exercise it needed.

4. **One process and sandbox per submission.** `grade` runs `grade_one` for each
   notebook in a worker process (``python -m plmkit.grading.worker``) inside the
   OS sandbox of `sandbox` (PID, mount and network namespaces, read-only files,
   limits); whatever happens there becomes that notebook's row.
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
from .audit import AUDIT_CELL
from .honour import run_nbval  # noqa: F401 - the honour-system runner, importable from here as before
from .kernel import DIED, TIMEOUT, Kernel, Outcome

DEFAULT_TIMEOUT = 300
MAX_RECORD_BYTES = 512 * 2**20     # a record's tensors (safetensors) larger than this are refused unread
MAX_RECORD_JSON_BYTES = 16 * 2**20  # its plain part (JSON: a Python object per value when read) likewise
SKIP_TAG = "grade-skip"
GRADE_DIR_VAR, GRADE_SEED_VAR = "PLMKIT_GRADE_DIR", "PLMKIT_GRADE_SEED"   # as plmkit.checks._core reads them
HEADER_RE = re.compile(r"^[ \t]*#\s*Exercise\s+(\d+\.\d+)\s*:", re.MULTILINE)
NAME_ERROR_RE = re.compile(r"name '(\w+)' is not defined")
CHECKS_RE = re.compile(r"(\d+)/(\d+) checks passed")

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
    checks_passed: int = 0             # from the verdict line "k/n checks passed" (0/0 when it has none)
    checks_total: int = 0

    def count_checks(self) -> None:
        m = CHECKS_RE.search(self.verdict)
        self.checks_passed, self.checks_total = (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def give_partial_credit(self) -> None:
        """``--partial``: points in proportion to the checks passed (to 2 decimals)."""
        if not self.passed and self.checks_total:
            self.points = round(self.max_points * self.checks_passed / self.checks_total, 2)


@dataclass
class NotebookResult:
    path: str
    chapter: str | None
    exercises: list[ExerciseResult] = field(default_factory=list)
    error: str | None = None           # set when the input was unusable (exit code 2)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    student: str = ""                  # from the roster, else the file name
    sandbox: str = ""                  # how the submission was isolated ("" in-process)

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        return "complete" if all(e.passed for e in self.exercises) else "incomplete"

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
    if not isinstance(chapter, str) or not nbt.CHAPTER_RE.match(chapter):
        raise nbt.NotebookError(f"{chapter!r} is not a chapter name such as 00_warmup")
    folder = Path(reference) if reference else book_root() / "solutions"
    if not folder.is_dir():
        raise nbt.NotebookError(
            f"no reference folder {folder}: pass --reference DIR (a folder of the book's "
            "solutions/ or notebooks/)")
    path = folder / f"{chapter}.ipynb"
    if path.parent != folder or not path.is_file():
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

def claimed_exercises(source: str, headers: dict[str, str] | None = None) -> set[str]:
    """The one exercise a cell holds, found by the marker its stub really has.

    `headers` maps each exercise of the chapter to its stub's first line. A cell holds
    the exercise whose exact header line it contains (the first one, if it has several:
    a ``# Exercise 6.2: ...`` remark inside 6.3's cell does not make it a 6.2 answer);
    else the one named by a stub's ``NotImplementedError("Exercise N.M: ...")``; else the
    first ``# Exercise N.M:`` line anywhere.

    >>> sorted(claimed_exercises("# my notes\\n# Exercise 0.2: log-softmax\\ndef f(): ..."))
    ['0.2']
    >>> heads = {"6.2": "# Exercise 6.2: SwiGLU", "6.3": "# Exercise 6.3: RoPE"}
    >>> sorted(claimed_exercises("# Exercise 6.3: RoPE\\n# Exercise 6.2: reused here\\n", heads))
    ['6.3']
    """
    lines = [ln.strip() for ln in source.splitlines()]
    if headers:
        exact = [(lines.index(h.strip()), n) for n, h in headers.items() if h.strip() in lines]
        if exact:
            return {min(exact)[1]}
    stubs = [(m.start(), m.group(1)) for m in nbt.STUB_RE.finditer(source)]
    if stubs:
        return {min(stubs)[1]}
    m = HEADER_RE.search(source)
    return {m.group(1)} if m else set()


def _python(source: str) -> str:
    """A cell's source as plain Python (IPython's ``%magics`` and ``!shell`` lines transformed)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - IPython missing or confused: the raw text
        return source


def _binds_names_only(node) -> bool:
    import ast

    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return all(isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.Starred, ast.Store, ast.Load))
               for t in targets for n in ast.walk(t))


def _definitions(source: str) -> list:
    """The top-level statements of a cell that bind names: def, class, import, ``name = ...``."""
    import ast

    try:
        tree = ast.parse(_python(source))
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
    return [n for n in tree.body if isinstance(n, kinds) or
            (isinstance(n, (ast.Assign, ast.AnnAssign)) and _binds_names_only(n))]


def defined_names(source: str) -> set[str]:
    """The names a cell binds at its top level (functions, classes, assignments, imports).

    >>> sorted(defined_names("import math\\ndef f(x):\\n    y = 1\\nclass K: pass\\na, b = 1, 2"))
    ['K', 'a', 'b', 'f', 'math']
    """
    import ast

    names = set()
    for node in _definitions(source):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        else:
            names.add(node.name)
    if not names:                                  # not Python we can parse: the def lines
        names = set(re.findall(r"^(?:def|class)\s+(\w+)", source, re.MULTILINE))
    return names


def definitions_only(source: str) -> str:
    """The statements of a cell that define names, without the ones that change other objects.

    What a failed exercise leaves to later ones: its functions, classes, imports and
    plain assignments; not ``torch.Tensor.__eq__ = ...`` or other top-level statements.

    >>> print(definitions_only("import torch\\ndef f(x):\\n    return x\\ntorch.exp = f\\nprint(f(1))"))
    import torch
    def f(x):
        return x
    """
    code = _python(source)
    lines = code.splitlines()
    kept = []
    for node in _definitions(source):
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept.append("\n".join(lines[start - 1: node.end_lineno]))
    return "\n".join(kept)


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
    headers = {ex.number: nbt.first_line(pristine.cells[ex.cell_index].source) for ex in exercises}
    claims = {i: claimed_exercises(c.source, headers) for i, c in cells}
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

    def __init__(self, steps, exercises, answers, timeout, folder: Path, judge, stubs=None):
        self.steps, self.timeout, self.judge = steps, timeout, judge
        self.stubs: dict[str, str] = dict(stubs or {})
        self.answers = answers
        self.exercises = {ex.number: ex for ex in exercises}
        self.record_dir = folder / "records"          # where the kernel writes
        self.kept = Path(tempfile.mkdtemp(prefix="plmkit-judge-"))  # where the grader keeps them
        self.folder = folder
        self.kernel: Kernel | None = None
        self.seed = 0
        self.replay: list[tuple[str | None, str]] = []   # (exercise or None for setup, source)
        self.crashed: dict[str, set[str]] = {}           # exercise whose cell crashed -> the names it defines
        self.results: dict[str, ExerciseResult] = {}
        self.notes: list[str] = []

    # -- the kernel ----------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        """The kernel's environment: no grading variables (the check cells get them just in time)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PLMKIT_GRADE_"))}
        env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
        return env

    def _arm(self, number: str) -> Outcome:
        """Just before a check cell: a fresh records folder, and the seed, in the kernel's environment.

        Exercise cells never see the seed: it is set here and removed when the check cell ends.
        """
        self.record_dir = self.folder / "records" / f"{number}-{secrets.token_hex(6)}"
        self._clear(number)
        env = {GRADE_DIR_VAR: str(self.record_dir), GRADE_SEED_VAR: str(self.seed)}
        return self.kernel.run(f"__import__('os').environ.update({env!r})")

    def _disarm(self) -> None:
        if self.kernel is not None and self.kernel.alive:
            self.kernel.run("[__import__('os').environ.pop(k, None) for k in "
                            f"({GRADE_DIR_VAR!r}, {GRADE_SEED_VAR!r})] and None")

    def _start(self) -> bool:
        """A fresh kernel with a fresh seed, the replayed cells run; False if that failed.

        An exercise cell that fails when replayed is dropped from the replay (its names
        are then missing, and later exercises that need them say so); a setup cell that
        fails leaves the notebook ungradable from here on.
        """
        while True:
            self.seed = secrets.randbelow(2**31 - 1) + 1
            self.kernel = Kernel(self.folder, self._env(), self.timeout)
            try:
                self.kernel.start()
            except Exception as e:  # noqa: BLE001 - no kernel at all: the notebook cannot be graded
                self.kernel = None
                raise KernelStartError(f"could not start a Jupyter kernel: {type(e).__name__}: {e}") from e
            hooked = self.kernel.run(AUDIT_CELL)
            if not hooked.ok:
                self._stop()
                raise KernelStartError(f"could not install the grader's audit hook: {hooked.message}")
            for item in list(self.replay):
                number, source = item
                out = self.kernel.run(source)
                if out.ok:
                    continue
                if number is None:
                    self._stop()
                    self.notes.append(f"a fresh kernel could not be set up again: a cell that had run "
                                      f"before now gives {out.message}")
                    return False
                self.replay.remove(item)
                self.crashed[number] = self._names(number)
                self.notes.append(f"the cell of Exercise {number}, run again in a fresh kernel, gave "
                                  f"{out.message}; later exercises ran without it")
                if not self.kernel.alive:
                    break                              # it took the kernel down: start again without it
            else:
                return True
            self._stop()

    def _stop(self) -> None:
        if self.kernel is not None:
            self.kernel.stop()
        self.kernel = None

    # -- records ---------------------------------------------------------------------
    def _record_files(self, number: str, folder: Path) -> list[Path]:
        return [folder / f"{number}.json", folder / f"{number}.safetensors"]

    @staticmethod
    def _remove(p: Path) -> None:
        """Remove whatever the kernel left at `p` (a file, a link, a folder), never following links."""
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except OSError:
            pass

    def _clear(self, number: str) -> None:
        parent = self.record_dir.parent
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            self._remove(parent)
        if self.record_dir.is_symlink() or (self.record_dir.exists() and not self.record_dir.is_dir()):
            self._remove(self.record_dir)              # a cell replaced records/ with a file or a link
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        for p in self._record_files(number, self.record_dir):
            self._remove(p)

    def _take(self, number: str) -> str | None:
        """Move the kernel's record of `number` out of its folder into the grader's.

        Returns None, or why there is no usable record. Only regular files are read,
        and none larger than MAX_RECORD_BYTES.
        """
        problem = None
        for src, dst in zip(self._record_files(number, self.record_dir), self._record_files(number, self.kept)):
            dst.unlink(missing_ok=True)
            try:
                regular = src.is_file() and not src.is_symlink() and not self.record_dir.is_symlink()
                size = src.stat().st_size if regular else 0
            except OSError:
                regular, size = False, 0
            if not regular:
                problem = problem or ("❌ the check cell ran but recorded no answers (was the check replaced "
                                      "or patched by your code?)")
            elif size > (limit := MAX_RECORD_JSON_BYTES if src.suffix == ".json" else MAX_RECORD_BYTES):
                problem = (f"❌ the recorded answers are larger than {limit // 2**20} MiB "
                           "(does your function return something far too big?)")
            else:
                try:
                    with open(src, "rb") as f:
                        data = f.read(limit + 1)
                    if len(data) > limit:
                        raise OSError("grew while read")
                    dst.write_bytes(data)
                except OSError as e:
                    problem = problem or f"❌ the recorded answers could not be read ({type(e).__name__})"
            self._remove(src)
        return problem

    # -- results ---------------------------------------------------------------------
    def _names(self, number: str) -> set[str]:
        """The names an exercise's cell defines (from the stub and the learner's code)."""
        names = set()
        for source in (self.stubs.get(number, ""), self.answers[number].source):
            names |= defined_names(source)
        return names

    def _finish(self, number: str, result: ExerciseResult, crashed: bool = False) -> None:
        result.notes = self.answers[number].notes + result.notes
        if not result.passed:
            self._explain_missing(result)
        self.results[number] = result
        answer = self.answers[number]
        if crashed:
            self.crashed[number] = self._names(number)
        elif result.passed or not answer.attempted:
            self.replay.append((number, answer.source))   # its definitions, for later exercises
        else:                                          # a failed answer keeps its definitions only
            self.replay.append((number, definitions_only(answer.source)))
        if not result.passed and answer.attempted and self.kernel is not None:
            self._stop()                               # what its probe did to the kernel goes with it

    def _explain_missing(self, result: ExerciseResult) -> None:
        """A NameError for a name that a crashed exercise defines: say which one."""
        text = " ".join([result.verdict, *result.reasons])
        for name in NAME_ERROR_RE.findall(text):
            for number, names in self.crashed.items():
                if name in names and number != result.number:
                    result.reasons.insert(0, result.verdict.lstrip("❌ "))
                    result.verdict = f"❌ needs `{name}` from Exercise {number}, which crashed"
                    return

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
            out = self._arm(number) if step.role == "check" else None
            if out is None or out.ok:
                out = self.kernel.run(step.source)
            if step.role == "check" and out.status not in (TIMEOUT, DIED):
                self._disarm()
            if out.status in (TIMEOUT, DIED):
                self.kernel = None
            if step.role == "context":
                if out.ok:
                    self.replay.append((None, step.source))
                else:
                    self.notes.append(f"cell {step.index + 1} (not an exercise) failed: {out.message}")
                continue
            if step.role == "exercise":
                if answer.problem:                     # the stub ran, for its names; nothing to grade
                    self._finish(number, self._failed(number, answer.problem, answer.status), not out.ok)
                elif not out.ok:
                    verdict, status = self._crash_words(out, "your exercise cell")
                    if not answer.attempted:
                        verdict, status = f"❌ the exercise stub raised {out.message}", NOT_ATTEMPTED
                    self._finish(number, self._failed(number, verdict, status), crashed=True)
                continue
            # a check cell
            if not out.ok:
                verdict, status = self._crash_words(out, "the check cell (running your code)")
                self._finish(number, self._failed(number, verdict, status))
                continue
            last_check = self.exercises[number].check_indices[-1]
            if step.index == last_check:
                problem = self._take(number)
                self._finish(number, self._failed(number, problem, FAIL) if problem else self._judged(number))
        self._stop()

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self.kept, ignore_errors=True)


# ============================================================================ grading a notebook

def _check_chapter(nb, path: Path, expected: str | None = None) -> str:
    """The chapter a submission is graded as: a book chapter's ``NN_slug`` name, never a path.

    It comes from the notebook's metadata, else from the file name; `expected` (the
    instructor's ``--chapter``) must agree with it.
    """
    meta = (nb.metadata.get("plmkit") or {}).get("chapter")
    if meta is not None and (not isinstance(meta, str) or not nbt.CHAPTER_RE.match(meta)):
        raise nbt.NotebookError(
            f"{path}: metadata.plmkit.chapter must be a chapter name such as 00_warmup, "
            f"got {str(meta)[:60]!r}")
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
    if expected and chapter != expected:
        raise nbt.NotebookError(f"{path}: wrong chapter: this is a notebook of {chapter}, "
                                f"but chapter {expected} is being graded")
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
    import safetensors.torch  # noqa: F401 - the judge's reader, imported now rather than on first use

    from .. import checks

    checks.load_all()
    return checks.judge_recorded


def grade_one(path: str | Path, reference=None, timeout: int = DEFAULT_TIMEOUT, judge=None,
              partial: bool = False, chapter: str | None = None) -> NotebookResult:
    """Grade one notebook (never modified) against the pristine notebook of its chapter, in this process.

    `grade` calls it inside a sandboxed worker process, one per submission (see `worker`).
    """
    path = Path(path)
    start = time.perf_counter()
    try:
        digest = _sha256(path)
        learner = nbt.read(path)
        chapter = _check_chapter(learner, path, chapter)
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
        stubs = {ex.number: pristine.cells[ex.cell_index].source for ex in exercises}
        session = _Session(plan(composite, exercises, answers), exercises, answers, timeout, folder, judge, stubs)
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
    for e in result.exercises:
        e.count_checks()
        if partial:
            e.give_partial_credit()
    result.seconds = round(time.perf_counter() - start, 1)
    return result


# ============================================================================ output

def _points(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


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
            out.append(f"  {e.number:<9} {e.title:<{w}}  {f'{_points(e.points)}/{e.max_points}':>6}  {e.verdict}")
            pad = " " * (9 + w + 14)
            for reason in [r for r in e.reasons if r not in e.verdict][:4]:
                out.append(f"{pad} • {reason}")
            for note in e.notes:
                out.append(f"{pad} (note: {note})")
        for note in r.notes:
            out.append(f"  note: {note}")
        n_pass = sum(e.passed for e in r.exercises)
        out.append(f"  total: {_points(r.score)}/{r.max_score} points, {n_pass} of {len(r.exercises)} exercises pass")
    if len(results) > 1:
        out.append(class_summary(results))
    return "\n".join(out)


def class_summary(results: list[NotebookResult]) -> str:
    """One line per student (never a class-wide sum), then how many could be graded."""
    w = max(len(r.student or Path(r.path).stem) for r in results)
    lines = [f"summary: {len(results)} submissions", f"  {'student':<{w}}  {'chapter':<16} {'points':>9}  status"]
    for r in results:
        pts = "-" if r.error else f"{_points(r.score)}/{r.max_score}"
        lines.append(f"  {r.student or Path(r.path).stem:<{w}}  {r.chapter or '-':<16} {pts:>9}  {r.status}")
    bad = sum(bool(r.error) for r in results)
    full = sum(r.status == "complete" for r in results)
    lines.append(f"  {full} complete, {len(results) - full - bad} incomplete, {bad} could not be graded (exit 2)")
    return "\n".join(lines)


def to_json(results: list[NotebookResult]) -> dict:
    graded = [r for r in results if not r.error]
    data = {"notebooks": [{**asdict(r), "status": r.status, "score": r.score, "max_score": r.max_score}
                          for r in results]}
    if len(results) == 1:                      # one notebook: its own total, as before
        data.update(score=sum(r.score for r in graded), max_score=sum(r.max_score for r in graded))
    return data


def write_csv(results: list[NotebookResult], path: str | Path) -> None:
    """The gradebook: one row per student, one column per exercise (points), total, status, seconds."""
    import csv

    numbers: list[str] = []
    for r in results:
        for e in r.exercises:
            if e.number not in numbers:
                numbers.append(e.number)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "file", "chapter", *numbers, "total", "max", "status", "reason", "seconds"])
        for r in results:
            pts = {e.number: _points(e.points) for e in r.exercises}
            w.writerow([r.student, r.path, r.chapter or "", *[pts.get(n, "") for n in numbers],
                        "" if r.error else _points(r.score), "" if r.error else r.max_score, r.status,
                        r.error or "", r.seconds])


def feedback_markdown(r: NotebookResult) -> str:
    """What a student gets back: each exercise's verdict, what was wrong, and the grader's notes."""
    lines = [f"# Feedback: {r.student or Path(r.path).stem}", ""]
    if r.error:
        return "\n".join(lines + [f"Your notebook could not be graded: {r.error}", ""])
    lines += [f"Chapter {r.chapter}: **{_points(r.score)}/{r.max_score} points**.", "",
              "| exercise | title | points | verdict |", "|---|---|---:|---|"]
    esc = lambda t: str(t).replace("|", "\\|").replace("\n", " ")          # noqa: E731
    for e in r.exercises:
        lines.append(f"| {e.number} | {esc(e.title)} | {_points(e.points)}/{e.max_points} | {esc(e.verdict)} |")
    for e in r.exercises:
        extra = [x for x in e.reasons if x not in e.verdict] + [f"note: {n}" for n in e.notes]
        if extra:
            lines += ["", f"## Exercise {e.number}: {e.title}", ""] + [f"- {esc(x)}" for x in extra]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {esc(n)}" for n in r.notes]
    return "\n".join(lines) + "\n"


def exit_code(results: list[NotebookResult]) -> int:
    """0: every exercise of every notebook passes; 1: some fail; 2: some notebook could not be graded."""
    if any(r.error for r in results):
        return 2
    return 0 if all(e.passed for r in results for e in r.exercises) else 1


# ============================================================================ the batch

DEFAULT_NOTEBOOK_TIMEOUT = 1800
MAX_WORKER_OUTPUT = 32 * 2**20          # what a worker may print, kept at most (its last bytes)


def read_roster(path: str | Path) -> dict[str, str]:
    """A roster CSV with columns ``file`` and ``student`` (or ``id``): file name -> student id."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0] or not ({"student", "id"} & set(rows[0])):
        raise ValueError(f"roster {path}: expected a CSV with a header row naming the columns "
                         f"'file' and 'student' (or 'id')")
    key = "student" if "student" in rows[0] else "id"
    return {Path(row["file"]).name: row[key] for row in rows if row.get("file")}


def _result_from_dict(d: dict) -> NotebookResult:
    exercises = [ExerciseResult(**{k: v for k, v in e.items() if k in ExerciseResult.__dataclass_fields__})
                 for e in d.get("exercises", [])]
    keep = {k: v for k, v in d.items() if k in NotebookResult.__dataclass_fields__ and k != "exercises"}
    return NotebookResult(**keep, exercises=exercises)


class _Batch:
    """Grades each submission in its own worker process and sandbox; every failure becomes a row."""

    def __init__(self, reference, timeout, notebook_timeout, partial, chapter, limits, sandboxed):
        from . import sandbox

        self.reference, self.timeout, self.partial, self.chapter = reference, timeout, partial, chapter
        self.notebook_timeout, self.limits = notebook_timeout, limits or sandbox.Limits()
        self.folder = Path(tempfile.mkdtemp(prefix="plmkit-batch-"))
        self.pristine: dict[str, Path] = {}
        import threading
        self.lock = threading.Lock()
        self.namespaces, self.how = sandbox.probe() if sandboxed else (False, "")
        self.sandboxed = sandboxed
        if sandboxed and not self.namespaces:
            self.how = f"NO SANDBOX: {self.how}; each submission runs as its own process with limits only"

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _pristine_folder(self, chapter: str) -> Path:
        """The chapter's pristine exercise notebook, written once for the batch (the workers cannot see solutions/)."""
        with self.lock:
            return self._pristine_locked(chapter)

    def _pristine_locked(self, chapter: str) -> Path:
        if chapter not in self.pristine:
            folder = self.folder / "reference" / chapter
            folder.mkdir(parents=True)
            nbt.write(pristine_notebook(chapter, self.reference), folder / f"{chapter}.ipynb")
            self.pristine[chapter] = folder
        return self.pristine[chapter]

    def grade(self, index: int, path: Path) -> NotebookResult:
        start = time.perf_counter()
        try:
            learner = nbt.read(path)
            chapter = _check_chapter(learner, path, self.chapter)
            reference = self._pristine_folder(chapter)
        except nbt.NotebookError as e:
            return NotebookResult(str(path), None, error=str(e))
        if not self.sandboxed:
            result = grade_one(path, reference, self.timeout, partial=self.partial, chapter=chapter)
        else:
            result = self._in_sandbox(index, path, chapter, reference)
        result.path, result.sandbox = str(path), self.how
        result.seconds = round(time.perf_counter() - start, 1)
        return result

    def _in_sandbox(self, index: int, path: Path, chapter: str, reference: Path) -> NotebookResult:
        import subprocess
        import threading

        from . import sandbox, worker

        scratch = self.folder / f"s{index:04d}"                      # the worker's /tmp
        (scratch / "in").mkdir(parents=True)
        sandbox.seed_home(scratch / "home")
        shutil.copyfile(path, scratch / "in" / path.name)
        shutil.copytree(reference, scratch / "in" / "reference")
        inside = Path("/tmp") if self.namespaces else scratch
        token = secrets.token_hex(16)
        task = {"token": token, "path": str(inside / "in" / path.name), "reference": str(inside / "in" / "reference"),
                "timeout": self.timeout, "partial": self.partial}
        cmd = sandbox.command(scratch, [self.folder], book_root(), self.limits, self.namespaces)
        env = sandbox.environment(inside)
        tail = bytearray()

        def drain(stream):
            for chunk in iter(lambda: stream.read(65536), b""):
                tail.extend(chunk)
                if len(tail) > MAX_WORKER_OUTPUT:
                    del tail[: len(tail) - MAX_WORKER_OUTPUT]

        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(scratch), start_new_session=True)
        except OSError as e:
            return NotebookResult(str(path), chapter, error=f"could not start the grader's worker: {e}")
        reader = threading.Thread(target=drain, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            proc.stdin.write((json.dumps(task) + "\n").encode())
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=self.notebook_timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        if timed_out or proc.returncode is None:
            import signal
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        reader.join(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
        if timed_out:
            return NotebookResult(str(path), chapter, error=(
                f"grading took longer than {self.notebook_timeout} s for the whole notebook and was stopped"))
        mark = f"{worker.MARK} {token} ".encode()
        at = tail.rfind(mark)
        if at < 0:
            last = [ln for ln in tail.decode("utf-8", "replace").splitlines() if ln.strip()][-1:] or ["nothing"]
            return NotebookResult(str(path), chapter, error=(
                f"the grader's worker for this notebook ended without a result (exit status {proc.returncode}; "
                f"last output: {last[0][:200]})"))
        line = tail[at + len(mark):].split(b"\n", 1)[0]
        try:
            return _result_from_dict(json.loads(line))
        except (ValueError, TypeError) as e:
            return NotebookResult(str(path), chapter, error=f"the worker's result could not be read ({e})")


def grade(paths, json_path=None, timeout: int = DEFAULT_TIMEOUT, reference=None, out=print, *,
          jobs: int = 1, csv_path=None, feedback_dir=None, chapter: str | None = None, roster=None,
          partial: bool = False, sandboxed: bool = True, notebook_timeout: int = DEFAULT_NOTEBOOK_TIMEOUT,
          limits=None, err=None) -> int:
    """Grade `paths` (a class: one worker process and sandbox per submission, `jobs` at a time).

    Exit code: 0 every exercise of every notebook passes, 1 some fail, 2 some notebook could
    not be graded (each such notebook is a row with its reason; the others are graded).
    """
    import sys
    from concurrent.futures import ThreadPoolExecutor

    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if notebook_timeout <= 0:
        raise ValueError(f"notebook_timeout must be a positive number of seconds, got {notebook_timeout}")
    if chapter is not None and not nbt.CHAPTER_RE.match(chapter):
        raise ValueError(f"chapter must be a chapter name such as 06_llama, got {chapter!r}")
    err = err or (lambda line: print(line, file=sys.stderr))
    names = read_roster(roster) if roster else {}
    batch = _Batch(reference, timeout, notebook_timeout, partial, chapter, limits, sandboxed)
    if sandboxed and not batch.namespaces:
        err(f"plmkit grade: WARNING: {batch.how}. A submission can then read and write your files, "
            f"use the network and leave processes behind.")
    paths = [Path(p) for p in paths]

    def one(item):
        i, p = item
        try:
            r = batch.grade(i, p)
        except Exception as e:  # noqa: BLE001 - one submission never crashes the batch
            r = NotebookResult(str(p), None, error=f"the grader failed on this notebook: {type(e).__name__}: {e}")
        r.student = names.get(p.name) or p.stem
        return r

    try:
        if jobs == 1:
            results = [one(item) for item in enumerate(paths)]
        else:
            with ThreadPoolExecutor(jobs) as pool:
                results = list(pool.map(one, enumerate(paths)))
    finally:
        batch.close()
    out(format_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(to_json(results), indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    if csv_path:
        write_csv(results, csv_path)
    if feedback_dir:
        folder = Path(feedback_dir)
        folder.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for r in results:
            name = re.sub(r"[^\w.-]+", "_", r.student) or "student"
            while name in used:
                name += "_"
            used.add(name)
            (folder / f"{name}.md").write_text(feedback_markdown(r), encoding="utf-8")
    return exit_code(results)
