"""BART's denoising objectives: corrupt the text, ask the decoder for the *whole* original back.

Lewis et al. (2020) pre-train an encoder-decoder as a denoising autoencoder.
Unlike T5, whose target holds only the dropped spans, BART's target is the
complete, uncorrupted text. Of the corruptions the paper compares, two made
the final recipe:

    text_infilling         spans with lengths ~ Poisson(3) cover 30% of the tokens;
                           each span becomes ONE mask token, so the model must also
                           work out how many tokens are missing. A length-0 span
                           inserts a mask where nothing is missing.
    sentence_permutation   the sentences of a document are shuffled.

Both return ``(input_ids, target_ids)`` for one text (a 1-D tensor of ids).

Where spans go: the paper does not pin that down; fairseq samples start
positions and lets spans run into each other. Here the spans are laid into
the gaps between the kept tokens, so spans never overlap and the number of
mask tokens equals the number of spans drawn (two spans in the same gap give
two adjacent masks). The masked fraction is exactly ``ceil(mask_ratio * T)``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from .span import _check_tokens

__all__ = ["text_infilling", "sentence_permutation"]


def _poisson_span_lengths(budget: int, poisson_lambda: float, generator: torch.Generator | None) -> list[int]:
    """Draw Poisson span lengths until they cover `budget` tokens; cut the last so they sum to it exactly."""
    lengths: list[int] = []
    while sum(lengths) < budget:
        draw = int(torch.poisson(torch.tensor([poisson_lambda]), generator=generator))
        lengths.append(min(draw, budget - sum(lengths)))
    return lengths


def text_infilling(tokens: torch.Tensor, mask_id: int, mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BART text infilling: ``ceil(mask_ratio * T)`` tokens in Poisson-length spans, one mask per span.

    Returns (input_ids, target_ids); the target is the original text.

    >>> inp, tgt = text_infilling(torch.arange(10, 30), mask_id=4, generator=torch.Generator().manual_seed(3))
    >>> inp.tolist()        # 6 of 20 tokens gone in spans of 0 (before 12), 2, 3 and 1 tokens
    [10, 11, 4, 12, 13, 14, 15, 16, 17, 4, 20, 4, 24, 25, 26, 4, 28, 29]
    >>> torch.equal(tgt, torch.arange(10, 30))
    True
    """
    tokens = _check_tokens(tokens)
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio!r}")
    if not poisson_lambda > 0:
        raise ValueError(f"poisson_lambda must be > 0, got {poisson_lambda!r}")
    if not isinstance(mask_id, int) or (tokens == mask_id).any():
        raise ValueError(f"mask_id must be an int that does not occur in tokens, got {mask_id!r}")
    T = len(tokens)
    budget = math.ceil(mask_ratio * T)
    lengths = _poisson_span_lengths(budget, poisson_lambda, generator)        # sum == budget
    # Each span goes into one of the T - budget + 1 gaps around the kept tokens (before the first,
    # between two, after the last); gaps are drawn with replacement and visited left to right.
    gaps = torch.randint(T - budget + 1, (len(lengths),), generator=generator).sort().values.tolist()
    out, src, span = [], 0, 0
    for gap in range(T - budget + 1):
        while span < len(lengths) and gaps[span] == gap:
            out.append(mask_id)                       # one mask for the whole span ...
            src += lengths[span]                      # ... which swallows `length` original tokens
            span += 1
        if src < T:
            out.append(int(tokens[src]))              # the next kept token
            src += 1
    return torch.tensor(out, dtype=torch.long, device=tokens.device), tokens.clone()


def sentence_permutation(tokens: torch.Tensor, end_ids: Iterable[int],
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the sentences of a text; a sentence ends after any token in `end_ids` (e.g. a full stop).

    Trailing tokens with no end token form a last sentence. Returns
    (input_ids, target_ids); the target is the original text.

    >>> tokens = torch.tensor([5, 6, 0, 7, 0, 8, 9, 0])          # three sentences ending in 0
    >>> sentence_permutation(tokens, end_ids=[0], generator=torch.Generator().manual_seed(1))[0]
    tensor([7, 0, 8, 9, 0, 5, 6, 0])
    """
    tokens = _check_tokens(tokens)
    ends = torch.tensor(sorted(set(int(e) for e in end_ids)), dtype=torch.long)
    if ends.numel() == 0:
        raise ValueError("end_ids must name at least one sentence-ending token id")
    is_end = torch.isin(tokens.cpu(), ends).tolist()
    sentences, current = [], []
    for token, end in zip(tokens.tolist(), is_end):
        current.append(token)
        if end:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    order = torch.randperm(len(sentences), generator=generator).tolist()
    shuffled = [t for i in order for t in sentences[i]]
    return torch.tensor(shuffled, dtype=torch.long, device=tokens.device), tokens.clone()
