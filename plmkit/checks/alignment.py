"""Checkers for chapter 8, preference alignment (reward model, PPO, DPO).

    8.1 bradley_terry_loss    mean of -log sigma(r_c - r_r), stable for large gaps
    8.2 completion_logprob    summed log-probs of the completion tokens, logits shifted by one
    8.3 kl_k3                 the k3 estimator (r - 1) - log r with r = pi_ref / pi
    8.4 shaped_rewards        -kl_coef * k1 on every response token, the score at the last real one
    8.5 gae                   generalised advantage estimation, no bootstrap past a row's end
    8.6 clipped_policy_loss   PPO's pessimistic clipped surrogate, as a loss, masked mean
    8.7 dpo_loss              -log sigma(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean
    8.8 implicit_rewards      beta * (log pi - log pi_ref) per answer, and preference accuracy

Each judge names the classic bug when it recognises one: the sign flipped (rejected
minus chosen), log(sigmoid(x)) that underflows, logits not shifted, the mean instead of
the sum, the ratio inverted in k3, the score at the last column instead of the last
real token, bootstrapping past the end, min instead of max, beta outside the sigmoid,
the reference ignored, ties counted as wins.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..align import dpo as _dpo
from ..align import ppo as _ppo
from ..align import reward as _reward
from ._core import Exercise, call, reference_grads
from ._guard import Rule, aten_ops

BCE = Rule("torch's logistic losses (`F.binary_cross_entropy_with_logits`, `F.soft_margin_loss`)",
           [F.binary_cross_entropy_with_logits, F.soft_margin_loss,
            *aten_ops("binary_cross_entropy_with_logits", "soft_margin_loss")])
KL_DIV = Rule("`F.kl_div`", [F.kl_div, *aten_ops("kl_div")])


def _hint_from(candidates: dict):
    """A hint function: the name of the first candidate the learner's result equals."""
    def hint(got):
        for name, cand in candidates.items():
            if isinstance(got, torch.Tensor) and got.shape == cand.shape and torch.allclose(
                    got.detach().double(), cand.detach().double(), atol=1e-5, rtol=1e-4):
                return name
        return ""
    return hint


def _unchanged(r, results, what):
    r.check(not any(rec["mutated"] for rec in results), f"{what} changed its inputs in place")


# ----------------------------------------------------------------------------- 8.1

check_bradley_terry_loss = Exercise(
    "8.1", "bradley_terry_loss", goal="writes the Bradley–Terry loss itself from logsigmoid (or softplus)",
    forbid=[Rule("plmkit's `bradley_terry_loss`", [_reward.bradley_terry_loss, _dpo.dpo_loss]), BCE])


@check_bradley_terry_loss.cases
def _bt_cases(g):
    big = torch.tensor([-150.0, 0.0, 150.0, -30.0])
    return [call(g.randn(6), g.randn(6), grad=(0, 1)),
            call(g.randn(5, dtype=torch.float64) * 3, g.randn(5, dtype=torch.float64) * 3, grad=(0, 1)),
            call(big + g.randn(4) * 0.1, torch.zeros(4), grad=(0, 1)),
            call(g.randn(1), g.randn(1))]


@check_bradley_terry_loss.judge
def _bt_judge(r, cases, results):
    for case, rec in zip(cases, results):
        rc, rr = case["args"]
        want = _reward.bradley_terry_loss(rc, rr)
        what = f"bradley_terry_loss(r_chosen, r_rejected) for {len(rc)} pairs with gaps up to {float((rc - rr).abs().max()):.3g}"
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        r.close(got, want, what, hint=_hint_from({
            "the sign is flipped: the loss must fall as r_chosen - r_rejected grows": -F.logsigmoid(rr - rc).mean(),
            "sum over the pairs, not the mean": -F.logsigmoid(rc - rr).sum(),
            "the minus sign is missing: the loss is -log sigma(r_c - r_r)": F.logsigmoid(rc - rr).mean(),
            "this is sigma(...), not -log sigma(...)": torch.sigmoid(rc - rr).mean(),
        }) if float((rc - rr).abs().max()) < 100 else
            lambda g: "log(sigmoid(x)) underflows for large gaps: use F.logsigmoid (or softplus)")
        if case["grad"]:
            r.grads_close(rec, reference_grads(_reward.bradley_terry_loss, case), what)
    _unchanged(r, results, "bradley_terry_loss")


