"""A reward model learned from pairwise preferences (chapter 8).

People find it easier to say which of two answers is better than to score one.
The Bradley–Terry model (Bradley & Terry 1952) turns such comparisons into a
scalar score r(x, y): the probability that answer y_c is preferred to y_r is

    P(y_c > y_r) = sigma(r(x, y_c) - r(x, y_r)),

so training maximises log sigma(r_c - r_r) over the labelled pairs
(Christiano et al. 2017; Ouyang et al. 2022 for language models).

The reward model is a language-model backbone with its vocabulary head swapped
for one scalar, read at the last real token of each (prompt + answer) row, as
Hugging Face's ``LlamaForSequenceClassification`` does (and TRL's
``RewardTrainer`` trains). Letters: B batch, T time, C width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["bradley_terry_loss", "preference_accuracy", "last_token_index", "RewardModel", "pad_right",
           "reward_loss"]


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean of -log sigma(r_chosen - r_rejected [- margin]) over the pairs (B,) -> scalar.

    ``F.logsigmoid`` keeps it finite for large differences (log(sigmoid(x)) is not).

    >>> float(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])))   # log 2: a coin flip
    0.6931471824645996
    """
    if not isinstance(r_chosen, torch.Tensor) or not isinstance(r_rejected, torch.Tensor) \
            or r_chosen.shape != r_rejected.shape:
        raise ValueError("r_chosen and r_rejected must be tensors of one shape (B,), got "
                         f"{getattr(r_chosen, 'shape', None)} and {getattr(r_rejected, 'shape', None)}")
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose chosen answer scores strictly higher (a ``float`` tensor in [0, 1])."""
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen and r_rejected must have one shape, got {tuple(r_chosen.shape)} "
                         f"and {tuple(r_rejected.shape)}")
    return (r_chosen > r_rejected).float().mean()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask (1 = real token) -> (B,) index of each row's last real token.

    >>> last_token_index(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])).tolist()
    [2, 3]
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        raise ValueError("attention_mask must be a (B, T) tensor")
    m = attention_mask.bool()
    if not m.any(dim=1).all():
        raise ValueError("attention_mask: every row needs at least one real token")
    positions = torch.arange(m.size(1), device=m.device).expand_as(m)               # (B, T)
    return torch.where(m, positions, -1).amax(dim=1)                                # (B,)


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> right-padded ids (B, T) and attention mask (B, T).

    >>> pad_right([[5, 6, 7], [8]], 0)[0].tolist()
    [[5, 6, 7], [8, 0, 0]]
    """
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("rows must be a non-empty list of non-empty token-id lists")
    T = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [pad_id] * (T - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows], dtype=torch.long)
    return ids, mask


def _width(backbone: nn.Module) -> int:
    config = backbone.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if hasattr(config, name):
            return getattr(config, name)
    raise ValueError("backbone.config must give its width as hidden_size, n_embd or d_model")


class RewardModel(nn.Module):
    """``RewardModel(backbone)(input_ids (B, T), attention_mask (B, T)) -> rewards (B,)``.

    `backbone` is any plmkit causal LM whose forward takes ``output_hidden_states=True``
    (chapter 6's Llama, chapter 4's GPT). Its last hidden state (after the final norm)
    at each row's last real token goes through ``score``, a bias-free ``Linear(C, 1)``,
    the layout of Hugging Face's ``LlamaForSequenceClassification`` (its ``score``). The
    backbone's own vocabulary head is left unused.
    """

    def __init__(self, backbone: nn.Module, init_std: float = 0.02):
        super().__init__()
        self.backbone = backbone
        self.score = nn.Linear(_width(backbone), 1, bias=False)
        nn.init.normal_(self.score.weight, std=init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.backbone(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        h = out.hidden_states[-1]                                                   # (B, T, C)
        last = last_token_index(attention_mask)                                     # (B,)
        h_last = h[torch.arange(h.size(0), device=h.device), last]                  # (B, C)
        return self.score(h_last).squeeze(-1)                                      # (B,)


def reward_loss(model: RewardModel, chosen_ids: torch.Tensor, chosen_mask: torch.Tensor,
                rejected_ids: torch.Tensor, rejected_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One Bradley–Terry step: score both answers (prompt included) and return (loss, metrics).

    Chosen and rejected rows are padded to one length and run as one batch, chosen
    first, as TRL's ``RewardTrainer`` does. Metrics: accuracy and mean margin.
    """
    if chosen_ids.size(1) != rejected_ids.size(1):
        T = max(chosen_ids.size(1), rejected_ids.size(1))
        chosen_ids, chosen_mask = (F.pad(t, (0, T - t.size(1))) for t in (chosen_ids, chosen_mask))
        rejected_ids, rejected_mask = (F.pad(t, (0, T - t.size(1))) for t in (rejected_ids, rejected_mask))
    rewards = model(torch.cat([chosen_ids, rejected_ids]), torch.cat([chosen_mask, rejected_mask]))   # (2B,)
    r_c, r_r = rewards.chunk(2)
    loss = bradley_terry_loss(r_c, r_r)
    with torch.no_grad():
        metrics = {"accuracy": float(preference_accuracy(r_c, r_r)), "margin": float((r_c - r_r).mean())}
    return loss, metrics
