"""Encoder-decoder objectives: T5 span corruption, BART infilling and sentence permutation, the prefix-LM mask.

Outside references: the definitions of T5's `random_spans_noise_mask` recomputed
with numpy float32 (T5 rounds in float32, half to even), Hugging Face's
T5Tokenizer for where the sentinels live, the Poisson pmf, an explicit loop for
the prefix-LM mask, and Figure 2 of Du et al. (2022) for GLM's blank infilling.
"""
import collections
import doctest
import math

import numpy as np
import pytest
import torch

import plmkit.objectives.denoising as denoising
import plmkit.objectives.glm as glm
import plmkit.objectives.prefix as prefix
import plmkit.objectives.span as span
from plmkit.objectives import (corrupt_spans, prefix_lm_mask, random_spans_noise_mask, reassemble_spans,
                               sentence_permutation, sentinel_id, span_corruption, text_infilling)
from plmkit.objectives.denoising import _poisson_span_lengths

V, EOS = 1000, 1


def t5_counts(length, density=0.15, mean=3.0):
    """Noise tokens and spans as T5 defines them (float32, round half to even)."""
    L = max(length, 2)
    noise = int(np.round(np.float32(L) * np.float32(density)))
    noise = min(max(noise, 1), L - 1)
    spans = max(int(np.round(np.float32(noise) / np.float32(mean))), 1)
    return noise, spans


def runs(mask):
    """Lengths of the runs of True and of False, in order, as two lists."""
    true, false, prev, n = [], [], None, 0
    for m in mask.tolist() + [None]:
        if m != prev and prev is not None:
            (true if prev else false).append(n)
            n = 0
        prev, n = m, n + 1
    return true, false


@pytest.mark.parametrize("length", list(range(2, 120)) + [255, 256, 512, 1000])
def test_noise_mask_counts_follow_t5_definitions(length):
    g = torch.Generator().manual_seed(length)
    noise, spans = t5_counts(length)
    for _ in range(3):
        m = random_spans_noise_mask(length, generator=g)
        assert m.dtype == torch.bool and m.shape == (length,)
        noise_runs, kept_runs = runs(m)
        assert int(m.sum()) == noise
        assert len(noise_runs) == spans == len(kept_runs)     # alternate, one kept run before each span
        assert not m[0] and m[-1]                              # starts with kept tokens, ends with noise


def test_noise_mask_rounding_is_float32_half_to_even():
    # 10 * 0.15 = 1.5 in float64 rounds to 2 (half to even); 30 * 0.15 = 4.5 -> 4; 70 * 0.15 = 10.5 -> 10
    assert [int(random_spans_noise_mask(n).sum()) for n in (10, 30, 70)] == [t5_counts(n)[0] for n in (10, 30, 70)]
    assert int(random_spans_noise_mask(1).sum()) == 0                     # a 1-token text is treated as 2: kept first
    assert int(random_spans_noise_mask(50, noise_density=0.0).sum()) == 0


def test_noise_fraction_and_mean_span_length_over_many_samples():
    g = torch.Generator().manual_seed(0)
    noise = spans = total = 0
    for _ in range(300):
        L = int(torch.randint(100, 600, (1,), generator=g))
        m = random_spans_noise_mask(L, generator=g)
        noise, spans, total = noise + int(m.sum()), spans + len(runs(m)[0]), total + L
    assert abs(noise / total - 0.15) < 0.002
    assert abs(noise / spans - 3.0) < 0.05


def test_span_lengths_are_uniform_over_compositions():
    # 40 tokens: 6 noise tokens in 2 spans, 34 kept tokens in 2 runs; each split point equally likely
    g = torch.Generator().manual_seed(1)
    first_noise, first_kept = collections.Counter(), collections.Counter()
    n = 2500
    for _ in range(n):
        noise_runs, kept_runs = runs(random_spans_noise_mask(40, generator=g))
        first_noise[noise_runs[0]] += 1
        first_kept[kept_runs[0]] += 1
    assert sorted(first_noise) == [1, 2, 3, 4, 5] and sorted(first_kept) == list(range(1, 34))
    for k in range(1, 6):
        assert abs(first_noise[k] / n - 0.2) < 0.03            # ~4 standard errors
    assert max(first_kept.values()) / n < 0.06                 # 33 values, 1/33 ~ 0.03 each


