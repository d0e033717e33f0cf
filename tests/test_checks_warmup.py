"""What is particular to chapter 0's checkers and references.

The solutions, the blank notebook and every likely bug of chapter 0 are tested from the
specs' own tables by tests/test_specs.py, the shortcuts by tests/test_mutants.py.
"""
import pytest
import torch
import torch.nn.functional as F

from plmkit import basics
from plmkit.checks import warmup as checks


def test_a_crashing_answer_is_reported_not_raised():
    def crashes(x, dim=-1):
        raise TypeError("boom")

    verdict = checks.check_softmax.honour(crashes, seed=0)
    assert not verdict.passed and any("raised TypeError: boom" in r for r in verdict.reasons)


def test_a_wrong_answer_says_where():
    verdict = checks.check_softmax.honour(lambda x, dim=-1: x * 0, seed=0)
    assert not verdict.passed and verdict.line.startswith("❌ Exercise 0.1 softmax: ")
    assert any("softmax(x, dim=0) for x of shape (4, 6)" in r for r in verdict.reasons), verdict.text()


def test_basics_validate_input():
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        basics.softmax([1.0, 2.0])
    with pytest.raises(ValueError, match="floating-point"):
        basics.log_softmax(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="targets must be class ids"):
        basics.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="every target equals ignore_index"):
        basics.cross_entropy(torch.zeros(2, 3), torch.tensor([-100, -100]))
    x = torch.randn(4, 9)
    torch.testing.assert_close(basics.cross_entropy(x, torch.arange(4)), F.cross_entropy(x, torch.arange(4)))
