"""Checkers for chapter 8, preference alignment (reward model, PPO, DPO).

    8.1 bradley_terry_loss    mean of -log sigma(r_c - r_r), stable for large gaps
    8.2 completion_logprob    summed log-probs of the completion tokens, logits shifted by one
    8.3 kl_k3                 the k3 estimator (r - 1) - log r with r = pi_ref / pi
    8.4 shaped_rewards        -kl_coef * k1 on every response token, the score at the last real one
    8.5 gae                   generalised advantage estimation, no bootstrap past a row's end
    8.6 clipped_policy_loss   PPO's pessimistic clipped surrogate, as a loss, masked mean
    8.7 ppo_update            capstone: KL in the reward, GAE, whitening, epochs x minibatches of clipped
                              policy + value loss; parameters after the update equal plmkit's
    8.8 dpo_loss              -log sigma(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean
    8.9 implicit_rewards      beta * (log pi - log pi_ref) per answer, and preference accuracy
    8.10 dpo_step             capstone: one optimiser step of DPO against a frozen reference; parameters
                              after three steps equal plmkit's
    8.11 group_advantages     GRPO's group-normalised advantages (r - group mean) / (group std + eps)
    8.12 grpo_loss            GRPO-clip + beta * k3 per token, masked, aggregated by loss_type

Each judge names the classic bug when it recognises one: the sign flipped (rejected
minus chosen), log(sigmoid(x)) that underflows, logits not shifted, the mean instead of
the sum, the ratio inverted in k3, the score at the last column instead of the last
real token, bootstrapping past the end, min instead of max, beta outside the sigmoid,
the reference ignored, ties counted as wins; the biased std, one normalisation over the whole
batch instead of per group, k1 instead of k3, the length normalisation of the wrong loss_type;
a missing whitening, KL outside the reward, no value loss, no zero_grad, the reference updated.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..align import dpo as _dpo
from ..align import policy_gradient as _pg
from ..align import ppo as _ppo
from ..align import reward as _reward
from ..align import toy as _toy
from ..models.llama import Llama
from ._core import Exercise, call, reference_grads
from ._guard import Module, Rule, aten_ops

BCE = Rule("torch's logistic losses (`F.binary_cross_entropy_with_logits`, `F.soft_margin_loss`)",
           [F.binary_cross_entropy_with_logits, F.soft_margin_loss,
            *aten_ops("binary_cross_entropy_with_logits", "soft_margin_loss")])
KL_DIV = Rule("`F.kl_div`", [F.kl_div, *aten_ops("kl_div")])
TRL = Rule("TRL (its trainers' losses and `selective_log_softmax`)", [Module("trl")])


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
    forbid=[Rule("plmkit's `bradley_terry_loss`", [_reward.bradley_terry_loss, _dpo.dpo_loss]), BCE, TRL])


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
                 [_dpo.sequence_logprobs, _dpo.completion_logprobs, _ppo.token_logprobs]), TRL])


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
    forbid=[Rule("plmkit's `kl_estimate`", [_ppo.kl_estimate]), KL_DIV, TRL])


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
    forbid=[Rule("plmkit's `shaped_rewards` / `kl_estimate`", [_ppo.shaped_rewards, _ppo.kl_estimate]), TRL])


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
    forbid=[Rule("plmkit's `gae`", [_ppo.gae]), TRL])


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
    forbid=[Rule("plmkit's `clipped_policy_loss`", [_ppo.clipped_policy_loss]), TRL])


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


# ----------------------------------------------------------------------------- 8.8

def _dpo_ref(pc, pr, rc, rr, beta):
    return _dpo.dpo_loss(pc, pr, rc, rr, beta)[0]


check_dpo_loss = Exercise(
    "8.8", "dpo_loss", goal="writes the DPO loss itself from log-ratios and logsigmoid",
    forbid=[Rule("plmkit's `dpo_loss` / `dpo_step`", [_dpo.dpo_loss, _dpo.dpo_step]), BCE, TRL])


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


# ----------------------------------------------------------------------------- 8.9

check_implicit_rewards = Exercise(
    "8.9", "implicit_rewards", goal="computes DPO's implicit rewards and accuracy itself",
    forbid=[Rule("plmkit's `implicit_rewards` / `dpo_loss`", [_dpo.implicit_rewards, _dpo.dpo_loss]), TRL])


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


# ----------------------------------------------------------------------------- 8.11

check_group_advantages = Exercise(
    "8.11", "group_advantages", goal="computes GRPO's group-normalised advantages itself",
    forbid=[Rule("plmkit's `group_normalized_advantages` / `rloo_advantages`",
                 [_pg.group_normalized_advantages, _pg.rloo_advantages]), TRL])


@check_group_advantages.cases
def _ga_cases(g):
    cases = []
    for groups, G, by_std, eps, dtype in ((3, 4, True, 1e-6, torch.float32), (2, 5, False, 1e-6, torch.float32),
                                          (4, 2, True, 1e-3, torch.float64)):
        r = g.randint(0, 4, (groups * G,)).to(dtype) + g.rand(groups * G, dtype=dtype) * 0.5
        r[:G] = 1.0                                                  # one group where every answer scores the same
        r[G:2 * G] = 2.0 + 1e-3 * g.randn(G, dtype=dtype)            # and one with a tiny spread (eps matters)
        cases.append(call(r, G, by_std, eps))
    return cases


@check_group_advantages.judge
def _ga_judge(r, cases, results):
    for case, rec in zip(cases, results):
        rewards, G, by_std, eps = case["args"]
        want = _pg.group_normalized_advantages(rewards, G, by_std, eps)
        what = (f"group_advantages for {len(rewards) // G} groups of {G}, normalize_by_std={by_std}, eps={eps}")
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        grouped = rewards.view(-1, G)
        centred = grouped - grouped.mean(1, keepdim=True)
        strided = rewards.view(G, -1)
        by_batch = rewards - rewards.mean()
        by_stride = strided - strided.mean(0, keepdim=True)
        if by_std:
            candidates = {
                "the std is the biased one (unbiased=False): use torch.std's default, as CS336 and TRL do":
                    (centred / (grouped.std(1, unbiased=False, keepdim=True) + eps)).reshape(-1),
                "eps goes after the square root: / (std + eps)":
                    (centred / (grouped.var(1, keepdim=True) + eps).sqrt()).reshape(-1),
                "the statistics are over the whole batch, not over each group of answers to one prompt":
                    by_batch / (rewards.std() + eps),
                "the groups are consecutive: rewards.view(-1, group_size), not view(group_size, -1)":
                    (by_stride / (strided.std(0, keepdim=True) + eps)).reshape(-1),
                "normalize_by_std is ignored (True: divide by the group's std)": centred.reshape(-1)}
        else:
            candidates = {
                "normalize_by_std is ignored (False: Dr. GRPO keeps r - group mean)":
                    (centred / (grouped.std(1, keepdim=True) + eps)).reshape(-1),
                "the statistics are over the whole batch, not over each group of answers to one prompt": by_batch,
                "the groups are consecutive: rewards.view(-1, group_size), not view(group_size, -1)":
                    by_stride.reshape(-1)}
        r.close(got, want, what, hint=_hint_from(candidates))
    _unchanged(r, results, "group_advantages")


# ----------------------------------------------------------------------------- 8.12

def _grpo_ref(logp, old, ref, adv, mask, clip_range, beta, loss_type, max_len):
    return _pg.grpo_loss(logp, old, ref, adv, mask, clip_range, beta, loss_type, max_len)


check_grpo_loss = Exercise(
    "8.12", "grpo_loss", goal="writes the GRPO loss itself from ratios, clamp and masks",
    forbid=[Rule("plmkit's `grpo_loss` / `grpo_clip_loss` / `masked_mean` / `masked_normalize`",
                 [_pg.grpo_loss, _pg.grpo_clip_loss, _pg.masked_mean, _pg.masked_normalize]),
            Rule("plmkit's PPO losses (`clipped_policy_loss`, `kl_estimate`)",
                 [_ppo.clipped_policy_loss, _ppo.kl_estimate]), TRL, KL_DIV])


@check_grpo_loss.cases
def _grpo_cases(g):
    cases = []
    for B, N, lengths, beta, loss_type, dtype in (
            (6, 5, [5, 3, 1, 4, 5, 2], 0.04, "grpo", torch.float64), (4, 6, [6, 2, 4, 1], 0.1, "bnpo", torch.float32),
            (5, 4, [4, 1, 3, 2, 4], 0.5, "dr_grpo", torch.float64), (3, 5, [5, 2, 4], 0.0, "grpo", torch.float32)):
        mask = (torch.arange(N)[None] < torch.tensor(lengths)[:, None]).long()
        old = -g.rand(B, N, dtype=dtype) * 3
        logp = old + g.randn(B, N, dtype=dtype) * 0.3                  # ratios far enough from 1 to clip
        ref = old + g.randn(B, N, dtype=dtype) * 0.3
        cases.append(call(logp, old, ref, g.randn(B, dtype=dtype), mask, 0.2, beta, loss_type, N + 2, grad=(0,)))
    return cases


@check_grpo_loss.judge
def _grpo_judge(r, cases, results):
    for case, rec in zip(cases, results):
        logp, old, ref, adv, mask, eps, beta, loss_type, max_len = case["args"]
        want = _grpo_ref(*case["args"])
        what = (f"grpo_loss(loss_type={loss_type!r}, beta={beta}) on {tuple(logp.shape)} with lengths "
                f"{mask.sum(1).tolist()}")
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue
        m = mask.to(logp.dtype)
        ratio = torch.exp(logp - old)
        A = adv[:, None]
        clip = -torch.minimum(ratio * A, ratio.clamp(1 - eps, 1 + eps) * A)
        k3 = torch.exp(ref - logp) - (ref - logp) - 1
        k1 = logp - ref

        def agg(per_token, how=loss_type):
            if how == "grpo":
                return ((per_token * m).sum(1) / m.sum(1)).mean()
            if how == "bnpo":
                return (per_token * m).sum() / m.sum()
            return (per_token * m).sum() / (logp.size(0) * max_len)
        others = {t: agg(clip + beta * k3, t) for t in ("grpo", "bnpo", "dr_grpo") if t != loss_type}
        r.close(got, want, what, hint=_hint_from({
            **({"the KL term is k1 (logp - ref_logp): GRPO uses k3 = exp(ref - logp) - (ref - logp) - 1":
                agg(clip + beta * k1),
                "the k3 ratio is inverted: exp(ref_logp - logp) - (ref_logp - logp) - 1":
                agg(clip + beta * (torch.exp(logp - ref) - (logp - ref) - 1)),
                "the KL penalty is subtracted: the loss ADDS beta * k3": agg(clip - beta * k3)} if beta else {}),
            "max instead of min inside the clipped objective: -min(rho A, clip(rho) A)":
                agg(-torch.maximum(ratio * A, ratio.clamp(1 - eps, 1 + eps) * A) + beta * k3),
            "the padding is averaged in: mask before aggregating": (clip + beta * k3).mean(),
            **{f"this is the {t!r} aggregation; loss_type={loss_type!r} asks for another one": v
               for t, v in others.items()},
        }))
        r.grads_close(rec, reference_grads(_grpo_ref, case), what)
    _unchanged(r, results, "grpo_loss")


# ----------------------------------------------------------------------------- the capstones' tiny policy

def _tiny_config():
    return _toy.policy_config(hidden_size=16, layers=1)


def _random_state(g, module: nn.Module) -> dict:
    """Random weights for `module` as case data: matrices ~ N(0, 0.3^2), norm gains ~ 1 + N(0, 0.1^2)."""
    return {k: (1 + 0.1 * g.randn(*v.shape)) if v.ndim == 1 and ("norm" in k or "ln_f" in k)
            else 0.3 * g.randn(*v.shape) for k, v in module.state_dict().items()}


def _tiny_llama(state: dict) -> Llama:
    with torch.random.fork_rng():                                     # leave the caller's RNG alone
        model = Llama(_tiny_config())
    model.load_state_dict(state)
    return model


def _tiny_policy(state: dict) -> _ppo.PolicyWithValue:
    with torch.random.fork_rng():
        policy = _ppo.PolicyWithValue(Llama(_tiny_config()))
    policy.load_state_dict(state)
    return policy


def _state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _params_close(got: dict, want: dict, atol=1e-5) -> bool:
    return (isinstance(got, dict) and sorted(got) == sorted(want) and
            all(isinstance(got[k], torch.Tensor) and got[k].shape == want[k].shape and
                torch.allclose(got[k].double(), want[k].double(), atol=atol, rtol=1e-4) for k in want))


# ----------------------------------------------------------------------------- 8.7

check_ppo_update = Exercise(
    "8.7", "ppo_update", goal="writes PPO's learning step itself (credit assignment, epochs, minibatches)",
    forbid=[Rule("plmkit's PPO loop (`ppo.update_from_rollout`, `ppo.ppo_update`, `ppo.credit`, `ppo.rollout`, "
                 "`ppo.train_ppo`)", [_ppo.update_from_rollout, _ppo.ppo_update, _ppo.credit, _ppo.rollout,
                                      _ppo.train_ppo]),
            Rule("plmkit's `shaped_rewards` / `gae` / `whiten` / `clipped_policy_loss` / `clipped_value_loss` "
                 "(use yours from 8.4-8.6)", [_ppo.shaped_rewards, _ppo.gae, _ppo.whiten, _ppo.clipped_policy_loss,
                                              _ppo.clipped_value_loss]), TRL])

PPO_SETTINGS = dict(kl_coef=0.1, ppo_epochs=2, num_minibatches=2, vf_coef=0.5, clip_range=0.2, clip_range_value=0.2,
                    gamma=1.0, lam=0.95, max_grad_norm=1.0)


@check_ppo_update.cases
def _ppo_cases(g):
    with torch.random.fork_rng():
        shapes = _ppo.PolicyWithValue(Llama(_tiny_config()))
    state = _random_state(g, shapes)
    state["value_head.weight"] = 0.3 * g.randn(1, 16)
    B, P, N = 8, 3, 6
    lengths = [6, 3, 5, 1, 6, 4, 2, 6]
    mask = (torch.arange(N)[None] < torch.tensor(lengths)[:, None]).long()
    sequences = g.randint(3, len(_toy.WORDS), (B, P + N))
    sequences[:, 0] = _toy.BOS
    with torch.no_grad():
        logp, values = _ppo._response_stats(_tiny_policy(state), sequences, P, 1.0)
    rollout = {"sequences": sequences, "prompt_length": P, "mask": mask,
               "logp": (logp + 0.3 * g.randn(B, N)) * mask,          # the sampler's log-probs: old, not current
               "ref_logp": (logp + 0.3 * g.randn(B, N)) * mask,
               "values": (values + 0.2 * g.randn(B, N)) * mask, "scores": 2 * g.randn(B)}
    return {"state": state, "rollout": rollout, "settings": dict(PPO_SETTINGS), "lr": 0.1,
            "generator_seed": g.seed_int()}


def _ppo_run(fn, case, runner=lambda f, *a: f(*a)):
    policy = _tiny_policy(case["state"])
    opt = torch.optim.SGD(policy.parameters(), lr=case["lr"])
    config = _ppo.PPOConfig(**case["settings"])
    gen = torch.Generator().manual_seed(case["generator_seed"])
    return runner(fn, policy, opt, case["rollout"], config, gen), policy


def _ppo_reference(case):
    out, policy = _ppo_run(_ppo.update_from_rollout, case)
    return out["losses"], _state(policy)


def _ppo_variant(case, whiten=True, kl=True, vf=True, clip_grad=True, reshuffle=True, zero_grad=True):
    """plmkit's update with one piece left out: what a learner's result equals when that piece is missing."""
    policy = _tiny_policy(case["state"])
    opt = torch.optim.SGD(policy.parameters(), lr=case["lr"])
    cfg = _ppo.PPOConfig(**{**case["settings"], "kl_coef": case["settings"]["kl_coef"] if kl else 0.0})
    gen = torch.Generator().manual_seed(case["generator_seed"])
    b = case["rollout"]
    with torch.no_grad():
        rewards = _ppo.shaped_rewards(b["scores"], b["logp"], b["ref_logp"], b["mask"], cfg.kl_coef)
        adv, ret = _ppo.gae(rewards, b["values"], b["mask"], cfg.gamma, cfg.lam)
        adv = _ppo.whiten(adv, b["mask"]) if whiten else adv
    B, P = b["sequences"].size(0), b["prompt_length"]
    size, losses, order = B // cfg.num_minibatches, [], None
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=gen) if reshuffle or order is None else order
        for start in range(0, B, size):
            idx = order[start:start + size]
            logp, values = _ppo._response_stats(policy, b["sequences"][idx], P, 1.0)
            loss, _ = _ppo.clipped_policy_loss(logp, b["logp"][idx], adv[idx], b["mask"][idx], cfg.clip_range)
            if vf:
                loss = loss + cfg.vf_coef * _ppo.clipped_value_loss(values, b["values"][idx], ret[idx], b["mask"][idx],
                                                                     cfg.clip_range_value)
            if zero_grad:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
    return losses, _state(policy)


PPO_BUGS = {
    "the advantages are not whitened: (A - masked mean) / sqrt(masked var + 1e-8), over the whole rollout":
        dict(whiten=False),
    "the KL penalty is missing from the reward: shaped_rewards(scores, logp, ref_logp, mask, config.kl_coef)":
        dict(kl=False),
    "the value loss is missing: loss = policy loss + config.vf_coef * value loss": dict(vf=False),
    "the gradient norm is not clipped: nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)":
        dict(clip_grad=False),
    "every epoch must draw a new order: torch.randperm(B, generator=generator) once per epoch":
        dict(reshuffle=False),
    "the gradients are not cleared: optimizer.zero_grad() before each backward()": dict(zero_grad=False),
}


@check_ppo_update.probe
def _ppo_probe(p, ppo_update, case):
    rec, policy = _ppo_run(ppo_update, case, p.call)
    return {"losses": rec, "state": _state(policy)}


@check_ppo_update.judge
def _ppo_judge(r, case, results):
    want_losses, want_state = _ppo_reference(case)                    # the reference first
    s = case["settings"]
    what = (f"ppo_update on a rollout of 8 answers (lengths 1-6), {s['ppo_epochs']} epochs x "
            f"{s['num_minibatches']} minibatches, SGD lr={case['lr']}")
    losses = r.value(results["losses"], what, list)
    got = results["state"]
    ok_state = _params_close(got, want_state)

    def named_bug():
        for hint, flags in PPO_BUGS.items():
            v_losses, v_state = _ppo_variant(case, **flags)
            if _params_close(got, v_state) or (isinstance(losses, list) and len(losses) == len(v_losses) and all(
                    isinstance(x, float) for x in losses) and torch.allclose(torch.tensor(losses, dtype=torch.float64),
                                                                             torch.tensor(v_losses, dtype=torch.float64),
                                                                             atol=1e-5, rtol=1e-4)):
                return hint
        return ""
    if losses is not None:
        kinds = sorted({type(v).__name__ for v in losses})
        if r.check(kinds == ["float"], f"{what} must return a list of Python floats, one loss per minibatch "
                                       f"(loss.item()), got a list of {', '.join(kinds) or 'nothing'}"):
            if r.check(len(losses) == len(want_losses), f"{what} must return one loss per minibatch step: "
                                                        f"{len(want_losses)} steps, got {len(losses)} losses"):
                r.close(torch.tensor(losses, dtype=torch.float64), torch.tensor(want_losses, dtype=torch.float64),
                        f"{what}: the losses of each minibatch (policy + vf_coef x value loss)",
                        hint=lambda _: named_bug())
    r.check(any(not torch.equal(got[k], case["state"][k]) for k in case["state"]) if isinstance(got, dict) else False,
            f"{what}: the policy's parameters did not change: call optimizer.step() after loss.backward()")
    bug = "" if ok_state else named_bug()
    r.check(ok_state, f"{what}: after the update the parameters differ from plmkit's" +
            (f" (likely: {bug})" if bug else " (check the order of the steps in the task text)"))
    r.unchanged(results["losses"], "ppo_update")


# ----------------------------------------------------------------------------- 8.10

check_dpo_step = Exercise(
    "8.10", "dpo_step", goal="writes one DPO optimiser step itself",
    forbid=[Rule("plmkit's DPO (`dpo.dpo_update`, `dpo.dpo_step`, `dpo.dpo_loss`, `dpo.completion_logprobs`, "
                 "`dpo.sequence_logprobs`, `toy.train_dpo`)",
                 [_dpo.dpo_update, _dpo.dpo_step, _dpo.dpo_loss, _dpo.completion_logprobs, _dpo.sequence_logprobs,
                  _toy.train_dpo]), TRL, BCE])


@check_dpo_step.cases
def _ds_cases(g):
    with torch.random.fork_rng():
        shapes = Llama(_tiny_config())
    policy = _random_state(g, shapes)
    ref = {k: v + 0.1 * g.randn(*v.shape) for k, v in policy.items()}        # the reference differs from the policy
    batches = []
    for _ in range(3):
        B = 3
        prompts = [[_toy.BOS] + g.ints(g.int(1, 4), 3, len(_toy.WORDS)) for _ in range(B)]
        chosen = [g.ints(g.int(1, 6), 3, len(_toy.WORDS)) + [_toy.EOS] for _ in range(B)]
        rejected = [g.ints(g.int(1, 6), 3, len(_toy.WORDS)) + [_toy.EOS] for _ in range(B)]
        batches.append(_dpo.preference_batch(prompts, chosen, rejected, _toy.PAD))
    return {"policy": policy, "ref": ref, "batches": batches, "beta": 0.5, "lr": 1.0}


def _ds_run(fn, case, runner=lambda f, *a: f(*a)):
    policy, ref = _tiny_llama(case["policy"]), _tiny_llama(case["ref"])
    opt = torch.optim.SGD(policy.parameters(), lr=case["lr"])
    out = [runner(fn, policy, ref, opt, b, case["beta"]) for b in case["batches"]]
    return out, policy, ref


def _ds_variant(case, swap=False, average=False, zero_grad=True, ignore_ref=False):
    policy, ref = _tiny_llama(case["policy"]), _tiny_llama(case["ref"])
    opt = torch.optim.SGD(policy.parameters(), lr=case["lr"])
    losses = []
    for b in case["batches"]:
        logps = _dpo.completion_logprobs(policy, b, average)
        with torch.no_grad():
            refs = _dpo.completion_logprobs(policy if ignore_ref else ref, b, average)
        pc, pr = logps.chunk(2)
        rc, rr = refs.chunk(2)
        if swap:
            pc, pr, rc, rr = pr, pc, rr, rc
        loss = _dpo.dpo_loss(pc, pr, rc, rr, case["beta"])[0]
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, _state(policy)


DPO_BUGS = {
    "chosen and rejected are swapped: the batch holds the B chosen rows first, then the B rejected ones":
        dict(swap=True),
    "the completion log-probs are averaged over tokens; DPO (and TRL) sums them": dict(average=True),
    "the gradients are not cleared: optimizer.zero_grad() before backward()": dict(zero_grad=False),
    "the reference's log-probs come from the policy: use the frozen `ref` (under torch.no_grad())":
        dict(ignore_ref=True),
}


@check_dpo_step.probe
def _ds_probe(p, dpo_step, case):
    recs, policy, ref = _ds_run(dpo_step, case, p.call)
    return {"losses": recs, "state": _state(policy), "ref_state": _state(ref),
            "ref_grads": any(q.grad is not None for q in ref.parameters())}


@check_dpo_step.judge
def _ds_judge(r, case, results):
    want_losses, want_policy, _ = _ds_run(_dpo.dpo_update, case)      # the reference first
    want_state = _state(want_policy)
    what = f"dpo_step(policy, ref, optimizer, batch, beta={case['beta']}) on 3 batches of 3 pairs, SGD lr={case['lr']}"
    got = results["state"]

    def named_bug(losses=None):
        for hint, flags in DPO_BUGS.items():
            v_losses, v_state = _ds_variant(case, **flags)
            if _params_close(got, v_state) or (losses is not None and torch.allclose(
                    losses, torch.tensor(v_losses, dtype=torch.float64), atol=1e-5, rtol=1e-4)):
                return hint
        return ""
    vals = [r.value(rec, f"{what}, step {i + 1}", float) for i, rec in enumerate(results["losses"])]
    if all(v is not None for v in vals):
        r.close(torch.tensor(vals, dtype=torch.float64), torch.tensor(want_losses, dtype=torch.float64),
                f"{what}: the loss of each step (return loss.item())", hint=named_bug)
    r.check(_params_close(results["ref_state"], case["ref"]) and not results["ref_grads"],
            f"{what}: the reference was changed or received gradients; compute its log-probs under torch.no_grad() "
            f"and never give it to the optimizer")
    r.check(any(not torch.equal(got[k], case["policy"][k]) for k in case["policy"]),
            f"{what}: the policy's parameters did not change: call optimizer.step() after loss.backward()")
    ok = _params_close(got, want_state)
    bug = "" if ok else named_bug()
    r.check(ok, f"{what}: after three steps the parameters differ from plmkit's" + (f" (likely: {bug})" if bug else ""))
    for i, rec in enumerate(results["losses"]):
        r.unchanged(rec, f"dpo_step (step {i + 1})")