def test_corrupt_spans_on_the_papers_sentence():
    words = "Thank you for inviting me to your party last week .".split()
    vocab = {w: i + 2 for i, w in enumerate(words)}
    ids = torch.tensor([vocab[w] for w in words])
    noise = torch.tensor([w in ("for", "inviting", "last") for w in words])
    inp, tgt = corrupt_spans(ids, noise, vocab_size=100, eos_id=EOS)
    name = {**{i: w for w, i in vocab.items()}, 99: "<X>", 98: "<Y>", 97: "<Z>", EOS: "</s>"}
    assert " ".join(name[i] for i in inp.tolist()) == "Thank you <X> me to your party <Y> week . </s>"
    assert " ".join(name[i] for i in tgt.tolist()) == "<X> for inviting <Y> last </s>"


def test_span_corruption_reassembles_exactly():
    g = torch.Generator().manual_seed(2)
    for trial in range(300):
        L = int(torch.randint(1, 200, (1,), generator=g))
        density = [0.15, 0.3, 0.5][trial % 3]
        tokens = torch.randint(2, V - 100, (L,), generator=g)
        inp, tgt = span_corruption(tokens, V, EOS, noise_density=density, mean_noise_span_length=2 + trial % 4,
                                   generator=g)
        assert inp.dtype == tgt.dtype == torch.long
        assert inp[-1] == EOS and tgt[-1] == EOS
        n_sent = int((inp >= V - 100).sum())
        if L == 1:                                      # T5 treats it as 2 tokens, kept then noise, and cuts it
            assert inp.tolist() == [int(tokens[0]), EOS] and tgt.tolist() == [EOS]
            continue
        assert inp.tolist().count(V - 1) == 1 and tgt[0] == V - 1
        assert [t for t in inp.tolist() if t >= V - 100] == [sentinel_id(k, V) for k in range(n_sent)]
        assert inp[-2] == V - n_sent and tgt[-2] < V - 100            # input ends with a sentinel, target not
        assert len(inp) + len(tgt) == L + 2 * n_sent + 2
        assert torch.equal(reassemble_spans(inp, tgt, V, EOS), tokens)


def test_sentinels_are_t5_tokenizers_extra_ids(tmp_path):
    from transformers import T5Tokenizer
    import sentencepiece as spm
    text = "the quick brown fox jumps over the lazy dog\n" * 50 + "pack my box with five dozen liquor jugs\n" * 50
    (tmp_path / "t.txt").write_text(text)
    spm.SentencePieceTrainer.train(input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "m"), vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tok = T5Tokenizer(str(tmp_path / "m.model"), extra_ids=10, legacy=True)
    for k in range(10):
        assert tok.convert_tokens_to_ids(f"<extra_id_{k}>") == sentinel_id(k, len(tok))
    ids = torch.tensor(tok("the lazy dog jumps over the quick brown fox", add_special_tokens=False).input_ids)
    inp, tgt = span_corruption(ids, len(tok), tok.eos_token_id, noise_density=0.3, generator=torch.Generator().manual_seed(0))
    assert "<extra_id_0>" in tok.decode(inp) and tok.decode(tgt).startswith("<extra_id_0>")
    assert tok.decode(inp).endswith("</s>") and tok.decode(tgt).endswith("</s>")


def test_span_functions_validate_input():
    with pytest.raises(ValueError, match="length"):
        random_spans_noise_mask(0)
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_noise_mask(10, noise_density=1.0)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        random_spans_noise_mask(10, mean_noise_span_length=0.5)
    with pytest.raises(ValueError, match="tokens"):
        span_corruption(torch.tensor([[1, 2]]), V, EOS)
    with pytest.raises(ValueError, match="sentinel"):                 # a token collides with a sentinel
        corrupt_spans(torch.tensor([5, 999, 7]), torch.tensor([False, False, True]), V)
    with pytest.raises(ValueError, match="noise_mask"):
        corrupt_spans(torch.tensor([5, 6]), torch.tensor([0, 1]), V)
    with pytest.raises(ValueError, match="eos_id"):
        reassemble_spans(torch.tensor([5, 999]), torch.tensor([999, 6]), V, eos_id=EOS)