# ----------------------------------------------------------------------------- 8.2

check_completion_logprob = Exercise(
    "8.2", "completion_logprob", goal="computes the completion log-probability itself with log_softmax and gather",
    forbid=[Rule("plmkit's `sequence_logprobs` / `token_logprobs`",
                 [_dpo.sequence_logprobs, _dpo.completion_logprobs, _ppo.token_logprobs])])


def _completion_mask(prompt_lengths, total_lengths, T):
    t = torch.arange(T)[None]
    return ((t >= torch.tensor(prompt_lengths)[:, None]) & (t < torch.tensor(total_lengths)[:, None])).long()


@check_completion_logprob.cases
def _clp_cases(g):
    cases = []
    for B, T, V, prompts, totals in ((3, 7, 11, [2, 3, 1], [7, 5, 4]), (2, 5, 6, [4, 1], [5, 5]),
                                     (1, 4, 9, [1], [4])):
        cm = _completion_mask(prompts, totals, T)
        cases.append(call(g.randn(B, T, V) * 2, g.randint(0, V, (B, T)), cm, grad=(0,),
                          cotangent=g.randn(B)))
    return cases


@check_completion_logprob.judge
def _clp_judge(r, cases, results):
    for case, rec in zip(cases, results):
        logits, ids, cm = case["args"]
        want = _dpo.sequence_logprobs(logits, ids, cm)
        what = (f"completion_logprob for logits {tuple(logits.shape)}, prompt lengths "
                f"{(cm.cumsum(1) == 0).sum(1).tolist()}, right padding")
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        logp = F.log_softmax(logits, -1)
        unshifted = (logp.gather(-1, ids[..., None])[..., 0] * cm).sum(1)
        r.close(got, want, what, hint=_hint_from({
            "the logits are not shifted: logits[:, t-1] predict input_ids[:, t]": unshifted,
            "the mean over completion tokens, not the sum (the convention here and in TRL is the sum)":
                _dpo.sequence_logprobs(logits, ids, cm, average=True),
            "the prompt tokens are included: only completion tokens count":
                _dpo.sequence_logprobs(logits, ids, torch.ones_like(cm) * (cm.cumsum(1) > 0).long().cummax(1)[0]
                                       + (cm.cumsum(1) == 0).long()),
            "the mask is shifted the wrong way (completion_mask[:, :-1])":
                (logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] * cm[:, :-1]).sum(1),
        }))
        r.grads_close(rec, reference_grads(_dpo.sequence_logprobs, case), what)
    _unchanged(r, results, "completion_logprob")


# ----------------------------------------------------------------------------- 8.3

def _k3(logp, ref_logp):
    return _ppo.kl_estimate(logp, ref_logp, "k3")


check_kl_k3 = Exercise(
    "8.3", "kl_k3", goal="writes the k3 estimator itself from exp and log-ratios",
    forbid=[Rule("plmkit's `kl_estimate`", [_ppo.kl_estimate]), KL_DIV])


@check_kl_k3.cases
def _k3_cases(g):
    return [call(-g.rand(6) * 3, -g.rand(6) * 3, grad=(0, 1)),
            call(-g.rand(2, 5, dtype=torch.float64) * 3, -g.rand(2, 5, dtype=torch.float64) * 3, grad=(0, 1),
                 cotangent=g.randn(2, 5, dtype=torch.float64)),
            call(-g.rand(2, 3, 4) * 2, -g.rand(2, 3, 4) * 2)]


