"""Value-free policy gradients: REINFORCE with a baseline, RLOO and GRPO (with Dr. GRPO's normalisation).

PPO (:mod:`.ppo`) learns a critic V(s_t) to tell good tokens from bad. With one reward
per answer and several answers per prompt there is a cheaper baseline: the other
answers. Sample a *group* of G answers to the same prompt, score each, and use how much
better than its group an answer did as the advantage of every one of its tokens.

- **REINFORCE with a baseline** (Williams 1992): A_i = r_i - b, any b that does not
  depend on y_i keeps the gradient unbiased and lowers its variance.
- **RLOO** (Kool et al. 2019; Ahmadian et al. 2024): b = the mean of the OTHER G - 1
  rewards of the group, A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_j r_j).
- **GRPO** (Shao et al. 2024): A_i = (r_i - mean(group)) / (std(group) + eps), then PPO's
  clipped objective per token, with a k3 KL penalty to the reference in the LOSS
  (not in the reward), and each answer's token losses averaged over its own length.
- **Dr. GRPO** (Liu et al. 2025): both divisions bias the update, dividing by the std
  up-weights groups that are nearly all right or all wrong, dividing by the answer's
  length makes long wrong answers cheap, so drop both: A_i = r_i - mean(group),
  and sum token losses over a constant (batch size x max completion length).

Semantics follow Stanford CS336 (2025) assignment 5 (``compute_group_normalized_rewards``,
``masked_mean``, ``masked_normalize``, the GRPO-clip loss) and TRL 1.16's
``GRPOTrainer._compute_loss`` for the named ``loss_type`` ("grpo", "bnpo", "dr_grpo");
tests/test_align_policy_gradient.py checks both.

Letters: B answers in the batch (= prompts x G), G group size, N response length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .ppo import _response_stats, freeze_reference, history_row, sample_and_score

__all__ = ["masked_mean", "masked_normalize", "group_normalized_advantages", "rloo_advantages",
           "reinforce_advantages", "policy_gradient_loss", "grpo_clip_loss", "grpo_loss", "LOSS_TYPES",
           "GRPOConfig", "grpo_rollout", "grpo_update", "train_grpo"]

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the entries where mask is 1, over all entries (dim=None) or along `dim`.

    >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]), dim=1)
    tensor([1.5000, 4.0000])
    """
    if x.shape != mask.shape:
        raise ValueError(f"x and mask must have one shape, got {tuple(x.shape)} and {tuple(mask.shape)}")
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim) / m.sum(dim)


def masked_normalize(x: torch.Tensor, mask: torch.Tensor, normalize_constant: float = 1.0,
                     dim: int | None = None) -> torch.Tensor:
    """Sum of x over the entries where mask is 1, divided by a CONSTANT (not by the number of entries).

    >>> masked_normalize(torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]), 3.0)
    tensor(2.3333)
    """
    if x.shape != mask.shape:
        raise ValueError(f"x and mask must have one shape, got {tuple(x.shape)} and {tuple(mask.shape)}")
    if not normalize_constant > 0:
        raise ValueError(f"normalize_constant must be > 0, got {normalize_constant!r}")
    m = mask.to(x.dtype)
    return ((x * m).sum() if dim is None else (x * m).sum(dim)) / normalize_constant


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 2 or len(rewards) % group_size:
        raise ValueError(f"group_size must be an int >= 2 that divides B = {len(rewards)}, got {group_size!r}")
    return rewards.view(-1, group_size)                                                    # (B / G, G)


