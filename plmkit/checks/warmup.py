"""Checkers for chapter 0, the warm-up.

    0.1 softmax        stable softmax along any dim, any number of dims, dtype kept, differentiable
    0.2 log_softmax    the same for log(softmax), finite where log(softmax) is -inf
    0.3 cross_entropy  mean over non-ignored targets, differentiable
    0.4 train_loop     zero_grad, forward, loss, backward, step: losses and final weights
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import basics
from ._core import Exercise, call, reference_grads
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


def _tensor_calls(g, fn_name: str) -> list[dict]:
    """The shared cases of 0.1 and 0.2: many shapes and dims, huge values, float64, a gradient."""
    cases = []
    for shape, dim in [((5,), -1), ((3, 7), -1), ((4, 6), 0), ((2, 3, 8), 1), ((2, 3, 4), -1)]:
        cases.append(call(g.randn(*shape) * 3, dim=dim))
    cases.append(call(torch.tensor([[1000.0, 999.0, 998.0], [-1000.0, -1000.0, -1001.0]]), dim=-1))
    x = g.randn(3, 5, dtype=torch.float64) * 2
    cases.append(call(x, dim=-1, grad=(0,), cotangent=g.randn(3, 5, dtype=torch.float64)))
    return cases


def _describe(case: dict, fn_name: str) -> str:
    x, dim = case["args"][0], case["kwargs"]["dim"]
    if x.abs().max() >= 999:
        return f"{fn_name}(x, dim={dim}) for x = {x.int().tolist()} (huge values: subtract the max first)"
    dt = "" if x.dtype == torch.float32 else f", dtype {x.dtype}"
    return f"{fn_name}(x, dim={dim}) for x of shape {tuple(x.shape)}{dt}"


def _dim_hint(fn, x: torch.Tensor, dim: int):
    """Name the wrong-axis bug: normalised over another dim, or over everything."""
    def hint(got: torch.Tensor) -> str:
        for other in range(x.ndim):
            if other != dim % x.ndim and torch.allclose(got.double(), fn(x, dim=other).double(), atol=1e-5):
                return f"normalised over dim={other}, not dim={dim}: pass `dim` through to every reduction"
        flat = fn(x.reshape(-1), dim=0).reshape(x.shape)
        if torch.allclose(got.double(), flat.double(), atol=1e-5):
            return "normalised over all elements at once: sum over `dim` only, with keepdim=True"
        if x.abs().max() >= 999 and not torch.isfinite(got).all():
            return "exp overflowed: subtract the max along `dim` first"
        return ""
    return hint


def _judge_elementwise(r, cases, results, fn_name: str, reference) -> None:
    for case, rec in zip(cases, results):
        what = _describe(case, fn_name)
        x, dim = case["args"][0], case["kwargs"]["dim"]
        want = reference(x, dim=dim)                                  # reference first, on the case data
        got = r.value(rec, what)
        if got is None:
            continue
        r.close(got, want, what, atol=1e-5 if x.dtype == torch.float32 else 1e-10,
                hint=_dim_hint(reference, x, dim))
        if case["grad"]:
            r.grads_close(rec, reference_grads(reference, case), what)
    changed = [rec for rec in results if rec.get("mutated")]
    r.check(not changed, f"{fn_name} changed its input x in place (e.g. x -= x.max()); "
                         f"compute on a new tensor: z = x - x.amax(dim, keepdim=True)")


# ----------------------------------------------------------------------------- 0.1

check_softmax = Exercise("0.1", "softmax", goal="computes softmax itself from exp, max and sum",
                         forbid=[TORCH_SOFTMAX, TORCH_LOG_SOFTMAX, PLMKIT_BASICS])


@check_softmax.cases
def _softmax_cases(g):
    return _tensor_calls(g, "softmax")


@check_softmax.judge
def _softmax_judge(r, cases, results):
    _judge_elementwise(r, cases, results, "softmax", F.softmax)


# ----------------------------------------------------------------------------- 0.2

check_log_softmax = Exercise("0.2", "log_softmax", goal="computes log-softmax itself from exp, log, max and sum",
                             forbid=[TORCH_SOFTMAX, TORCH_LOG_SOFTMAX, TORCH_LOGSUMEXP, PLMKIT_BASICS])


@check_log_softmax.cases
def _log_softmax_cases(g):
    cases = _tensor_calls(g, "log_softmax")
    cases.append(call(torch.tensor([[1000.0, 0.0, -1000.0]]), dim=-1))   # log(softmax) gives -inf here
    return cases


@check_log_softmax.judge
def _log_softmax_judge(r, cases, results):
    _judge_elementwise(r, cases, results, "log_softmax", F.log_softmax)


# ----------------------------------------------------------------------------- 0.3

check_cross_entropy = Exercise("0.3", "cross_entropy",
                               goal="computes cross-entropy itself from exp, log, max, gather and mean",
                               forbid=[TORCH_CE, TORCH_SOFTMAX, TORCH_LOG_SOFTMAX, TORCH_LOGSUMEXP, PLMKIT_BASICS])


@check_cross_entropy.cases
def _ce_cases(g):
    cases = []
    for n, v in [(1, 3), (6, 10), (32, 50)]:
        cases.append(call(g.randn(n, v) * 2, g.randint(0, v, (n,))))
    targets = g.randint(0, 5, (8,))
    targets[torch.tensor([1, 4, 6])] = -100
    cases.append(call(g.randn(8, 5), targets, ignore_index=-100))
    targets = g.randint(0, 7, (9,))
    targets[torch.tensor([0, 2])] = 3
    cases.append(call(g.randn(9, 7), targets, ignore_index=3))               # a custom ignore_index
    cases.append(call(torch.tensor([[500.0, -500.0, 0.0], [0.0, 800.0, 0.0]]), torch.tensor([1, 0])))
    cases.append(call(g.randn(4, 6, dtype=torch.float64), g.randint(0, 6, (4,)), grad=(0,),
                      cotangent=torch.tensor(1.0, dtype=torch.float64)))
    t = g.randint(0, 6, (5,))
    t[0] = -100
    cases.append(call(g.randn(5, 6, dtype=torch.float64), t, ignore_index=-100, grad=(0,),
                      cotangent=torch.tensor(1.0, dtype=torch.float64)))
    return cases


@check_cross_entropy.judge
def _ce_judge(r, cases, results):
    for case, rec in zip(cases, results):
        logits, targets = case["args"]
        ignore = case["kwargs"].get("ignore_index", -100)
        want = F.cross_entropy(logits, targets, ignore_index=ignore)
        keep = targets != ignore
        what = f"cross_entropy(logits {tuple(logits.shape)}, targets {tuple(targets.shape)}"
        if "ignore_index" in case["kwargs"]:
            what += f", ignore_index={ignore}) with {int((~keep).sum())} ignored targets (average over the others)"
        elif logits.abs().max() >= 500:
            what += f") for logits {logits.int().tolist()} (large logits must not give inf or nan)"
        else:
            what += ")"
        if logits.dtype != torch.float32:
            what += f" in {logits.dtype}"
        got = r.value(rec, what)
        if got is None:
            continue

        def hint(got, logits=logits, targets=targets, keep=keep):
            lp = F.log_softmax(logits.double(), -1)
            picked = -lp[keep].gather(1, targets[keep][:, None])
            if torch.allclose(got.double(), picked.sum(), atol=1e-5):
                return "that is the sum over positions; take the mean"
            if not keep.all() and torch.allclose(got.double(), picked.sum() / len(targets), atol=1e-5):
                return "divided by every position; average over the non-ignored ones only"
            if torch.allclose(got.double(), -picked.mean(), atol=1e-5):
                return "the sign is flipped: the loss is MINUS the mean log-probability"
            return ""

        r.close(got, want, what, atol=1e-5 if logits.dtype == torch.float32 else 1e-10, hint=hint)
        if case["grad"]:
            r.grads_close(rec, reference_grads(lambda z, t, **k: F.cross_entropy(z, t, **k), case),
                          what + ": the gradient")
    r.check(not any(rec.get("mutated") for rec in results),
            "cross_entropy changed logits or targets in place; leave the inputs alone (index a copy)")


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


def _run_loop(loop, cases, runner=lambda f, *a: f(*a)):
    model = _tiny_model()
    model.load_state_dict(cases["state"])
    opt = torch.optim.SGD(model.parameters(), lr=cases["lr"], momentum=cases["momentum"])
    return runner(loop, model, opt, cases["batches"], F.cross_entropy), model


@check_train_loop.probe
def _loop_probe(p, train_loop, cases):
    rec, model = _run_loop(train_loop, cases, p.call)
    return {"losses": rec, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


@check_train_loop.judge
def _loop_judge(r, cases, results):
    expected, ref_model = _run_loop(basics.train_loop, cases)      # the reference first
    what = "train_loop(model, optimizer, 6 batches, F.cross_entropy)"
    losses = r.value(results["losses"], what, list)
    if losses is not None:
        kinds = sorted({type(v).__name__ for v in losses})
        if r.check(kinds == ["float"], f"{what} must return a list of Python floats (use loss.item()), "
                                       f"got a list of {', '.join(kinds) or 'nothing'}"):
            if r.check(len(losses) == len(expected), f"{what} must return one loss per batch: "
                                                     f"{len(expected)} batches, got {len(losses)} losses"):
                r.close(torch.tensor(losses), torch.tensor(expected),
                        f"{what}: the losses of a correct loop (zero_grad, forward, loss, backward, step)",
                        atol=1e-5)
    start, got = cases["state"], results["state"]
    r.check(any(not torch.equal(got[k], start[k]) for k in start),
            "the model's parameters did not change: call optimizer.step() after loss.backward()")
    want = ref_model.state_dict()
    r.check(all(torch.allclose(got[k], want[k], atol=1e-5) for k in want),
            "after 6 batches the parameters differ from a correct loop's: are the gradients cleared "
            "with optimizer.zero_grad() before each backward(), and is step() called once per batch?")
    r.unchanged(results["losses"], "train_loop")
