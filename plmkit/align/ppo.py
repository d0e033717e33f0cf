"""RLHF with PPO, from scratch (Ziegler et al. 2019; Ouyang et al. 2022; Schulman et al. 2017).

The policy is a causal LM; one *episode* is one response to one prompt, one
*action* is one token. Read top to bottom, one PPO iteration is:

1. **Rollout.** Sample responses to a batch of prompts with the KV cache
   (:func:`plmkit.generate.generate`); score each finished response with the reward
   function (a learned reward model, or a programmatic "true" reward).
2. **Per-token quantities**, recomputed in one forward pass without gradients:
   the policy's log-probs of the sampled tokens, the frozen reference's, and the
   value head's estimates V(s_t).
3. **Shaped reward.** Every token pays -kl_coef * k1, where k1 = log pi - log pi_ref
   (a one-sample estimate of the KL to the reference); the score arrives at the
   response's last token. Without that penalty the policy drifts wherever the reward
   (model) is wrong: reward hacking.
4. **GAE** (Schulman et al. 2016) with gamma = 1 and lambda = 0.95 turns rewards and
   values into advantages and value targets; advantages are whitened over the batch.
5. **PPO epochs.** Several passes of shuffled minibatches over the same rollout, each
   minimising the clipped policy loss (epsilon = 0.2), plus vf_coef times the clipped
   value loss, with gradient clipping.
6. Optionally, the **adaptive KL controller** of Ziegler et al. (2019) raises kl_coef
   when the measured KL exceeds its target and lowers it when below.

The details follow Huang et al. (2024), "The N+ Implementation Details of RLHF with
PPO: a case study on TL;DR summarization": log-probs recomputed after sampling (not
the sampler's), the same temperature in both, values and log-probs read at the
position *before* each response token, the reward at the last response token,
tokens after the stop token masked out, advantages whitened, value loss clipped.
One simplification: the value head shares the policy's backbone (one forward pass
instead of two); Huang et al. and TRL train a separate value network initialised
from the reward model.

The KL estimators (Schulman, "Approximating KL divergence", 2020), with
r = pi_ref(y) / pi(y) for a token y sampled from pi:

    k1 = -log r              unbiased for KL(pi || pi_ref), can be negative, high variance
    k3 = (r - 1) - log r     unbiased too (E_pi[r] = 1), never negative, lower variance

Letters: B batch, P prompt length, N response length, T = P + N, V vocab, C width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..generate import generate

__all__ = ["PPOConfig", "PolicyWithValue", "token_logprobs", "kl_estimate", "shaped_rewards", "gae",
           "masked_mean", "whiten", "clipped_policy_loss", "clipped_value_loss", "AdaptiveKLController",
           "response_mask", "sample_rollout", "credit", "rollout", "ppo_update", "update_from_rollout", "train_ppo",
           "best_of_n_kl"]

ESTIMATORS = ("k1", "k3")


@dataclass
class PPOConfig:
    """PPO's knobs; defaults as in Huang et al. (2024) / TRL where they apply."""

    kl_coef: float = 0.05              # beta of the KL penalty (initial value if target_kl is set)
    kl_estimator: str = "k1"           # which per-token estimate the penalty uses
    target_kl: float | None = None     # set: adaptive KL controller (Ziegler et al. 2019)
    kl_horizon: int = 10000            # controller horizon, in episodes
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2            # epsilon of the clipped policy loss
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4
    num_minibatches: int = 4
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    max_new_tokens: int = 16
    temperature: float = 1.0
    stop_token: int | None = None      # a response ends at (and includes) its first stop token
    pad_token_id: int = 0

    def __post_init__(self):
        if self.kl_estimator not in ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {ESTIMATORS}, got {self.kl_estimator!r}")
        for name in ("kl_coef", "gamma", "lam", "clip_range", "clip_range_value", "vf_coef", "lr"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma!r}, {self.lam!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        for name in ("ppo_epochs", "num_minibatches", "max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")


class PolicyWithValue(nn.Module):
    """A causal LM plus a scalar value head on its last hidden state.

    ``forward(input_ids (B, T), attention_mask=None) -> (logits (B, T, V), values (B, T))``.
    ``.lm`` is the language model itself (what :func:`generate` samples from).
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        config = lm.config
        width = next(getattr(config, n) for n in ("hidden_size", "n_embd", "d_model") if hasattr(config, n))
        self.value_head = nn.Linear(width, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        out = self.lm(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1)         # (B, T, V), (B, T)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each position: (..., V) and (...) -> (...)."""
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits (..., V) and tokens (...) must agree, got {tuple(logits.shape)} and "
                         f"{tuple(tokens.shape)}")
    return F.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the log-probs of tokens SAMPLED FROM pi.

    k1 = logp - ref_logp; k3 = exp(ref_logp - logp) - 1 - (ref_logp - logp). Both average
    to the true KL over samples from pi; k3 is never negative.

    >>> kl_estimate(torch.tensor([-1.0]), torch.tensor([-1.0]), "k3").tolist()   # same model: 0
    [0.0]
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must have one shape, got {tuple(logp.shape)} and {tuple(ref_logp.shape)}")
    log_r = ref_logp - logp
    return -log_r if estimator == "k1" else torch.expm1(log_r) - log_r


