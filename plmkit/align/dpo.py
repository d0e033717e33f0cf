"""Direct preference optimisation (Rafailov et al. 2023), and IPO (Azar et al. 2024).

RLHF maximises E[r(x, y)] - beta * KL(pi || pi_ref). That objective has a closed-form
optimum, pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), so a reward can be read
off any policy: r(x, y) = beta log(pi(y|x) / pi_ref(y|x)) + beta log Z(x). Put that
*implicit reward* into the Bradley–Terry likelihood and Z(x) cancels between the two
answers of a pair:

    loss = -log sigma(beta * [(log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))])

No reward model, no sampling, no value function: a classification loss on the
preference pairs, with a frozen copy of the starting policy as the reference.

Conventions (as in TRL's ``DPOTrainer``): log pi(y|x) is the SUM of the per-token
log-probabilities of the completion tokens (the prompt and padding excluded); some
implementations average instead, which changes what beta means. A batch holds the
chosen rows first, then the rejected rows, right-padded. Letters: B pairs, T time, V vocab.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["preference_batch", "sequence_logprobs", "completion_logprobs", "dpo_loss", "implicit_rewards",
           "dpo_step", "dpo_update"]

LOSS_TYPES = ("sigmoid", "ipo")


def preference_batch(prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]],
                     pad_id: int) -> dict[str, torch.Tensor]:
    """Token-id lists -> a batch of 2B right-padded rows: prompt + chosen (rows 0..B-1), then prompt + rejected.

    Returns ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on completion tokens), all (2B, T),
    the layout of TRL's ``DataCollatorForPreference``.

    >>> b = preference_batch([[1, 2]], [[3]], [[4, 5]], pad_id=0)
    >>> b["input_ids"].tolist(), b["completion_mask"].tolist()
    ([[1, 2, 3, 0], [1, 2, 4, 5]], [[0, 0, 1, 0], [0, 0, 1, 1]])
    """
    if not (len(prompts) == len(chosen) == len(rejected)) or not prompts:
        raise ValueError("prompts, chosen and rejected must be non-empty lists of one length")
    if any(len(c) == 0 for c in chosen) or any(len(r) == 0 for r in rejected):
        raise ValueError("every chosen and rejected completion needs at least one token")
    rows = [list(p) + list(c) for p, c in zip(prompts, chosen)] + [list(p) + list(r) for p, r in zip(prompts, rejected)]
    comp = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, chosen)] + \
           [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, rejected)]
    T = max(len(r) for r in rows)
    return {"input_ids": torch.tensor([r + [pad_id] * (T - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows]),
            "completion_mask": torch.tensor([m + [0] * (T - len(m)) for m in comp])}


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                      average: bool = False) -> torch.Tensor:
    """Sum (or mean) of log p(token_t | tokens_<t) over the positions where completion_mask is 1.

    logits (B, T, V) predict the NEXT token: logits[:, t-1] scores input_ids[:, t].
    So position 0 is never scored, and the log-probs of tokens 1..T-1 line up with
    completion_mask[:, 1:]. Returns (B,).

    >>> logits = torch.zeros(1, 3, 4)                       # uniform over 4 tokens
    >>> float(sequence_logprobs(logits, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]])))  # 2 log(1/4)
    -2.7725887298583984
    """
    if logits.ndim != 3 or input_ids.shape != logits.shape[:2] or completion_mask.shape != input_ids.shape:
        raise ValueError(f"logits must be (B, T, V) and input_ids, completion_mask (B, T); got "
                         f"{tuple(logits.shape)}, {tuple(input_ids.shape)}, {tuple(completion_mask.shape)}")
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)                               # (B, T-1, V)
    token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)                   # (B, T-1)
    mask = completion_mask[:, 1:].to(token_logp.dtype)                                 # (B, T-1)
    total = (token_logp * mask).sum(dim=1)                                             # (B,)
    return total / mask.sum(dim=1).clamp(min=1) if average else total


def completion_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], average: bool = False) -> torch.Tensor:
    """Run `model` on a :func:`preference_batch` and return each row's completion log-prob (2B,)."""
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = getattr(logits, "logits", logits)
    return sequence_logprobs(logits, batch["input_ids"], batch["completion_mask"], average)


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi(y|x) - log pi_ref(y|x)), up to beta log Z(x), per sequence."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO (or IPO) loss from summed completion log-probs, each (B,) -> (scalar loss, metrics).

    - ``"sigmoid"`` (DPO): mean of -log sigma(beta * (h_c - h_r)), h = log pi - log pi_ref.
    - ``"ipo"`` (Azar et al. 2024, eq. 17): mean of (h_c / L_c - h_r / L_r - 1 / (2 beta))^2 where L is
      the completion length: TRL divides the summed log-ratios by the number of completion
      tokens for IPO (confirmed with the IPO authors, says its source), so lengths are required.

    Metrics (detached), what practitioners read in a DPO log: the mean implicit rewards of
    chosen and rejected answers, their margin, and the preference accuracy (chosen > rejected).
    """
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta > 0:
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-prob tensors must have one shape (B,), got {shapes}")
    h_chosen = policy_chosen - ref_chosen                                              # (B,)
    h_rejected = policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (h_chosen - h_rejected))
    else:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs chosen_lengths and rejected_lengths (completion tokens)")
        delta = h_chosen / chosen_lengths.clamp(min=1) - h_rejected / rejected_lengths.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    with torch.no_grad():
        r_c, r_r = implicit_rewards(policy_chosen, ref_chosen, beta), implicit_rewards(policy_rejected, ref_rejected, beta)
        metrics = {"rewards/chosen": r_c.mean(), "rewards/rejected": r_r.mean(), "rewards/margin": (r_c - r_r).mean(),
                   "rewards/accuracy": (r_c > r_r).float().mean()}
    return losses.mean(), metrics


def dpo_step(policy: nn.Module, ref: nn.Module, batch: dict[str, torch.Tensor], beta: float = 0.1,
             loss_type: str = "sigmoid") -> tuple[torch.Tensor, dict[str, float]]:
    """A Trainer ``loss_fn``: DPO loss of `policy` against the frozen `ref` on a :func:`preference_batch`."""
    logps = completion_logprobs(policy, batch)                                         # (2B,)
    with torch.no_grad():
        ref_logps = completion_logprobs(ref, batch)
    pc, pr = logps.chunk(2)
    rc, rr = ref_logps.chunk(2)
    lengths = batch["completion_mask"].sum(dim=1)
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta, loss_type, *lengths.chunk(2))
    return loss, {k: float(v) for k, v in metrics.items()}


def dpo_update(policy: nn.Module, ref: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               beta: float = 0.1) -> float:
    """One optimiser step of DPO against the frozen `ref`: zero_grad, :func:`dpo_step`, backward, step;
    returns the loss as a float (chapter 8's capstone 8.12 writes this)."""
    optimizer.zero_grad(set_to_none=True)
    loss, _ = dpo_step(policy, ref, batch, beta)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
