"""Chapter 1's trusted half: the references (plmkit.tokenize) and the likely bugs.

`plmkit/checks/tokenization.py` has the cases. A bug that changes its input in place stands
for the "changed its input" hint of each exercise.
"""
from __future__ import annotations

import math
from collections import Counter

from ...tokenize import bpe as ref
from ...tokenize import unigram as _uni
from ...tokenize import wordpiece as _wp
from .._core import Trusted


# ----------------------------------------------------------------------------- 1.1 count_pairs

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


def count_pairs_string_keys(ids):
    return {f"{a} {b}": n for (a, b), n in Counter(zip(ids, ids[1:])).items()}


def count_pairs_pops(ids):
    counts = {}
    while len(ids) > 1:                        # consumes the caller's list
        pair = (ids.pop(0), ids[0])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


COUNT_PAIRS_BUGS = {
    "the last pair is missing: zip(ids, ids[1:]) covers them all": count_pairs_off_by_one,
    "presence, not counts: add 1 for every occurrence of a pair": count_pairs_distinct,
    "pairs overlap: 'aaa' holds (a, a) twice, so step by one id, not two": count_pairs_non_overlapping,
    "return a dict {(a, b): count}, not a list of items": count_pairs_as_list,
    "keys must be tuples (a, b)": count_pairs_string_keys,
    "count_pairs changed the list it was given: read ids, do not pop from it": count_pairs_pops,
}


# ----------------------------------------------------------------------------- 1.2 merge

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
    return [new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair else t for i, t in enumerate(ids)]


MERGE_BUGS = {
    # the same function written two ways: a match must consume both ids
    "occurrences must not overlap, and a match replaces both ids: after a match, skip both":
        [merge_overlapping, merge_every_match_twice],
    "the last id is lost when it is not merged: look at every position up to len(ids)": merge_drops_last,
    "merge must return a new list and leave its input unchanged": merge_in_place,
}


# ----------------------------------------------------------------------------- 1.3 train_bpe

def _weighted_counts(seqs, weight=True):
    counts = {}
    for ids, f in seqs:
        for p in zip(ids, ids[1:]):
            counts[p] = counts.get(p, 0) + (f if weight else 1)
    return counts


def _trainer(*, pick=lambda counts: min(counts, key=lambda p: (-counts[p], p)), weight=True, first_id=256,
             stop=True, merge=ref.merge):
    def train_bpe(words, num_merges):
        seqs, merges = [(list(w), f) for w, f in words.items()], []
        for i in range(num_merges):
            counts = _weighted_counts(seqs, weight)
            if not counts and stop:
                break
            best = pick(counts)                # fails on an empty table when it does not stop
            merges.append(best)
            seqs = [(merge(ids, best, first_id + i), f) for ids, f in seqs]
        return merges
    return train_bpe


def train_consumes_table(words, num_merges):
    merges = _trainer()(words, num_merges)
    words.clear()                              # "done with it"
    return merges


TRAIN_BPE_BUGS = {
    "a tie: pick the smallest pair, min by (-count, pair), not the first one counted":
        _trainer(pick=lambda counts: max(counts, key=counts.get)),
    "a tie: pick the smallest pair, min by (-count, pair), not the largest":
        _trainer(pick=lambda counts: max(counts, key=lambda p: (counts[p], p))),
    "weight each word's pair counts by its frequency": _trainer(weight=False),
    "merge i creates the new id 256 + i": _trainer(first_id=257),
    "stop when no pair is left: every word is a single token": _trainer(stop=False),
    "a merge must not overlap: (a, a) on 'aaa' gives [256, a]": _trainer(merge=merge_overlapping),
    "train_bpe must not change the table it is given": train_consumes_table,
}


def _pairs(v):
    """The learner's merges as a list of tuples (a list of [a, b] lists is fine too)."""
    return [tuple(p) if type(p) in (list, tuple) else p for p in v] if type(v) in (list, tuple) else v


# ----------------------------------------------------------------------------- 1.4 encode

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


def encode_pops_merges(ids, merges):
    ids = list(ids)
    while True:
        pairs = [p for p in zip(ids, ids[1:]) if p in merges]
        if not pairs:
            return ids
        best = min(pairs, key=merges.get)
        ids = ref.merge(ids, best, merges.pop(best))   # "used up": takes it out of the caller's dict


