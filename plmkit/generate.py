"""Decoding: turning a language model's next-token distributions into text.

A causal language model gives, for a prefix, a distribution over the next
token. Generation appends one token at a time and feeds the longer prefix
back in. How that token is chosen is the decoding strategy:

    greedy          always the most likely token (temperature=0)
    temperature     divide the logits by T before softmax: T < 1 sharpens, T > 1 flattens
    top-k           sample only among the k most likely tokens
    top-p (nucleus) sample only among the smallest set of tokens whose mass reaches p
    beam search     keep the `num_beams` best partial sequences by total log-probability,
                    rank finished ones by log-probability / length ** length_penalty

The filters follow Hugging Face's logits warpers (temperature, then top-k,
then top-p) and beam search follows `transformers`' algorithm, so that the
tests can compare outputs token for token. This file recomputes the whole
prefix at every step; chapter 9 adds the KV cache that makes that cheap.

    >>> import torch
    >>> class Counter(torch.nn.Module):          # a toy "model": always predicts last token + 1
    ...     def forward(self, ids):
    ...         return torch.nn.functional.one_hot((ids + 1) % 10, 10).float() * 5
    >>> generate(Counter(), torch.tensor([[3]]), max_new_tokens=4, temperature=0)
    tensor([[3, 4, 5, 6, 7]])

Letters in shape comments: B batch (prompts), K beams, T time, V vocabulary.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")
_BIG_NEG = -1.0e9  # "impossible" without the nan trouble of -inf arithmetic (as transformers does)


# ----------------------------------------------------------------------------- one distribution

def temperature_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Next-token probabilities at a temperature: softmax(logits / T); T = 0 means greedy (one-hot argmax).

    >>> temperature_softmax(torch.tensor([2.0, 1.0, 0.0]), 1.0).round(decimals=3)
    tensor([0.6650, 0.2450, 0.0900])
    >>> temperature_softmax(torch.tensor([2.0, 1.0, 0.0]), 0.5).round(decimals=3)
    tensor([0.8670, 0.1170, 0.0160])
    >>> temperature_softmax(torch.tensor([2.0, 1.0, 0.0]), 0)
    tensor([1., 0., 0.])
    """
    _check_temperature(temperature)
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by a temperature > 0 (the logits that `temperature_softmax` normalises).

    >>> apply_temperature(torch.tensor([2.0, -1.0]), 0.5)
    tensor([ 4., -2.])
    """
    _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("temperature must be > 0 to scale logits; temperature=0 means greedy decoding")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits of each row, set the others to -inf (ties with the k-th are kept).

    >>> top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    tensor([-inf, 3., 2., -inf])
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {k!r}")
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]          # (..., 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability mass is >= p.

    Tokens are added from the most likely down; the token whose probability
    carries the running total across `p` is kept (Holtzman et al., 2020).
    Probabilities 0.5, 0.3, 0.2 with p = 0.6: 0.5 is not enough, 0.5 + 0.3
    crosses 0.6, so the first two tokens stay.

    >>> probs = torch.tensor([0.5, 0.3, 0.2])
    >>> top_p_filter(probs.log(), 0.6).exp()
    tensor([0.5000, 0.3000, 0.0000])
    >>> top_p_filter(probs.log(), 0.5).exp()      # exactly 0.5 is reached by the first token
    tensor([0.5000, 0.0000, 0.0000])
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)   # least likely first
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # A token goes when all the mass at or below it is <= 1 - p: the tokens above it
    # already hold >= p. The most likely token always stays.
    drop_sorted = cum <= 1.0 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose one next token per row of `logits` (B, V): greedy at temperature 0, else sample.

    >>> sample_next(torch.tensor([[0.0, 5.0, 1.0]]), temperature=0)
    tensor([1])
    >>> g = torch.Generator().manual_seed(0)
    >>> sample_next(torch.tensor([[0.0, 5.0, 1.0]]), top_k=1, generator=g)
    tensor([1])
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)                           # (B, V)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- beam search pieces

def beam_search_step(sum_logprobs: torch.Tensor, next_logprobs: torch.Tensor,
                     n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Extend every beam by every token and keep the `n` best extensions overall.

    sum_logprobs (B, K): total log-probability of each running beam.
    next_logprobs (B, K, V): log-probability of each next token after each beam.
    Returns (scores, beam_idx, token_ids), each (B, n), best first: the new
    totals, which beam each candidate extends, and the token it appends.
    The competition is over all K * V candidates together, not per beam.

    >>> sums = torch.tensor([[-1.0, -2.0]])                          # two beams
    >>> nxt = torch.tensor([[[-0.1, -3.0], [-0.2, -0.5]]]).view(1, 2, 2)
    >>> beam_search_step(sums, nxt, 2)
    (tensor([[-1.1000, -2.2000]]), tensor([[0, 1]]), tensor([[0, 0]]))
    """
    if sum_logprobs.ndim != 2 or next_logprobs.ndim != 3 or next_logprobs.shape[:2] != sum_logprobs.shape:
        raise ValueError(f"need sum_logprobs (B, K) and next_logprobs (B, K, V), got "
                         f"{tuple(sum_logprobs.shape)} and {tuple(next_logprobs.shape)}")
    B, K, V = next_logprobs.shape
    if not 1 <= n <= K * V:
        raise ValueError(f"n must be in [1, K*V={K * V}], got {n}")
    total = (sum_logprobs.unsqueeze(-1) + next_logprobs).reshape(B, K * V)   # (B, K*V)
    scores, flat = torch.topk(total, n, dim=-1)                               # (B, n)
    return scores, flat // V, flat % V


