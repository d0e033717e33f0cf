"""Checkers for chapter 0, the warm-up: the kernel half (cases and probes; no reference, no bugs).

    0.1 softmax        stable softmax along any dim, any number of dims, dtype kept, differentiable
    0.2 log_softmax    the same for log(softmax), finite where log(softmax) is -inf
    0.3 cross_entropy  mean over non-ignored targets, differentiable
    0.4 train_loop     zero_grad, forward, loss, backward, step: losses and final weights

The references and the likely bugs are in `plmkit/checks/_judges/warmup.py` (the trusted half).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import basics
from ._core import Exercise, call
from ._guard import Rule, aten

TORCH_SOFTMAX = Rule("torch's softmax (`torch.softmax`, `F.softmax`, `x.softmax()`, `nn.Softmax`)",
                     [torch.softmax, F.softmax, torch.special.softmax, aten._softmax])
TORCH_LOG_SOFTMAX = Rule("torch's log-softmax (`torch.log_softmax`, `F.log_softmax`, `x.log_softmax()`)",
                         [torch.log_softmax, F.log_softmax, torch.special.log_softmax, aten._log_softmax])
TORCH_LOGSUMEXP = Rule("`torch.logsumexp`", [torch.logsumexp, aten.logsumexp])
TORCH_CE = Rule("torch's cross-entropy (`F.cross_entropy`, `F.nll_loss`, `nn.CrossEntropyLoss`)",
                [F.cross_entropy, F.nll_loss, aten.nll_loss_forward, aten.nll_loss2d_forward,
                 aten.cross_entropy_loss, aten.nll_loss_nd])
PLMKIT_BASICS = Rule("plmkit's `basics.softmax` / `basics.log_softmax` / `basics.cross_entropy`",
                     [basics.softmax, basics.log_softmax, basics.cross_entropy])


def _tol(x: torch.Tensor) -> float:
    return 1e-5 if x.dtype == torch.float32 else 1e-10


def _row_calls(g, name: str) -> list[dict]:
    """The shared cases of 0.1 and 0.2: many shapes and dims, huge values, float64, a gradient."""
    cases = [call(x, dim=dim, what=f"{name}(x, dim={dim}) for x of shape {tuple(x.shape)}")
             for x, dim in [(g.randn(*shape) * 3, dim) for shape, dim in
                            [((5,), -1), ((3, 7), -1), ((4, 6), 0), ((2, 3, 8), 1), ((2, 3, 4), -1)]]]
    huge = torch.tensor([[1000.0, 999.0, 998.0], [-1000.0, -1000.0, -1001.0]])
    cases.append(call(huge, dim=-1, what=f"{name}(x, dim=-1) for x = {huge.int().tolist()} "
                                         f"(huge values: subtract the max first)"))
    x = g.randn(3, 5, dtype=torch.float64) * 2
    cases.append(call(x, dim=-1, grad=(0,), cotangent=g.randn(3, 5, dtype=torch.float64), atol=1e-10,
                      what=f"{name}(x, dim=-1) for x of shape (3, 5), dtype torch.float64"))
    return cases


# ----------------------------------------------------------------------------- 0.1

check_softmax = Exercise("0.1", "softmax", goal="computes softmax itself from exp, max and sum",
                         forbid=[TORCH_SOFTMAX, TORCH_LOG_SOFTMAX, PLMKIT_BASICS])


@check_softmax.cases
def _softmax_cases(g):
    return _row_calls(g, "softmax")


# ----------------------------------------------------------------------------- 0.2

check_log_softmax = Exercise("0.2", "log_softmax", goal="computes log-softmax itself from exp, log, max and sum",
                             forbid=[TORCH_SOFTMAX, TORCH_LOG_SOFTMAX, TORCH_LOGSUMEXP, PLMKIT_BASICS])


@check_log_softmax.cases
def _log_softmax_cases(g):
    return _row_calls(g, "log_softmax") + [               # log(softmax) gives -inf here
        call(torch.tensor([[1000.0, 0.0, -1000.0]]), dim=-1,
             what="log_softmax(x, dim=-1) for x = [[1000, 0, -1000]] (log(softmax(x)) would give -inf)")]


# ----------------------------------------------------------------------------- 0.3

check_cross_entropy = Exercise("0.3", "cross_entropy",
                               goal="computes cross-entropy itself from exp, log, max, gather and mean",
                               forbid=[TORCH_CE, TORCH_SOFTMAX, TORCH_LOG_SOFTMAX, TORCH_LOGSUMEXP, PLMKIT_BASICS])


def _ce_call(logits, targets, note: str = "", **kw) -> dict:
    what = f"cross_entropy(logits {tuple(logits.shape)}, targets {tuple(targets.shape)}"
    if "ignore_index" in kw:
        ignored = int((targets == kw["ignore_index"]).sum())
        what += f", ignore_index={kw['ignore_index']}) with {ignored} ignored targets (average over the others)"
    else:
        what += ")" + note
    if logits.dtype != torch.float32:
        what += f" in {logits.dtype}"
    if logits.dtype == torch.float64:
        kw.update(grad=(0,), cotangent=torch.tensor(1.0, dtype=torch.float64))
    return call(logits, targets, what=what, atol=_tol(logits), **kw)


@check_cross_entropy.cases
def _ce_cases(g):
    cases = [_ce_call(g.randn(n, v) * 2, g.randint(0, v, (n,))) for n, v in [(1, 3), (6, 10), (32, 50)]]
    targets = g.randint(0, 5, (8,))
    targets[torch.tensor([1, 4, 6])] = -100
    cases.append(_ce_call(g.randn(8, 5), targets, ignore_index=-100))
    targets = g.randint(0, 7, (9,))
    targets[torch.tensor([0, 2])] = 3
    cases.append(_ce_call(g.randn(9, 7), targets, ignore_index=3))               # a custom ignore_index
    big = torch.tensor([[500.0, -500.0, 0.0], [0.0, 800.0, 0.0]])
    cases.append(_ce_call(big, torch.tensor([1, 0]),
                          f" for logits {big.int().tolist()} (large logits must not give inf or nan)"))
    cases.append(_ce_call(g.randn(4, 6, dtype=torch.float64), g.randint(0, 6, (4,))))
    t = g.randint(0, 6, (5,))
    t[0] = -100
    cases.append(_ce_call(g.randn(5, 6, dtype=torch.float64), t, ignore_index=-100))
    return cases


# ----------------------------------------------------------------------------- 0.4

def _tiny_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


check_train_loop = Exercise("0.4", "train_loop", goal="writes the training loop itself",
                            forbid=[Rule("plmkit's `basics.train_loop`", [basics.train_loop])])


@check_train_loop.cases
def _loop_cases(g):
    model = _tiny_model()
    state = {k: g.randn(*v.shape) * 0.5 for k, v in model.state_dict().items()}
    batches = [(g.randn(5, 4), g.randint(0, 3, (5,))) for _ in range(6)]
    return {"state": state, "batches": batches, "lr": 0.5, "momentum": 0.9}


@check_train_loop.probe
def _loop_probe(p, train_loop, cases):
    """Run the loop on a tiny model from the case's weights: its losses, and the weights it leaves."""
    model = _tiny_model()
    model.load_state_dict(cases["state"])
    opt = torch.optim.SGD(model.parameters(), lr=cases["lr"], momentum=cases["momentum"])
    what = "train_loop(model, optimizer, 6 batches, F.cross_entropy)"
    losses = p.call(train_loop, model, opt, cases["batches"], F.cross_entropy)
    return {"losses": {**losses, "what": f"{what}: the list of losses (Python floats, one per batch)"},
            "state": {k: {"value": v.detach().clone(), "raised": None, "mutated": [], "grads": None,
                          "what": f"{what}: the model's parameter {k!r} afterwards"}
                      for k, v in model.state_dict().items()}}
