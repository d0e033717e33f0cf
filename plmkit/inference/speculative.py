"""Speculative decoding: a small draft model guesses, the large target model checks k guesses at once.

A decode step of a large model at batch 1 is limited by reading its weights,
so checking k + 1 positions in one forward pass costs about as much as
producing one. Speculative decoding (Leviathan et al. 2023; Chen et al. 2023)
exploits that:

1. the draft model q proposes k tokens x_1..x_k, one at a time (cheap);
2. the target model p scores all of them in ONE forward pass, giving
   p(. | prefix, x_<i) for i = 1..k+1;
3. going left to right, draft token x_i is accepted with probability
   min(1, p_i(x_i) / q_i(x_i)); at the first rejection a replacement is drawn
   from the *residual* distribution  norm(max(0, p_i - q_i))  and the round ends;
4. if all k are accepted, one bonus token is drawn from p_{k+1}.

The emitted tokens are distributed exactly as if sampled from the target
alone: for any token x, P(emit x) = q(x) min(1, p(x)/q(x)) + P(reject) *
residual(x) = min(q(x), p(x)) + max(0, p(x) - q(x)) = p(x). Each round emits
between 1 and k + 1 tokens for one target call. With temperature 0 both
distributions are one-hot, a draft token is accepted exactly when it is the
target's argmax, and the output is the target's greedy output.

    >>> p = torch.tensor([0.5, 0.3, 0.2]); q = torch.tensor([0.2, 0.6, 0.2])
    >>> residual_distribution(p, q)           # max(0, p - q) = [0.3, 0, 0], normalised
    tensor([1., 0., 0.])

Letters: k draft tokens per round, V vocabulary, T tokens so far.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generate import temperature_softmax

__all__ = ["residual_distribution", "accept_draft", "speculative_generate", "SpeculativeStats",
           "expected_tokens_per_round"]


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dimension: where to resample after a rejection.

    If p <= q everywhere (p == q: a rejection has probability 0 then), returns p."""
    if not isinstance(p, torch.Tensor) or not isinstance(q, torch.Tensor) or p.shape != q.shape:
        raise ValueError(f"p and q must be tensors of the same shape (..., V), got "
                         f"{getattr(p, 'shape', None)} and {getattr(q, 'shape', None)}")
    r = (p - q).clamp(min=0)
    total = r.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), p)