def beam_score(sum_logprobs: torch.Tensor | float, length: int | torch.Tensor,
               length_penalty: float = 1.0) -> torch.Tensor | float:
    """The score that ranks finished hypotheses: sum of log-probs / length ** length_penalty.

    Log-probabilities are negative, so every extra token lowers the plain sum
    and beam search favours short outputs. Dividing by length ** alpha
    removes that bias: alpha = 0 is the plain sum, alpha = 1 the mean
    log-probability per token, alpha > 1 favours longer outputs still.
    `length` counts generated tokens (the prompt is not included).

    >>> beam_score(-6.0, 3, 1.0), beam_score(-6.0, 3, 0.0), beam_score(-6.0, 4, 2.0)
    (-2.0, -6.0, -0.375)
    """
    if isinstance(length, int) and length < 1:
        raise ValueError(f"length must be >= 1 generated token, got {length}")
    return sum_logprobs / (length ** length_penalty)


def best_hypothesis(sum_logprobs: Sequence[float] | torch.Tensor, lengths: Sequence[int] | torch.Tensor,
                    length_penalty: float = 1.0) -> int:
    """Index of the finished hypothesis with the highest `beam_score`.

    >>> best_hypothesis([-4.0, -6.0], [2, 6], length_penalty=0.0)   # plain sum: the short one
    0
    >>> best_hypothesis([-4.0, -6.0], [2, 6], length_penalty=1.0)   # per token: -2 vs -1
    1
    """
    s = torch.as_tensor(sum_logprobs, dtype=torch.float64)
    n = torch.as_tensor(lengths, dtype=torch.float64)
    if s.ndim != 1 or s.shape != n.shape or len(s) == 0:
        raise ValueError("sum_logprobs and lengths must be non-empty 1-D sequences of the same length")
    if (n < 1).any():
        raise ValueError("every length must be >= 1")
    return int(torch.argmax(beam_score(s, n, length_penalty)))


# ----------------------------------------------------------------------------- diagnostics

