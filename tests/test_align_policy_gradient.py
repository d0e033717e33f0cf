"""plmkit.align.policy_gradient against TRL 1.16's GRPOTrainer loss and against CS336 assignment 5's definitions.

TRL path: ``GRPOTrainer._compute_loss`` is called UNBOUND with a stub ``self`` (a SimpleNamespace holding
the attributes the method reads: loss_type, beta, epsilon_low/high, args, accelerator, ...), whose
``_get_per_token_logps_and_entropies`` returns our fixed per-token log-probs. No model and no trainer
are built: the method's own arithmetic (ratio, two-sided clip, k3 KL, the loss_type's aggregation) runs
on our tensors, and the gradient with respect to the log-probs is compared too. About 1 s.
"""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from plmkit.align import policy_gradient as pg

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


def batch(seed=0, B=6, N=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, N, generator=g, dtype=dtype) * 3
    logp = old + torch.randn(B, N, generator=g, dtype=dtype) * 0.3              # ratios well outside [0.8, 1.2]
    ref = old + torch.randn(B, N, generator=g, dtype=dtype) * 0.3
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])[:B]
    mask = (torch.arange(N)[None] < lengths[:, None]).long()
    adv = torch.randn(B, generator=g, dtype=dtype)
    return logp, old, ref, adv, mask


class _Acc:
    num_processes = 1

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def trl_loss(logp, old, ref, adv, mask, loss_type, beta, eps, max_completion_length):
    """TRL's own _compute_loss on these tensors (stub self, see the module docstring)."""
    leaf = logp.clone().requires_grad_()
    stub = SimpleNamespace(
        loss_type=loss_type, beta=beta, epsilon_low=eps, epsilon_high=eps, importance_sampling_level="token",
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1, max_completion_length=max_completion_length,
        model=SimpleNamespace(training=True), accelerator=_Acc(), _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        _get_per_token_logps_and_entropies=lambda *a, **k: (leaf, torch.zeros_like(leaf), None))
    B, N = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, N, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref}
    loss = trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    return loss.detach(), leaf.grad, stub._metrics["train"]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04, 0.5])
def test_grpo_loss_equals_trl_grpo_trainer(loss_type, beta):
    logp, old, ref, adv, mask = batch()
    want, want_grad, metrics = trl_loss(logp, old, ref, adv, mask, loss_type, beta, 0.2, 8)
    leaf = logp.clone().requires_grad_()
    got = pg.grpo_loss(leaf, old, ref, adv, mask, clip_range=0.2, beta=beta, loss_type=loss_type,
                       max_completion_length=8)
    got.backward()
    torch.testing.assert_close(got.detach(), want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(leaf.grad, want_grad, atol=1e-12, rtol=1e-12)
    assert metrics["clip_ratio/region_mean"][-1] > 0.1                      # clipping really was exercised
    assert not torch.allclose(want_grad * mask, torch.zeros_like(want_grad))


def test_the_three_loss_types_differ_on_uneven_lengths():
    logp, old, ref, adv, mask = batch(1)
    values = {t: float(pg.grpo_loss(logp, old, ref, adv, mask, beta=0.04, loss_type=t, max_completion_length=8))
              for t in pg.LOSS_TYPES}
    assert len({round(v, 9) for v in values.values()}) == 3, values


# ------------------------------------------------------------------ CS336 assignment 5's definitions, written out

def cs336_group_normalized(raw, group_size, eps, normalize_by_std):
    out = []
    for start in range(0, len(raw), group_size):
        grp = raw[start:start + group_size]
        mean = sum(grp) / len(grp)
        std = (sum((x - mean) ** 2 for x in grp) / (len(grp) - 1)) ** 0.5        # torch.std: unbiased
        out += [(x - mean) / (std + eps) if normalize_by_std else x - mean for x in grp]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("normalize_by_std", [True, False])
def test_group_normalized_advantages_match_the_cs336_definition(normalize_by_std):
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 3, (12,), generator=g).double()
    raw[4:8] = 1.0                                                          # a group with zero spread
    got = pg.group_normalized_advantages(raw, 4, normalize_by_std, eps=1e-6)
    want = cs336_group_normalized(raw.tolist(), 4, 1e-6, normalize_by_std)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert torch.all(got[4:8] == 0)


def test_group_normalized_advantages_match_trl_with_its_eps():
    # TRL: advantages = (rewards - group mean) / (nanstd(group) + 1e-4), nanstd the unbiased std
    from trl.trainer.utils import nanstd
    raw = torch.tensor([1.0, 0.0, 0.5, 0.25, 2.0, -1.0], dtype=torch.float64)
    grouped = raw.view(-1, 3)
    want = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    torch.testing.assert_close(pg.group_normalized_advantages(raw, 3, eps=1e-4), want.view(-1), atol=1e-12, rtol=0)


