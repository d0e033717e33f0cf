"""PPO pieces against plain formulas and loops, the KL estimators by Monte Carlo, and PPO end to end."""
import copy
import math

import pytest
import torch

from plmkit.align import ppo
from plmkit.models.llama import Llama, LlamaConfig


def gae_loop(rewards, values, lengths, gamma, lam):
    """The textbook backwards loop, one row at a time, over the row's real tokens only."""
    B, N = rewards.shape
    adv = torch.zeros(B, N, dtype=torch.float64)
    for b in range(B):
        L = lengths[b]
        last = 0.0
        for t in reversed(range(L)):
            next_v = values[b, t + 1].item() if t + 1 < L else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    ret = adv + values.double() * (torch.arange(N)[None] < torch.tensor(lengths)[:, None])
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (1.0, 0.0)])
def test_gae_equals_a_backwards_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, N = 5, 7
    rewards, values = torch.randn(B, N, generator=g, dtype=torch.float64), torch.randn(B, N, generator=g,
                                                                                       dtype=torch.float64)
    lengths = [7, 3, 1, 5, 6]
    mask = (torch.arange(N)[None] < torch.tensor(lengths)[:, None]).long()
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = gae_loop(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, want_adv)
    torch.testing.assert_close(ret, want_ret)
    if lam == 1.0 and gamma == 1.0:          # Monte Carlo return: sum of the remaining rewards
        torch.testing.assert_close(ret * mask, (rewards * mask).flip(1).cumsum(1).flip(1))


def test_clipped_policy_loss_on_hand_made_ratios():
    eps = 0.2
    ratios = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5, 0.5, 0.9, 1.1, 1.5], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0], dtype=torch.float64)
    # the objective min(r A, clip(r) A) by hand, per entry
    want = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.2, -1.6, -1.8, -2.2, -3.0], dtype=torch.float64)
    old = torch.zeros(9, dtype=torch.float64)
    logp = torch.log(ratios).requires_grad_()
    mask = torch.ones(9)
    for i in range(9):
        m = torch.zeros(9)
        m[i] = 1
        loss, _ = ppo.clipped_policy_loss(logp, old, adv, m, eps)
        assert abs(loss.item() + want[i].item()) < 1e-12, i
    loss, stats = ppo.clipped_policy_loss(logp, old, adv, mask, eps)
    assert abs(loss.item() + want.mean().item()) < 1e-12
    loss.backward()
    # gradient is zero exactly where the clip is active: r > 1+eps with A > 0, r < 1-eps with A < 0
    clipped = torch.tensor([False, False, False, False, True, True, False, False, False])
    assert torch.all((logp.grad == 0) == clipped), logp.grad
    assert abs(stats["clipfrac"].item() - 2 / 9) < 1e-6


def test_clipped_value_loss_formula():
    v = torch.tensor([1.0, 1.0, 3.0])
    old = torch.tensor([0.0, 0.9, 0.0])
    R = torch.tensor([2.0, 0.0, 0.0])
    # entry 0: max((1-2)^2, (0.2-2)^2) = 3.24; entry 1: max(1, (1.0-0)^2) = 1; entry 2: max(9, 0.04) = 9
    got = ppo.clipped_value_loss(v, old, R, torch.ones(3), 0.2)
    assert abs(got.item() - 0.5 * (3.24 + 1 + 9) / 3) < 1e-6


def test_kl_estimators_are_unbiased_by_monte_carlo():
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        p = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
        q = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
        true_kl = (p * (p / q).log()).sum().item()
        samples = torch.multinomial(p, 400_000, replacement=True, generator=g)
        logp, logq = p.log()[samples], q.log()[samples]
        k1, k3 = ppo.kl_estimate(logp, logq, "k1"), ppo.kl_estimate(logp, logq, "k3")
        for est in (k1, k3):
            stderr = est.std().item() / math.sqrt(len(samples))
            assert abs(est.mean().item() - true_kl) < 4 * stderr + 1e-4, (est.mean().item(), true_kl)
        assert (k3 >= 0).all() and (k1 < 0).any()        # k3 never negative, k1 sometimes
        assert k3.var() < k1.var() or true_kl > 1.0       # k3 has lower variance near the reference


