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
    # (checker_harness.assert_mutants_cover sorts ids as strings, "8.10" < "8.2": count here instead)
    counts = {}
    for check, _, _ in MUTANTS + NEW_MUTANTS:
        counts[check.exercise] = counts.get(check.exercise, 0) + 1
    assert set(counts) == {f"8.{i}" for i in range(1, 13)} and min(counts.values()) >= 3, counts


# ================================================================ 8.9 - 8.12: GRPO and the two capstones

def group_advantages(rewards, group_size, normalize_by_std, eps):
    grouped = rewards.view(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_by_std:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_range, beta, loss_type, max_completion_length):
    ratio = torch.exp(logp - old_logp)
    A = advantages[:, None]
    per_token = -torch.minimum(ratio * A, ratio.clamp(1 - clip_range, 1 + clip_range) * A)
    per_token = per_token + beta * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return ((per_token * m).sum(dim=1) / m.sum(dim=1)).mean()
    if loss_type == "bnpo":
        return (per_token * m).sum() / m.sum()
    return (per_token * m).sum() / (logp.size(0) * max_completion_length)


def ppo_update(policy, optimizer, rollout, config, generator, *, whiten_adv=True, kl=True, vf=True, clip=True,
               reshuffle=True, zero_grad=True, value_clip=True):
    m = rollout["mask"]
    coef = config.kl_coef if kl else 0.0
    with torch.no_grad():
        rewards = shaped_rewards(rollout["scores"], rollout["logp"], rollout["ref_logp"], m, coef)
        adv, returns = gae(rewards, rollout["values"], m, config.gamma, config.lam)
        if whiten_adv:
            mean = (adv * m).sum() / m.sum()
            var = (((adv - mean) ** 2) * m).sum() / m.sum()
            adv = (adv - mean) * torch.rsqrt(var + 1e-8) * m
    B, P = rollout["sequences"].shape[0], rollout["prompt_length"]
    size = B // config.num_minibatches
    losses, order = [], None
    for _ in range(config.ppo_epochs):
        if reshuffle or order is None:
            order = torch.randperm(B, generator=generator)
        for start in range(0, B, size):
            idx = order[start:start + size]
            logits, values = policy(rollout["sequences"][idx])
            logits, values = logits[:, P - 1:-1] / config.temperature, values[:, P - 1:-1]
            logp = torch.log_softmax(logits, -1).gather(-1, rollout["sequences"][idx, P:, None]).squeeze(-1)
            mb = m[idx]
            loss = clipped_policy_loss(logp, rollout["logp"][idx], adv[idx], mb, config.clip_range)
            if vf:
                old_v = rollout["values"][idx]
                v_clip = old_v + (values - old_v).clamp(-config.clip_range_value, config.clip_range_value)
                per = torch.maximum((values - returns[idx]) ** 2, (v_clip - returns[idx]) ** 2) if value_clip \
                    else (values - returns[idx]) ** 2
                loss = loss + config.vf_coef * 0.5 * (per * mb).sum() / mb.sum()
            if zero_grad:
                optimizer.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(loss.item())
    return losses


def dpo_step(policy, ref, optimizer, batch, beta, *, swap=False, average=False, zero_grad=True, use_ref=True,
             ref_no_grad=True):
    def logps(model):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        lp = completion_logprob(logits, batch["input_ids"], batch["completion_mask"])
        return lp / batch["completion_mask"][:, 1:].sum(1) if average else lp
    pc, pr = logps(policy).chunk(2)
    if ref_no_grad:
        with torch.no_grad():
            rc, rr = logps(ref if use_ref else policy).chunk(2)
    else:
        rc, rr = logps(ref).chunk(2)
    if swap:
        pc, pr, rc, rr = pr, pc, rr, rc
    loss = dpo_loss(pc, pr, rc, rr, beta)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


NEW_CASES = [(checks.check_group_advantages, group_advantages), (checks.check_grpo_loss, grpo_loss),
             (checks.check_ppo_update, ppo_update), (checks.check_dpo_step, dpo_step)]


@pytest.mark.parametrize("check,fn", NEW_CASES, ids=case_ids(NEW_CASES))
def test_new_reference_answers_pass_and_blanks_fail(check, fn, capsys, tmp_path):
    assert_reference_passes(check, fn, capsys)
    assert_blank_fails(check, blank, capsys)
    assert recorded_passes(check, fn, seed=3, folder=tmp_path)


def ga_biased_std(r, G, by_std, eps):
    g = r.view(-1, G)
    a = g - g.mean(1, keepdim=True)
    return (a / (g.std(1, unbiased=False, keepdim=True) + eps) if by_std else a).reshape(-1)


def ga_whole_batch(r, G, by_std, eps):
    a = r - r.mean()
    return a / (r.std() + eps) if by_std else a


def ga_strided(r, G, by_std, eps):
    g = r.view(G, -1)
    a = g - g.mean(0, keepdim=True)
    return (a / (g.std(0, keepdim=True) + eps) if by_std else a).reshape(-1)


def ga_always_std(r, G, by_std, eps):
    return group_advantages(r, G, True, eps)


def ga_eps_in_sqrt(r, G, by_std, eps):
    g = r.view(-1, G)
    a = g - g.mean(1, keepdim=True)
    return (a / (g.var(1, keepdim=True) + eps).sqrt() if by_std else a).reshape(-1)


