"""Reading the structure of a chapter notebook.

A chapter notebook is a list of cells. Three kinds matter to the pipeline:

* an **exercise cell**: a code cell whose first line is ``# Exercise N.M: title``;
* a **check cell**: a code cell whose first line is ``# NBVAL_CHECK_OUTPUT``; it
  belongs to the nearest exercise cell above it;
* a **book-only cell**: tagged ``book-only``; shown in the book, dropped from
  the learner's notebook.

>>> exercise_number("# Exercise 0.2: log-softmax\\ndef f(): ...")
'0.2'
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

EXERCISE_RE = re.compile(r"^#\s*Exercise\s+(\d+\.\d+)\s*:\s*(.*?)\s*$")
STUB_RE = re.compile(r"NotImplementedError\(\s*[\"']Exercise\s+(\d+\.\d+)\b")
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
CHAPTER_RE = re.compile(r"^(\d\d)_[a-z0-9_]+$")
NB_VERSION = 4


class NotebookError(ValueError):
    """The file is not a usable notebook of this book (the grader's exit code 2)."""


def first_line(source: str) -> str:
    return source.lstrip("\n").split("\n", 1)[0]


def exercise_number(source: str) -> str | None:
    """The N.M of an exercise cell's header line, else None."""
    m = EXERCISE_RE.match(first_line(source))
    return m.group(1) if m else None


def exercise_title(source: str) -> str:
    m = EXERCISE_RE.match(first_line(source))
    return m.group(2) if m else ""


def is_check(cell) -> bool:
    return cell.cell_type == "code" and first_line(cell.source).strip() == CHECK_MARK


def is_exercise(cell) -> bool:
    return cell.cell_type == "code" and exercise_number(cell.source) is not None


@dataclass
class Exercise:
    number: str
    title: str
    cell_index: int
    cell_id: str
    check_indices: list[int] = field(default_factory=list)
    points: int = 1


def exercises(nb) -> list[Exercise]:
    """The exercises of a notebook, in order, each with the indices of its check cells.

    Raises NotebookError when the structure is broken: a check cell before any
    exercise, an exercise number used twice, or an exercise without a check.
    """
    found: list[Exercise] = []
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        if is_exercise(cell):
            num = exercise_number(cell.source)
            if num in seen:
                raise NotebookError(f"exercise {num} appears twice (cell {i})")
            seen.add(num)
            points = int(cell.metadata.get("plmkit", {}).get("points", 1))
            found.append(Exercise(num, exercise_title(cell.source), i, cell.get("id", ""), points=points))
        elif is_check(cell):
            if not found:
                raise NotebookError(f"cell {i} is a check cell before any exercise cell")
            found[-1].check_indices.append(i)
    for ex in found:
        if not ex.check_indices:
            raise NotebookError(f"exercise {ex.number} has no check cell after it")
    return found


MAX_NOTEBOOK_BYTES = 64 * 2**20      # a larger .ipynb is refused unread
MAX_JSON_DEPTH = 64                  # notebooks nest about 6 deep; 100,000 deep is an attack on the parser


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _json_depth(raw: str) -> int:
    """How deep the brackets of a JSON text nest (strings skipped), without parsing it.

    >>> _json_depth('{"a": [1, {"b": "]]]"}]}')
    3
    """
    brackets = re.sub(r"[^\[\]{}]+", "", _JSON_STRING.sub("", raw))   # strings out, then all but brackets
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _check_shape(data: dict, path: Path) -> None:
    """The parts of a notebook the grader reads must have the types nbformat promises."""
    meta = data.get("metadata", {})
    if not isinstance(meta, dict):
        raise NotebookError(f"{path}: the notebook's metadata is not a JSON object")
    plm = meta.get("plmkit", {})
    if plm is not None and not isinstance(plm, dict):
        raise NotebookError(f"{path}: metadata.plmkit must be an object such as "
                            f'{{"chapter": "00_warmup"}}, got {type(plm).__name__}')
    cells = data.get("cells")
    if cells is None and data.get("nbformat") == 3:
        sheets = data.get("worksheets")
        if not isinstance(sheets, list) or not all(isinstance(w, dict) for w in sheets):
            raise NotebookError(f"{path}: a version-3 notebook without a list of worksheets")
        cells = [c for w in sheets for c in (w.get("cells") or [])]
        key = "input"
    else:
        key = "source"
    if not isinstance(cells, list):
        raise NotebookError(f"{path}: 'cells' is not a list")
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict):
            raise NotebookError(f"{path}: cell {i + 1} is not a JSON object")
        if cell.get("cell_type") in ("code", "markdown", "raw", "heading") or key in cell:
            src = cell.get(key if cell.get("cell_type") == "code" else "source", cell.get(key))
            if src is None:
                raise NotebookError(f"{path}: cell {i + 1} has no source")
            if not (isinstance(src, str) or (isinstance(src, list) and all(isinstance(x, str) for x in src))):
                raise NotebookError(f"{path}: cell {i + 1}'s source is a {type(src).__name__}, "
                                    "not a string or a list of strings")
        cmeta = cell.get("metadata", {})
        if not isinstance(cmeta, dict) or not isinstance(cmeta.get("plmkit", {}) or {}, dict):
            raise NotebookError(f"{path}: cell {i + 1}'s metadata is malformed")


