"""Supervised fine-tuning: language modelling with the loss on the responses only.

    messages --render_segments--> (text, is_response) pieces --tokenize--> input_ids
                                                                           labels = ids on responses, -100 elsewhere
    rows: padded (pad_batch) or packed (pack: several conversations per row,
          attention and positions reset at each boundary)
    loss: cross-entropy of logits[:, t] against labels[:, t + 1], mean over labelled tokens
    step: gradient accumulation over padded micro-batches (sft_step): each micro-batch's summed
          token loss / the response tokens of the WHOLE optimizer step, so the split does not matter

Labels are aligned with ``input_ids`` (Hugging Face's convention); :func:`sft_loss`
shifts them. ``-100`` marks tokens that carry no loss.

Packing uses :func:`plmkit.nn.build_attention_mask` with ``segment_ids`` (through the
model's ``segment_ids=`` argument) and ``position_ids`` restarting at 0 for each
conversation, so a packed row computes exactly what its conversations would
compute one by one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .chat import END_OF_TURN, render, render_segments

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "encode_conversation", "sft_loss", "pad_batch", "pack", "sft_loss_fn", "sft_step",
           "finetune_accumulated",
           "extract_answer", "exact_match", "answer", "answer_batch", "finetune", "qa_accuracy"]


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` for a `tokenizers.Tokenizer` or a transformers tokenizer (no special tokens added)."""
    out = tokenizer.encode(text, add_special_tokens=False)
    return list(out.ids) if hasattr(out, "ids") else list(out)