def shaped_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                   kl_coef: float, estimator: str = "k1") -> torch.Tensor:
    """Per-token rewards (B, N): -kl_coef * KL estimate on every response token, plus the
    score (B,) added at each row's last response token; 0 where mask (B, N) is 0.

    >>> shaped_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -2.0, 0.0]]),
    ...                torch.tensor([[1, 1, 0]]), kl_coef=0.1).tolist()
    [[-0.05000000074505806, 1.0, 0.0]]
    """
    if scores.ndim != 1 or logp.shape != mask.shape or logp.shape[0] != scores.shape[0]:
        raise ValueError(f"scores must be (B,) and logp, ref_logp, mask (B, N); got {tuple(scores.shape)}, "
                         f"{tuple(logp.shape)}, {tuple(mask.shape)}")
    if not kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef!r}")
    m = mask.to(logp.dtype)
    rewards = -kl_coef * kl_estimate(logp, ref_logp, estimator) * m                      # (B, N)
    last = (m.sum(dim=1).long() - 1).clamp(min=0)                                        # (B,) last real token
    return rewards.index_put((torch.arange(len(scores), device=scores.device), last),
                             scores.to(rewards.dtype), accumulate=True)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (B, N) -> (advantages, returns), each (B, N).

    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1}, with V and A
    zero after each row's last real token (the episode has ended); returns = A + V
    are the value targets.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.ndim != 2:
        raise ValueError(f"rewards, values and mask must be (B, N) alike, got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma!r}, {lam!r}")
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m
    N = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(N)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, advantages + values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the entries where mask is 1."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (0 elsewhere): advantages on one scale every batch."""
    m = mask.to(x.dtype)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    return (x - mean) * torch.rsqrt(var + eps) * m


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_range: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss: masked mean of max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)).

    ratio = exp(logp - old_logp). The max (a min of the objective) keeps the pessimistic
    bound: once the ratio has moved eps in the direction the advantage rewards, the
    gradient stops. Returns (loss, {"clipfrac", "approx_kl"}).
    """
    if not (logp.shape == old_logp.shape == advantages.shape == mask.shape):
        raise ValueError("logp, old_logp, advantages and mask must have one shape")
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range!r}")
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(0.5 * (logp - old_logp) ** 2, mask)}
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float = 0.2) -> torch.Tensor:
    """0.5 * masked mean of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)."""
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError("values, old_values, returns and mask must have one shape")
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


class AdaptiveKLController:
    """Ziegler et al. (2019): kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_episodes / horizon."""

    def __init__(self, kl_coef: float, target: float, horizon: int = 10000):
        if not kl_coef > 0 or not target > 0 or not horizon > 0:
            raise ValueError(f"kl_coef, target and horizon must be > 0, got {kl_coef!r}, {target!r}, {horizon!r}")
        self.value, self.target, self.horizon = float(kl_coef), float(target), horizon

    def update(self, kl: float, n_episodes: int) -> float:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon
        return self.value


def response_mask(responses: torch.Tensor, stop_token: int | None) -> torch.Tensor:
    """(B, N) sampled tokens -> (B, N) long mask: 1 up to and including the first stop token.

    >>> response_mask(torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8]]), stop_token=2).tolist()
    [[1, 1, 0, 0], [1, 1, 1, 1]]
    """
    if stop_token is None:
        return torch.ones_like(responses)
    is_stop = (responses == stop_token).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop                                       # stops strictly before t
    return (stops_before == 0).long()


def _response_stats(model: nn.Module, sequences: torch.Tensor, P: int, temperature: float):
    """Log-probs (and values, for a PolicyWithValue) of the response tokens sequences[:, P:]."""
    out = model(sequences)
    logits, values = out if isinstance(out, tuple) else (out, None)
    logits = logits[:, P - 1:-1] / temperature                                          # (B, N, V): predict P..T-1
    logp = token_logprobs(logits, sequences[:, P:])                                      # (B, N)
    return logp, (values[:, P - 1:-1] if values is not None else None)


@torch.no_grad()

def sample_and_score(lm: nn.Module, policy: nn.Module, ref: nn.Module, prompts: torch.Tensor, reward_fn,
                     config, generator: torch.Generator | None) -> dict:
    """Sample responses from `lm` for `prompts` (B, P), then score them: response mask, the policy's and the
    reference's per-token log-probs, the policy's values (None without a value head), rewards and the
    summed per-sequence KL estimate. Shared by PPO's and GRPO's rollouts."""
    P = prompts.size(1)
    stops = [config.stop_token] if config.stop_token is not None else None
    sequences = generate(lm, prompts, config.max_new_tokens, temperature=config.temperature,
                         stop_tokens=stops, pad_token_id=config.pad_token_id, generator=generator)   # (B, T)
    responses = sequences[:, P:]
    mask = response_mask(responses, config.stop_token)                                  # (B, N)
    was_training = policy.training
    policy.eval()
    logp, values = _response_stats(policy, sequences, P, config.temperature)
    ref_logp, _ = _response_stats(ref, sequences, P, config.temperature)
    policy.train(was_training)
    scores = reward_fn(responses, mask, prompts).to(logp.dtype)                         # (B,)
    return {"sequences": sequences, "prompt_length": P, "mask": mask, "logp": logp, "ref_logp": ref_logp,
            "values": values, "scores": scores, "kl": ((logp - ref_logp) * mask).sum(dim=1)}

def sample_rollout(policy: PolicyWithValue, ref: nn.Module, prompts: torch.Tensor, reward_fn, config: PPOConfig,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Sample one response per prompt (B, P) and record what the update needs, before any credit assignment.

    reward_fn(responses (B, N), mask (B, N), prompts (B, P)) -> scores (B,). Prompts share one length P
    (no padding). Returns sequences (B, T), prompt_length P, mask, logp, ref_logp, values (B, N),
    scores (B,) and the sequence KL (B,) (k1 summed over tokens, for logging).
    """
    if prompts.ndim != 2:
        raise ValueError(f"prompts must be a (B, P) tensor of equal-length prompts, got {tuple(prompts.shape)}")
    r = sample_and_score(policy.lm, policy, ref, prompts, reward_fn, config, generator)
    return {"sequences": r["sequences"], "prompt_length": r["prompt_length"], "mask": r["mask"], "logp": r["logp"],
            "ref_logp": r["ref_logp"], "values": r["values"] * r["mask"], "scores": r["scores"], "kl": r["kl"]}