def _grpo_with(**kw):
    def loss(logp, old, ref, adv, mask, eps, beta, loss_type, max_len):
        ratio = torch.exp(logp - old)
        A = adv[:, None]
        pick = torch.maximum if kw.get("max") else torch.minimum
        per = -pick(ratio * A, ratio.clamp(1 - eps, 1 + eps) * A)
        kl = (logp - ref) if kw.get("k1") else torch.exp(ref - logp) - (ref - logp) - 1
        per = per + (-beta if kw.get("minus_kl") else beta) * kl
        m = mask.to(per.dtype)
        how = kw.get("always", loss_type)
        if kw.get("unmasked"):
            return per.mean()
        if how == "grpo":
            return ((per * m).sum(1) / m.sum(1)).mean()
        if how == "bnpo":
            return (per * m).sum() / m.sum()
        return (per * m).sum() / (logp.size(0) * max_len)
    return loss


def grpo_max(*a):
    return _grpo_with(max=True)(*a)


def grpo_k1(*a):
    return _grpo_with(k1=True)(*a)


def grpo_kl_subtracted(*a):
    return _grpo_with(minus_kl=True)(*a)


def grpo_always_token_mean(*a):
    return _grpo_with(always="bnpo")(*a)


def grpo_unmasked(*a):
    return _grpo_with(unmasked=True)(*a)


def ppo_not_whitened(*a):
    return ppo_update(*a, whiten_adv=False)


def ppo_no_kl_in_reward(*a):
    return ppo_update(*a, kl=False)


def ppo_no_value_loss(*a):
    return ppo_update(*a, vf=False)


def ppo_no_grad_clip(*a):
    return ppo_update(*a, clip=False)


def ppo_one_order(*a):
    return ppo_update(*a, reshuffle=False)


def ppo_no_zero_grad(*a):
    return ppo_update(*a, zero_grad=False)


def ppo_unclipped_value_loss(*a):
    return ppo_update(*a, value_clip=False)


def dpo_step_swapped(*a):
    return dpo_step(*a, swap=True)


def dpo_step_averaged(*a):
    return dpo_step(*a, average=True)


def dpo_step_no_zero_grad(*a):
    return dpo_step(*a, zero_grad=False)


def dpo_step_ref_is_policy(*a):
    return dpo_step(*a, use_ref=False)


def dpo_step_ref_gets_grads(*a):
    return dpo_step(*a, ref_no_grad=False)


NEW_MUTANTS = [
    (checks.check_group_advantages, ga_biased_std, "biased"),
    (checks.check_group_advantages, ga_whole_batch, "whole batch"),
    (checks.check_group_advantages, ga_strided, "consecutive"),
    (checks.check_group_advantages, ga_always_std, "normalize_by_std is ignored"),
    (checks.check_group_advantages, ga_eps_in_sqrt, "eps goes after"),
    (checks.check_grpo_loss, grpo_max, "max instead of min"),
    (checks.check_grpo_loss, grpo_k1, "k1"),
    (checks.check_grpo_loss, grpo_kl_subtracted, "subtracted"),
    (checks.check_grpo_loss, grpo_always_token_mean, "aggregation"),
    (checks.check_grpo_loss, grpo_unmasked, "padding is averaged in"),
    (checks.check_ppo_update, ppo_not_whitened, "not whitened"),
    (checks.check_ppo_update, ppo_no_kl_in_reward, "KL penalty is missing"),
    (checks.check_ppo_update, ppo_no_value_loss, "value loss is missing"),
    (checks.check_ppo_update, ppo_no_grad_clip, "not clipped"),
    (checks.check_ppo_update, ppo_one_order, "new order"),
    (checks.check_ppo_update, ppo_no_zero_grad, "not cleared"),
    (checks.check_ppo_update, ppo_unclipped_value_loss, None),
    (checks.check_dpo_step, dpo_step_swapped, "swapped"),
    (checks.check_dpo_step, dpo_step_averaged, "averaged"),
    (checks.check_dpo_step, dpo_step_no_zero_grad, "not cleared"),
    (checks.check_dpo_step, dpo_step_ref_is_policy, "come from the policy"),
    (checks.check_dpo_step, dpo_step_ref_gets_grads, "received gradients"),
]



@pytest.mark.parametrize("check,mutant,named", NEW_MUTANTS, ids=mutant_ids(NEW_MUTANTS))
def test_plausible_bug_in_grpo_and_the_capstones_fails_and_is_named(check, mutant, named, capsys):
    assert_mutant_fails(check, mutant, named, capsys)


NEW_SHORTCUTS = [
    (checks.check_group_advantages, lambda r, G, s, e: __import__("plmkit.align.policy_gradient", fromlist=["x"])
     .group_normalized_advantages(r, G, s, e)),
    (checks.check_grpo_loss, lambda *a: __import__("plmkit.align.policy_gradient", fromlist=["x"]).grpo_loss(*a)),
    (checks.check_ppo_update, pppo.update_from_rollout),
    (checks.check_dpo_step, pdpo.dpo_update),
]


@pytest.mark.parametrize("check,shortcut", NEW_SHORTCUTS, ids=[c.name for c, _ in NEW_SHORTCUTS])
def test_new_references_are_refused(check, shortcut, capsys):
    assert_refused(check, shortcut, capsys)


def test_trl_is_refused_in_the_grpo_loss(capsys):
    from trl.trainer.utils import selective_log_softmax

    def with_trl(logp, old, ref, adv, mask, eps, beta, loss_type, max_len):
        selective_log_softmax(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long))
        return grpo_loss(logp, old, ref, adv, mask, eps, beta, loss_type, max_len)
    assert_refused(checks.check_grpo_loss, with_trl, capsys, named="TRL")
