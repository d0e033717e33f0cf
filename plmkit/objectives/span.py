"""T5's span corruption: drop short spans of the text, mark each gap with a sentinel, ask for the spans back.

Raffel et al. (2020) found that corrupting *spans* instead of single tokens
(BERT) works as well and makes training cheaper, because the target is short:
only the dropped tokens, each span introduced by the sentinel that replaced
it. With the default noise density 0.15 and mean span length 3, a 100-token
text loses 15 tokens in 5 spans; the input keeps 85 tokens plus 5 sentinels
and the target holds 5 sentinels plus the 15 dropped tokens.

    random_spans_noise_mask   which tokens are noise: T5's own recipe (below)
    corrupt_spans             tokens + noise mask -> (input, target) with sentinels and EOS
    span_corruption           the two together, the whole objective
    reassemble_spans          input + target -> the original tokens (the inverse)

Sentinels are counted down from the end of the vocabulary, as in T5's
SentencePiece model where ``<extra_id_0>`` is the last id: the k-th span of a
text becomes ``vocab_size - 1 - k``.

How T5 chooses the spans (``random_spans_noise_mask`` in the T5 code base):
the number of noise tokens is ``round(length * noise_density)`` and the number
of spans ``round(noise_tokens / mean_noise_span_length)``, both at least 1.
The noise tokens are split into that many non-empty spans at random, and so
are the kept tokens; the text then alternates kept, noise, kept, noise, ...
**starting with kept tokens and ending with a noise span**. So the corrupted
input always ends with a sentinel (then EOS) and the target ends with the
tokens of the last span (then EOS). The paper's Figure 2, where the text ends
with kept words and the target with an extra sentinel, is an illustration;
this module does what the code does.
"""
from __future__ import annotations

import torch

__all__ = ["random_spans_noise_mask", "corrupt_spans", "span_corruption", "reassemble_spans", "sentinel_id"]


def sentinel_id(k: int, vocab_size: int) -> int:
    """The id that replaces the k-th span (k = 0, 1, ...): ``vocab_size - 1 - k``.

    >>> sentinel_id(0, 32100), sentinel_id(1, 32100)      # <extra_id_0>, <extra_id_1> in T5's vocabulary
    (32099, 32098)
    """
    if not isinstance(k, int) or k < 0 or k >= vocab_size:
        raise ValueError(f"k must be an int in [0, vocab_size={vocab_size}), got {k!r}")
    return vocab_size - 1 - k


def _check_tokens(tokens) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.is_floating_point() \
            or tokens.dtype == torch.bool:
        raise ValueError("tokens must be a 1-D integer torch.Tensor of token ids (T,)")
    return tokens.long()


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator | None) -> torch.Tensor:
    """Split `num_items` items into `num_segments` non-empty runs at random; return the run lengths.

    Of the num_items - 1 places between two items, num_segments - 1 are chosen
    uniformly without replacement as cuts (T5 shuffles a 0/1 vector; the same).
    """
    is_cut = torch.zeros(num_items - 1, dtype=torch.long)
    is_cut[torch.randperm(num_items - 1, generator=generator)[:num_segments - 1]] = 1
    segment_id = torch.cat([torch.zeros(1, dtype=torch.long), is_cut.cumsum(0)])   # (num_items,)
    return torch.bincount(segment_id, minlength=num_segments)                      # (num_segments,)


