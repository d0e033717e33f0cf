"""Text corpora for the book (see `corpora` for the list and their licences).

    >>> from plmkit.data import load_corpus
    >>> load_corpus("pydoc")[:40]   # doctest: +SKIP
"""
from .corpora import (CorpusUnavailable, NAMES, cache_dir, load_corpus, load_works,
                      work_metadata)

__all__ = ["load_corpus", "load_works", "work_metadata", "cache_dir", "CorpusUnavailable", "NAMES"]
