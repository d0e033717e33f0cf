"""Causal language modelling (CLM): learn by predicting the next token.

GPT's objective factorises the probability of a text with the chain rule,

    P(x_1 .. x_T) = P(x_1) * P(x_2 | x_1) * ... * P(x_T | x_1 .. x_{T-1}),

and trains the model to maximise it, i.e. to minimise the mean negative
log-probability of every token given the ones before it. With a causal mask
one forward pass over T tokens yields all T predictions at once, so the loss
compares the logits at position t with the token at position t + 1: the
labels are the inputs shifted left by one. (Generation, by contrast, has to
go one token at a time, since each new token depends on the last.)

    clm_loss         cross-entropy of the shifted labels (Hugging Face's `labels=input_ids`)
    perplexity       exp(mean loss per token), pooled correctly over batches
    random_windows   a batch of random training windows (inputs, next-token targets)
    evaluate_lm      loss and perplexity of a model on a held-out token stream
    BigramLM         the baseline: next-token counts given the previous token only

Letters in the shape comments: B batch, T time (sequence length), V vocabulary.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .mlm import IGNORE_INDEX

__all__ = ["clm_loss", "perplexity", "random_windows", "evaluate_lm", "BigramLM"]


def clm_loss(logits: torch.Tensor, input_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy: logits at position t are scored on input_ids[t + 1].

    The last position has no next token and the first token is never a
    target; a label equal to `ignore_index` (padding) is skipped.

    >>> ids = torch.tensor([[2, 0, 1]])
    >>> logits = torch.zeros(1, 3, 3); logits[0, 0, 0] = logits[0, 1, 1] = 10.0   # predicts 0 then 1
    >>> round(clm_loss(logits, ids).item(), 4)
    0.0001
    >>> round(clm_loss(torch.zeros(1, 3, 3), ids).item(), 4) == round(math.log(3), 4)   # uniform guess
    True
    """
    if logits.ndim != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(f"need logits (B, T, V) and input_ids (B, T), got {tuple(logits.shape)} "
                         f"and {tuple(input_ids.shape)}")
    if logits.size(1) < 2:
        raise ValueError("need sequences of at least 2 tokens: there is nothing to predict in 1")
    V = logits.size(-1)
    pred = logits[:, :-1, :]                           # (B, T-1, V): predictions for positions 1..T-1
    target = input_ids[:, 1:]                          # (B, T-1)
    return F.cross_entropy(pred.reshape(-1, V).float(), target.reshape(-1), ignore_index=ignore_index)


def perplexity(losses: float | Sequence[float] | torch.Tensor, counts: Sequence[int] | None = None) -> float:
    """exp of the mean negative log-likelihood per token.

    `losses` is one mean loss (nats per token) or one per batch; `counts`
    gives the number of tokens each batch scored. Batches are pooled by
    tokens, not averaged: exp(sum(loss_i * n_i) / sum(n_i)). Perplexity is the
    effective number of equally likely tokens the model is choosing between.

    >>> round(perplexity(math.log(65)), 6)    # as unsure as a uniform guess over 65 characters
    65.0
    >>> round(perplexity([1.0, 2.0], [300, 100]), 4) == round(math.exp(1.25), 4)
    True
    """
    loss = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
    if loss.numel() == 0:
        raise ValueError("losses must hold at least one value")
    if counts is None:
        if loss.numel() != 1:
            raise ValueError("several batch losses need their token counts: pass counts=[...]")
        n = torch.ones(1, dtype=torch.float64)
    else:
        n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
        if n.shape != loss.shape or (n < 0).any() or n.sum() <= 0:
            raise ValueError("counts must be one non-negative token count per loss, with a positive total")
    return math.exp(float((loss * n).sum() / n.sum()))


