"""Sentence-pair objectives: next sentence prediction (NSP) and sentence order prediction (SOP).

BERT (Devlin et al. 2019) adds a second task to MLM: given two segments A and
B, predict whether B really follows A in the text (IsNext) or was drawn from
another document (NotNext), half and half. The classifier reads the final
vector of [CLS], and the input is ``[CLS] A [SEP] B [SEP]`` with segment
(token type) 0 on A and 1 on B.

RoBERTa (Liu et al. 2019) found NSP did not help and dropped it; ALBERT
(Lan et al. 2020) argued NSP is too easy because a NotNext pair usually
changes topic, so the model can answer from topic alone. ALBERT's SOP keeps
both segments from the same document and asks whether they are in the right
order: the negatives are the same two sentences, swapped.

Labels follow Hugging Face's ``BertForPreTraining`` and ``AlbertForPreTraining``:
0 = IsNext / original order, 1 = NotNext / swapped.

The builders take documents as lists of sentences (strings, or lists of token
ids: anything) and return ``(a, b, label)`` triples, one per pair of
consecutive sentences.
"""
from __future__ import annotations

import random
from typing import Sequence, TypeVar

__all__ = ["IS_NEXT", "NOT_NEXT", "nsp_pairs", "sop_pairs", "pair_inputs"]

S = TypeVar("S")
IS_NEXT, NOT_NEXT = 0, 1   # for SOP: 0 = original order, 1 = swapped


def _check_documents(documents) -> None:
    if not isinstance(documents, Sequence) or not all(isinstance(d, Sequence) for d in documents):
        raise ValueError("documents must be a list of documents, each a list of sentences")


def nsp_pairs(documents: Sequence[Sequence[S]], rng: random.Random | None = None) -> list[tuple[S, S, int]]:
    """Next-sentence-prediction pairs: for each consecutive (A, B), keep B or swap in a random sentence.

    With probability 1/2 the pair is ``(A, B, 0)`` (IsNext). Otherwise B is
    replaced by a sentence of a *different* document, chosen uniformly among
    the other documents and then among its sentences: ``(A, B', 1)`` (NotNext).

    >>> docs = [["a1", "a2", "a3"], ["b1", "b2"]]
    >>> nsp_pairs(docs, random.Random(0))
    [('a1', 'b1', 1), ('a2', 'a3', 0), ('b1', 'a2', 1)]
    """
    _check_documents(documents)
    nonempty = [i for i, d in enumerate(documents) if len(d) > 0]
    if len(nonempty) < 2:
        raise ValueError("documents must hold at least 2 non-empty documents, "
                         "so that a NotNext sentence can come from another one")
    rng = rng or random.Random()
    pairs = []
    for i, doc in enumerate(documents):
        for j in range(len(doc) - 1):
            if rng.random() < 0.5:
                pairs.append((doc[j], doc[j + 1], IS_NEXT))
            else:
                other = rng.choice([k for k in nonempty if k != i])
                pairs.append((doc[j], rng.choice(documents[other]), NOT_NEXT))
    return pairs


def sop_pairs(documents: Sequence[Sequence[S]], rng: random.Random | None = None) -> list[tuple[S, S, int]]:
    """Sentence-order-prediction pairs: each consecutive (A, B) in order or swapped.

    With probability 1/2 the pair is ``(A, B, 0)``, otherwise ``(B, A, 1)``.
    Both sentences always come from the same document, so topic gives no hint.

    >>> sop_pairs([["a1", "a2", "a3"], ["b1", "b2"]], random.Random(0))
    [('a2', 'a1', 1), ('a3', 'a2', 1), ('b1', 'b2', 0)]
    """
    _check_documents(documents)
    rng = rng or random.Random()
    pairs = []
    for doc in documents:
        for j in range(len(doc) - 1):
            a, b = doc[j], doc[j + 1]
            pairs.append((a, b, 0) if rng.random() < 0.5 else (b, a, 1))
    return pairs


def pair_inputs(a_ids: Sequence[int], b_ids: Sequence[int], cls_id: int, sep_id: int,
                max_len: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids and segment ids of ``[CLS] A [SEP] B [SEP]``.

    If `max_len` is given, tokens are dropped from the end of the longer
    segment until the whole input fits (BERT's ``truncate_seq_pair``).

    >>> pair_inputs([7, 8], [9], cls_id=101, sep_id=102)
    ([101, 7, 8, 102, 9, 102], [0, 0, 0, 0, 1, 1])
    """
    a, b = list(a_ids), list(b_ids)
    if max_len is not None:
        if max_len < 5:
            raise ValueError(f"max_len must be at least 5 (3 special tokens + one token per segment), got {max_len}")
        while len(a) + len(b) + 3 > max_len:
            (a if len(a) >= len(b) else b).pop()
    ids = [cls_id] + a + [sep_id] + b + [sep_id]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return ids, types