def distinct_n(tokens: Sequence | Sequence[Sequence], n: int) -> float:
    """Fraction of distinct n-grams among all n-grams: 1.0 = no repetition, near 0 = a loop.

    A list of sequences pools their n-grams (none crosses a sequence boundary).

    >>> distinct_n([1, 2, 1, 2, 1, 2], 2)        # bigrams 12 21 12 21 12: two distinct of five
    0.4
    >>> distinct_n(["to", "be", "or", "not"], 1)
    1.0
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    seqs = tokens if tokens and isinstance(tokens[0], (list, tuple)) else [tokens]
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    if not grams:
        raise ValueError(f"no sequence is as long as n={n}")
    return len(set(grams)) / len(grams)


# ----------------------------------------------------------------------------- the loop

@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, num_beams: int = 1, length_penalty: float = 1.0,
             do_sample: bool | None = None, stop_tokens: int | Iterable[int] | None = None,
             pad_token_id: int | None = None, generator: torch.Generator | None = None,
             block_size: int | None = None):
    """Continue prompts with `max_new_tokens` tokens from `model` (ids (B, T) -> logits (B, T, V)).

    - input_ids: a (B, T) or (T,) LongTensor, or a list of token-id lists of any
      lengths (each length is decoded as its own batch; a list comes back).
    - Greedy: temperature=0 (or do_sample=False). Sampling (the default):
      temperature, then top_k, then top_p, drawing from `generator` when given,
      so that a seeded generator gives the same text every time.
    - Beam search: num_beams > 1, deterministic; finished hypotheses are ranked
      by sum of log-probs / generated length ** length_penalty.
    - stop_tokens: a row that emits one of them is finished; later positions
      hold pad_token_id (default: the first stop token). Decoding ends early
      when every row has finished.
    - block_size: the longest context fed to the model (default: the model's
      `config.n_positions` if it has one); older tokens are cropped.

    Returns the prompts followed by their continuations, same type as input_ids.

    >>> class Counter(torch.nn.Module):
    ...     def forward(self, ids):
    ...         return torch.nn.functional.one_hot((ids + 1) % 10, 10).float() * 5
    >>> generate(Counter(), [[1], [7, 8]], max_new_tokens=3, temperature=0, stop_tokens=0)
    [[1, 2, 3, 4], [7, 8, 9, 0]]
    """
    # -- validate ------------------------------------------------------
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    _check_temperature(temperature)
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    greedy = temperature == 0 or do_sample is False
    if do_sample and temperature == 0:
        raise ValueError("do_sample=True needs temperature > 0 (temperature=0 means greedy)")
    if num_beams > 1 and (do_sample or top_k is not None or top_p is not None or temperature not in (0, 1)):
        raise ValueError("beam search (num_beams > 1) is deterministic: leave do_sample, temperature, "
                         "top_k and top_p at their defaults")
    stops = [stop_tokens] if isinstance(stop_tokens, int) else list(stop_tokens or [])
    if any(not isinstance(s, int) or s < 0 for s in stops):
        raise ValueError(f"stop_tokens must be non-negative token ids, got {stop_tokens!r}")
    if pad_token_id is None:
        pad_token_id = stops[0] if stops else 0
    if block_size is None:
        block_size = getattr(getattr(model, "config", None), "n_positions", None)
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be None or an int >= 1, got {block_size!r}")

    # -- ragged prompts: one batch per prompt length -------------------
    if isinstance(input_ids, (list, tuple)):
        prompts = [list(p) for p in input_ids]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("input_ids must hold at least one prompt, each with at least one token")
        out: list[list[int] | None] = [None] * len(prompts)
        for length in sorted({len(p) for p in prompts}):
            rows = [i for i, p in enumerate(prompts) if len(p) == length]
            ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long)
            res = generate(model, ids, max_new_tokens, temperature, top_k, top_p, num_beams, length_penalty,
                           do_sample, stops, pad_token_id, generator, block_size)
            for i, row in zip(rows, res.tolist()):
                out[i] = _trim(row, length, stops)
        return out
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
        raise ValueError("input_ids must be a LongTensor (B, T) or (T,), or a list of token-id lists")
    if input_ids.ndim == 1:
        return generate(model, input_ids[None], max_new_tokens, temperature, top_k, top_p, num_beams,
                        length_penalty, do_sample, stops, pad_token_id, generator, block_size)[0]
    if input_ids.ndim != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must have shape (B, T) with T >= 1, got {tuple(input_ids.shape)}")
    if (input_ids < 0).any():
        raise ValueError("input_ids must be non-negative token ids")

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        device = _model_device(model, input_ids.device)
        ids = input_ids.to(device)
        stop_t = torch.tensor(stops, dtype=torch.long, device=device)

        checked = []

        def next_logits(seqs: torch.Tensor) -> torch.Tensor:
            ctx = seqs if block_size is None else seqs[:, -block_size:]
            logits = model(ctx)[:, -1, :].float()                    # (B, V)
            if not checked:                                          # once: ids must fit the vocabulary
                V = logits.size(-1)
                if int(seqs.max()) >= V or (stops and max(stops) >= V):
                    raise ValueError(f"token ids must be < the model's vocabulary size {V}")
                checked.append(True)
            return logits

        if num_beams > 1:
            return _beam_search(next_logits, ids, max_new_tokens, num_beams, length_penalty, stop_t, pad_token_id)
        return _sample(next_logits, ids, max_new_tokens, greedy, temperature, top_k, top_p, stop_t,
                       pad_token_id, generator)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def _sample(next_logits, ids, max_new_tokens, greedy, temperature, top_k, top_p, stop_t, pad_token_id,
            generator) -> torch.Tensor:
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)     # (B,)
    for _ in range(max_new_tokens):
        logits = next_logits(ids)                                                # (B, V)
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = sample_next(logits, temperature, top_k, top_p, generator)      # (B,)
        if len(stop_t):
            nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
            finished |= torch.isin(nxt, stop_t)
        ids = torch.cat([ids, nxt[:, None]], dim=1)                              # (B, T+1)
        if len(stop_t) and bool(finished.all()):
            break
    return ids


def _beam_search(next_logits, ids, max_new_tokens, K, length_penalty, stop_t, pad_token_id) -> torch.Tensor:
    """Beam search as in `transformers` (early_stopping=False), written for reading.

    Each step extends the K running beams, keeps the best 2K (more with several
    stop tokens) candidates, moves candidates that end (a stop token, or the
    length limit) into a pool of K finished hypotheses ranked by `beam_score`,
    and continues with the K best candidates that did not end. Decoding stops
    when the best running beam, at its current length, could no longer beat
    the worst hypothesis of a full pool, or at the length limit.
    """
    B, T0 = ids.shape
    L = T0 + max_new_tokens
    dev = ids.device
    n_cand = max(2, 1 + len(stop_t)) * K
    running = ids[:, None, :].expand(B, K, T0).clone()                     # (B, K, T)
    running_scores = torch.zeros(B, K, device=dev)
    running_scores[:, 1:] = _BIG_NEG          # at first all beams are the same prompt: use one of them
    pool = torch.full((B, K, L), pad_token_id, dtype=torch.long, device=dev)   # finished hypotheses
    pool_scores = torch.full((B, K), _BIG_NEG, device=dev)
    pool_len = torch.zeros(B, K, dtype=torch.long, device=dev)             # generated tokens of each
    pool_done = torch.zeros(B, K, dtype=torch.bool, device=dev)            # slot holds a real hypothesis
    can_improve = torch.ones(B, dtype=torch.bool, device=dev)
    first_k = torch.arange(n_cand, device=dev) < K                          # only these may finish

    for step in range(max_new_tokens):
        logprobs = F.log_softmax(next_logits(running.reshape(B * K, -1)), dim=-1)   # (B*K, V)
        logprobs = logprobs.view(B, K, -1)                                          # (B, K, V)
        scores, beam, token = beam_search_step(running_scores, logprobs, n_cand)   # (B, n_cand)
        cand = torch.cat([torch.gather(running, 1, beam[..., None].expand(-1, -1, running.size(-1))),
                          token[..., None]], dim=-1)                               # (B, n_cand, T+1)
        ends = torch.isin(token, stop_t) | (step == max_new_tokens - 1)            # (B, n_cand)

        # the K best candidates that go on
        alive = scores + ends.float() * _BIG_NEG
        keep = torch.topk(alive, K, dim=-1).indices                                # (B, K)
        running = torch.gather(cand, 1, keep[..., None].expand(-1, -1, cand.size(-1)))
        running_scores = torch.gather(alive, 1, keep)

        # candidates that end join the finished pool, ranked by length-normalised score
        final = beam_score(scores, step + 1, length_penalty)
        final = final + (~can_improve)[:, None].float() * _BIG_NEG
        final = final + (~(ends & first_k)).float() * _BIG_NEG
        cand_full = F.pad(cand, (0, L - cand.size(-1)), value=pad_token_id)        # (B, n_cand, L)
        m_seq = torch.cat([pool, cand_full], dim=1)
        m_scores = torch.cat([pool_scores, final], dim=1)
        m_len = torch.cat([pool_len, torch.full_like(token, step + 1)], dim=1)
        m_done = torch.cat([pool_done, ends & first_k], dim=1)
        best = torch.topk(m_scores, K, dim=-1).indices                             # (B, K)
        pool = torch.gather(m_seq, 1, best[..., None].expand(-1, -1, L))
        pool_scores, pool_len, pool_done = (torch.gather(t, 1, best) for t in (m_scores, m_len, m_done))

        # can the best running beam still beat the worst finished hypothesis?
        best_possible = beam_score(running_scores[:, 0], step + 1, length_penalty)
        worst = torch.where(pool_done, pool_scores.min(dim=1, keepdim=True).values, _BIG_NEG)
        can_improve &= (best_possible[:, None] > worst).any(dim=1)
        if not bool(can_improve.any()) or bool(ends.all()):
            break

    return pool[:, 0, :T0 + int(pool_len[:, 0].max())]


# ----------------------------------------------------------------------------- helpers

def _trim(row: list[int], prompt_len: int, stops: list[int]) -> list[int]:
    """Cut a generated row after its first stop token (dropping the padding)."""
    for i in range(prompt_len, len(row)):
        if row[i] in stops:
            return row[:i + 1]
    return row


def _model_device(model, default: torch.device) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return default


def _check_temperature(temperature) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
