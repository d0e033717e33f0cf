"""The chapter-0 checkers pass the book's solutions and fail blank, buggy and shortcut answers.

The mutation table in test_mutants.py holds the plausible bugs of every exercise; this file
tests what is particular to chapter 0 (messages, the training loop, input validation).
"""
import torch
import torch.nn.functional as F

from checker_harness import (assert_blank_fails, assert_fails, assert_mutant_fails, assert_reference_passes,
                             assert_refused, make_blank)
from plmkit import basics
from plmkit.checks import warmup as checks
from solution_code import solutions

SOL = solutions("00_warmup")
blank = make_blank(0)


def test_solutions_pass(capsys):
    for check, name in [(checks.check_softmax, "softmax"), (checks.check_log_softmax, "log_softmax"),
                        (checks.check_cross_entropy, "cross_entropy"), (checks.check_train_loop, "train_loop")]:
        assert_reference_passes(check, SOL[name], capsys)


def test_plmkit_reference_is_refused(capsys):
    for check, fn in [(checks.check_softmax, basics.softmax), (checks.check_log_softmax, basics.log_softmax),
                      (checks.check_cross_entropy, basics.cross_entropy), (checks.check_train_loop, basics.train_loop)]:
        assert_refused(check, fn, capsys, named="which is the reference here")


def test_blank_fails_every_checker(capsys):
    for check in (checks.check_softmax, checks.check_log_softmax, checks.check_cross_entropy, checks.check_train_loop):
        assert_blank_fails(check, blank, capsys)


def test_softmax_bugs(capsys):
    def naive(x, dim=-1):
        return x.exp() / x.exp().sum(dim=dim, keepdim=True)

    def wrong_dim(x, dim=-1):
        z = x - x.amax(dim=dim, keepdim=True)
        return z.exp() / z.exp().sum()

    def uses_torch(x, dim=-1):
        return torch.softmax(x, dim=dim)

    assert_mutant_fails(checks.check_softmax, naive, "exp overflowed", capsys)
    assert_fails(checks.check_softmax, wrong_dim, capsys)
    assert_mutant_fails(checks.check_softmax, uses_torch, "torch's softmax", capsys)


def test_log_softmax_bugs(capsys):
    def log_of_softmax(x, dim=-1):
        return basics.softmax(x, dim).log()

    def no_shift(x, dim=-1):
        return x - x.exp().sum(dim=dim, keepdim=True).log()

    for bug in (log_of_softmax, no_shift):
        assert_fails(checks.check_log_softmax, bug, capsys)


def test_cross_entropy_bugs(capsys):
    def ignores_nothing(logits, targets, ignore_index=-100):
        t = targets.clamp(min=0)
        z = logits - logits.amax(-1, keepdim=True)
        logp = z - z.exp().sum(-1, keepdim=True).log()
        return -logp.gather(1, t[:, None]).mean()

    def sums_instead_of_mean(logits, targets, ignore_index=-100):
        keep = targets != ignore_index
        z = logits[keep] - logits[keep].amax(-1, keepdim=True)
        logp = z - z.exp().sum(-1, keepdim=True).log()
        return -logp.gather(1, targets[keep][:, None]).sum()

    def returns_float(logits, targets, ignore_index=-100):
        return basics.cross_entropy(logits, targets, ignore_index).item()

    assert_mutant_fails(checks.check_cross_entropy, ignores_nothing, "ignored targets", capsys)
    for bug in (sums_instead_of_mean, returns_float):
        assert_fails(checks.check_cross_entropy, bug, capsys)


def test_train_loop_bugs(capsys):
    def no_zero_grad(model, optimizer, batches, loss_fn):
        losses = []
        for x, y in batches:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    def no_step(model, optimizer, batches, loss_fn):
        losses = []
        for x, y in batches:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            losses.append(loss.item())
        return losses

    def tensors_not_floats(model, optimizer, batches, loss_fn):
        losses = []
        for x, y in batches:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss)
        return losses

    assert_mutant_fails(checks.check_train_loop, no_zero_grad, "zero_grad", capsys)
    assert_mutant_fails(checks.check_train_loop, no_step, "step()", capsys)
    assert_fails(checks.check_train_loop, tensors_not_floats, capsys)


def test_a_crashing_answer_is_reported_not_raised(capsys):
    def crashes(x, dim=-1):
        raise TypeError("boom")

    assert_mutant_fails(checks.check_softmax, crashes, "raised TypeError: boom", capsys)


def test_basics_validate_input():
    import pytest
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