@check_kl_k3.judge
def _k3_judge(r, cases, results):
    for case, rec in zip(cases, results):
        logp, ref = case["args"]
        want = _k3(logp, ref)
        what = f"kl_k3(logp, ref_logp) of shape {tuple(logp.shape)}"
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        r.close(got, want, what, hint=_hint_from({
            "this is k1 (logp - ref_logp), not k3": logp - ref,
            "the ratio is inverted: r = pi_ref / pi = exp(ref_logp - logp)": _k3(ref, logp),
            "the -1 is missing: k3 = (r - 1) - log r": want + 1,
        }))
        if case["grad"]:
            r.grads_close(rec, reference_grads(_k3, case), what)
    _unchanged(r, results, "kl_k3")


# ----------------------------------------------------------------------------- 8.4

check_shaped_rewards = Exercise(
    "8.4", "shaped_rewards", goal="builds the per-token PPO reward itself",
    forbid=[Rule("plmkit's `shaped_rewards` / `kl_estimate`", [_ppo.shaped_rewards, _ppo.kl_estimate])])


@check_shaped_rewards.cases
def _shaped_cases(g):
    cases = []
    for B, N, lengths, coef in ((4, 6, [6, 3, 1, 5], 0.1), (2, 4, [2, 4], 0.05), (3, 5, [5, 5, 5], 0.0)):
        mask = (torch.arange(N)[None] < torch.tensor(lengths)[:, None]).long()
        cases.append(call(g.randn(B) * 2, -g.rand(B, N) * 3, -g.rand(B, N) * 3, mask, coef))
    return cases


@check_shaped_rewards.judge
def _shaped_judge(r, cases, results):
    for case, rec in zip(cases, results):
        scores, logp, ref, mask, coef = case["args"]
        want = _ppo.shaped_rewards(scores, logp, ref, mask, coef)
        what = (f"shaped_rewards for {len(scores)} responses of lengths {mask.sum(1).tolist()} "
                f"(max {mask.size(1)}), kl_coef={coef}")
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        pen = -coef * (logp - ref) * mask
        at_end = pen.clone()
        at_end[:, -1] += scores
        at_start = pen.clone()
        at_start[:, 0] += scores
        r.close(got, want, what, hint=_hint_from({
            "the score is added at the last column, not at each row's last real token": at_end,
            "the score goes to the LAST response token, not the first": at_start,
            "the KL penalty has the wrong sign: the reward is -kl_coef * (logp - ref_logp)":
                _ppo.shaped_rewards(scores, ref, logp, mask, coef),
            "the penalty is not masked: tokens after the end of a response carry nothing":
                _ppo.shaped_rewards(scores, logp, ref, mask, coef) - coef * (logp - ref) * (1 - mask),
        }))
    _unchanged(r, results, "shaped_rewards")


# ----------------------------------------------------------------------------- 8.5

check_gae = Exercise(
    "8.5", "gae", goal="computes generalised advantage estimates itself with a backwards loop",
    forbid=[Rule("plmkit's `gae`", [_ppo.gae])])


@check_gae.cases
def _gae_cases(g):
    cases = []
    for B, N, lengths, gamma, lam in ((3, 6, [6, 2, 4], 1.0, 0.95), (2, 5, [5, 1], 0.9, 0.8),
                                      (2, 4, [4, 3], 1.0, 1.0)):
        mask = (torch.arange(N)[None] < torch.tensor(lengths)[:, None]).long()
        cases.append(call(g.randn(B, N), g.randn(B, N), mask, gamma, lam))
    return cases