def random_spans_noise_mask(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """A (length,) bool mask, True = noise: kept and noise spans alternate, kept first, noise last.

    >>> m = random_spans_noise_mask(20, generator=torch.Generator().manual_seed(0))
    >>> m.int().tolist(), int(m.sum())                  # round(20 * 0.15) = 3 noise tokens, in 1 span
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1], 3)
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if not 0.0 <= noise_density < 1.0:
        raise ValueError(f"noise_density must be in [0, 1), got {noise_density!r}")
    if not mean_noise_span_length >= 1.0:
        raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}")
    if noise_density == 0.0:
        return torch.zeros(length, dtype=torch.bool)
    orig_length, length = length, max(length, 2)           # T5: a 1-token text is treated as 2 long
    # T5 computes these in float32 and rounds half to even (torch.round does the same).
    f32 = torch.float32
    num_noise = int(torch.round(torch.tensor(length, dtype=f32) * torch.tensor(noise_density, dtype=f32)))
    num_noise = min(max(num_noise, 1), length - 1)          # at least one noise and one kept token
    num_spans = int(torch.round(torch.tensor(num_noise, dtype=f32) / torch.tensor(mean_noise_span_length, dtype=f32)))
    num_spans = max(num_spans, 1)
    num_kept = length - num_noise
    # T5's code assumes num_spans <= num_kept (true unless the density is near 1); keep it true.
    num_spans = min(num_spans, num_kept)

    noise_lengths = _random_segmentation(num_noise, num_spans, generator)      # (S,)
    kept_lengths = _random_segmentation(num_kept, num_spans, generator)        # (S,)
    interleaved = torch.stack([kept_lengths, noise_lengths], dim=1).reshape(-1)   # kept, noise, kept, ...
    span_index = torch.repeat_interleave(torch.arange(2 * num_spans), interleaved)  # (length,)
    is_noise = span_index % 2 == 1
    return is_noise[:orig_length]


def corrupt_spans(tokens: torch.Tensor, noise_mask: torch.Tensor, vocab_size: int,
                  eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each noise span by one sentinel in the input; keep only the spans, each after its sentinel, in the target.

    The k-th noise span (from the left) gets sentinel ``vocab_size - 1 - k`` in
    both. If `eos_id` is given it is appended to both. Ordinary tokens must lie
    below the sentinels in use (< vocab_size - number of spans).

    >>> tokens = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17])
    >>> noise = torch.tensor([0, 0, 1, 1, 0, 0, 0, 1]).bool()
    >>> corrupt_spans(tokens, noise, vocab_size=100, eos_id=1)
    (tensor([10, 11, 99, 14, 15, 16, 98,  1]), tensor([99, 12, 13, 98, 17,  1]))
    """
    tokens = _check_tokens(tokens)
    if not isinstance(noise_mask, torch.Tensor) or noise_mask.dtype != torch.bool or noise_mask.shape != tokens.shape:
        raise ValueError(f"noise_mask must be a bool tensor of the same shape as tokens {tuple(tokens.shape)}")
    prev_noise = torch.cat([noise_mask.new_zeros(1), noise_mask[:-1]])          # (T,)
    span_starts = noise_mask & ~prev_noise                                      # first token of each noise span
    num_spans = int(span_starts.sum())
    if not isinstance(vocab_size, int) or vocab_size <= num_spans:
        raise ValueError(f"vocab_size must be an int > the number of spans ({num_spans}), got {vocab_size!r}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size - num_spans):
        raise ValueError(f"tokens must lie in [0, vocab_size - spans = {vocab_size - num_spans}) so that no "
                         f"token is mistaken for a sentinel; got values up to {int(tokens.max())}")
    eos = [] if eos_id is None else [eos_id]
    inputs, targets = [], []
    span = -1
    for token, noise, start in zip(tokens.tolist(), noise_mask.tolist(), span_starts.tolist()):
        if start:                                      # a new gap: one sentinel in each sequence
            span += 1
            inputs.append(vocab_size - 1 - span)
            targets.append(vocab_size - 1 - span)
        if noise:
            targets.append(token)                      # dropped from the input, wanted in the target
        else:
            inputs.append(token)
    as_tensor = lambda ids: torch.tensor(ids + eos, dtype=torch.long, device=tokens.device)  # noqa: E731
    return as_tensor(inputs), as_tensor(targets)


def span_corruption(tokens: torch.Tensor, vocab_size: int, eos_id: int | None, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's objective on one text: a random noise mask, then sentinels; returns (input_ids, target_ids).

    >>> inp, tgt = span_corruption(torch.arange(2, 22), vocab_size=100, eos_id=1,
    ...                            generator=torch.Generator().manual_seed(0))
    >>> inp.tolist()
    [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 99, 1]
    >>> tgt.tolist()
    [99, 19, 20, 21, 1]
    """
    tokens = _check_tokens(tokens)
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_noise_span_length, generator)
    return corrupt_spans(tokens, mask.to(tokens.device), vocab_size, eos_id)


def reassemble_spans(input_ids: torch.Tensor, target_ids: torch.Tensor, vocab_size: int,
                     eos_id: int | None = None) -> torch.Tensor:
    """Put the target's spans back into the input's gaps: the inverse of :func:`corrupt_spans`.

    >>> reassemble_spans(torch.tensor([10, 11, 99, 14, 15, 16, 98, 1]),
    ...                  torch.tensor([99, 12, 13, 98, 17, 1]), vocab_size=100, eos_id=1)
    tensor([10, 11, 12, 13, 14, 15, 16, 17])
    """
    inp, tgt = _check_tokens(input_ids).tolist(), _check_tokens(target_ids).tolist()
    if eos_id is not None:
        if not inp or not tgt or inp[-1] != eos_id or tgt[-1] != eos_id:
            raise ValueError(f"input_ids and target_ids must both end with eos_id = {eos_id}")
        inp, tgt = inp[:-1], tgt[:-1]
    # Cut the target into spans at its sentinels, which come in order: vocab_size - 1, - 2, ...
    spans: list[list[int]] = []
    for token in tgt:
        if token == vocab_size - 1 - len(spans):
            spans.append([])
        elif not spans:
            raise ValueError("target_ids must start with the first sentinel, vocab_size - 1")
        else:
            spans[-1].append(token)
    out, k = [], 0
    for token in inp:
        if k < len(spans) and token == vocab_size - 1 - k:
            out.extend(spans[k])
            k += 1
        else:
            out.append(token)
    if k != len(spans):
        raise ValueError(f"input_ids has {k} sentinels but target_ids has {len(spans)} spans")
    return torch.tensor(out, dtype=torch.long, device=input_ids.device)