def test_shaped_rewards_and_response_mask():
    resp = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0], [5, 5, 5, 5]])
    mask = ppo.response_mask(resp, stop_token=2)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    g = torch.Generator().manual_seed(1)
    logp, ref = -torch.rand(3, 4, generator=g), -torch.rand(3, 4, generator=g)
    scores = torch.tensor([1.0, -2.0, 0.5])
    r = ppo.shaped_rewards(scores, logp, ref, mask, kl_coef=0.1)
    want = -0.1 * (logp - ref) * mask
    want[0, 2] += 1.0
    want[1, 1] += -2.0
    want[2, 3] += 0.5
    torch.testing.assert_close(r, want)


def test_adaptive_kl_controller_moves_towards_the_target():
    c = ppo.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert c.update(12.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))      # error clipped at +0.2
    c = ppo.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert c.update(5.4, 10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    with pytest.raises(ValueError, match="target"):
        ppo.AdaptiveKLController(0.1, target=0.0)


def test_best_of_n_kl_formula_matches_the_exact_kl_with_many_outcomes():
    M = 20000                                   # uniform base over M outcomes, all rewards distinct
    F = torch.arange(M + 1, dtype=torch.float64) / M
    for n in (1, 2, 4, 16):
        p_bon = F[1:] ** n - F[:-1] ** n
        kl = (p_bon * (p_bon * M).log()).sum().item()
        assert abs(kl - ppo.best_of_n_kl(n)) < 2e-3, (n, kl)


def test_config_and_inputs_are_validated():
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo.PPOConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="estimator"):
        ppo.kl_estimate(torch.zeros(2), torch.zeros(2), "exact")
    with pytest.raises(ValueError, match="clip_range"):
        ppo.clipped_policy_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.ones(2), 0.0)


# ----------------------------------------------------------------------------- end to end
CFG = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  max_position_embeddings=32, bos_token_id=1, eos_token_id=2)


def prompts(B, g):
    return torch.randint(3, 16, (B, 2), generator=g)


def target_fraction(responses, mask, prompts):
    """The programmatic reward: the fraction of response tokens that are 3 or 4."""
    return ((responses == 3) | (responses == 4)).float().mean(1)


def run(kl_coef, updates=20):
    torch.manual_seed(0)
    lm = Llama(CFG)
    ref = copy.deepcopy(lm)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    policy = ppo.PolicyWithValue(lm)
    history = ppo.train_ppo(policy, ref, prompts, target_fraction, ppo.PPOConfig(kl_coef=kl_coef, max_new_tokens=8,
                                                                                lr=3e-3),
                            updates=updates, batch_size=32, log_every=10)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_state.items())    # the reference never moved
    return history


def test_ppo_raises_a_programmatic_reward_and_the_kl_penalty_holds_the_policy_near_the_reference():
    free, default = run(0.0), run(ppo.PPOConfig().kl_coef)
    for h in (free, default):
        assert h[0]["update"] == 0 and h[-1]["update"] == 20
        assert h[-1]["score"] > h[0]["score"] + 0.15, h        # 2 of 16 tokens at random: ~0.125 to start
    assert free[-1]["kl"] >= 3 * default[-1]["kl"], (free[-1]["kl"], default[-1]["kl"])


def test_ppo_refuses_a_reference_that_shares_the_policy_parameters():
    lm = Llama(CFG)
    with pytest.raises(ValueError, match="shares parameters"):
        ppo.train_ppo(ppo.PolicyWithValue(lm), lm, prompts, target_fraction, ppo.PPOConfig(), updates=1)


def test_adaptive_kl_controller_runs_inside_ppo_and_moves_the_coefficient():
    torch.manual_seed(0)
    lm = Llama(CFG)
    config = ppo.PPOConfig(kl_coef=0.05, target_kl=0.01, kl_horizon=100, max_new_tokens=8, lr=3e-3)
    history = ppo.train_ppo(ppo.PolicyWithValue(lm), copy.deepcopy(lm), prompts, target_fraction, config,
                            updates=4, batch_size=16, log_every=2)
    assert config.kl_coef > 0.05                      # the KL exceeded its tiny target: the penalty grew
    assert [h["update"] for h in history] == [0, 2, 4]