def test_rloo_is_leave_one_out_and_a_rescaled_group_mean():
    raw = torch.tensor([3.0, 1.0, 0.0, 4.0, 2.0, 2.0, 5.0, -1.0], dtype=torch.float64)
    got = pg.rloo_advantages(raw, 4)
    want = torch.tensor([raw[i] - (raw[4 * (i // 4):4 * (i // 4) + 4].sum() - raw[i]) / 3 for i in range(8)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, 4 / 3 * pg.group_normalized_advantages(raw, 4, normalize_by_std=False))


def test_masked_mean_and_masked_normalize_match_cs336():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 0, 1], [0, 0, 1]])
    assert float(pg.masked_mean(x, m)) == pytest.approx((1 + 3 + 6) / 3)
    torch.testing.assert_close(pg.masked_mean(x, m, dim=1), torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(pg.masked_mean(x, m, dim=0), torch.tensor([1.0, float("nan"), 4.5]), equal_nan=True)
    assert float(pg.masked_normalize(x, m, 2.0)) == pytest.approx(5.0)
    torch.testing.assert_close(pg.masked_normalize(x, m, 2.0, dim=1), torch.tensor([2.0, 3.0]))


def test_grpo_clip_loss_matches_the_handout_formula_entry_by_entry():
    eps = 0.2
    ratios = torch.tensor([[0.5, 0.9, 1.0, 1.1, 1.5], [0.5, 0.9, 1.0, 1.1, 1.5]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    # -min(rho A, clip(rho) A), by hand
    want = -torch.tensor([[0.5, 0.9, 1.0, 1.1, 1.2], [-1.6, -1.8, -2.0, -2.2, -3.0]], dtype=torch.float64)
    got = pg.grpo_clip_loss(ratios.log(), torch.zeros_like(ratios), adv, eps)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_dr_grpo_with_uniform_lengths_is_bnpo_times_a_constant():
    logp, old, ref, adv, _ = batch(2)
    full = torch.ones_like(logp, dtype=torch.long)
    bn = pg.grpo_loss(logp, old, ref, adv, full, beta=0.1, loss_type="bnpo")
    dr = pg.grpo_loss(logp, old, ref, adv, full, beta=0.1, loss_type="dr_grpo", max_completion_length=10)
    torch.testing.assert_close(dr, bn * logp.size(1) / 10)


def test_policy_gradient_loss_gradient_is_reinforce():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    pg.masked_mean(pg.policy_gradient_loss(logp, torch.tensor([3.0])), torch.ones(1, 2)).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.5, -1.5]]))
    torch.testing.assert_close(pg.reinforce_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5])),
                               torch.tensor([0.5, 1.5]))


@pytest.mark.parametrize("call,match", [
    (lambda: pg.group_normalized_advantages(torch.zeros(6), 4), "group_size"),
    (lambda: pg.group_normalized_advantages(torch.zeros(2, 3), 3), "rewards"),
    (lambda: pg.rloo_advantages(torch.zeros(4), 1), "group_size"),
    (lambda: pg.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3),
                          loss_type="dapo"), "loss_type"),
    (lambda: pg.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3)), "ref_logp"),
    (lambda: pg.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), beta=0.0,
                          loss_type="dr_grpo"), "max_completion_length"),
    (lambda: pg.grpo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), 0.0), "clip_range"),
    (lambda: pg.masked_normalize(torch.zeros(2), torch.ones(2), 0.0), "normalize_constant"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_docstring_examples():
    import doctest
    failed, attempted = doctest.testmod(pg)
    assert attempted >= 7 and failed == 0


def test_grpo_on_the_verifiable_toy_reward_raises_it():
    """A few GRPO updates on chapter 8's toy, rewarded by r* itself, raise r* (about 5 s)."""
    import copy

    from plmkit.align import toy
    torch.manual_seed(0)
    sft = toy.train_sft(steps=60, seed=0)
    policy, ref = copy.deepcopy(sft), copy.deepcopy(sft)
    config = pg.GRPOConfig(beta=0.1, group_size=8, max_new_tokens=toy.MAX_NEW, stop_token=toy.EOS, pad_token_id=toy.PAD)
    history = pg.train_grpo(policy, ref, toy.prompts, lambda r, m, p: toy.true_reward(r, m), config, updates=6,
                            log_every=6, seed=0)
    assert [h["update"] for h in history] == [0, 6]
    assert history[-1]["score"] > history[0]["score"] + 0.5, history
    assert history[-1]["kl"] > 0
    assert all(p.grad is None for p in ref.parameters())
    with pytest.raises(ValueError, match="ref shares"):
        pg.train_grpo(policy, policy, toy.prompts, None, config, updates=1)
    with pytest.raises(ValueError, match="group_size"):
        pg.GRPOConfig(group_size=1)
