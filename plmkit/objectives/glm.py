"""GLM's autoregressive blank infilling (Du et al., 2022): spans out, then written back one token at a time.

GLM takes span corruption and runs it on ONE Transformer stack. The text is cut
in two parts:

* **Part A**, the corrupted text: every sampled span replaced by one ``[MASK]``.
* **Part B**, the spans themselves (in a shuffled order), each behind a start
  token ``[S]``; the model writes each span and ends it with ``[E]``.

The single stack reads A + B under one mask: Part A tokens see all of Part A
(bidirectional, like BERT) and nothing of B; a Part B token sees all of Part A
and the Part B tokens up to itself (causal, like GPT). That is exactly the
prefix LM's mask with Part A as the prefix (:func:`plmkit.objectives.prefix_lm_mask`);
what GLM changes is what follows the prefix (the shuffled spans, not the rest of
the text) and the positions.

Positions are **2-D**: position 1 is the place in the corrupted text (for a
Part B token, the place of its span's ``[MASK]``), position 2 the place inside
the span (0 in Part A, 1, 2, ... from ``[S]`` on). So the model knows which gap
it is filling, but not how long the span is.

Figure 2 of the paper, x1..x6 with spans [x3] and [x5, x6] (positions counted
from 0 here, from 1 in the paper)::

    input      x1 x2 [M] x4 [M] | [S] x5 x6 [S] x3
    position 1  0  1  2  3  4   |  4  4  4   2  2
    position 2  0  0  0  0  0   |  1  2  3   1  2
    target      -  -  -  -  -   |  x5 x6 [E] x3 [E]

    >>> ids, labels, pos, mask = blank_infilling(torch.tensor([11, 12, 13, 14, 15, 16]), [(4, 6), (2, 3)],
    ...                                          mask_id=1, start_id=2, end_id=3)
    >>> ids.tolist(), labels.tolist()
    ([11, 12, 1, 14, 1, 2, 15, 16, 2, 13], [-100, -100, -100, -100, -100, 15, 16, 3, 13, 3])
    >>> pos.tolist()
    [[0, 1, 2, 3, 4, 4, 4, 4, 2, 2], [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]]
"""
from __future__ import annotations

import torch

from .mlm import IGNORE_INDEX

__all__ = ["blank_infilling", "glm_attention_mask"]


def _check_spans(spans, T: int) -> list[tuple[int, int]]:
    if not isinstance(spans, (list, tuple)):
        raise ValueError("spans must be a list of (start, end) pairs, end exclusive")
    out = []
    for s in spans:
        if (not isinstance(s, (list, tuple)) or len(s) != 2 or not all(isinstance(v, int) for v in s)
                or not 0 <= s[0] < s[1] <= T):
            raise ValueError(f"each span must be a pair of ints (start, end) with 0 <= start < end <= "
                             f"len(tokens) = {T}, got {s!r}")
        out.append((int(s[0]), int(s[1])))
    ordered = sorted(out)
    for (a0, a1), (b0, b1) in zip(ordered, ordered[1:]):
        if b0 < a1:
            raise ValueError(f"spans must not overlap: {(a0, a1)} and {(b0, b1)}")
    return out


def glm_attention_mask(len_a: int, len_b: int) -> torch.Tensor:
    """(L, L) bool, L = len_a + len_b, indexed [query, key]: True where the query may read the key.

    Keys in Part A are open to every query; keys in Part B only to Part B queries at or after them.

    >>> glm_attention_mask(2, 2).int().tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    """
    for name, v in (("len_a", len_a), ("len_b", len_b)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    L = len_a + len_b
    q = torch.arange(L)[:, None]                      # (L, 1) query positions
    k = torch.arange(L)[None, :]                      # (1, L) key positions
    return (k < len_a) | ((q >= len_a) & (k <= q))


def blank_infilling(tokens: torch.Tensor, spans, mask_id: int, start_id: int, end_id: int,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GLM's input for one text: (input_ids (L,), labels (L,), position_ids (2, L), attention mask (L, L)).

    `spans`: (start, end) pairs, end exclusive, non-overlapping, in the order Part B writes them (GLM
    shuffles them; pass them shuffled). Part A keeps the text with one `mask_id` per span; Part B holds,
    per span, `start_id` and the span's tokens. `labels` is -100 on Part A; on Part B each position is
    scored on the next token of its span, the last one on `end_id`. The mask is `glm_attention_mask`.
    See the module docstring for the paper's example.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.is_floating_point() \
            or tokens.dtype == torch.bool:
        raise ValueError("tokens must be a 1-D integer torch.Tensor of token ids (T,)")
    spans = _check_spans(spans, tokens.numel())
    ids = tokens.tolist()
    starts = {s: e for s, e in spans}
    part_a, mask_at = [], {}                        # mask_at: span start -> its [MASK]'s place in Part A
    i = 0
    while i < len(ids):
        if i in starts:
            mask_at[i] = len(part_a)
            part_a.append(mask_id)
            i = starts[i]
        else:
            part_a.append(ids[i])
            i += 1
    part_b, labels_b, pos1_b, pos2_b = [], [], [], []
    for s, e in spans:
        span = ids[s:e]
        part_b += [start_id] + span                 # [S] x_s .. x_{e-1}
        labels_b += span + [end_id]                 # each position predicts the next; the last, [E]
        pos1_b += [mask_at[s]] * (len(span) + 1)    # where the gap is in Part A
        pos2_b += list(range(1, len(span) + 2))     # 1 .. len + 1 inside the span
    A, B = len(part_a), len(part_b)
    dev = tokens.device
    input_ids = torch.tensor(part_a + part_b, dtype=torch.long, device=dev)
    labels = torch.tensor([IGNORE_INDEX] * A + labels_b, dtype=torch.long, device=dev)
    position_ids = torch.tensor([list(range(A)) + pos1_b, [0] * A + pos2_b], dtype=torch.long, device=dev)
    return input_ids, labels, position_ids.view(2, A + B), glm_attention_mask(A, B).to(dev)
