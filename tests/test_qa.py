"""Extractive QA: plmkit's head, loss and span read-out against Hugging Face and brute force."""
import itertools

import pytest
import torch

from plmkit.models.bert import BertForQuestionAnswering
from plmkit.objectives import best_span, qa_loss

import transformers  # a missing reference library fails the run; it never skips

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=24, type_vocab_size=2)


def test_qa_head_and_loss_match_hugging_face(tmp_path):
    torch.manual_seed(3)
    hf = transformers.BertForQuestionAnswering(transformers.BertConfig(**TINY, num_labels=2))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    hf.eval().save_pretrained(tmp_path)
    ours = BertForQuestionAnswering.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 99, (4, 13), generator=g)
    types = (torch.arange(13) >= 5).long().expand(4, -1)                 # question 0-4, passage 5-12
    starts = torch.tensor([6, 9, 12, 40])                                 # 40: out of range, ignored
    ends = torch.tensor([7, 11, 12, 41])
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, start_positions=starts, end_positions=ends)
        s, e = ours(ids, token_type_ids=types)
    assert torch.allclose(s, ref.start_logits, atol=1e-5) and torch.allclose(e, ref.end_logits, atol=1e-5)
    assert torch.allclose(qa_loss(s, e, starts, ends), ref.loss, atol=1e-6)


def brute_force(start, end, context, max_len):
    best, arg = -float("inf"), None
    T = len(start)
    for s, e in itertools.product(range(T), range(T)):
        if context[s] and context[e] and s <= e < s + max_len and start[s] + end[e] > best:
            best, arg = start[s] + end[e], (s, e)
    return arg


@pytest.mark.parametrize("seed", range(5))
def test_best_span_is_the_best_allowed_span(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 12
    start, end = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    q = torch.randint(2, 6, (B,), generator=g)                            # question length
    context = (torch.arange(T) > q[:, None]) & (torch.arange(T) < T - 1)  # [CLS] q [SEP] passage [SEP]
    for max_len in (1, 3, T):
        s, e = best_span(start, end, context, max_len)
        assert s.dtype == torch.int64 and s.shape == (B,)
        for b in range(B):
            assert (s[b].item(), e[b].item()) == brute_force(start[b].tolist(), end[b].tolist(),
                                                             context[b].tolist(), max_len)


def test_best_span_differs_from_independent_argmax():
    start = torch.tensor([[0.0, 0.0, 1.0, 9.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 8.0, 0.0, 0.0, 0.0]])
    ctx = torch.tensor([[0, 1, 1, 1, 1, 0]])
    s, e = best_span(start, end, ctx, 4)
    assert (s.item(), e.item()) == (2, 2)                # argmax start 3 > argmax end 2: not a span


def test_validation():
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="max_answer_len"):
        best_span(x, x, torch.ones(2, 5), 0)
    with pytest.raises(ValueError, match="context_mask"):
        best_span(x, x, torch.zeros(2, 5), 2)
    with pytest.raises(ValueError, match="context_mask"):
        best_span(x, x, torch.ones(2, 4), 2)
    with pytest.raises(ValueError, match="start_positions"):
        qa_loss(x, x, torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_qa_loss_is_the_mean_of_start_and_end_cross_entropy():
    s, e = torch.randn(3, 7), torch.randn(3, 7)
    a, b = torch.tensor([1, 2, 3]), torch.tensor([2, 2, 6])
    want = (torch.nn.functional.cross_entropy(s, a) + torch.nn.functional.cross_entropy(e, b)) / 2
    assert torch.allclose(qa_loss(s, e, a, b), want)
