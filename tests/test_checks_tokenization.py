"""What is particular to chapter 1's checkers: hard-coded answers, the viterbi cases, the real model.

The solutions, the blank notebook and every likely bug of chapter 1 are tested from the
specs' own tables by tests/test_specs.py, the shortcuts by tests/test_mutants.py.
"""
from __future__ import annotations

from plmkit.checks import tokenization as checks


def test_hard_coded_answers_fail():
    assert not checks.check_count_pairs.honour(lambda ids: {(1, 2): 2, (2, 3): 1, (3, 1): 1}, seed=0)
    assert not checks.check_merge.honour(lambda ids, pair, new_id: [new_id, 3, new_id], seed=0)


def test_viterbi_cases_have_one_clear_winner_and_a_real_model():
    for seed in range(5):
        cases = checks.check_viterbi.make_cases(seed)
        for case in cases:
            text, pieces = case["args"]
            if text and all(ch in pieces for ch in text):
                assert checks._runner_up_gap(text, pieces) > 1e-6, case["what"]
        assert sum("no segmentation exists" in c["what"] for c in cases) == 1
        assert any(len(c["args"][1]) > 500 for c in cases)            # the SentencePiece model's pieces
        assert [c["args"] for c in cases] == [c["args"] for c in checks.check_viterbi.make_cases(seed)]


def test_viterbi_real_model_is_trained_deterministically():
    first = checks._pydoc_unigram()
    checks._pydoc_unigram.cache_clear()
    assert checks._pydoc_unigram() == first and len(first[1]) >= 50
