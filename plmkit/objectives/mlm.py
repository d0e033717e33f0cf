"""Masked language modelling (MLM): learn by filling in blanks.

BERT's pre-training task hides some tokens of a sentence and asks the model to
recover them from the context on BOTH sides. The recipe of Devlin et al. (2019):

1. select 15% of the positions at random, never a special token ([CLS], [SEP],
   [PAD], ...): those are the positions the loss is computed on;
2. of the selected positions, replace 80% with [MASK], 10% with a random token
   and leave 10% unchanged. Without the last two, the model would only ever
   have to predict at [MASK] and would see a token that never occurs when it
   is fine-tuned later (the pre-train/fine-tune mismatch);
3. the labels hold the original token at selected positions and -100
   (PyTorch's ``ignore_index``) everywhere else, so the loss skips them.

Static masking draws the masks once, when the data is prepared (BERT);
dynamic masking draws fresh ones every time a sequence is used (RoBERTa,
Liu et al. 2019). With this module both are one call: static masking calls
:func:`mask_tokens` once with a fixed ``generator`` and reuses the result,
dynamic masking calls it again for every batch.

Letters in the shape comments: B batch, T time (sequence length), V vocabulary.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from ..nn.validation import check_token_ids

__all__ = ["IGNORE_INDEX", "mask_tokens", "mlm_loss"]

IGNORE_INDEX = -100  # the label of a position the loss must skip (torch's default ignore_index)


def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt `input_ids` for MLM; return ``(masked_ids, labels)``.

    Each position whose token is not in `special_ids` is selected with
    probability `mlm_probability`. A selected token becomes `mask_token_id`
    with probability 0.8, a token drawn uniformly from ``range(vocab_size)``
    with probability 0.1, and stays itself with probability 0.1. `labels`
    holds the original token at selected positions and -100 elsewhere.
    `input_ids` is not modified. Pass a seeded `generator` to get the same
    masks again (static masking).

    The random numbers are drawn on the generator's device, or without a
    generator on `input_ids`' device: on a GPU nothing is drawn on the CPU,
    copied over, or read back (no host-device sync). A CPU generator with GPU
    ids draws on the CPU and copies, so it gives the same masks on every
    device.

    >>> ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102, 0]])  # [CLS] ... [SEP] [PAD]
    >>> g = torch.Generator().manual_seed(3)
    >>> masked, labels = mask_tokens(ids, mask_token_id=103, vocab_size=30522,
    ...                              special_ids=[0, 101, 102], mlm_probability=0.5, generator=g)
    >>> masked                  # 4 selected: three became [MASK]=103, one a random token (9651)
    tensor([[ 101,  103, 9651,  103,  103,  102,    0]])
    >>> labels                  # the loss is computed where labels != -100
    tensor([[-100, 7592, 2088, 2003, 2307, -100, -100]])
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError("input_ids must be an integer torch.Tensor of token ids (int64 or int32)")
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be between 0 and 1, got {mlm_probability}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id must be in [0, vocab_size={vocab_size}), got {mask_token_id}")
    check_token_ids(input_ids, vocab_size, "input_ids", "vocab_size")   # reads values only on the CPU
    device = input_ids.device
    draw_on = generator.device if generator is not None else device
    shape = input_ids.shape                                              # (B, T) or any shape

    def rand() -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=draw_on).to(device)

    special = torch.zeros(shape, dtype=torch.bool, device=device)
    for sid in special_ids:
        special |= input_ids == int(sid)

    # 1. Choose the positions to predict: 15% of the ordinary tokens.
    selected = (rand() < mlm_probability) & ~special                   # (B, T) bool
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # 2. Corrupt only the selected positions: 80% [MASK], 10% random, 10% kept.
    u = rand()                                                          # one draw decides the three cases
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype, device=draw_on)
    masked = torch.where(to_mask, mask_token_id, input_ids)             # torch.where, not masked[to_mask] = ...:
    masked = torch.where(to_random, random_ids.to(device), masked)      # boolean indexing syncs on a GPU
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the selected positions only (labels != -100).

    Unselected positions carry no information about the task (the model sees
    their token in its input), so they are left out of the average.

    >>> logits = torch.zeros(1, 3, 4)          # uniform over 4 tokens: loss log(4) wherever counted
    >>> logits[0, 0, 2] = 10.0                 # confident and right at position 0 ...
    >>> labels = torch.tensor([[2, -100, 1]])  # ... position 1 is not selected
    >>> round(mlm_loss(logits, labels).item(), 4)   # (~0.0005 + log 4) / 2
    0.6932
    """
    if logits.ndim < 2 or logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits must have shape labels.shape + (V,); got logits {tuple(logits.shape)} "
                         f"and labels {tuple(labels.shape)}")
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
