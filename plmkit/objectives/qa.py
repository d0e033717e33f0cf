"""Extractive question answering (抽取式问答): the answer is a span of the passage.

The model reads ``[CLS] question [SEP] passage [SEP]`` and gives every token a
start score and an end score (``BertForQuestionAnswering``). Training asks for
the true start and the true end (two cross-entropies, averaged: the loss of
BERT's SQuAD fine-tuning and of Hugging Face's ``BertForQuestionAnswering``);
reading the answer out picks the best span, not the best start and the best end
separately: the start must not come after the end, the span must be short, and
it must lie in the passage.

    >>> start = torch.tensor([[0.0, 5.0, 1.0, 0.0, 4.0]])
    >>> end = torch.tensor([[0.0, 0.0, 1.0, 6.0, 0.0]])
    >>> context = torch.tensor([[0, 0, 1, 1, 1]])            # positions 2-4 are the passage
    >>> best_span(start, end, context, max_answer_len=2)   # 1 is question; (4, 3) runs backwards
    (tensor([2]), tensor([3]))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def qa_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
            end_positions: torch.Tensor) -> torch.Tensor:
    """Mean of the start and the end cross-entropy: logits (B, T), positions (B,) → scalar.

    As in Hugging Face's ``BertForQuestionAnswering``, a position outside
    [0, T) is clamped to T and ignored (an answer cut off by truncation).
    """
    if start_logits.ndim != 2 or end_logits.shape != start_logits.shape:
        raise ValueError(f"start_logits and end_logits must both be (B, T); got {tuple(start_logits.shape)} "
                         f"and {tuple(end_logits.shape)}")
    B, T = start_logits.shape
    if start_positions.shape != (B,) or end_positions.shape != (B,):
        raise ValueError(f"start_positions and end_positions must be ({B},); got {tuple(start_positions.shape)} "
                         f"and {tuple(end_positions.shape)}")
    s = start_positions.clamp(0, T)                                  # T = "no answer here": ignored
    e = end_positions.clamp(0, T)
    return (F.cross_entropy(start_logits, s, ignore_index=T) + F.cross_entropy(end_logits, e, ignore_index=T)) / 2


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, context_mask: torch.Tensor,
              max_answer_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The span (s, e) maximising start_logits[s] + end_logits[e] in each row.

    Allowed: s <= e, e - s + 1 <= max_answer_len, and both s and e at passage
    positions (``context_mask`` 1 or True). Ties go to the first span in
    row-major order of (s, e). Returns (starts (B,), ends (B,)), int64.
    """
    if start_logits.ndim != 2 or end_logits.shape != start_logits.shape or context_mask.shape != start_logits.shape:
        raise ValueError(f"start_logits, end_logits and context_mask must all be (B, T); got "
                         f"{tuple(start_logits.shape)}, {tuple(end_logits.shape)}, {tuple(context_mask.shape)}")
    if not isinstance(max_answer_len, int) or isinstance(max_answer_len, bool) or max_answer_len < 1:
        raise ValueError(f"max_answer_len must be an int >= 1, got {max_answer_len!r}")
    ctx = context_mask.bool()
    if not bool(ctx.any(dim=1).all()):
        raise ValueError("context_mask must mark at least one passage position in every row")
    B, T = start_logits.shape
    scores = start_logits.double()[:, :, None] + end_logits.double()[:, None, :]      # (B, T, T): [s, e]
    i = torch.arange(T, device=start_logits.device)
    length = i[None, :] - i[:, None] + 1                                               # (T, T): e - s + 1
    ok = (length >= 1) & (length <= max_answer_len)                                    # s <= e, not too long
    ok = ok[None] & ctx[:, :, None] & ctx[:, None, :]                                  # both ends in the passage
    flat = scores.masked_fill(~ok, float("-inf")).reshape(B, T * T).argmax(dim=1)      # first maximum
    return flat // T, flat % T
