"""The chapter-0 checkers pass the book's solutions and fail blank, buggy and shortcut answers.

The mutation table in test_mutants.py holds the plausible bugs of every exercise; this file
tests what is particular to chapter 0 (messages, the training loop, input validation).
"""
import torch
import torch.nn.functional as F

from plmkit import basics
from plmkit.checks import warmup as checks
from solution_code import solutions

SOL = solutions("00_warmup")


def blank(*args, **kwargs):
    raise NotImplementedError("Exercise 0.1: replace this line with your code")


def run(check, fn, capsys):
    verdict = check(fn)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == verdict.line
    return bool(verdict), out


def test_solutions_pass(capsys):
    for check, name in [(checks.check_softmax, "softmax"), (checks.check_log_softmax, "log_softmax"),
                        (checks.check_cross_entropy, "cross_entropy"), (checks.check_train_loop, "train_loop")]:
        ok, out = run(check, SOL[name], capsys)
        assert ok, out
        assert out.startswith("✅ Exercise 0.") and out.count("\n") == 1


def test_plmkit_reference_is_refused(capsys):
    for check, fn in [(checks.check_softmax, basics.softmax), (checks.check_log_softmax, basics.log_softmax),
                      (checks.check_cross_entropy, basics.cross_entropy), (checks.check_train_loop, basics.train_loop)]:
        ok, out = run(check, fn, capsys)
        assert not ok and "which is the reference here" in out, out


def test_blank_fails_every_checker(capsys):
    for check in (checks.check_softmax, checks.check_log_softmax, checks.check_cross_entropy, checks.check_train_loop):
        ok, out = run(check, blank, capsys)
        assert not ok and "not attempted yet" in out


def test_softmax_bugs(capsys):
    def naive(x, dim=-1):
        return x.exp() / x.exp().sum(dim=dim, keepdim=True)

    def wrong_dim(x, dim=-1):
        z = x - x.amax(dim=dim, keepdim=True)
        return z.exp() / z.exp().sum()

    def uses_torch(x, dim=-1):
        return torch.softmax(x, dim=dim)

    for bug in (naive, wrong_dim, uses_torch):
        ok, out = run(checks.check_softmax, bug, capsys)
        assert not ok, bug.__name__
    assert "exp overflowed" in run(checks.check_softmax, naive, capsys)[1]
    assert "torch's softmax" in run(checks.check_softmax, uses_torch, capsys)[1]


def test_log_softmax_bugs(capsys):
    def log_of_softmax(x, dim=-1):
        return basics.softmax(x, dim).log()

    def no_shift(x, dim=-1):
        return x - x.exp().sum(dim=dim, keepdim=True).log()

    for bug in (log_of_softmax, no_shift):
        assert not run(checks.check_log_softmax, bug, capsys)[0], bug.__name__


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

    for bug in (ignores_nothing, sums_instead_of_mean, returns_float):
        assert not run(checks.check_cross_entropy, bug, capsys)[0], bug.__name__
    assert "ignored targets" in run(checks.check_cross_entropy, ignores_nothing, capsys)[1]


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

    ok, out = run(checks.check_train_loop, no_zero_grad, capsys)
    assert not ok and "zero_grad" in out
    ok, out = run(checks.check_train_loop, no_step, capsys)
    assert not ok and "step()" in out
    assert not run(checks.check_train_loop, tensors_not_floats, capsys)[0]


def test_a_crashing_answer_is_reported_not_raised(capsys):
    def crashes(x, dim=-1):
        raise TypeError("boom")

    ok, out = run(checks.check_softmax, crashes, capsys)
    assert not ok and "raised TypeError: boom" in out


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