def random_windows(ids: torch.Tensor, block_size: int, batch_size: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `batch_size` random windows of a token stream: inputs and next-token targets.

    >>> x, y = random_windows(torch.arange(100), block_size=4, batch_size=2, generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool((y == x + 1).all())
    (torch.Size([2, 4]), True)
    """
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if not isinstance(block_size, int) or block_size < 1 or block_size >= len(ids):
        raise ValueError(f"block_size must be an int in [1, len(ids)-1={len(ids) - 1}], got {block_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    windows = ids[starts[:, None] + offsets]           # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def evaluate_lm(model, ids: torch.Tensor, block_size: int, batch_size: int = 16,
                max_tokens: int | None = None) -> dict[str, float]:
    """Loss and perplexity of `model` on a held-out token stream.

    The stream is cut into consecutive windows of block_size + 1 tokens that
    overlap by one; each window's first block_size tokens go in and its last
    block_size tokens are the targets, so every token after the first is
    predicted exactly once, with 1 to `block_size` tokens of context. `max_tokens` caps the length
    scored (for quick looks). Returns {'loss', 'perplexity', 'tokens'}.
    """
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError("ids must be a 1-D token stream of at least 2 tokens")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if max_tokens is not None:
        ids = ids[:max_tokens + 1]
    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    was_training = getattr(model, "training", False)
    model.eval()
    ids = ids.cpu()                                   # windows are cut on the host, batches sent to `device`
    windows = [ids[s:s + block_size + 1] for s in range(0, len(ids) - 1, block_size)]
    # Summed on the device (read once at the end), in float64 where the device has it (not on Apple's MPS).
    acc = torch.float32 if torch.device(device).type == "mps" else torch.float64
    total, count = torch.zeros((), dtype=acc, device=device), 0
    for i in range(0, len(windows), batch_size):
        group = windows[i:i + batch_size]
        width = max(len(w) for w in group) - 1
        x = torch.zeros((len(group), width), dtype=torch.long)              # (B, T) inputs
        y = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)  # (B, T) next tokens, -100 = pad
        for j, w in enumerate(group):
            x[j, :len(w) - 1], y[j, :len(w) - 1] = w[:-1], w[1:]
        logits = model(x.to(device))                                        # (B, T, V)
        n = int((y != IGNORE_INDEX).sum())                                  # y is on the host: no sync
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.to(device).reshape(-1),
                               ignore_index=IGNORE_INDEX)
        total += loss.to(acc) * n                       # as Python's float(loss) * n was
        count += n
    model.train(was_training)
    loss = total.item() / count                                             # the one read
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


class BigramLM(torch.nn.Module):
    """A bigram language model (Shannon, 1948): P(next | previous token), counted on a token stream.

    Add-`smoothing` counts, so every pair has some probability. Called like a GPT, it returns
    logits (B, T, V) that depend on the last token only, so `plmkit.generate` can sample from it.

    >>> lm = BigramLM(torch.tensor([0, 1, 0, 1, 0, 2]), vocab_size=3, smoothing=0.0)
    >>> lm.log_probs.exp()[0]                       # after 0: 1 twice, 2 once
    tensor([0.0000, 0.6667, 0.3333])
    """

    def __init__(self, ids: torch.Tensor, vocab_size: int, smoothing: float = 1.0):
        super().__init__()
        if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or len(ids) < 2:
            raise ValueError("ids must be a 1-D token stream of length >= 2")
        if not isinstance(vocab_size, int) or vocab_size < 1 or int(ids.max()) >= vocab_size or int(ids.min()) < 0:
            raise ValueError(f"vocab_size must be an int > every id (max id {int(ids.max())}), got {vocab_size!r}")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing!r}")
        counts = torch.full((vocab_size, vocab_size), float(smoothing))
        counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
        log_probs = counts.log() - counts.sum(-1, keepdim=True).clamp_min(1e-30).log()     # (V, V)
        self.register_buffer("log_probs", log_probs)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits: row t is log P(next | input_ids[:, t])."""
        return self.log_probs[input_ids]