def _gae_no_mask_values(rewards, values, mask, gamma, lam):
    """The classic bug: bootstrapping from V(s_{t+1}) past a row's end."""
    m = mask.to(values.dtype)
    N = rewards.size(1)
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(N)):
        nv = values[:, t + 1] if t + 1 < N else torch.zeros_like(last)
        last = ((rewards[:, t] * m[:, t] + gamma * nv - values[:, t]) + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv


@check_gae.judge
def _gae_judge(r, cases, results):
    for case, rec in zip(cases, results):
        rewards, values, mask, gamma, lam = case["args"]
        adv, ret = _ppo.gae(rewards, values, mask, gamma, lam)
        what = f"gae for lengths {mask.sum(1).tolist()}, gamma={gamma}, lam={lam}"
        got = r.value(rec, what, tuple)
        if got is None:
            continue
        if not r.check(len(got) == 2, f"{what}: return a tuple (advantages, returns), got {len(got)} items"):
            continue
        r.close(got[0], adv, what + ": advantages", hint=_hint_from({
            "V(s_{t+1}) is bootstrapped past the end of a row: the episode ends at its last real token":
                _gae_no_mask_values(rewards, values, mask, gamma, lam),
            "lambda is missing: A_t = delta_t + gamma * lam * A_{t+1}":
                _ppo.gae(rewards, values, mask, gamma, 1.0)[0],
        }))
        r.close(got[1], ret, what + ": returns", hint=_hint_from({
            "the returns are the advantages plus the values (the value targets), not the advantages": adv,
        }))
    _unchanged(r, results, "gae")


# ----------------------------------------------------------------------------- 8.6

def _pg_loss(logp, old, adv, mask, eps):
    return _ppo.clipped_policy_loss(logp, old, adv, mask, eps)[0]


check_clipped_policy_loss = Exercise(
    "8.6", "clipped_policy_loss", goal="writes PPO's clipped surrogate itself",
    forbid=[Rule("plmkit's `clipped_policy_loss`", [_ppo.clipped_policy_loss])])


@check_clipped_policy_loss.cases
def _pg_cases(g):
    cases = []
    ratios = torch.tensor([[0.5, 0.9, 1.0, 1.1, 1.5], [0.7, 0.85, 1.25, 1.19, 2.0]])
    adv = torch.tensor([[1.0, -1.0, 0.5, -2.0, 2.0], [-1.0, 1.5, -0.5, 1.0, -3.0]])
    old = -g.rand(2, 5) * 2
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    cases.append(call(old + ratios.log(), old, adv, mask, 0.2, grad=(0,)))
    old = -g.rand(3, 6, dtype=torch.float64) * 2
    cases.append(call(old + g.randn(3, 6, dtype=torch.float64) * 0.4, old, g.randn(3, 6, dtype=torch.float64),
                      torch.ones(3, 6, dtype=torch.long), 0.1, grad=(0,)))
    return cases


@check_clipped_policy_loss.judge
def _pg_judge(r, cases, results):
    for case, rec in zip(cases, results):
        logp, old, adv, mask, eps = case["args"]
        want = _pg_loss(logp, old, adv, mask, eps)
        what = f"clipped_policy_loss on ratios {tuple(logp.shape)} with clip_range={eps}"
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        ratio = torch.exp(logp - old)
        m = mask.to(ratio.dtype)
        clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
        r.close(got, want, what, hint=_hint_from({
            "min instead of max of the two losses (max of the objective): PPO keeps the pessimistic one":
                (torch.minimum(-adv * ratio, -adv * clipped) * m).sum() / m.sum(),
            "the ratio is clipped but the unclipped term is missing": (-adv * clipped * m).sum() / m.sum(),
            "the mean includes masked positions": torch.maximum(-adv * ratio, -adv * clipped).mean(),
            "the sign is flipped: minimise -objective": -want,
        }))
        r.grads_close(rec, reference_grads(_pg_loss, case), what)
    _unchanged(r, results, "clipped_policy_loss")


# ----------------------------------------------------------------------------- 8.7

def _dpo_ref(pc, pr, rc, rr, beta):
    return _dpo.dpo_loss(pc, pr, rc, rr, beta)[0]


check_dpo_loss = Exercise(
    "8.7", "dpo_loss", goal="writes the DPO loss itself from log-ratios and logsigmoid",
    forbid=[Rule("plmkit's `dpo_loss` / `dpo_step`", [_dpo.dpo_loss, _dpo.dpo_step]), BCE])


@check_dpo_loss.cases
def _dpo_cases(g):
    cases = []
    for B, beta, dtype in ((5, 0.1, torch.float32), (3, 0.5, torch.float64), (4, 2.0, torch.float32)):
        logps = [-g.rand(B, dtype=dtype) * 20 for _ in range(4)]
        cases.append(call(*logps, beta, grad=(0, 1)))
    return cases


@check_dpo_loss.judge
def _dpo_judge(r, cases, results):
    for case, rec in zip(cases, results):
        pc, pr, rc, rr, beta = case["args"]
        want = _dpo_ref(pc, pr, rc, rr, beta)
        what = f"dpo_loss for {len(pc)} pairs, beta={beta}"
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        h = (pc - rc) - (pr - rr)
        r.close(got, want, what, hint=_hint_from({
            "beta multiplies the loss instead of the log-ratio inside the sigmoid": beta * -F.logsigmoid(h).mean(),
            "beta is missing": -F.logsigmoid(h).mean(),
            "the reference log-probs are added instead of subtracted":
                -F.logsigmoid(beta * ((pc + rc) - (pr + rr))).mean(),
            "chosen and rejected are swapped": _dpo_ref(pr, pc, rr, rc, beta),
            "the reference is ignored": -F.logsigmoid(beta * (pc - pr)).mean(),
        }))
        r.grads_close(rec, reference_grads(_dpo_ref, case), what)
    _unchanged(r, results, "dpo_loss")


# ----------------------------------------------------------------------------- 8.8

check_implicit_rewards = Exercise(
    "8.8", "implicit_rewards", goal="computes DPO's implicit rewards and accuracy itself",
    forbid=[Rule("plmkit's `implicit_rewards` / `dpo_loss`", [_dpo.implicit_rewards, _dpo.dpo_loss])])


@check_implicit_rewards.cases
def _ir_cases(g):
    cases = []
    for B, beta in ((6, 0.1), (4, 0.5)):
        cases.append(call(*[-g.rand(B) * 10 for _ in range(4)], beta))
    pc = torch.tensor([-3.0, -2.0, -5.0, -1.0])                      # two exact ties (equal rewards)
    cases.append(call(pc, torch.tensor([-3.0, -4.0, -5.0, -2.0]), torch.tensor([-1.0, -1.0, -1.0, -1.0]),
                      torch.tensor([-1.0, -1.0, -1.0, -1.0]), 0.1))
    return cases


@check_implicit_rewards.judge
def _ir_judge(r, cases, results):
    for case, rec in zip(cases, results):
        pc, pr, rc, rr, beta = case["args"]
        want_c, want_r = _dpo.implicit_rewards(pc, rc, beta), _dpo.implicit_rewards(pr, rr, beta)
        acc = (want_c > want_r).float().mean()
        what = f"implicit_rewards for {len(pc)} pairs, beta={beta}" + (
            " (some pairs tie)" if bool((want_c == want_r).any()) else "")
        got = r.value(rec, what, tuple)
        if got is None:
            continue
        if not r.check(len(got) == 3, f"{what}: return (chosen_rewards, rejected_rewards, accuracy), "
                                      f"got {len(got)} items"):
            continue
        r.close(got[0], want_c, what + ": chosen rewards", hint=_hint_from({
            "the reference is ignored: the implicit reward is beta * (log pi - log pi_ref)": beta * pc,
            "beta is missing": pc - rc,
            "the log-ratio is upside down: log pi - log pi_ref": beta * (rc - pc),
        }))
        r.close(got[1], want_r, what + ": rejected rewards")
        r.close(got[2], acc, what + ": accuracy", hint=_hint_from({
            "a tie is not a win: count chosen > rejected strictly": (want_c >= want_r).float().mean(),
            "the accuracy is a fraction, not a count": (want_c > want_r).float().sum(),
        }))
    _unchanged(r, results, "implicit_rewards")