def accept_draft(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """One verification round: how many draft tokens survive, and the token emitted after them.

    p (k+1, V): target probabilities at the k draft positions and one more;
    q (k, V): draft probabilities at the k positions; draft (k,): the proposed tokens.
    Returns (n, token): draft[:n] are accepted and `token` follows them (drawn from
    the residual at position n after a rejection, from p[k] when all k pass).
    """
    if p.ndim != 2 or q.ndim != 2 or p.shape[0] != q.shape[0] + 1 or p.shape[1] != q.shape[1]:
        raise ValueError(f"p must be (k+1, V) and q (k, V), got {tuple(p.shape)} and {tuple(q.shape)}")
    if draft.shape != (q.shape[0],):
        raise ValueError(f"draft must hold k = {q.shape[0]} tokens, got shape {tuple(draft.shape)}")
    k = q.shape[0]
    for i in range(k):
        x = int(draft[i])
        u = float(torch.rand((), generator=generator, device=None if generator is None else generator.device))
        if u * float(q[i, x]) < float(p[i, x]):               # u < p/q without dividing by a zero q
            continue
        return i, int(torch.multinomial(residual_distribution(p[i], q[i]), 1, generator=generator))
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def expected_tokens_per_round(alpha: float, k: int) -> float:
    """Tokens emitted per target call when each draft token is accepted independently with rate alpha:
    (1 - alpha^(k+1)) / (1 - alpha) (Leviathan et al. 2023, eq. 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    return float(k + 1) if alpha == 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass
class SpeculativeStats:
    """Counts of one speculative_generate call."""

    proposed: int = 0          # draft tokens proposed
    accepted: int = 0          # of those, accepted
    rejected: int = 0          # rounds that ended with a rejection (the draft tokens after it go unchecked)
    target_calls: int = 0      # target forward passes (the first one also reads the prompt)
    draft_calls: int = 0       # draft forward passes (prefill included)
    emitted: int = 0           # tokens produced

    @property
    def acceptance_rate(self) -> float:
        """Of the draft tokens the target checked, the fraction it accepted (an estimate of Leviathan et
        al.'s alpha; the tokens after a rejection are never checked, so they do not count)."""
        checked = self.accepted + self.rejected
        return self.accepted / checked if checked else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.emitted / max(1, self.target_calls)


class _Cached:
    """A model with growing caches; `feed(seq)` runs the tokens of seq it has not cached yet."""

    def __init__(self, model, stats: SpeculativeStats, field: str):
        self.model, self.caches, self.n, self.stats, self.field = model, model.new_caches(), 0, stats, field

    def feed(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (T,) -> logits (T - n, V) for the tokens from position n on; they are cached after."""
        new = seq[self.n:][None]
        logits = self.model(new, caches=self.caches, cache_position=torch.arange(self.n, len(seq),
                                                                                   device=seq.device))
        setattr(self.stats, self.field, getattr(self.stats, self.field) + 1)
        self.n = len(seq)
        return logits[0].float()

    def crop(self, n: int) -> None:
        if n < self.n:
            for cache in self.caches:
                cache.crop(n)
            self.n = n


@torch.no_grad()
def speculative_generate(target, draft, input_ids: torch.Tensor, max_new_tokens: int, k: int = 4,
                         temperature: float = 1.0, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, SpeculativeStats]:
    """Sample `max_new_tokens` tokens from `target` with `draft` proposing `k` per round.

    Both models are causal LMs with ``forward(ids, *, caches, cache_position)`` and
    ``new_caches()`` (GPT, Llama) over the same vocabulary. input_ids: (T,) or (1, T),
    one prompt. temperature=0 is greedy (the target's greedy output, exactly).
    Returns (ids (T + max_new_tokens,), stats).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.numel() == 0:
        raise ValueError("input_ids must be a non-empty integer tensor (T,) or (1, T)")
    if input_ids.ndim == 2:
        if input_ids.shape[0] != 1:
            raise ValueError(f"speculative_generate decodes one prompt: input_ids (1, T), got {tuple(input_ids.shape)}")
        input_ids = input_ids[0]
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1 (draft tokens per round), got {k!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    target.eval(), draft.eval()
    stats = SpeculativeStats()
    tgt, drf = _Cached(target, stats, "target_calls"), _Cached(draft, stats, "draft_calls")
    seq = input_ids.clone()
    end = len(seq) + max_new_tokens
    # invariant: both caches hold at most seq[:-1]; the first round's target call is also its prefill
    while len(seq) < end:
        n_draft = min(k, end - len(seq) - 1)              # leave room for the token the round always adds
        drafted, qs = [], []
        for _ in range(n_draft):                           # the draft proposes, one token at a time
            q = temperature_softmax(drf.feed(torch.cat([seq, torch.tensor(drafted, dtype=seq.dtype, device=seq.device)]))[-1],
                                    temperature)
            x = int(q.argmax()) if temperature == 0 else int(torch.multinomial(q, 1, generator=generator))
            drafted.append(x)
            qs.append(q)
        proposal = torch.cat([seq, torch.tensor(drafted, dtype=seq.dtype, device=seq.device)])
        logits = tgt.feed(proposal)                        # ONE target pass over the pending token + the drafts
        p = temperature_softmax(logits[-(n_draft + 1):], temperature)               # (n_draft + 1, V)
        q = torch.stack(qs) if qs else p.new_zeros(0, p.shape[1])
        n, token = accept_draft(p, q, torch.tensor(drafted, dtype=torch.long), generator)
        stats.proposed += n_draft
        stats.accepted += n
        stats.rejected += n < n_draft
        seq = torch.cat([seq, torch.tensor(drafted[:n] + [token], dtype=seq.dtype, device=seq.device)])
        stats.emitted += n + 1
        tgt.crop(len(seq) - 1)                             # keep what both agree on; the new token is fed next
        drf.crop(len(seq) - 1)
    return seq[:end], stats
