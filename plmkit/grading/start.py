"""``plmkit start DIR``: copy the exercise notebooks to a folder of the learner's own.

`notebooks/` belongs to the book: ``git pull`` updates it and ``make notebooks`` regenerates it
(refusing to overwrite edited exercise cells, see `author.learner_edits`). Work done in a folder of
your own is never touched by either. The default, ``my-work/`` inside the checkout, is ignored by
git, and the chapters that look for the book's saved experiment results (searching the folder
they run in and its parents) still find them there. ``plmkit grade`` reads a notebook's chapter
from its metadata, so it grades the copies wherever they are.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from . import notebook as nbt


def book_root() -> Path:
    """The checkout this plmkit was imported from (the folder that holds solutions/ and notebooks/)."""
    return Path(__file__).resolve().parents[2]


def start(dest: str | Path, root: str | Path | None = None, chapters: list[str] | None = None,
          force: bool = False) -> tuple[list[str], list[str]]:
    """Copy ``ROOT/notebooks/NN_slug.ipynb`` into `dest`; return (copied, kept) file paths.

    A notebook already in `dest` is kept (it may hold work) unless `force`. `dest` must not be
    the book's own notebooks/ or solutions/ folder.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> copied, kept = start(d, chapters=["00_warmup"]); [Path(p).name for p in copied], kept
    (['00_warmup.ipynb'], [])
    >>> start(d, chapters=["00_warmup"])[1] == copied
    True
    """
    root = Path(root) if root is not None else book_root()
    src_dir = root / "notebooks"
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir} does not exist: --root must be the book's root folder")
    dest = Path(dest)
    if dest.resolve() in {src_dir.resolve(), (root / "solutions").resolve()}:
        raise ValueError(f"dest must be a folder of your own, not the book's {dest.resolve().name}/, got {dest}")
    sources = sorted(p for p in src_dir.glob("*.ipynb") if nbt.CHAPTER_RE.match(p.stem))
    if chapters:
        unknown = sorted(set(chapters) - {p.stem for p in sources})
        if unknown:
            raise ValueError(f"chapters must be among {[p.stem for p in sources]}, got {unknown}")
        sources = [p for p in sources if p.stem in chapters]
    dest.mkdir(parents=True, exist_ok=True)
    copied, kept = [], []
    for src in sources:
        target = dest / src.name
        if target.exists() and not force:
            kept.append(str(target))
            continue
        shutil.copyfile(src, target)
        copied.append(str(target))
    return copied, kept
