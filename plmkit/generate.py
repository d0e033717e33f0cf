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
tests can compare outputs token for token.

The loop talks to the model through a *decoder state* (:class:`DecoderState`:
``prefill``, ``step``, ``reorder``), so one loop drives every architecture:
:class:`RecomputeState` runs the model over the whole prefix at every step
(chapter 4's way, any ``model(ids)`` works), :class:`CachedState` keeps each
block's keys and values and feeds one new token per step (GPT, Llama; the
default), and an encoder–decoder brings its own state (chapter 5).

    >>> import torch
    >>> class Counter(torch.nn.Module):          # a toy "model": always predicts last token + 1
    ...     def forward(self, ids):
    ...         return torch.nn.functional.one_hot((ids + 1) % 10, 10).float() * 5
    >>> generate(Counter(), torch.tensor([[3]]), max_new_tokens=4, temperature=0)
    tensor([[3, 4, 5, 6, 7]])

Letters in shape comments: B batch (prompts), K beams, T time, V vocabulary.
"""
from __future__ import annotations

import inspect
import string
from dataclasses import dataclass
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


def words(text: str) -> list[str]:
    """The whitespace-separated words of `text`, lower-cased, punctuation stripped from both ends.

    Apostrophes and hyphens inside a word stay; a "word" of punctuation only is dropped.

    >>> words("Thou art, my lord -- 'tis o'er!")
    ['thou', 'art', 'my', 'lord', 'tis', "o'er"]
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    out = (w.strip(string.punctuation).lower() for w in text.split())
    return [w for w in out if w]