def group_normalized_advantages(rewards: torch.Tensor, group_size: int, normalize_by_std: bool = True,
                                eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantages: (r - group mean) / (group std + eps), or r - group mean without the std.

    rewards (B,) hold consecutive groups of `group_size` answers to one prompt; the std is
    the unbiased one (torch.std), as in CS336's ``compute_group_normalized_rewards`` and TRL.

    >>> group_normalized_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0]), 3, normalize_by_std=False)
    tensor([ 0.6667, -0.3333, -0.3333,  0.0000,  0.0000,  0.0000])
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    grouped = _groups(rewards, group_size)                                                 # (B / G, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)                                                             # (B,)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: each answer's reward minus the mean reward of the OTHER answers of its group.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0]), 3)        # 1 - 0, 0 - 1/2, 0 - 1/2
    tensor([ 1.0000, -0.5000, -0.5000])
    """
    grouped = _groups(rewards, group_size)
    G = grouped.size(1)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (G - 1)                       # leave-one-out mean
    return (grouped - others).reshape(-1)


def reinforce_advantages(rewards: torch.Tensor, baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    """REINFORCE with a baseline: A = r - b (b a number, or one per answer that does not depend on it).

    >>> reinforce_advantages(torch.tensor([1.0, 3.0]), baseline=2.0)
    tensor([-1.,  1.])
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    return rewards - baseline


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """The plain (on-policy) policy-gradient loss per token: -A * log pi(y_t); (B, N), (B,) -> (B, N).

    Its gradient is -A grad log pi, the REINFORCE estimator; average it with :func:`masked_mean`.
    """
    if advantages.ndim == 1:
        advantages = advantages[:, None]                                                   # (B, 1)
    return -advantages * logp


