"""The chapter 1 checkers pass plmkit's reference, and fail a blank stub and the plausible bugs."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from plmkit.checks import tokenization as checks
from plmkit.tokenize import bpe as ref
from solution_code import solutions

SOL = solutions("01_tokenization")


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 1.x: replace this line with your code")


def verdict(capsys, check, fn) -> tuple[bool, list[str]]:
    ok = check(fn)
    lines = capsys.readouterr().out.strip().splitlines()
    return ok, lines


# --------------------------------------------------------------------------
# 1.1 count_pairs
# --------------------------------------------------------------------------
def count_pairs_off_by_one(ids):
    counts = {}
    for i in range(len(ids) - 2):              # misses the last pair
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
    return counts


def count_pairs_distinct(ids):
    return {p: 1 for p in zip(ids, ids[1:])}   # presence, not counts


def count_pairs_non_overlapping(ids):
    counts, i = {}, 0
    while i + 1 < len(ids):                    # jumps over the second id of each pair
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
        i += 2
    return counts


def count_pairs_as_list(ids):
    return sorted(Counter(zip(ids, ids[1:])).items())


# --------------------------------------------------------------------------
# 1.2 merge
# --------------------------------------------------------------------------
def merge_overlapping(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 1                             # forgets that the second id is used up: 'aaa' -> [X, X, a]
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:                    # the last id is lost when it is not merged
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_in_place(ids, pair, new_id):
    i = 0
    while i + 1 < len(ids):
        if (ids[i], ids[i + 1]) == pair:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def merge_every_match_twice(ids, pair, new_id):
    out = [new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair else t for i, t in enumerate(ids)]
    return out                                  # keeps the second id of each pair


# --------------------------------------------------------------------------
# 1.3 train_bpe
# --------------------------------------------------------------------------
def _weighted_counts(seqs, weight=True):
    counts = {}
    for ids, f in seqs:
        for p in zip(ids, ids[1:]):
            counts[p] = counts.get(p, 0) + (f if weight else 1)
    return counts


def train_first_seen_tie(words, num_merges):
    seqs, merges = [(list(w), f) for w, f in words.items()], []
    for i in range(num_merges):
        counts = _weighted_counts(seqs)
        if not counts:
            break
        best = max(counts, key=counts.get)     # ties go to the first pair seen
        merges.append(best)
        seqs = [(ref.merge(ids, best, 256 + i), f) for ids, f in seqs]
    return merges


def train_largest_pair_tie(words, num_merges):
    seqs, merges = [(list(w), f) for w, f in words.items()], []
    for i in range(num_merges):
        counts = _weighted_counts(seqs)
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], p))   # ties go to the LARGEST pair
        merges.append(best)
        seqs = [(ref.merge(ids, best, 256 + i), f) for ids, f in seqs]
    return merges


def train_ignores_frequencies(words, num_merges):
    seqs, merges = [(list(w), f) for w, f in words.items()], []
    for i in range(num_merges):
        counts = _weighted_counts(seqs, weight=False)
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = [(ref.merge(ids, best, 256 + i), f) for ids, f in seqs]
    return merges


def train_wrong_new_ids(words, num_merges):
    seqs, merges = [(list(w), f) for w, f in words.items()], []
    for i in range(num_merges):
        counts = _weighted_counts(seqs)
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = [(ref.merge(ids, best, 257 + i), f) for ids, f in seqs]   # off by one
    return merges


def train_never_stops(words, num_merges):
    seqs, merges = [(list(w), f) for w, f in words.items()], []
    for i in range(num_merges):
        counts = _weighted_counts(seqs)
        best = min(counts, key=lambda p: (-counts[p], p))                # fails on an empty table
        merges.append(best)
        seqs = [(ref.merge(ids, best, 256 + i), f) for ids, f in seqs]
    return merges


def train_with_overlapping_merge(words, num_merges):
    seqs, merges = [(list(w), f) for w, f in words.items()], []
    for i in range(num_merges):
        counts = _weighted_counts(seqs)
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = [(merge_overlapping(ids, best, 256 + i), f) for ids, f in seqs]
    return merges


# --------------------------------------------------------------------------
# 1.4 encode
# --------------------------------------------------------------------------
def encode_leftmost_first(ids, merges):
    ids = list(ids)
    while True:
        for k in range(len(ids) - 1):          # the first mergeable pair from the left, whatever its rank
            if (ids[k], ids[k + 1]) in merges:
                ids = ref.merge(ids, (ids[k], ids[k + 1]), merges[(ids[k], ids[k + 1])])
                break
        else:
            return ids


def encode_dict_order(ids, merges):
    ids = list(ids)
    for pair, new_id in merges.items():        # trusts the dict's order to be the rank order
        ids = ref.merge(ids, pair, new_id)
    return ids


def encode_most_frequent(ids, merges):
    ids = list(ids)
    while True:
        counts = {p: c for p, c in ref.count_pairs(ids).items() if p in merges}
        if not counts:
            return ids
        best = max(counts, key=counts.get)     # training's rule, not the learned order
        ids = ref.merge(ids, best, merges[best])


def encode_one_step(ids, merges):
    ids = list(ids)
    pairs = [p for p in zip(ids, ids[1:]) if p in merges]
    if pairs:
        best = min(pairs, key=merges.get)
        ids = ref.merge(ids, best, merges[best])
    return ids                                  # stops after one merge


# --------------------------------------------------------------------------
# 1.5 wordpiece
# --------------------------------------------------------------------------
def _greedy(word, vocab, *, prefix=True, longest=True, partial=False, max_chars=100):
    """WordPiece with switches that turn its details off, one per plausible bug."""
    if len(word) > max_chars:
        return ["[UNK]"]
    out, start = [], 0
    while start < len(word):
        ends = range(len(word), start, -1) if longest else range(start + 1, len(word) + 1)
        for end in ends:
            piece = word[start:end] if (start == 0 or not prefix) else "##" + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            if not partial:
                return ["[UNK]"]
            out.append("[UNK]")
            start += 1
    return out


def wordpiece_reference(word, vocab):
    return _greedy(word, vocab)


def wordpiece_no_prefix(word, vocab):
    return _greedy(word, vocab, prefix=False)            # forgets '##' for pieces inside the word


def wordpiece_shortest(word, vocab):
    return _greedy(word, vocab, longest=False)           # shortest match first


def wordpiece_partial_unk(word, vocab):
    return _greedy(word, vocab, partial=True)            # keeps the pieces found so far around an [UNK]


def wordpiece_no_length_limit(word, vocab):
    return _greedy(word, vocab, max_chars=10**9)         # a 101-character word is still split


def wordpiece_unk_for_empty(word, vocab):
    return _greedy(word, vocab) if word else ["[UNK]"]   # the empty word has no pieces, not an [UNK]


# --------------------------------------------------------------------------
# 1.6 viterbi
# --------------------------------------------------------------------------
def _dp(text, pieces, *, value=lambda s: s, first_start=0, last=None, longest_wins=False, no_path=None):
    """Viterbi with switches that turn its details off, one per plausible bug."""
    n = len(text) if last is None else last(len(text))
    longest = max(map(len, pieces))
    best, back = [0.0] + [None] * len(text), [0] * (len(text) + 1)
    if first_start == 1 and text:                          # position 0 handled by hand: its first character only
        best[1], back[1] = value(pieces.get(text[0], -1e9)), 0
    for end in range(1, n + 1):
        for start in range(max(first_start, end - longest), end):
            piece = text[start:end]
            if best[start] is None or piece not in pieces:
                continue
            cand = best[start] + value(pieces[piece])
            better = (best[end] is None or (end - start > end - back[end]) if longest_wins
                      else best[end] is None or cand > best[end])
            if better:
                best[end], back[end] = cand, start
    if best[n] is None:
        if no_path is not None:
            return no_path
        raise ValueError("no segmentation")
    out, end = [], n
    while end > 0:
        out.append(text[back[end]:end])
        end = back[end]
    return out[::-1]


def viterbi_reference(text, pieces):
    return _dp(text, pieces)


def viterbi_greedy_longest(text, pieces):
    out, start = [], 0                                     # WordPiece's rule: longest match, left to right
    while start < len(text):
        end = next((e for e in range(len(text), start, -1) if text[start:e] in pieces), None)
        if end is None:
            raise ValueError("no segmentation")
        out.append(text[start:end])
        start = end
    return out


def viterbi_adds_probabilities(text, pieces):
    return _dp(text, pieces, value=math.exp)               # sums probabilities instead of log-probabilities


def viterbi_drops_last_character(text, pieces):
    return _dp(text, pieces, last=lambda n: max(n - 1, 0))  # the lattice stops one position short


def viterbi_longest_last_piece(text, pieces):
    return _dp(text, pieces, longest_wins=True)            # prefers the longest piece, not the best score


def viterbi_skips_position_0(text, pieces):
    return _dp(text, pieces, first_start=1)                # no piece may start at 0 but the first character


def viterbi_empty_when_impossible(text, pieces):
    return _dp(text, pieces, no_path=[])                   # returns [] instead of raising ValueError


def train_reference(words, num_merges):
    seqs, merges = [(list(w), f) for w, f in words.items()], []
    for i in range(num_merges):
        counts = _weighted_counts(seqs)
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = [(ref.merge(ids, best, 256 + i), f) for ids, f in seqs]
    return merges


CASES = [
    (checks.check_count_pairs, SOL["count_pairs"],
     [count_pairs_off_by_one, count_pairs_distinct, count_pairs_non_overlapping, count_pairs_as_list]),
    (checks.check_merge, SOL["merge"],
     [merge_overlapping, merge_drops_last, merge_in_place, merge_every_match_twice]),
    (checks.check_train_bpe, train_reference,
     [train_first_seen_tie, train_largest_pair_tie, train_ignores_frequencies, train_wrong_new_ids,
      train_never_stops, train_with_overlapping_merge]),
    (checks.check_encode, SOL["encode"],
     [encode_leftmost_first, encode_dict_order, encode_most_frequent, encode_one_step]),
    (checks.check_wordpiece, wordpiece_reference,
     [wordpiece_no_prefix, wordpiece_shortest, wordpiece_partial_unk, wordpiece_no_length_limit,
      wordpiece_unk_for_empty]),
    (checks.check_viterbi, viterbi_reference,
     [viterbi_greedy_longest, viterbi_adds_probabilities, viterbi_drops_last_character, viterbi_longest_last_piece,
      viterbi_skips_position_0, viterbi_empty_when_impossible]),
]


@pytest.mark.parametrize("check, reference", [(c, r) for c, r, _ in CASES], ids=lambda x: getattr(x, "name", ""))
def test_reference_passes_with_one_verdict_line(capsys, check, reference):
    for _ in range(3):                          # fresh random inputs each time
        ok, lines = verdict(capsys, check, reference)
        assert ok and len(lines) == 1 and lines[0].startswith("✅"), lines


@pytest.mark.parametrize("check", [c for c, _, _ in CASES], ids=lambda c: c.name)
def test_stub_fails(capsys, check):
    ok, lines = verdict(capsys, check, stub)
    assert not ok and "not attempted yet" in lines[0]


@pytest.mark.parametrize("check, bug", [(c, b) for c, _, bugs in CASES for b in bugs],
                         ids=lambda x: getattr(x, "__name__", ""))
def test_plausible_bug_fails(capsys, check, bug):
    ok, lines = verdict(capsys, check, bug)
    assert not ok and lines[0].startswith("❌") and len(lines) >= 2, lines


def test_hard_coded_answers_fail(capsys):
    ok, _ = verdict(capsys, checks.check_count_pairs, lambda ids: {(1, 2): 2, (2, 3): 1, (3, 1): 1})
    assert not ok
    ok, _ = verdict(capsys, checks.check_merge, lambda ids, pair, new_id: [new_id, 3, new_id])
    assert not ok


def test_calling_the_library_is_refused(capsys):
    def train_bpe(words, num_merges):
        return ref.train_merges(words, num_merges)
    ok, lines = verdict(capsys, checks.check_train_bpe, train_bpe)
    assert not ok and any("bpe.train_merges" in line and "reference" in line for line in lines)


def test_calling_plmkit_wordpiece_is_refused(capsys):
    from plmkit.tokenize import wordpiece as library

    def wordpiece(word, vocab):
        return library.wordpiece_word(word, vocab)
    ok, lines = verdict(capsys, checks.check_wordpiece, wordpiece)
    assert not ok and any("wordpiece_word" in line and "reference" in line for line in lines)



def test_calling_sentencepiece_or_plmkit_viterbi_is_refused(capsys):
    import sentencepiece

    from plmkit.tokenize import unigram as library

    def via_plmkit(text, pieces):
        return library.viterbi(text, pieces)

    def via_sentencepiece(text, pieces):
        sentencepiece.SentencePieceProcessor()              # any call into the library counts
        return viterbi_reference(text, pieces)
    ok, lines = verdict(capsys, checks.check_viterbi, via_plmkit)
    assert not ok and any("unigram.viterbi" in line and "reference" in line for line in lines)
    ok, lines = verdict(capsys, checks.check_viterbi, via_sentencepiece)
    assert not ok and any("SentencePiece" in line and "reference" in line for line in lines)


def test_viterbi_cases_have_one_clear_winner_and_a_real_model():
    for seed in range(5):
        cases = checks.check_viterbi.make_cases(seed)
        for case in cases:
            text, pieces = case["args"]
            if not case["error"] and text:
                assert checks._runner_up_gap(text, pieces) > 1e-6, case["what"]
        assert any(len(c["args"][1]) > 500 for c in cases)            # the SentencePiece model's pieces
        assert [c["args"] for c in cases] == [c["args"] for c in checks.check_viterbi.make_cases(seed)]


def test_viterbi_real_model_is_trained_deterministically():
    first = checks._pydoc_unigram()
    checks._pydoc_unigram.cache_clear()
    assert checks._pydoc_unigram() == first and len(first[1]) >= 50