def known_word_fraction(texts: Sequence[str], vocabulary: set[str]) -> float:
    """Fraction of the words (see `words`) of generated `texts` that are in `vocabulary`.

    The last word of each text is left out: a sample cut at a fixed length may end mid-word.
    Texts with no complete word (random characters rarely hold a space) give 0.0.

    >>> known_word_fraction(["to be or nott to", "the kingg"], {"to", "be", "or", "the"})   # 4 of 5
    0.8
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    ws = [w for t in texts for w in words(t)[:-1]]
    if not ws:
        return 0.0
    return sum(w in vocabulary for w in ws) / len(ws)


# ----------------------------------------------------------------------------- decoder states

class DecoderState:
    """What the decoding loop needs from a model: one protocol for every architecture.

    ``prefill(input_ids, attention_mask) -> logits (N, V)``
        Read the prompts, (N, T) left-padded with `attention_mask` (N, T), 1 = real
        token, and return each row's next-token logits.
    ``step(next_ids) -> logits (N, V)``
        Append one token per row, `next_ids` (N,), and return the logits that follow it.
    ``reorder(index)``
        Keep rows `index` (N,) in that order: new row i is old row ``index[i]``.
        Beam search calls it after every step with the beams that survived.
    ``start_ids(input_ids, attention_mask) -> (ids (N, T0), mask (N, T0))``
        The tokens the returned sequences begin with, and which of them are real:
        the prompt itself for a decoder-only model (the default here); an
        encoder–decoder returns its decoder start token.

    N counts rows: prompts, or prompts x beams (:func:`generate` repeats each
    prompt `num_beams` times before `prefill`). Everything model-specific (caches,
    positions, an encoder's output) lives in the state, so the loop never changes.
    A model picks its state with a method ``model.decoder_state(*, use_cache,
    static_cache, max_new_tokens, block_size)``; without one, :func:`decoder_state`
    chooses :class:`CachedState` or :class:`RecomputeState`.
    """

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reorder(self, index: torch.Tensor) -> None:
        raise NotImplementedError

    def start_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return input_ids, attention_mask


class RecomputeState(DecoderState):
    """Chapter 4's decoding: run the model over the whole sequence at every step.

    Simple and stateless inside the model: step t costs a forward pass over
    all T + t tokens, so n new tokens cost O(n^2) token-passes. Works with any
    ``model(ids (N, T)) -> logits (N, T, V)``; a padded batch also needs a
    forward that takes `attention_mask` and `position_ids`. The model sees at
    most the last `block_size` tokens (older ones are cropped).
    """

    def __init__(self, model, block_size: int | None = None):
        self.model, self.block_size = model, block_size

    def prefill(self, input_ids, attention_mask):
        self.ids, self.mask = input_ids, attention_mask                      # (N, T)
        self.padded = not bool(attention_mask.all())
        if self.padded and not _accepts(self.model, "attention_mask"):
            raise ValueError("a padded batch needs a model whose forward takes attention_mask and "
                             "position_ids; pass prompts of one length, or a list of prompts")
        return self._logits()

    def step(self, next_ids):
        self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)             # (N, T+1)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        return self._logits()

    def reorder(self, index):
        self.ids, self.mask = self.ids[index], self.mask[index]

    def _logits(self) -> torch.Tensor:
        ids, mask = self.ids, self.mask
        if self.block_size is not None:
            ids, mask = ids[:, -self.block_size:], mask[:, -self.block_size:]
        if not self.padded:
            return self.model(ids)[:, -1, :]                                   # (N, V)
        return self.model(ids, attention_mask=mask, position_ids=positions_from_mask(mask))[:, -1, :]


class CachedState(DecoderState):
    """Decoding with a key/value cache: the prompt once, then one token per step.

    Each block keeps the keys and values of every position it has seen, so a
    step feeds only the new token and attends over the stored ones: n new tokens
    cost n single-token passes instead of n whole-sequence passes. For models with
    ``forward(ids, attention_mask, position_ids, *, caches, cache_position)`` and
    ``new_caches(batch_size, max_length, static)`` (GPT, Llama).

    - Left padding: the attention mask covers every key position (prompt, then
      ones for the generated tokens) and positions follow :func:`positions_from_mask`.
    - ``static=True``: caches pre-allocated for prompt + max_new_tokens positions,
      written in place; shapes never change from step to step (CUDA graphs).
    - A sequence longer than `block_size` (learned positions end there) falls back
      to recomputing the last `block_size` tokens, as :class:`RecomputeState` does.
    """

    def __init__(self, model, max_new_tokens: int, block_size: int | None = None, static: bool = False):
        self.model, self.max_new_tokens, self.block_size, self.static = model, max_new_tokens, block_size, static
        self.fallback: RecomputeState | None = None

    def prefill(self, input_ids, attention_mask):
        N, T = input_ids.shape
        self.ids = input_ids
        self.capacity = T + self.max_new_tokens - 1          # positions ever fed to the model
        if self.block_size is not None:
            self.capacity = min(self.capacity, self.block_size)
        if T > self.capacity:                                # the prompt alone is too long: crop every step
            self.fallback = RecomputeState(self.model, self.block_size)
            return self.fallback.prefill(input_ids, attention_mask)
        self.caches = self.model.new_caches(batch_size=N, max_length=self.capacity, static=self.static)
        self.mask = F.pad(attention_mask, (0, self.capacity - T), value=1)          # (N, capacity)
        positions = positions_from_mask(attention_mask)                              # (N, T)
        self.next_position = positions[:, -1] + 1                                    # (N,)
        self.length = 0                                                              # positions cached
        return self._forward(input_ids, positions)

    def step(self, next_ids):
        if self.fallback is not None:
            return self.fallback.step(next_ids)
        self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)                  # (N, T+1)
        if self.length == self.capacity:                     # past block_size: recompute from now on
            self.fallback = RecomputeState(self.model, self.block_size)
            return self.fallback.prefill(self.ids, F.pad(self.mask, (0, 1), value=1))
        positions = self.next_position[:, None]                                      # (N, 1)
        self.next_position = self.next_position + 1
        return self._forward(next_ids[:, None], positions)

    def reorder(self, index):
        if self.fallback is not None:
            return self.fallback.reorder(index)
        self.ids, self.mask, self.next_position = self.ids[index], self.mask[index], self.next_position[index]
        for cache in self.caches:
            cache.reorder(index)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        T = ids.size(1)
        cache_position = torch.arange(self.length, self.length + T, device=ids.device)   # (T,)
        mask = self.mask if self.static else self.mask[:, :self.length + T]              # all keys so far
        logits = self.model(ids, attention_mask=mask, position_ids=positions, caches=self.caches,
                            cache_position=cache_position)
        self.length += T
        return logits[:, -1, :]                                                          # (N, V)


def decoder_state(model, *, use_cache: bool = True, static_cache: bool = False, max_new_tokens: int,
                  block_size: int | None = None) -> DecoderState:
    """The state that drives `model`: its own ``model.decoder_state(...)`` if it has one,
    else :class:`CachedState` when it can cache (``new_caches``) and `use_cache`, else
    :class:`RecomputeState`."""
    if hasattr(model, "decoder_state"):
        return model.decoder_state(use_cache=use_cache, static_cache=static_cache,
                                   max_new_tokens=max_new_tokens, block_size=block_size)
    if use_cache and hasattr(model, "new_caches") and _accepts(model, "caches"):
        return CachedState(model, max_new_tokens, block_size, static=static_cache)
    if static_cache:
        raise ValueError("static_cache=True needs use_cache=True and a model with new_caches(...)")
    return RecomputeState(model, block_size)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: each row counts from 0 at its first real token.

    Hugging Face's rule, ``cumsum(attention_mask) - 1``, clamped at 0 for the padding
    (whose positions nothing reads).

    >>> positions_from_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    tensor([[0, 0, 0, 1],
            [0, 1, 2, 3]])
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------- the loop

@dataclass
class GenerateOutput:
    """`sequences` as :func:`generate` returns them, and `logprobs` (B, N) of the N
    generated tokens under the model (log-softmax of its logits, before temperature,
    top-k or top-p); 0.0 where a finished row holds padding. Lists for list input."""

    sequences: torch.Tensor | list[list[int]]
    logprobs: torch.Tensor | list[list[float]]


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, num_beams: int = 1, length_penalty: float = 1.0,
             do_sample: bool | None = None, stop_tokens: int | Iterable[int] | None = None,
             pad_token_id: int | None = None, generator: torch.Generator | None = None,
             block_size: int | None = None, *, attention_mask: torch.Tensor | None = None,
             use_cache: bool = True, static_cache: bool = False, return_logprobs: bool = False):
    """Continue prompts with `max_new_tokens` tokens from `model` (ids (B, T) -> logits (B, T, V)).

    - input_ids: a (B, T) or (T,) LongTensor, or a list of token-id lists of any
      lengths (left-padded into one batch when the model's forward takes an
      attention_mask, else decoded as one batch per length; a list comes back,
      each row cut after its stop token).
    - attention_mask: (B, T), 1 = real token, for a LEFT-padded tensor batch
      (positions then count from each row's first real token, as in Hugging Face).
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
    - use_cache (default True): decode with a KV cache (:class:`CachedState`) when
      the model offers one; False recomputes the whole prefix every step
      (:class:`RecomputeState`, chapter 4's loop). static_cache=True pre-allocates it.
    - return_logprobs: return a :class:`GenerateOutput` with the log-probability
      of every generated token.

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
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty must be a number (0 = plain sum of log-probs), got {length_penalty!r}")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be None, True or False, got {do_sample!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator, got {type(generator).__name__}")
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
    if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be a non-negative token id, got {pad_token_id!r}")
    if block_size is None:
        block_size = getattr(getattr(model, "config", None), "n_positions", None)
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be None or an int >= 1, got {block_size!r}")
    for name, flag in (("use_cache", use_cache), ("static_cache", static_cache), ("return_logprobs", return_logprobs)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                   length_penalty=length_penalty, do_sample=do_sample, stop_tokens=stops,
                   pad_token_id=pad_token_id, generator=generator, block_size=block_size,
                   use_cache=use_cache, static_cache=static_cache, return_logprobs=return_logprobs)

    # -- a list of prompts: left-pad them into one batch -----------------
    if isinstance(input_ids, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask is built from the list of prompts; pass it only with a tensor")
        return _generate_list(model, input_ids, max_new_tokens, greedy, options)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
        raise ValueError("input_ids must be a LongTensor (B, T) or (T,), or a list of token-id lists")
    if input_ids.ndim == 1:
        if attention_mask is not None:
            attention_mask = attention_mask[None]
        out = generate(model, input_ids[None], max_new_tokens, attention_mask=attention_mask, **options)
        return GenerateOutput(out.sequences[0], out.logprobs[0]) if return_logprobs else out[0]
    if input_ids.ndim != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must have shape (B, T) with T >= 1, got {tuple(input_ids.shape)}")
    if (input_ids < 0).any():
        raise ValueError("input_ids must be non-negative token ids")
    attention_mask = _check_attention_mask(attention_mask, input_ids)

    seqs, logprobs, _ = _run(model, input_ids, attention_mask, max_new_tokens, greedy, options)
    return GenerateOutput(seqs, logprobs) if return_logprobs else seqs


def _run(model, ids, mask, max_new_tokens, greedy, o) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode a validated (B, T) batch; returns sequences, generated-token log-probs and the prefix mask."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        device = _model_device(model, ids.device)
        ids, mask = ids.to(device), mask.to(device)
        state = decoder_state(model, use_cache=o["use_cache"], static_cache=o["static_cache"],
                              max_new_tokens=max_new_tokens, block_size=o["block_size"])
        start, start_mask = state.start_ids(ids, mask)        # what the output begins with (the prompt)
        stop_t = torch.tensor(o["stop_tokens"], dtype=torch.long, device=device)
        if o["num_beams"] > 1:
            seqs, logprobs = _beam_search(state, ids, mask, start, max_new_tokens, o["num_beams"],
                                          o["length_penalty"], stop_t, o["pad_token_id"])
        else:
            seqs, logprobs = _sample(state, ids, mask, start, max_new_tokens, greedy, o["temperature"], o["top_k"],
                                     o["top_p"], stop_t, o["pad_token_id"], o["generator"])
        return seqs, logprobs, start_mask
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def _generate_list(model, prompts, max_new_tokens, greedy, options):
    """A list of prompts of any lengths: one left-padded batch (or one batch per length
    for a model whose forward takes no attention_mask); a list of trimmed rows comes back."""
    prompts = [list(p) for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("input_ids must hold at least one prompt, each with at least one token")
    if any(not isinstance(t, int) or t < 0 for p in prompts for t in p):
        raise ValueError("input_ids must hold non-negative int token ids")
    if not (hasattr(model, "decoder_state") or _accepts(model, "attention_mask")):
        groups: dict[int, list[int]] = {}           # chapter 4's way: one batch per prompt length
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        batches = [(groups[n], [prompts[i] for i in groups[n]]) for n in sorted(groups)]
    else:
        batches = [(list(range(len(prompts))), prompts)]
    seqs: list = [None] * len(prompts)
    logprobs: list = [None] * len(prompts)
    for rows, batch in batches:
        T = max(len(p) for p in batch)
        ids = torch.tensor([[options["pad_token_id"]] * (T - len(p)) + p for p in batch])        # left padding
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in batch])
        out, lp, start_mask = _run(model, ids, mask, max_new_tokens, greedy, options)
        T0 = out.size(1) - lp.size(1)                                  # the prefix, before the new tokens
        for j, i in enumerate(rows):
            prefix = out[j, :T0][start_mask[j].bool()].tolist()        # without the padding
            new = _trim(out[j, T0:].tolist(), options["stop_tokens"])
            seqs[i], logprobs[i] = prefix + new, lp[j, :len(new)].tolist()
    return GenerateOutput(seqs, logprobs) if options["return_logprobs"] else seqs


def _sample(state, ids, mask, start, max_new_tokens, greedy, temperature, top_k, top_p, stop_t, pad_token_id,
            generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy or sampled decoding: one token per row per step, until max_new_tokens or every row stops."""
    seqs = start                                                                 # (B, T0)
    logits = state.prefill(ids, mask)                                            # (B, V)
    _check_vocabulary(logits, ids, stop_t, pad_token_id)
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)    # (B,)
    chosen_logprobs = []
    for step in range(max_new_tokens):
        logits = logits.float()
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = sample_next(logits, temperature, top_k, top_p, generator)      # (B,)
        logprob = F.log_softmax(logits, dim=-1).gather(-1, nxt[:, None])[:, 0]   # (B,)
        if len(stop_t):
            nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
            logprob = logprob.masked_fill(finished, 0.0)
            finished |= torch.isin(nxt, stop_t)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)                            # (B, T0+1)
        chosen_logprobs.append(logprob)
        if step == max_new_tokens - 1 or (len(stop_t) and bool(finished.all())):
            break
        logits = state.step(nxt)                                                 # (B, V)
    return seqs, torch.stack(chosen_logprobs, dim=1)                             # (B, T0+N), (B, N)


def _beam_search(state, ids, mask, start, max_new_tokens, K, length_penalty, stop_t,
                 pad_token_id) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search as in `transformers` (early_stopping=False), written for reading.

    Each step extends the K running beams, keeps the best 2K (more with several
    stop tokens) candidates, moves candidates that end (a stop token, or the
    length limit) into a pool of K finished hypotheses ranked by `beam_score`,
    and continues with the K best candidates that did not end. Decoding stops
    when the best running beam, at its current length, could no longer beat
    the worst hypothesis of a full pool, or at the length limit. The state holds
    B*K rows (each prompt K times) and follows the surviving beams by `reorder`.
    """
    B, T0 = start.shape
    L = T0 + max_new_tokens
    dev = ids.device
    n_cand = max(2, 1 + len(stop_t)) * K
    logits = state.prefill(ids.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0))   # (B*K, V)
    _check_vocabulary(logits, ids, stop_t, pad_token_id)
    running = start[:, None, :].expand(B, K, T0).clone()                   # (B, K, T)
    running_lp = torch.zeros(B, K, 0, device=dev)                          # log-prob of each generated token
    running_scores = torch.zeros(B, K, device=dev)
    running_scores[:, 1:] = _BIG_NEG          # at first all beams are the same prompt: use one of them
    pool = torch.full((B, K, L), pad_token_id, dtype=torch.long, device=dev)   # finished hypotheses
    pool_lp = torch.zeros(B, K, max_new_tokens, device=dev)
    pool_scores = torch.full((B, K), _BIG_NEG, device=dev)
    pool_len = torch.zeros(B, K, dtype=torch.long, device=dev)             # generated tokens of each
    pool_done = torch.zeros(B, K, dtype=torch.bool, device=dev)            # slot holds a real hypothesis
    can_improve = torch.ones(B, dtype=torch.bool, device=dev)
    first_k = torch.arange(n_cand, device=dev) < K                          # only these may finish
    batch = torch.arange(B, device=dev)[:, None]                            # (B, 1)

    for step in range(max_new_tokens):
        logprobs = F.log_softmax(logits.float(), dim=-1).view(B, K, -1)             # (B, K, V)
        scores, beam, token = beam_search_step(running_scores, logprobs, n_cand)   # (B, n_cand)
        cand = torch.cat([_gather_rows(running, beam), token[..., None]], dim=-1)  # (B, n_cand, T+1)
        token_lp = logprobs[batch, beam, token]                                     # (B, n_cand)
        cand_lp = torch.cat([_gather_rows(running_lp, beam), token_lp[..., None]], dim=-1)
        ends = torch.isin(token, stop_t) | (step == max_new_tokens - 1)            # (B, n_cand)

        # the K best candidates that go on
        alive = scores + ends.float() * _BIG_NEG
        keep = torch.topk(alive, K, dim=-1).indices                                # (B, K)
        running, running_lp = _gather_rows(cand, keep), _gather_rows(cand_lp, keep)
        running_scores = torch.gather(alive, 1, keep)

        # candidates that end join the finished pool, ranked by length-normalised score
        final = beam_score(scores, step + 1, length_penalty)
        final = final + (~can_improve)[:, None].float() * _BIG_NEG
        final = final + (~(ends & first_k)).float() * _BIG_NEG
        m_seq = torch.cat([pool, F.pad(cand, (0, L - cand.size(-1)), value=pad_token_id)], dim=1)
        m_lp = torch.cat([pool_lp, F.pad(cand_lp, (0, max_new_tokens - cand_lp.size(-1)))], dim=1)
        m_scores = torch.cat([pool_scores, final], dim=1)
        m_len = torch.cat([pool_len, torch.full_like(token, step + 1)], dim=1)
        m_done = torch.cat([pool_done, ends & first_k], dim=1)
        best = torch.topk(m_scores, K, dim=-1).indices                             # (B, K)
        pool, pool_lp = _gather_rows(m_seq, best), _gather_rows(m_lp, best)
        pool_scores, pool_len, pool_done = (torch.gather(t, 1, best) for t in (m_scores, m_len, m_done))

        # can the best running beam still beat the worst finished hypothesis?
        best_possible = beam_score(running_scores[:, 0], step + 1, length_penalty)
        worst = torch.where(pool_done, pool_scores.min(dim=1, keepdim=True).values, _BIG_NEG)
        can_improve &= (best_possible[:, None] > worst).any(dim=1)
        if not bool(can_improve.any()) or bool(ends.all()):
            break

        # the model follows the surviving beams: row b*K + k continues beam `keep`'s parent
        state.reorder((batch * K + torch.gather(beam, 1, keep)).flatten())              # (B*K,)
        logits = state.step(running[:, :, -1].flatten())                           # (B*K, V)

    n = int(pool_len[:, 0].max())
    return pool[:, 0, :T0 + n], pool_lp[:, 0, :n]


# ----------------------------------------------------------------------------- helpers

def _gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, n, L), index (B, m) -> (B, m, L): row index[b, j] of t[b]."""
    return torch.gather(t, 1, index[..., None].expand(-1, -1, t.size(-1)))


def _trim(new: list[int], stops: list[int]) -> list[int]:
    """Cut generated tokens after the first stop token (dropping the padding)."""
    for i, tok in enumerate(new):
        if tok in stops:
            return new[:i + 1]
    return new


def _check_attention_mask(attention_mask, input_ids: torch.Tensor) -> torch.Tensor:
    """All ones when None; else a (B, T) 0/1 mask with LEFT padding (every row ends on a real token)."""
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}, got "
                         f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    m = attention_mask.long()
    if ((m != 0) & (m != 1)).any():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if (m[:, 1:] < m[:, :-1]).any() or not bool(m[:, -1].all()):
        raise ValueError("attention_mask must describe LEFT padding (0s then 1s, every row ending on a real "
                         "token): generation appends on the right")
    return m


def _check_vocabulary(logits: torch.Tensor, ids: torch.Tensor, stop_t: torch.Tensor, pad_token_id: int) -> None:
    V = logits.size(-1)
    if int(ids.max()) >= V or (len(stop_t) and int(stop_t.max()) >= V) or pad_token_id >= V:
        raise ValueError(f"token ids (prompt, stop_tokens, pad_token_id) must be < the model's vocabulary size {V}")


def _accepts(model, name: str) -> bool:
    """Does model's forward (or the callable itself) take an argument called `name`?"""
    fn = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _model_device(model, default: torch.device) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return default


def _check_temperature(temperature) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