def read(path: str | Path):
    """Read a notebook, raising NotebookError (with the reason) for anything unusable.

    Version-3 notebooks (IPython 2, Colab exports of old files) are converted to version 4.
    """
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"{path}: no such file")
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(f"{path}: larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB; clear its outputs")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NotebookError(f"{path}: not a text file (is it really a .ipynb notebook?)") from None
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise NotebookError(f"{path}: JSON nested more than {MAX_JSON_DEPTH} levels deep; not a notebook")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise NotebookError(f"{path}: not valid JSON{where}; is it really a .ipynb notebook?") from None
    if not isinstance(data, dict) or ("cells" not in data and "worksheets" not in data):
        raise NotebookError(f"{path}: JSON, but not a Jupyter notebook (no 'cells')")
    _check_shape(data, path)
    try:
        import logging
        logging.getLogger("traitlets").setLevel(logging.ERROR)
        nb = nbformat.reads(raw, as_version=NB_VERSION)
        for cell in nb.cells:                      # a converted v3 notebook has no cell ids
            if not isinstance(cell.get("source", ""), str):
                raise TypeError("a cell's source is not text")
    except NotebookError:
        raise
    except Exception as e:  # noqa: BLE001 - nbformat raises many kinds
        raise NotebookError(f"{path}: not a valid Jupyter notebook ({_short(e)})") from None
    return nb


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."


def write(nb, path: str | Path) -> None:
    """Write with the same layout Jupyter uses (indent 1, unicode kept, final newline)."""
    Path(path).write_text(dumps(nb), encoding="utf-8")


def dumps(nb) -> str:
    return nbformat.writes(nb, version=NB_VERSION) + "\n"


def chapter_of(nb, path: str | Path | None = None) -> str | None:
    """The chapter id (e.g. '00_warmup') from the notebook's metadata, else from its file name."""
    chapter = (nb.metadata.get("plmkit") or {}).get("chapter")
    if chapter:
        return str(chapter)
    return chapter_from_filename(path) if path is not None else None


def chapter_from_filename(path: str | Path) -> str | None:
    """'00_warmup' for 00_warmup.ipynb, also for Jupyter's copies such as 00_warmup-Copy1.ipynb.

    >>> chapter_from_filename("work/00_warmup-Copy1.ipynb")
    '00_warmup'
    """
    m = re.match(r"^(\d\d_[a-z0-9_]+?)(?:-Copy\d+| \(\d+\))?$", Path(path).stem)
    return m.group(1) if m else None