ENCODE_BUGS = {
    "merges applied in the dict's order; apply the lowest new id first": encode_dict_order,
    "the leftmost mergeable pair was merged first; apply the merge with the lowest new id (its rank) first":
        encode_leftmost_first,
    "the most frequent pair is training's rule; encoding applies merges by rank, the lowest new id first":
        encode_most_frequent,
    "only one merge was applied: repeat until no learned pair is left": encode_one_step,
    "encode changed the ids or the merges it was given": encode_pops_merges,
}


# ----------------------------------------------------------------------------- 1.5 wordpiece

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


def wordpiece_unk_for_empty(word, vocab):
    return _greedy(word, vocab) if word else ["[UNK]"]


def wordpiece_adds_unk(word, vocab):
    vocab.add("[UNK]")                          # "make sure [UNK] is in the vocabulary"
    return _greedy(word, vocab)


WORDPIECE_BUGS = {
    "a piece inside a word needs the '##' prefix": lambda w, v: _greedy(w, v, prefix=False),
    "take the longest match first, not the shortest": lambda w, v: _greedy(w, v, longest=False),
    "when any part cannot be matched, the WHOLE word becomes [UNK]": lambda w, v: _greedy(w, v, partial=True),
    "a word longer than 100 characters is one [UNK]": lambda w, v: _greedy(w, v, max_chars=10**9),
    "the empty string has no pieces: return []": wordpiece_unk_for_empty,
    "wordpiece changed the vocabulary it was given": wordpiece_adds_unk,
}


# ----------------------------------------------------------------------------- 1.6 viterbi

def viterbi_dp(text, pieces, *, value=lambda s: s, first_start=0, last=None, longest_wins=False, no_path=None):
    """Viterbi with switches that turn its details off, one per plausible bug (all off: correct)."""
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


def viterbi_greedy_longest(text, pieces):
    out, start = [], 0                                     # WordPiece's rule: longest match, left to right
    while start < len(text):
        end = next((e for e in range(len(text), start, -1) if text[start:e] in pieces), None)
        if end is None:
            raise ValueError("no segmentation")
        out.append(text[start:end])
        start = end
    return out


def viterbi_spans(text, pieces):
    out, start = [], 0
    for piece in viterbi_dp(text, pieces):                 # positions instead of the pieces
        out.append((start, start + len(piece)))
        start += len(piece)
    return out


def viterbi_whole_text(text, pieces):
    if not any(ch not in pieces for ch in text):
        return [text] if text else []                      # one piece, in the vocabulary or not
    raise ValueError("no segmentation")


def viterbi_pops_pieces(text, pieces):
    out = viterbi_dp(text, pieces)
    for piece in set(out):
        pieces.pop(piece)                                  # "used": takes them out of the caller's dict
    return out


VITERBI_BUGS = {
    "a valid segmentation, but not the best: compare whole paths by their SUM of log-probs, not the longest "
    "piece one at a time": viterbi_greedy_longest,
    "probabilities multiply, so log-probabilities add: sum the log-probs themselves, not exp(log-prob)":
        lambda t, p: viterbi_dp(t, p, value=math.exp),
    "the pieces must spell the whole text: is the last character dropped? the lattice has len(text) + 1 "
    "positions": lambda t, p: viterbi_dp(t, p, last=lambda n: max(n - 1, 0)),
    "keep the best score at each position, not the longest piece ending there":
        lambda t, p: viterbi_dp(t, p, longest_wins=True),
    "a piece may start at position 0 too: the lattice starts at position 0 with score 0":
        lambda t, p: viterbi_dp(t, p, first_start=1),
    "no segmentation exists: raise ValueError, do not return []": lambda t, p: viterbi_dp(t, p, no_path=[]),
    "return the pieces as strings": viterbi_spans,
    "every piece must be in the vocabulary": viterbi_whole_text,
    "viterbi changed the pieces it was given": viterbi_pops_pieces,
}


TRUSTED = {
    "count_pairs": Trusted(ref.count_pairs, COUNT_PAIRS_BUGS),
    "merge": Trusted(ref.merge, MERGE_BUGS),
    "train_bpe": Trusted(ref.train_merges, TRAIN_BPE_BUGS, canon=_pairs),
    "encode": Trusted(ref.encode_ids, ENCODE_BUGS),
    "wordpiece": Trusted(_wp.wordpiece_word, WORDPIECE_BUGS),
    "viterbi": Trusted(_uni.viterbi, VITERBI_BUGS),
}