@torch.no_grad()
def credit(sampled: dict, config: PPOConfig) -> dict[str, torch.Tensor]:
    """Shaped rewards (KL in the reward), GAE, and advantages whitened over the batch: the rollout plus
    ``rewards``, ``advantages`` and ``returns`` (B, N)."""
    rewards = shaped_rewards(sampled["scores"], sampled["logp"], sampled["ref_logp"], sampled["mask"],
                             config.kl_coef, config.kl_estimator)
    advantages, returns = gae(rewards, sampled["values"], sampled["mask"], config.gamma, config.lam)
    return {**sampled, "rewards": rewards, "advantages": whiten(advantages, sampled["mask"]), "returns": returns}


def rollout(policy: PolicyWithValue, ref: nn.Module, prompts: torch.Tensor, reward_fn, config: PPOConfig,
            generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """:func:`sample_rollout` then :func:`credit`: everything :func:`ppo_update` needs."""
    return credit(sample_rollout(policy, ref, prompts, reward_fn, config, generator), config)


def ppo_update(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, batch: dict, config: PPOConfig,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """ppo_epochs passes of shuffled minibatches over one credited rollout; returns mean losses and statistics,
    and ``losses``, the list of each minibatch's loss.

    Each epoch draws ``torch.randperm(B, generator=generator)`` once and cuts it into minibatches of
    B // num_minibatches rows; each minibatch: forward, clipped policy loss + vf_coef x clipped value
    loss, zero_grad, backward, gradient norm clipped to max_grad_norm, step.
    """
    B, P = batch["sequences"].size(0), batch["prompt_length"]
    size = max(1, B // config.num_minibatches)
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": [],
                                     "loss": []}
    policy.train()
    for _ in range(config.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, size):
            idx = order[start:start + size]
            mask = batch["mask"][idx]
            logp, values = _response_stats(policy, batch["sequences"][idx], P, config.temperature)
            pg_loss, pg_stats = clipped_policy_loss(logp, batch["logp"][idx], batch["advantages"][idx], mask,
                                                    config.clip_range)
            vf_loss = clipped_value_loss(values, batch["values"][idx], batch["returns"][idx], mask,
                                         config.clip_range_value)
            loss = pg_loss + config.vf_coef * vf_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("loss", loss), *pg_stats.items()):
                stats[k].append(float(v.detach()))
    return {**{k: sum(v) / len(v) for k, v in stats.items()}, "losses": stats["loss"]}


def update_from_rollout(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, sampled: dict,
                        config: PPOConfig, generator: torch.Generator | None = None) -> dict[str, float]:
    """One PPO iteration's learning from a :func:`sample_rollout`: :func:`credit`, then :func:`ppo_update`
    (chapter 8's capstone 8.11 writes this)."""
    return ppo_update(policy, optimizer, credit(sampled, config), config, generator)



def freeze_reference(policy: nn.Module, ref: nn.Module) -> None:
    """Put the reference in eval mode without gradients; refuse one that shares the policy's parameters."""
    if any(p is q for p in ref.parameters() for q in policy.parameters()):
        raise ValueError("ref shares parameters with the policy: pass a frozen copy (copy.deepcopy)")
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)


