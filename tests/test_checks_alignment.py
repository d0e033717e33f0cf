"""The chapter-8 checkers pass the reference answers and fail blank answers, shortcuts and plausible bugs.

Mutation table: for every exercise at least three hand-written bugs of its solution,
each run in-process against the checker (no notebook kernel).
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from checker_harness import (assert_blank_fails, assert_fails, assert_mutant_fails, assert_mutants_cover,
                             assert_reference_passes, assert_refused, case_ids, make_blank, mutant_ids,
                             recorded_passes)
from plmkit.align import dpo as pdpo
from plmkit.align import ppo as pppo
from plmkit.align import reward as preward
from plmkit.checks import alignment as checks


blank = make_blank(8)


# ---------------------------------------------------------------- reference answers (as in the notebook)
def bradley_terry_loss(r_chosen, r_rejected):
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def completion_logprob(logits, input_ids, completion_mask):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logp * completion_mask[:, 1:]).sum(dim=1)


def kl_k3(logp, ref_logp):
    log_r = ref_logp - logp
    return torch.exp(log_r) - 1 - log_r


def shaped_rewards(scores, logp, ref_logp, mask, kl_coef):
    rewards = -kl_coef * (logp - ref_logp) * mask
    last = mask.sum(dim=1) - 1
    rewards = rewards.clone()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards, values, mask, gamma, lam):
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, advantages + values


def clipped_policy_loss(logp, old_logp, advantages, mask, clip_range):
    ratio = torch.exp(logp - old_logp)
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (loss * mask).sum() / mask.sum()


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * h).mean()


def implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return chosen, rejected, (chosen > rejected).float().mean()


CASES = [
    (checks.check_bradley_terry_loss, bradley_terry_loss),
    (checks.check_completion_logprob, completion_logprob),
    (checks.check_kl_k3, kl_k3),
    (checks.check_shaped_rewards, shaped_rewards),
    (checks.check_gae, gae),
    (checks.check_clipped_policy_loss, clipped_policy_loss),
    (checks.check_dpo_loss, dpo_loss),
    (checks.check_implicit_rewards, implicit_rewards),
]


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_reference_answer_passes_with_a_stable_verdict(check, fn, capsys):
    assert_reference_passes(check, fn, capsys)


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_blank_fails(check, fn, capsys):
    assert_blank_fails(check, blank, capsys)


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_none_fails(check, fn, capsys):
    assert_fails(check, lambda *a, **k: None, capsys)


def _wrapped(fn):
    def wrapper(*a, **k):
        return fn(*a, **k)
    return wrapper


SHORTCUTS = [
    (checks.check_bradley_terry_loss, preward.bradley_terry_loss),
    (checks.check_bradley_terry_loss, lambda a, b: F.binary_cross_entropy_with_logits(a - b, torch.ones_like(a))),
    (checks.check_bradley_terry_loss, lambda a, b: F.soft_margin_loss(a - b, torch.ones_like(a))),
    (checks.check_completion_logprob, pdpo.sequence_logprobs),
    (checks.check_completion_logprob, _wrapped(pdpo.sequence_logprobs)),
    (checks.check_kl_k3, functools.partial(pppo.kl_estimate, estimator="k3")),
    (checks.check_shaped_rewards, pppo.shaped_rewards),
    (checks.check_gae, pppo.gae),
    (checks.check_clipped_policy_loss, lambda *a: pppo.clipped_policy_loss(*a)[0]),
    (checks.check_dpo_loss, lambda *a: pdpo.dpo_loss(*a)[0]),
    (checks.check_dpo_loss, lambda pc, pr, rc, rr, b: F.binary_cross_entropy_with_logits(
        b * ((pc - rc) - (pr - rr)), torch.ones_like(pc))),
    (checks.check_implicit_rewards, lambda pc, pr, rc, rr, b: (
        pdpo.implicit_rewards(pc, rc, b), pdpo.implicit_rewards(pr, rr, b),
        (pdpo.implicit_rewards(pc, rc, b) > pdpo.implicit_rewards(pr, rr, b)).float().mean())),
]


@pytest.mark.parametrize("check,shortcut", SHORTCUTS, ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(SHORTCUTS)])
def test_references_and_builtins_are_refused(check, shortcut, capsys):
    assert_refused(check, shortcut, capsys)


def test_recorded_grading_path_judges_the_same(tmp_path):
    assert recorded_passes(checks.check_dpo_loss, dpo_loss, 7, tmp_path)
    assert not recorded_passes(checks.check_gae, lambda r, v, m, g, l: gae(r, v, m, g, 1.0), 7, tmp_path)


# ---------------------------------------------------------------- mutants
def bt_flipped(a, b):
    return -F.logsigmoid(b - a).mean()


def bt_naive_log(a, b):
    return -torch.log(torch.sigmoid(a - b)).mean()


def bt_sum(a, b):
    return -F.logsigmoid(a - b).sum()


def bt_no_minus(a, b):
    return F.logsigmoid(a - b).mean()


def clp_unshifted(logits, ids, cm):
    logp = torch.log_softmax(logits, dim=-1)
    return (logp.gather(-1, ids[..., None]).squeeze(-1) * cm).sum(1)


def clp_mean(logits, ids, cm):
    return completion_logprob(logits, ids, cm) / cm[:, 1:].sum(1)


def clp_mask_wrong_side(logits, ids, cm):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return (logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * cm[:, :-1]).sum(1)


def clp_probs(logits, ids, cm):
    p = torch.softmax(logits[:, :-1], dim=-1)
    return (p.gather(-1, ids[:, 1:, None]).squeeze(-1) * cm[:, 1:]).sum(1)


def k3_is_k1(logp, ref):
    return logp - ref


def k3_inverted(logp, ref):
    log_r = logp - ref
    return torch.exp(log_r) - 1 - log_r


def k3_no_minus_one(logp, ref):
    log_r = ref - logp
    return torch.exp(log_r) - log_r


def shaped_last_column(scores, logp, ref, mask, coef):
    rewards = (-coef * (logp - ref) * mask).clone()
    rewards[:, -1] += scores
    return rewards


def shaped_first_token(scores, logp, ref, mask, coef):
    rewards = (-coef * (logp - ref) * mask).clone()
    rewards[:, 0] += scores
    return rewards


def shaped_sign(scores, logp, ref, mask, coef):
    return shaped_rewards(scores, ref, logp, mask, coef)


def shaped_unmasked(scores, logp, ref, mask, coef):
    rewards = (-coef * (logp - ref)).clone()
    rewards[torch.arange(len(scores)), mask.sum(1) - 1] += scores
    return rewards


def gae_bootstrap_past_end(rewards, values, mask, gamma, lam):
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    N = rewards.size(1)
    for t in reversed(range(N)):
        nv = values[:, t + 1] if t + 1 < N else torch.zeros_like(last)
        last = ((rewards[:, t] * mask[:, t] + gamma * nv - values[:, t]) + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, advantages + values * mask


def gae_no_lambda(rewards, values, mask, gamma, lam):
    return gae(rewards, values, mask, gamma, 1.0)


def gae_returns_are_advantages(rewards, values, mask, gamma, lam):
    adv, _ = gae(rewards, values, mask, gamma, lam)
    return adv, adv


def gae_forward_loop(rewards, values, mask, gamma, lam):
    values = values * mask
    adv = torch.zeros_like(rewards)
    acc = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.size(1)):             # runs forwards: accumulates the past, not the future
        nv = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(acc)
        acc = (rewards[:, t] + gamma * nv - values[:, t] + gamma * lam * acc) * mask[:, t]
        adv[:, t] = acc
    return adv, adv + values


def pg_min(logp, old, adv, mask, eps):
    ratio = torch.exp(logp - old)
    loss = torch.minimum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps))
    return (loss * mask).sum() / mask.sum()


def pg_clip_only(logp, old, adv, mask, eps):
    ratio = torch.exp(logp - old)
    return (-adv * ratio.clamp(1 - eps, 1 + eps) * mask).sum() / mask.sum()


def pg_unmasked(logp, old, adv, mask, eps):
    ratio = torch.exp(logp - old)
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()


def pg_inverted_ratio(logp, old, adv, mask, eps):
    return clipped_policy_loss(old, logp, adv, mask, eps)


def dpo_beta_outside(pc, pr, rc, rr, beta):
    return beta * -F.logsigmoid((pc - rc) - (pr - rr)).mean()


def dpo_ref_added(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc + rc) - (pr + rr))).mean()


def dpo_swapped(pc, pr, rc, rr, beta):
    return dpo_loss(pr, pc, rr, rc, beta)


def dpo_no_ref(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * (pc - pr)).mean()


def ir_no_ref(pc, pr, rc, rr, beta):
    return beta * pc, beta * pr, (pc > pr).float().mean()


def ir_ties_win(pc, pr, rc, rr, beta):
    c, r, _ = implicit_rewards(pc, pr, rc, rr, beta)
    return c, r, (c >= r).float().mean()


def ir_no_beta(pc, pr, rc, rr, beta):
    c, r = pc - rc, pr - rr
    return c, r, (c > r).float().mean()


def ir_count(pc, pr, rc, rr, beta):
    c, r, _ = implicit_rewards(pc, pr, rc, rr, beta)
    return c, r, (c > r).float().sum()


MUTANTS = [
    (checks.check_bradley_terry_loss, bt_flipped, "sign is flipped"),
    (checks.check_bradley_terry_loss, bt_naive_log, "underflows"),
    (checks.check_bradley_terry_loss, bt_sum, "sum over the pairs"),
    (checks.check_bradley_terry_loss, bt_no_minus, "minus sign"),
    (checks.check_completion_logprob, clp_unshifted, "not shifted"),
    (checks.check_completion_logprob, clp_mean, "mean over completion tokens"),
    (checks.check_completion_logprob, clp_mask_wrong_side, "shifted the wrong way"),
    (checks.check_completion_logprob, clp_probs, None),
    (checks.check_kl_k3, k3_is_k1, "this is k1"),
    (checks.check_kl_k3, k3_inverted, "inverted"),
    (checks.check_kl_k3, k3_no_minus_one, "-1 is missing"),
    (checks.check_shaped_rewards, shaped_last_column, "last column"),
    (checks.check_shaped_rewards, shaped_first_token, "not the first"),
    (checks.check_shaped_rewards, shaped_sign, "wrong sign"),
    (checks.check_shaped_rewards, shaped_unmasked, "not masked"),
    (checks.check_gae, gae_bootstrap_past_end, "bootstrapped past the end"),
    (checks.check_gae, gae_no_lambda, "lambda is missing"),
    (checks.check_gae, gae_returns_are_advantages, "plus the values"),
    (checks.check_gae, gae_forward_loop, None),
    (checks.check_clipped_policy_loss, pg_min, "min instead of max"),
    (checks.check_clipped_policy_loss, pg_clip_only, "unclipped term is missing"),
    (checks.check_clipped_policy_loss, pg_unmasked, "masked positions"),
    (checks.check_clipped_policy_loss, pg_inverted_ratio, None),
    (checks.check_dpo_loss, dpo_beta_outside, "beta multiplies the loss"),
    (checks.check_dpo_loss, dpo_ref_added, "added instead of subtracted"),
    (checks.check_dpo_loss, dpo_swapped, "swapped"),
    (checks.check_dpo_loss, dpo_no_ref, "reference is ignored"),
    (checks.check_implicit_rewards, ir_no_ref, "reference is ignored"),
    (checks.check_implicit_rewards, ir_ties_win, "tie is not a win"),
    (checks.check_implicit_rewards, ir_no_beta, "beta is missing"),
    (checks.check_implicit_rewards, ir_count, "fraction, not a count"),
]


@pytest.mark.parametrize("check,mutant,named", MUTANTS, ids=mutant_ids(MUTANTS))
def test_plausible_bug_fails_and_is_named(check, mutant, named, capsys):
    assert_mutant_fails(check, mutant, named, capsys)


def test_every_exercise_has_three_mutants():
    assert_mutants_cover(MUTANTS, chapter=8, n_exercises=8)