def encode_conversation(tokenizer, messages: list[dict], *, response_only: bool = True,
                        add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation.

    response_only=True: labels are the ids of every assistant turn's content and
    its end-of-turn token, -100 elsewhere; False: labels = input_ids everywhere
    (the model also learns to write the user's turns).
    Each piece of :func:`render_segments` is tokenized on its own: with the
    chapter's tokenizer (special tokens split off, whitespace dropped) this
    equals tokenizing the whole rendered text, which the tests check.
    """
    if not isinstance(response_only, bool):
        raise ValueError(f"response_only must be a bool, got {response_only!r}")
    ids, labels = [], []
    for text, is_response in render_segments(messages, add_generation_prompt):
        piece = _ids(tokenizer, text)
        ids += piece
        labels += piece if (is_response or not response_only) else [IGNORE_INDEX] * len(piece)
    return ids, labels


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) at t against labels (B, T) at t + 1, ignoring -100.

    reduction="mean": one scalar, the mean over labelled tokens (0 when there is none);
    "none": per-token losses (B, T - 1), 0 where the label is -100.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and labels (B, T) with the same B, T; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    pred, target = logits[:, :-1], labels[:, 1:]
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()                                  # the softmax in float32 under autocast
    per_token = F.cross_entropy(pred.reshape(-1, pred.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX,
                                reduction="none").view(target.shape)
    if reduction == "none":
        return per_token
    n = (target != IGNORE_INDEX).sum()
    return per_token.sum() / n.clamp(min=1)


def _check_examples(examples) -> None:
    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError("examples must be a non-empty list of (input_ids, labels) pairs")
    for i, (ids, labels) in enumerate(examples):
        if len(ids) != len(labels) or not ids:
            raise ValueError(f"examples[{i}]: input_ids and labels must be non-empty and of equal length, "
                             f"got {len(ids)} and {len(labels)}")


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into input_ids, labels (-100 on padding) and attention_mask, each (B, T_max)."""
    _check_examples(examples)
    T = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    for b, (ids, lab) in enumerate(examples):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(ids)] = torch.tensor(lab)
        attention_mask[b, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def pack(examples: list[tuple[list[int], list[int]]], max_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pack examples, in order, into rows of `max_length` tokens (a new row when the next does not fit).

    Returns (R, max_length) tensors:
      input_ids     the examples back to back, then pad_id
      labels        each example's labels with its FIRST label set to -100 (the previous
                    example's last token must not learn to predict it); -100 on padding
      position_ids  0, 1, 2, ... restarting at each example
      segment_ids   1, 2, ... per example within a row; 0 for the padding at the end
    """
    _check_examples(examples)
    if not isinstance(max_length, int) or max_length < max(len(ids) for ids, _ in examples):
        raise ValueError(f"max_length must be an int >= the longest example "
                         f"({max(len(ids) for ids, _ in examples)}), got {max_length!r}")
    rows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for ex in examples:
        if used + len(ex[0]) > max_length:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += len(ex[0])
    R = len(rows)
    out = {"input_ids": torch.full((R, max_length), pad_id, dtype=torch.long),
           "labels": torch.full((R, max_length), IGNORE_INDEX, dtype=torch.long),
           "position_ids": torch.zeros(R, max_length, dtype=torch.long),
           "segment_ids": torch.zeros(R, max_length, dtype=torch.long)}
    for r, row in enumerate(rows):
        start = 0
        for s, (ids, lab) in enumerate(row, start=1):
            end = start + len(ids)
            out["input_ids"][r, start:end] = torch.tensor(ids)
            out["labels"][r, start + 1:end] = torch.tensor(lab[1:], dtype=torch.long)
            out["position_ids"][r, start:end] = torch.arange(len(ids))
            out["segment_ids"][r, start:end] = s
            start = end
        out["position_ids"][r, start:] = torch.arange(max_length - start)
    return out


def sft_loss_fn(model, batch: dict[str, torch.Tensor]):
    """The Trainer's loss_fn for SFT: (mean response loss, {"tokens": labelled tokens in the batch}).

    `batch` is :func:`pad_batch`'s or :func:`pack`'s dict; the keys the model
    takes besides input_ids (attention_mask, position_ids, segment_ids) are passed on.
    """
    kwargs = {k: batch[k] for k in ("attention_mask", "position_ids", "segment_ids") if k in batch}
    logits = model(batch["input_ids"], **kwargs)
    labels = batch["labels"]
    return sft_loss(logits, labels), {"tokens": (labels[:, 1:] != IGNORE_INDEX).sum().float()}


def sft_step(model, optimizer, micro_batches: list[list[tuple[list[int], list[int]]]], pad_id: int) -> float:
    """One optimizer step of SFT over gradient-accumulation micro-batches; returns the step's loss.

    Each micro-batch is a list of (input_ids, labels) examples (:func:`encode_conversation`'s
    pairs), right-padded with :func:`pad_batch`. The loss is normalised over the WHOLE step:

        loss = (sum of -log p over every response token of every micro-batch) / N,
        N    = response tokens of the whole step (labels[:, 1:] != -100, summed over micro-batches)

    so the step's gradient is that of one big batch of all the examples, however they are split.
    Each micro-batch back-propagates its own token-loss sum divided by N; the gradients add up,
    then one ``optimizer.step()`` and ``optimizer.zero_grad()``. This is the normalisation
    Hugging Face's Trainer adopted in 2024 (``num_items_in_batch``); before, it averaged each
    micro-batch's mean, which over-weights the tokens of micro-batches with few response tokens:

        micro-batch 1: 1 response token, loss 2.0; micro-batch 2: 3 tokens, loss 1.0 each
        sft_step:              (2.0 + 3 * 1.0) / 4     = 1.25   (every token weighs 1/4)
        mean of the two means: (2.0 / 1 + 3.0 / 3) / 2 = 1.5    (the lone token weighs 1/2)
    """
    if not isinstance(micro_batches, (list, tuple)) or not micro_batches:
        raise ValueError("micro_batches must be a non-empty list of micro-batches (lists of (input_ids, labels))")
    if not isinstance(pad_id, int) or isinstance(pad_id, bool) or pad_id < 0:
        raise ValueError(f"pad_id must be an int >= 0, got {pad_id!r}")
    batches = [pad_batch(mb, pad_id) for mb in micro_batches]            # each (B_k, T_k)
    n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    if n == 0:
        raise ValueError("micro_batches hold no response token (every label is -100)")
    total = 0.0
    for b in batches:
        logits = model(b["input_ids"], attention_mask=b["attention_mask"])           # (B_k, T_k, V)
        summed = sft_loss(logits, b["labels"], reduction="none").sum()               # sum over response tokens
        (summed / n).backward()
        total += float(summed.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / n


def finetune_accumulated(model, tokenizer, conversations: list[list[dict]], *, step=None, epochs: float = 1.0,
                         lr: float = 2e-3, micro_batch_size: int = 16, accumulation: int = 2, seed: int = 0,
                         warmup_steps: int = 4) -> list[float]:
    """SFT with padded micro-batches and gradient accumulation; returns the loss of every optimizer step.

    Each epoch shuffles the conversations (with `seed`) and cuts them into micro-batches of
    `micro_batch_size`, `accumulation` of them per optimizer step, each step one call of
    ``step(model, optimizer, micro_batches, pad_id)`` (default :func:`sft_step`; the chapter
    passes the learner's). AdamW at `lr` after a linear warm-up, decaying linearly to 0.
    """
    import random

    if not conversations:
        raise ValueError("conversations must be a non-empty list")
    for name, v in (("micro_batch_size", micro_batch_size), ("accumulation", accumulation)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    step = step or sft_step
    pad_id = tokenizer.token_to_id("<pad>")
    examples = [encode_conversation(tokenizer, c) for c in conversations]
    per_step = micro_batch_size * accumulation
    steps = max(1, round(epochs * len(examples) / per_step))
    rng = random.Random(seed)
    order: list[int] = []
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup_steps, max(0.0, (steps - s) / max(1, steps - warmup_steps))))
    torch.manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        while len(order) < per_step:
            more = list(range(len(examples)))
            rng.shuffle(more)
            order += more
        chosen, order = order[:per_step], order[per_step:]
        micro = [[examples[i] for i in chosen[k:k + micro_batch_size]] for k in range(0, per_step, micro_batch_size)]
        losses.append(float(step(model, optimizer, micro, pad_id)))
        sched.step()
    model.eval()
    return losses


# ----------------------------------------------------------------------------- answers

def extract_answer(generated: list[int], end_id: int) -> list[int]:
    """The generated ids up to (not including) the first end-of-turn id; all of them if there is none."""
    out = []
    for t in generated:
        if t == end_id:
            break
        out.append(int(t))
    return out


def exact_match(predictions: list[str], answers: list[str]) -> float:
    """Fraction of predictions equal to their answer after stripping and collapsing whitespace."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"predictions and answers must be non-empty and of equal length, got "
                         f"{len(predictions)} and {len(answers)}")
    norm = lambda s: " ".join(s.split())                                         # noqa: E731
    return sum(norm(p) == norm(a) for p, a in zip(predictions, answers)) / len(answers)


@torch.no_grad()
def answer_batch(model, tokenizer, questions: list[str], max_new_tokens: int = 8,
                 system: str | None = None) -> list[str]:
    """Greedy answers to single-turn questions, each wrapped in the chat template, cut at <|end|>."""
    from ..generate import generate

    end_id = tokenizer.token_to_id(END_OF_TURN)
    prompts = []
    for q in questions:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
        prompts.append(_ids(tokenizer, render(messages, add_generation_prompt=True)))
    was = model.training
    model.eval()
    out = generate(model, prompts, max_new_tokens, temperature=0, stop_tokens=end_id,
                   pad_token_id=tokenizer.token_to_id("<pad>"))
    model.train(was)
    return [tokenizer.decode(extract_answer(o[len(p):], end_id)) for o, p in zip(out, prompts)]


def answer(model, tokenizer, question: str, max_new_tokens: int = 8) -> str:
    """The greedy answer to one question (see :func:`answer_batch`)."""
    return answer_batch(model, tokenizer, [question], max_new_tokens)[0]


# ----------------------------------------------------------------------------- the whole recipe

def finetune(model, tokenizer, conversations: list[list[dict]], *, epochs: float = 3.0, lr: float = 1e-3,
             rows_per_batch: int = 16, max_length: int = 128, response_only: bool = True, seed: int = 0,
             weight_decay: float = 0.0, progress: bool = False):
    """Supervised fine-tuning of `model` on `conversations` with the chapter-4 Trainer; returns the Trainer.

    Each epoch shuffles the conversations (with `seed`), packs them into rows of
    `max_length` tokens and walks through the rows `rows_per_batch` at a time.
    Only parameters with ``requires_grad`` train (so a model with LoRA adapters
    trains only its adapters). Warm-up over the first 5% of steps, then cosine decay.
    """
    import random

    from ..train import Trainer

    if not conversations:
        raise ValueError("conversations must be a non-empty list")
    if not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    pad_id = tokenizer.token_to_id("<pad>")
    examples = [encode_conversation(tokenizer, c, response_only=response_only) for c in conversations]
    rng = random.Random(seed)

    def batches():
        while True:
            order = list(range(len(examples)))
            rng.shuffle(order)
            packed = pack([examples[i] for i in order], max_length, pad_id)
            R = packed["input_ids"].shape[0]
            n = min(rows_per_batch, R)                 # fewer rows than a batch: one smaller batch, not none
            for s in range(0, R - n + 1, n):
                yield {k: v[s:s + n] for k, v in packed.items()}

    rows = pack(examples, max_length, pad_id)["input_ids"].shape[0]
    steps = max(1, round(epochs * rows / rows_per_batch))
    stream = batches()
    torch.manual_seed(seed)
    trainer = Trainer(model, lambda: next(stream), max_steps=steps, loss_fn=sft_loss_fn, lr=lr,
                      warmup_steps=max(1, steps // 20), weight_decay=weight_decay, device="cpu", precision="fp32",
                      progress=progress, log_every=max(1, steps // 20))
    trainer.fit()
    model.eval()
    return trainer


def qa_accuracy(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 256) -> float:
    """Exact-match accuracy of greedy chat answers on (question, answer) pairs."""
    predictions = []
    for s in range(0, len(pairs), batch_size):
        predictions += answer_batch(model, tokenizer, [q for q, _ in pairs[s:s + batch_size]])
    return exact_match(predictions, [a for _, a in pairs])