def history_row(step: int, batch: dict, kl_coef: float, eval_fn=None) -> dict:
    """One logged row of a policy-gradient run: mean score, KL and length of the batch (+ eval_fn's metrics)."""
    row = {"update": step, "score": float(batch["scores"].mean()), "kl": float(batch["kl"].mean()),
           "kl_coef": kl_coef, "length": float(batch["mask"].sum(1).float().mean())}
    if eval_fn is not None:
        row.update(eval_fn(batch["sequences"][:, batch["prompt_length"]:], batch["mask"]))
    return row

def train_ppo(policy: PolicyWithValue, ref: nn.Module, prompt_fn, reward_fn, config: PPOConfig, updates: int,
              batch_size: int = 64, log_every: int = 10, eval_fn=None, seed: int = 0,
              update_fn=update_from_rollout) -> list[dict]:
    """Run `updates` PPO iterations; every `log_every` (and at 0 and the end) log a dict with the
    update number, the mean score, the mean sequence KL(pi || pi_ref) (k1 summed over tokens),
    kl_coef, and eval_fn(responses, mask) -> dict of extra numbers (e.g. the true reward).

    prompt_fn(batch_size, generator) -> (B, P) prompts; reward_fn as in :func:`rollout`. The reference
    must be a separate, frozen model: nothing of it is updated here. With ``config.target_kl`` set, the
    adaptive controller updates ``config.kl_coef`` in place after every rollout.
    ``update_fn(policy, optimizer, sampled, config, generator)`` learns from one :func:`sample_rollout`.
    """
    if not isinstance(updates, int) or updates < 0:
        raise ValueError(f"updates must be an int >= 0, got {updates!r}")
    freeze_reference(policy, ref)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)
    controller = (AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                  if config.target_kl is not None else None)
    history = []
    for step in range(updates + 1):
        batch = sample_rollout(policy, ref, prompt_fn(batch_size, g), reward_fn, config, g)
        if step % log_every == 0 or step == updates:
            history.append(history_row(step, batch, config.kl_coef, eval_fn))
        if step == updates:
            break
        update_fn(policy, optimizer, batch, config, g)
        if controller is not None:
            config.kl_coef = controller.update(float(batch["kl"].mean()), batch_size)
    return history


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n, the formula of Gao et al. (2023) and earlier OpenAI
    work; Beirami et al. (2024) show it is an upper bound, reached when no two samples tie."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n