def grpo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                   clip_range: float = 0.2) -> torch.Tensor:
    """GRPO-clip per token: -min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = exp(logp - old_logp).

    logp, old_logp (B, N); advantages (B,) (one per answer, broadcast over its tokens) -> (B, N).

    >>> grpo_clip_loss(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2), torch.tensor([1.0]))
    tensor([[-1.2000, -0.5000]])
    """
    if logp.shape != old_logp.shape or logp.ndim != 2:
        raise ValueError(f"logp and old_logp must be (B, N) alike, got {tuple(logp.shape)}, {tuple(old_logp.shape)}")
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range!r}")
    if advantages.ndim == 1:
        advantages = advantages[:, None]                                                   # (B, 1)
    ratio = torch.exp(logp - old_logp)                                                     # (B, N)
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip_range: float = 0.2, beta: float = 0.04, loss_type: str = "grpo",
              max_completion_length: int | None = None) -> torch.Tensor:
    """The GRPO loss of one batch: GRPO-clip + beta * k3(pi || pi_ref) per token, then aggregated.

    k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 per sampled token (ref_logp may be None
    when beta = 0). The aggregation is what the loss types differ in:

    - ``"grpo"``: each answer's masked mean over its own tokens, then the mean over answers
      (Shao et al. 2024; a long answer's tokens weigh less);
    - ``"bnpo"``: one masked mean over every token of the batch;
    - ``"dr_grpo"``: the masked sum divided by B x max_completion_length, a constant (Liu et al. 2025;
      pair it with ``group_normalized_advantages(..., normalize_by_std=False)``).

    >>> z = torch.zeros(1, 2)
    >>> grpo_loss(z, z, z, torch.tensor([1.0]), torch.tensor([[1, 0]]), loss_type="dr_grpo", max_completion_length=4)
    tensor(-0.2500)
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask must be (B, N) like logp, got {tuple(mask.shape)} and {tuple(logp.shape)}")
    per_token = grpo_clip_loss(logp, old_logp, advantages, clip_range)                     # (B, N)
    if beta != 0:
        if ref_logp is None or ref_logp.shape != logp.shape:
            raise ValueError("beta > 0 needs ref_logp of logp's shape (B, N)")
        log_r = ref_logp - logp
        per_token = per_token + beta * (torch.exp(log_r) - log_r - 1)                      # k3 per token
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return (masked_normalize(per_token, m, 1.0, dim=1) / m.sum(dim=1).clamp(min=1)).mean()
    if loss_type == "bnpo":
        return masked_normalize(per_token, m, float(m.sum().clamp(min=1)))
    if not isinstance(max_completion_length, int) or max_completion_length < logp.size(1):
        raise ValueError(f"loss_type='dr_grpo' needs an int max_completion_length >= N = {logp.size(1)}, "
                         f"got {max_completion_length!r}")
    return masked_normalize(per_token, m, float(logp.size(0) * max_completion_length))


# ----------------------------------------------------------------------------- the loop


@dataclass
class GRPOConfig:
    """GRPO's knobs. ``loss_type="dr_grpo"`` with ``scale_rewards=False`` is Dr. GRPO (TRL:
    ``loss_type="dr_grpo"``, ``scale_rewards="none"``)."""

    beta: float = 0.04                 # weight of the k3 KL penalty in the loss
    group_size: int = 8                # G answers per prompt
    loss_type: str = "grpo"
    scale_rewards: bool = True         # divide by the group's std (GRPO) or not (Dr. GRPO)
    clip_range: float = 0.2
    epochs: int = 4                    # passes over one rollout (GRPO's mu), as PPO's ppo_epochs
    num_minibatches: int = 4
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    max_new_tokens: int = 16
    temperature: float = 1.0
    stop_token: int | None = None
    pad_token_id: int = 0

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if not self.beta >= 0 or not self.clip_range > 0 or not self.lr > 0:
            raise ValueError(f"beta must be >= 0 and clip_range, lr > 0; got {self.beta!r}, {self.clip_range!r}, "
                             f"{self.lr!r}")
        for name in ("group_size", "epochs", "num_minibatches", "max_new_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (2 if name == "group_size" else 1):
                raise ValueError(f"{name} must be an int >= {2 if name == 'group_size' else 1}, got {v!r}")


@torch.no_grad()
def grpo_rollout(policy: nn.Module, ref: nn.Module, prompts: torch.Tensor, reward_fn, config: GRPOConfig,
                 generator: torch.Generator | None = None) -> dict:
    """G answers to each of the n prompts (n, P) -> a batch of B = n G rows (groups consecutive):
    sequences, mask, the sampling policy's log-probs (old_logp), the reference's, scores (B,),
    advantages (B,) and the sequence KL (k1 summed, for logging)."""
    if prompts.ndim != 2:
        raise ValueError(f"prompts must be (n, P), got {tuple(prompts.shape)}")
    prompts = prompts.repeat_interleave(config.group_size, dim=0)                          # (B, P)
    r = sample_and_score(policy, policy, ref, prompts, reward_fn, config, generator)
    advantages = group_normalized_advantages(r["scores"], config.group_size, config.scale_rewards)
    return {"sequences": r["sequences"], "prompt_length": r["prompt_length"], "mask": r["mask"],
            "old_logp": r["logp"], "ref_logp": r["ref_logp"], "scores": r["scores"], "advantages": advantages,
            "kl": r["kl"]}


def grpo_update(policy: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, config: GRPOConfig,
                generator: torch.Generator | None = None) -> dict[str, float]:
    """`epochs` passes of shuffled minibatches over one rollout, minimising :func:`grpo_loss`."""
    B, P = batch["sequences"].size(0), batch["prompt_length"]
    size = max(1, B // config.num_minibatches)
    losses = []
    policy.train()
    for _ in range(config.epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, size):
            idx = order[start:start + size]
            logp, _ = _response_stats(policy, batch["sequences"][idx], P, config.temperature)
            loss = grpo_loss(logp, batch["old_logp"][idx], batch["ref_logp"][idx], batch["advantages"][idx],
                             batch["mask"][idx], config.clip_range, config.beta, config.loss_type,
                             config.max_new_tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    return {"loss": sum(losses) / len(losses)}


def train_grpo(policy: nn.Module, ref: nn.Module, prompt_fn, reward_fn, config: GRPOConfig, updates: int,
               prompts_per_batch: int = 8, log_every: int = 10, eval_fn=None, seed: int = 0) -> list[dict]:
    """`updates` GRPO iterations on a causal LM `policy` (no value head); logs like :func:`ppo.train_ppo`:
    update, mean score, mean sequence KL to `ref`, mean length and eval_fn(responses, mask)."""
    if not isinstance(updates, int) or updates < 0:
        raise ValueError(f"updates must be an int >= 0, got {updates!r}")
    freeze_reference(policy, ref)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)
    history = []
    for step in range(updates + 1):
        batch = grpo_rollout(policy, ref, prompt_fn(prompts_per_batch, g), reward_fn, config, g)
        if step % log_every == 0 or step == updates:
            history.append(history_row(step, batch, config.beta, eval_fn))
        if step == updates:
            break
        grpo_update(policy, optimizer, batch, config, g)
    return history