def test_text_infilling_masks_exactly_the_budget_with_one_mask_per_span():
    g = torch.Generator().manual_seed(3)
    MASK = 3
    spans = masked = 0
    for _ in range(200):
        T = int(torch.randint(1, 300, (1,), generator=g))
        tokens = torch.arange(10, 10 + T)                              # distinct, increasing
        inp, tgt = text_infilling(tokens, MASK, generator=g)
        assert torch.equal(tgt, tokens)
        kept = inp[inp != MASK]
        assert len(kept) == T - math.ceil(0.3 * T)                     # 30% of the tokens gone, rounded up
        assert bool((kept[1:] > kept[:-1]).all())                      # kept tokens keep their order
        spans, masked = spans + int((inp == MASK).sum()), masked + math.ceil(0.3 * T)
    assert 2.7 < masked / spans < 3.1                                  # Poisson(3) lengths, last one trimmed


def test_poisson_span_lengths_follow_the_pmf():
    g = torch.Generator().manual_seed(4)
    lengths = []
    while len(lengths) < 20000:
        lengths += _poisson_span_lengths(10_000, 3.0, g)[:-1]          # the last one is trimmed: leave it out
    counts = collections.Counter(lengths)
    n = len(lengths)
    for k in range(8):
        pmf = math.exp(-3) * 3 ** k / math.factorial(k)
        assert abs(counts[k] / n - pmf) < 4 * math.sqrt(pmf * (1 - pmf) / n) + 1e-3, k
    assert counts[0] > 0                                                # zero-length spans (pure insertions) occur


def test_sentence_permutation_keeps_the_sentences():
    g = torch.Generator().manual_seed(5)
    END = 0
    seen = set()
    for _ in range(50):
        tokens = torch.randint(1, 6, (30,), generator=g)
        tokens[torch.randint(30, (5,), generator=g)] = END
        inp, tgt = sentence_permutation(tokens, [END], generator=g)
        assert torch.equal(tgt, tokens) and sorted(inp.tolist()) == sorted(tokens.tolist())

        def sentences(t):
            out, cur = [], []
            for x in t.tolist():
                cur.append(x)
                if x == END:
                    out.append(tuple(cur)); cur = []
            return out + ([tuple(cur)] if cur else [])
        assert sorted(sentences(tokens)) == sorted(sentences(inp)) or not tokens[-1] == END
    two = torch.tensor([7, 8, END, 9, END])
    for _ in range(20):
        seen.add(tuple(sentence_permutation(two, [END], generator=g)[0].tolist()))
    assert seen == {(7, 8, END, 9, END), (9, END, 7, 8, END)}                # both orders, nothing else
    with pytest.raises(ValueError, match="end_ids"):
        sentence_permutation(torch.arange(4), [])


def loop_prefix_mask(P, T):
    return torch.tensor([[k < P or k <= q for k in range(T)] for q in range(T)])


@pytest.mark.parametrize("P,T", [(0, 5), (2, 5), (5, 5), (1, 1), (3, 8)])
def test_prefix_lm_mask_matches_its_definition(P, T):
    m = prefix_lm_mask(P, T)
    assert m.dtype == torch.bool and torch.equal(m, loop_prefix_mask(P, T))
    if P == 0:
        assert torch.equal(m, torch.ones(T, T, dtype=torch.bool).tril())
    if P == T:
        assert m.all()


def test_prefix_lm_mask_batched_and_validated():
    P = torch.tensor([0, 3, 6])
    m = prefix_lm_mask(P, 6)
    assert m.shape == (3, 1, 6, 6)
    for b in range(3):
        assert torch.equal(m[b, 0], loop_prefix_mask(int(P[b]), 6))
    for bad in (-1, 7):
        with pytest.raises(ValueError, match="prefix_length"):
            prefix_lm_mask(bad, 6)
    with pytest.raises(ValueError, match="length"):
        prefix_lm_mask(0, 0)


@pytest.mark.parametrize("module", [span, denoising, prefix, glm])
def test_doctests(module):
    assert doctest.testmod(module, raise_on_error=False).failed == 0


# ---------------------------------------------------------------- GLM's autoregressive blank infilling

