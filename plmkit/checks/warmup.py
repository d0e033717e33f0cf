"""Checkers for chapter 0, the warm-up."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .. import basics
from ._core import Report, checker

_BUILT_INS = "this exercise asks you to build it from exp, log, max and sum"


def _shapes(r: Report):
    return [((5,), -1), ((3, 7), -1), ((4, 6), 0), ((2, 3, 8), 1)]


@checker("0.1", "softmax")
def check_softmax(r: Report, softmax) -> None:
    r.forbid_calls(softmax, {"softmax", "log_softmax"}, _BUILT_INS)
    for shape, dim in _shapes(r):
        x = r.randn(*shape) * 3
        what = f"softmax(x, dim={dim}) for x of shape {shape}"
        r.close(r.call(softmax, x, dim=dim, what=what), F.softmax(x, dim=dim), what)
    big = torch.tensor([[1000.0, 999.0, 998.0], [-1000.0, -1000.0, -1001.0]])
    what = "softmax(x, dim=-1) for x = [[1000, 999, 998], [-1000, -1000, -1001]] (overflows unless you subtract the max)"
    r.close(r.call(softmax, big, dim=-1, what=what), F.softmax(big, dim=-1), what)
    x = r.randn(4, 5)
    out = r.call(softmax, x, dim=-1, what="softmax(x, dim=-1)")
    r.check(isinstance(out, torch.Tensor) and torch.allclose(out.sum(-1), torch.ones(4), atol=1e-5),
            "softmax(x, dim=-1): rows do not sum to 1 (normalised over the wrong dimension?)")


@checker("0.2", "log_softmax")
def check_log_softmax(r: Report, log_softmax) -> None:
    r.forbid_calls(log_softmax, {"softmax", "log_softmax", "logsumexp"}, _BUILT_INS)
    for shape, dim in _shapes(r):
        x = r.randn(*shape) * 3
        what = f"log_softmax(x, dim={dim}) for x of shape {shape}"
        r.close(r.call(log_softmax, x, dim=dim, what=what), F.log_softmax(x, dim=dim), what)
    big = torch.tensor([[1000.0, 0.0, -1000.0]])
    what = "log_softmax(x) for x = [[1000, 0, -1000]] (log(softmax) gives -inf here; use the max trick)"
    r.close(r.call(log_softmax, big, dim=-1, what=what), F.log_softmax(big, dim=-1), what, atol=1e-3)


@checker("0.3", "cross_entropy")
def check_cross_entropy(r: Report, cross_entropy) -> None:
    r.forbid_calls(cross_entropy, {"cross_entropy", "nll_loss", "log_softmax", "softmax"},
                   "build it from your own log_softmax idea with exp, log, max and sum")
    for n, v in [(1, 3), (6, 10), (32, 50)]:
        logits, targets = r.randn(n, v) * 2, r.randint(0, v, (n,))
        what = f"cross_entropy(logits {(n, v)}, targets {(n,)})"
        r.close(r.call(cross_entropy, logits, targets, what=what), F.cross_entropy(logits, targets), what)
    logits, targets = r.randn(8, 5), r.randint(0, 5, (8,))
    targets[torch.tensor([1, 4, 6])] = -100
    what = "cross_entropy with ignore_index=-100 at 3 of 8 positions (average over the other 5 only)"
    r.close(r.call(cross_entropy, logits, targets, ignore_index=-100, what=what),
            F.cross_entropy(logits, targets, ignore_index=-100), what)
    big = torch.tensor([[500.0, -500.0, 0.0], [0.0, 800.0, 0.0]])
    tgt = torch.tensor([1, 0])
    what = "cross_entropy for logits [[500, -500, 0], [0, 800, 0]] (large logits must not give inf or nan)"
    r.close(r.call(cross_entropy, big, tgt, what=what), F.cross_entropy(big, tgt), what, rtol=1e-5)
    logits = r.randn(4, 6, dtype=torch.float64).requires_grad_()
    targets = r.randint(0, 6, (4,))
    loss = r.call(cross_entropy, logits, targets, what="cross_entropy(logits, targets)")
    if r.check(isinstance(loss, torch.Tensor) and loss.requires_grad,
               "cross_entropy must return a tensor connected to logits (no .item(), no detach)"):
        (g,) = torch.autograd.grad(loss, logits)
        expect = (F.softmax(logits, -1) - F.one_hot(targets, 6)).detach() / 4
        r.close(g, expect, "the gradient of your loss with respect to the logits")


@checker("0.4", "train_loop")
def check_train_loop(r: Report, train_loop) -> None:
    torch.manual_seed(int(r.randint(0, 2**31 - 1, (1,))))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    batches = [(r.randn(5, 4), r.randint(0, 3, (5,))) for _ in range(6)]
    theirs, ours = copy.deepcopy(model), copy.deepcopy(model)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.5, momentum=0.9)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.5, momentum=0.9)
    losses = r.call(train_loop, theirs, opt_t, batches, F.cross_entropy,
                    what="train_loop(model, optimizer, batches, F.cross_entropy)")
    expected = basics.train_loop(ours, opt_o, batches, F.cross_entropy)
    ok_type = isinstance(losses, list) and all(isinstance(v, float) for v in losses)
    r.check(ok_type, f"train_loop must return a list of Python floats (use loss.item()), got {type(losses).__name__}"
                     + (f" of {type(losses[0]).__name__}" if isinstance(losses, list) and losses else ""))
    r.check(isinstance(losses, list) and len(losses) == len(batches),
            f"train_loop must return one loss per batch: {len(batches)} batches, "
            f"got {len(losses) if isinstance(losses, list) else 'no list'}")
    if ok_type and len(losses) == len(batches):
        r.close(torch.tensor(losses), torch.tensor(expected),
                "the losses of a correct loop (zero_grad, forward, loss, backward, step, in that order)",
                atol=1e-5)
    same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(theirs.parameters(), ours.parameters()))
    moved = any(not torch.equal(a, b) for a, b in zip(theirs.parameters(), model.parameters()))
    r.check(moved, "the model's parameters did not change: call optimizer.step() after loss.backward()")
    r.check(same, "after 6 batches the parameters differ from a correct loop's: are the gradients "
                  "cleared with optimizer.zero_grad() before each backward()?")
