"""Chapter 0's trusted half: the references and the likely bugs (`plmkit/checks/warmup.py` has the cases)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import basics
from .._core import Trusted


# ----------------------------------------------------------------------------- 0.1 softmax

def sm_no_shift(x, dim=-1):
    return x.exp() / x.exp().sum(dim=dim, keepdim=True)


def sm_last_dim(x, dim=-1):
    z = x - x.amax(dim=-1, keepdim=True)
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)


def sm_global_sum(x, dim=-1):
    z = x - x.amax(dim=dim, keepdim=True)
    return z.exp() / z.exp().sum()


def sm_float32(x, dim=-1):
    z = x.float() - x.float().amax(dim=dim, keepdim=True)
    return z.exp() / z.exp().sum(dim=dim, keepdim=True)


def sm_in_place(x, dim=-1):
    x.sub_(x.amax(dim=dim, keepdim=True).detach())
    return x.exp() / x.exp().sum(dim=dim, keepdim=True)


def sm_detached(x, dim=-1):
    z = (x - x.amax(dim=dim, keepdim=True)).detach()
    return z.exp() / z.exp().sum(dim=dim, keepdim=True)


SOFTMAX_BUGS = {
    "exp overflowed: subtract the max along `dim` first": sm_no_shift,
    "normalised over the last dim, not over `dim`: pass `dim` through to every reduction": sm_last_dim,
    "normalised over all elements at once: sum over `dim` only, with keepdim=True": sm_global_sum,
    "computed in float32: keep the input's dtype (no .float())": sm_float32,
    "the input x was changed in place (e.g. x -= x.max()); compute on a new tensor: "
    "z = x - x.amax(dim, keepdim=True)": sm_in_place,
    "the result is detached from the graph (no .detach() on the way)": sm_detached,
}


# ----------------------------------------------------------------------------- 0.2 log_softmax

def lsm_log_of_softmax(x, dim=-1):
    return torch.log(sm_last_dim(x.movedim(dim, -1)).movedim(-1, dim))


def lsm_no_shift(x, dim=-1):
    return x - x.exp().sum(dim=dim, keepdim=True).log()


def lsm_last_dim(x, dim=-1):
    z = x - x.amax(dim=-1, keepdim=True)
    return z - z.exp().sum(dim=-1, keepdim=True).log()


def lsm_global_max(x, dim=-1):
    z = x - x.max()                                     # one global max: rows far below it underflow
    return z - z.exp().sum(dim=dim, keepdim=True).log()


LOG_SOFTMAX_BUGS = {
    "log(softmax(x)) is -inf where softmax underflows to 0: compute z - log(sum(exp(z))) with z = x - max":
        lsm_log_of_softmax,
    "exp overflowed: subtract the max along `dim` first": lsm_no_shift,
    "normalised over the last dim, not over `dim`: pass `dim` through to every reduction": lsm_last_dim,
    "one max for the whole tensor: take the max along `dim`, with keepdim=True": lsm_global_max,
}


# ----------------------------------------------------------------------------- 0.3 cross_entropy

def _ce(logits, targets, keep, reduce="mean"):
    z = logits[keep] - logits[keep].amax(-1, keepdim=True)
    logp = z - z.exp().sum(-1, keepdim=True).log()
    picked = logp.gather(1, targets[keep][:, None])
    return -(picked.mean() if reduce == "mean" else picked.sum())


def ce_ignores_nothing(logits, targets, ignore_index=-100):
    t = targets.clamp(min=0)
    return _ce(logits, t, torch.ones_like(t, dtype=torch.bool))


def ce_sum(logits, targets, ignore_index=-100):
    return _ce(logits, targets, targets != ignore_index, "sum")


def ce_item(logits, targets, ignore_index=-100):
    return torch.tensor(_ce(logits, targets, targets != ignore_index).item())


def ce_float(logits, targets, ignore_index=-100):
    return _ce(logits, targets, targets != ignore_index).item()


def ce_hardcoded_minus_100(logits, targets, ignore_index=-100):
    return _ce(logits, targets, targets != -100)


def ce_divides_by_all(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    return _ce(logits, targets, keep, "sum") / len(targets)


def ce_no_shift(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    logp = logits[keep] - logits[keep].exp().sum(-1, keepdim=True).log()
    return -logp.gather(1, targets[keep][:, None]).mean()


def ce_sign_flipped(logits, targets, ignore_index=-100):
    return -_ce(logits, targets, targets != ignore_index)


CROSS_ENTROPY_BUGS = {
    "ignore_index is hard-coded to -100: skip the targets equal to the `ignore_index` argument":
        ce_hardcoded_minus_100,
    "the ignored targets were counted: leave out the positions whose target is ignore_index": ce_ignores_nothing,
    "that is the sum over positions; take the mean": ce_sum,
    "divided by every position; average over the non-ignored ones only": ce_divides_by_all,
    "the sign is flipped: the loss is MINUS the mean log-probability": ce_sign_flipped,
    "large logits overflow exp: subtract each row's max first": ce_no_shift,
    "the loss went through .item() and back into a new tensor: keep the computed tensor so gradients flow":
        ce_item,
    "a Python float was returned: return the loss as a 0-dim tensor": ce_float,
}


# ----------------------------------------------------------------------------- 0.4 train_loop

def loop(zero_grad=True, step=True, item=True, zero_after_backward=False, last_only=False):
    def train_loop(model, optimizer, batches, loss_fn):
        model.train()
        losses = []
        for x, y in batches:
            if zero_grad and not zero_after_backward:
                optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            if zero_after_backward:
                optimizer.zero_grad()
            if step:
                optimizer.step()
            losses.append(loss.item() if item else loss)
        return losses[-1:] if last_only else losses
    return train_loop


TRAIN_LOOP_BUGS = {
    "the gradients pile up across batches: call optimizer.zero_grad() before each backward()":
        loop(zero_grad=False),
    # no output tells these two apart: the weights never move in either
    "the model's parameters did not change: call optimizer.step() after loss.backward(), and "
    "optimizer.zero_grad() before the backward, not between backward() and step()":
        [loop(step=False), loop(zero_after_backward=True)],
    "the losses must be Python floats: append loss.item(), not the tensor": loop(item=False),
    "return one loss per batch, not only the last": loop(last_only=True),
}


TRUSTED = {
    "softmax": Trusted(F.softmax, SOFTMAX_BUGS),
    "log_softmax": Trusted(F.log_softmax, LOG_SOFTMAX_BUGS),
    "cross_entropy": Trusted(F.cross_entropy, CROSS_ENTROPY_BUGS),
    "train_loop": Trusted(basics.train_loop, TRAIN_LOOP_BUGS),
}