def test_blank_infilling_reproduces_figure_2_of_the_glm_paper():
    """Du et al. 2022, Figure 2: x1..x6, spans [x3] and [x5 x6], Part B writes [x5 x6] first.
    The paper's positions count from 1: Position 1 = 1 2 3 4 5 5 5 5 3 3, Position 2 = 0 0 0 0 0 1 2 3 1 2."""
    M, S, E = 101, 102, 103
    x = torch.tensor([1, 2, 3, 4, 5, 6])
    ids, labels, pos, mask = glm.blank_infilling(x, [(4, 6), (2, 3)], mask_id=M, start_id=S, end_id=E)
    assert ids.tolist() == [1, 2, M, 4, M, S, 5, 6, S, 3]
    assert (pos[0] + 1).tolist() == [1, 2, 3, 4, 5, 5, 5, 5, 3, 3]
    assert pos[1].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
    assert labels.tolist() == [-100] * 5 + [5, 6, E, 3, E]
    # Figure 2(d): Part A reads Part A only; Part B reads Part A and itself causally
    A = 5
    for q in range(10):
        for k in range(10):
            assert bool(mask[q, k]) == (k < A or (q >= A and k <= q)), (q, k)


def test_blank_infilling_parts_and_inverse():
    """Random texts and spans: Part A plus the spans give the text back; every Part B token's position 1
    points at its span's [MASK]; a correct label is the next token of the span."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        T = int(torch.randint(2, 30, (1,), generator=g))
        cuts = sorted(set(torch.randint(0, T + 1, (6,), generator=g).tolist()))
        spans = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]
        order = torch.randperm(len(spans), generator=g).tolist()
        spans = [spans[i] for i in order]
        x = torch.randint(10, 90, (T,), generator=g)
        ids, labels, pos, mask = glm.blank_infilling(x, spans, mask_id=1, start_id=2, end_id=3)
        A = T - sum(b - a for a, b in spans) + len(spans)
        assert ids.shape == labels.shape == (A + sum(b - a + 1 for a, b in spans),)
        assert torch.equal(mask, glm.glm_attention_mask(A, ids.numel() - A))
        assert (labels[:A] == -100).all() and pos[1, :A].eq(0).all() and torch.equal(pos[0, :A], torch.arange(A))
        # rebuild the text: replace each [MASK] by its span
        by_mask = {}
        j = A
        for a, b in spans:
            n = b - a
            assert ids[j] == 2 and pos[1, j:j + n + 1].tolist() == list(range(1, n + 2))
            assert labels[j:j + n + 1].tolist() == x[a:b].tolist() + [3]
            assert ids[pos[0, j]] == 1
            by_mask[int(pos[0, j])] = ids[j + 1:j + n + 1].tolist()
            j += n + 1
        rebuilt = []
        for i, t in enumerate(ids[:A].tolist()):
            rebuilt += by_mask[i] if i in by_mask else [t]
        assert rebuilt == x.tolist()


def test_glm_mask_limits_are_bert_and_prefix_lm():
    """No spans: the mask is BERT's (all True). One span at the end: GLM is a prefix LM over [A | B]."""
    x = torch.arange(10, 18)
    _, _, _, mask = glm.blank_infilling(x, [], 1, 2, 3)
    assert mask.all()
    ids, _, _, mask = glm.blank_infilling(x, [(5, 8)], 1, 2, 3)
    assert ids.numel() == 10 and torch.equal(mask, glm.glm_attention_mask(6, 4))
    # a prefix LM's prefix queries also read only the prefix: the very same pattern, prefix = Part A
    for A in range(0, 8):
        for B in range(0, 5):
            if A + B:
                assert torch.equal(glm.glm_attention_mask(A, B), prefix_lm_mask(A, A + B))


def test_blank_infilling_validates_input():
    x = torch.arange(5)
    for bad in ([(3, 2)], [(0, 6)], [(0, 3), (2, 4)], [(1,)], "01"):
        with pytest.raises(ValueError, match="span"):
            glm.blank_infilling(x, bad, 1, 2, 3)
    with pytest.raises(ValueError, match="tokens"):
        glm.blank_infilling(x.float(), [], 1, 2, 3)
    with pytest.raises(ValueError, match="len_a"):
        glm.glm_attention_mask(-1, 2)
