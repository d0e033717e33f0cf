"""Decoding against Hugging Face: the logits warpers, greedy search and beam search, on a tiny GPT;
cached, static-cache and recompute decoding against each other and against full forward passes."""
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from plmkit.generate import (CachedState, DecoderState, GenerateOutput, apply_temperature, beam_score,
                             beam_search_step, best_hypothesis, distinct_n, generate, positions_from_mask, sample_next,
                             temperature_softmax, top_k_filter, top_p_filter)
from plmkit.models import GPT, GPTConfig

V = 40


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random tiny GPT with peaked next-token distributions, and the same weights in HF's GPT2LMHeadModel."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(8)          # larger logits: less uniform, more varied decisions
    folder = tmp_path_factory.mktemp("gpt")
    model.save_pretrained(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    return model, hf


def prompts(seed, B=2, T=4):
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_generate(hf, x, **kw):
    return hf.generate(x, attention_mask=torch.ones_like(x), **kw)


# ----------------------------------------------------------------------------- filters

@pytest.mark.parametrize("k", [1, 3, 7, 40, 50])
def test_top_k_matches_transformers(k):
    logits = torch.randn(4, V)
    logits[0, :6] = 2.5                                         # ties at the k-th value are kept by both
    expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(top_k_filter(logits, k), expected)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.99, 1.0])
def test_top_p_matches_transformers(p):
    logits = torch.randn(6, V) * torch.tensor([0.3, 1.0, 2.0, 4.0, 8.0, 0.0])[:, None]   # flat to peaked, uniform
    expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(top_p_filter(logits, p), expected)


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    probs = torch.tensor([0.5, 0.3, 0.2])
    kept = top_p_filter(probs.log(), 0.6).isfinite()
    assert kept.tolist() == [True, True, False]
    assert top_p_filter(probs.log(), 0.81).isfinite().tolist() == [True, True, True]


def test_temperature_matches_transformers_and_greedy_limit():
    logits = torch.randn(3, V)
    for t in (0.3, 1.0, 2.5):
        assert torch.allclose(apply_temperature(logits, t), TemperatureLogitsWarper(t)(None, logits.clone()))
        assert torch.allclose(temperature_softmax(logits, t), torch.softmax(logits / t, -1))
    one_hot = temperature_softmax(logits, 0)
    assert torch.equal(one_hot.argmax(-1), logits.argmax(-1)) and torch.equal(one_hot.sum(-1), torch.ones(3))


def test_beam_search_step_is_a_global_top_n():
    sums = -torch.rand(2, 3) * 5
    nxt = torch.log_softmax(torch.randn(2, 3, 7), -1)
    scores, beam, tok = beam_search_step(sums, nxt, 5)
    for b in range(2):
        brute = sorted(((float(sums[b, k] + nxt[b, k, v]), k, v) for k in range(3) for v in range(7)), reverse=True)[:5]
        assert [(k, v) for _, k, v in brute] == list(zip(beam[b].tolist(), tok[b].tolist()))
        assert torch.allclose(scores[b], torch.tensor([s for s, _, _ in brute]))


def test_length_penalty_ranks_finished_hypotheses():
    assert beam_score(-6.0, 3, 1.0) == -2.0 and beam_score(-6.0, 3, 0.0) == -6.0
    assert best_hypothesis([-4.0, -6.0], [2, 6], 0.0) == 0
    assert best_hypothesis([-4.0, -6.0], [2, 6], 1.0) == 1


# ----------------------------------------------------------------------------- against HF generate

def test_greedy_matches_transformers(models):
    model, hf = models
    x = prompts(0, B=3, T=5)
    ours = generate(model, x, 12, temperature=0)
    assert torch.equal(ours, hf_generate(hf, x, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0))
    assert torch.equal(generate(model, x, 12, do_sample=False), ours)        # do_sample=False is greedy too


def test_greedy_with_stop_tokens_matches_transformers(models):
    model, hf = models
    ended = 0
    for seed in range(4):
        x = prompts(seed, B=3, T=3)
        ours = generate(model, x, 15, temperature=0, stop_tokens=[5, 9, 17], pad_token_id=0)
        ref = hf_generate(hf, x, max_new_tokens=15, do_sample=False, eos_token_id=[5, 9, 17], pad_token_id=0)
        assert torch.equal(ours, ref)
        ended += int(torch.isin(ours[:, 3:], torch.tensor([5, 9, 17])).any())
    assert ended > 0                                   # the stop tokens were really hit


@pytest.mark.parametrize("num_beams, length_penalty, stops",
                         [(3, 1.0, []), (3, 0.0, [5, 9]), (3, 2.0, [5, 9]), (2, 1.0, [5]), (4, -0.5, [5, 9, 11])])
def test_beam_search_matches_transformers(models, num_beams, length_penalty, stops):
    model, hf = models
    for seed in (3, 5):
        x = prompts(seed)
        ours = generate(model, x, 10, num_beams=num_beams, length_penalty=length_penalty, stop_tokens=stops,
                        pad_token_id=1)
        ref = hf_generate(hf, x, max_new_tokens=10, num_beams=num_beams, do_sample=False,
                          length_penalty=length_penalty, eos_token_id=stops or None, pad_token_id=1)
        assert torch.equal(ours, ref), (ours, ref)


def test_length_penalty_changes_the_beam_search_result(models):
    model, _ = models
    changed = 0
    for seed in (3, 5, 8):
        x = prompts(seed)
        a = generate(model, x, 10, num_beams=3, length_penalty=0.0, stop_tokens=[5, 9], pad_token_id=1)
        b = generate(model, x, 10, num_beams=3, length_penalty=2.0, stop_tokens=[5, 9], pad_token_id=1)
        changed += not torch.equal(a, b)
    assert changed                                     # so the HF comparison above really tests the penalty


def test_beam_search_scores_at_least_greedy(models):
    """Beam search finds a sequence at least as likely as greedy's (same length, no stop tokens, alpha=0)."""
    model, _ = models
    x = prompts(11, B=1)

    @torch.no_grad()
    def logprob(seq):
        lp = torch.log_softmax(model(seq[None, :-1]).float(), -1)[0]
        return float(lp[torch.arange(x.size(1) - 1, seq.numel() - 1), seq[x.size(1):]].sum())

    g = generate(model, x, 8, temperature=0)[0]
    b = generate(model, x, 8, num_beams=4, length_penalty=0.0)[0]
    assert logprob(b) >= logprob(g) - 1e-5


# ----------------------------------------------------------------------------- sampling

def test_sampling_is_reproducible_with_a_generator(models):
    model, _ = models
    x = prompts(1)
    a = generate(model, x, 20, temperature=1.3, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = generate(model, x, 20, temperature=1.3, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(7))
    c = generate(model, x, 20, temperature=1.3, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_degenerate_sampling_is_greedy(models):
    model, _ = models
    x = prompts(2)
    greedy = generate(model, x, 10, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, x, 10, top_k=1, generator=g), greedy)
    assert torch.equal(generate(model, x, 10, top_p=1e-6, generator=g), greedy)


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits.expand(2000, -1), temperature=0.7, top_k=3, generator=g)
                         for _ in range(5)]).flatten()
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    expected = torch.softmax(top_k_filter(logits / 0.7, 3), -1)[0]
    assert freq[3:].sum() == 0                                 # filtered tokens never drawn
    assert torch.allclose(freq, expected, atol=0.015)          # 10,000 draws: standard error < 0.005


def test_ragged_prompts_are_decoded_like_single_prompts(models):
    model, _ = models
    batch = [[1, 2, 3], [4], [5, 6, 7]]
    out = generate(model, batch, 6, temperature=0, stop_tokens=[9])
    for prompt, row in zip(batch, out):
        single = generate(model, torch.tensor(prompt), 6, temperature=0, stop_tokens=[9]).tolist()
        if 9 in single[len(prompt):]:
            single = single[:single.index(9, len(prompt)) + 1]
        assert row == single


def test_context_is_cropped_to_the_block_size(models):
    model, _ = models
    x = prompts(4, B=1, T=60)
    out = generate(model, x, 10, temperature=0)                 # 70 tokens > n_positions = 64
    assert out.shape == (1, 70)
    context = out[:, :-1][:, -64:]                              # the last 64 tokens before the last one
    assert int(generate(model, context, 1, temperature=0)[0, -1]) == int(out[0, -1])
    for kw in (dict(use_cache=False), dict(static_cache=True)):  # the cache gives way to recomputing
        assert torch.equal(generate(model, x, 10, temperature=0, **kw), out)
    with pytest.raises(ValueError, match="n_positions"):
        model(out)


def test_distinct_n():
    assert distinct_n([1, 2, 1, 2, 1, 2], 2) == 0.4
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 3) == 0.5
    assert math.isclose(distinct_n(list(range(10)), 1), 1.0)


def test_invalid_arguments_raise_value_errors(models):
    model, _ = models
    x = prompts(0)
    bad = [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5),
           dict(num_beams=0), dict(num_beams=2, top_k=5), dict(num_beams=2, temperature=0.7),
           dict(stop_tokens=[-1]), dict(stop_tokens=[V]), dict(do_sample=True, temperature=0)]
    for kw in bad:
        args = {"max_new_tokens": 3, **kw}
        with pytest.raises(ValueError):
            generate(model, x, **args)
    with pytest.raises(ValueError, match="vocab"):
        generate(model, torch.tensor([[V + 1]]), 2)
    with pytest.raises(ValueError):
        generate(model, torch.zeros(2, 3), 2)
    with pytest.raises(ValueError):
        top_k_filter(torch.randn(3), 0)
    with pytest.raises(ValueError):
        top_p_filter(torch.randn(3), 0.0)
    with pytest.raises(ValueError):
        distinct_n([1, 2], 3)


def test_docstring_examples():
    import doctest

    import plmkit.generate
    failed, attempted = doctest.testmod(plmkit.generate)
    assert attempted > 0 and failed == 0


# ----------------------------------------------------------------------------- caches, padding, log-probs

def padded_prompts(seed, lengths=(6, 3, 1), pad=0):
    """Left-padded random prompts (B, T) and their attention mask."""
    T = max(lengths)
    ids = torch.randint(V, (len(lengths), T), generator=torch.Generator().manual_seed(seed))
    mask = torch.stack([torch.arange(T) >= T - n for n in lengths]).long()
    return ids.masked_fill(mask == 0, pad), mask


def full_next_logits(model, seq, mask):
    """The next-token logits (B, V) from one forward pass over the whole padded sequence."""
    return model(seq, attention_mask=mask, position_ids=positions_from_mask(mask))[:, -1]


@pytest.mark.parametrize("static", [False, True])
@torch.no_grad()
def test_cached_state_gives_the_full_forward_logits_at_every_step(models, static):
    model, _ = models
    ids, mask = padded_prompts(0)
    state = CachedState(model, max_new_tokens=9, block_size=64, static=static)
    logits = state.prefill(ids, mask)
    g = torch.Generator().manual_seed(0)
    for step in range(9):
        assert torch.allclose(logits, full_next_logits(model, ids, mask), atol=1e-4), step
        if step == 4:                               # beam search's reorder: rows move, one is duplicated
            index = torch.tensor([2, 0, 0])
            state.reorder(index)
            ids, mask = ids[index], mask[index]
        nxt = torch.randint(V, (3,), generator=g)
        ids, mask = torch.cat([ids, nxt[:, None]], 1), F.pad(mask, (0, 1), value=1)
        if step < 8:
            logits = state.step(nxt)


DECODINGS = [dict(temperature=0), dict(temperature=1.3, top_k=10, top_p=0.9), dict(temperature=0, stop_tokens=[5, 9]),
             dict(num_beams=3, stop_tokens=[5, 9], length_penalty=0.5)]


@pytest.mark.parametrize("kw", DECODINGS)
def test_cached_static_and_recompute_decoding_give_identical_tokens(models, kw):
    model, _ = models
    for ids, mask in (padded_prompts(1), (prompts(2), None)):
        outs = [generate(model, ids, 16, attention_mask=mask, generator=torch.Generator().manual_seed(3),
                         use_cache=cache, static_cache=static, **kw)
                for cache, static in ((False, False), (True, False), (True, True))]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("kw", [dict(do_sample=False), dict(do_sample=False, eos_token_id=[5, 9]),
                                dict(num_beams=3, do_sample=False, length_penalty=1.5, eos_token_id=[5, 9]),
                                dict(num_beams=2, do_sample=False)])
def test_left_padded_batch_matches_transformers(models, kw):
    """One left-padded batch with attention_mask, token for token as transformers' generate."""
    model, hf = models
    ours_kw = dict(num_beams=kw.get("num_beams", 1), stop_tokens=kw.get("eos_token_id"),
                   length_penalty=kw.get("length_penalty", 1.0), pad_token_id=1)
    for seed in (4, 6):
        ids, mask = padded_prompts(seed, pad=1)
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=1,
                          **{"eos_token_id": None, **kw})
        if ours_kw["num_beams"] == 1:
            ours_kw["temperature"] = 0
        assert torch.equal(generate(model, ids, 12, attention_mask=mask, **ours_kw), ref)
        # a list of ragged prompts is the same batch: rows come back without padding, cut after a stop
        prompts_list = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        stops = kw.get("eos_token_id") or []
        for row, ref_row, m in zip(generate(model, prompts_list, 12, **ours_kw), ref.tolist(), mask):
            new = ref_row[mask.size(1):]
            cut = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
            assert row == ref_row[int((m == 0).sum()):mask.size(1)] + new[:cut]


@pytest.mark.parametrize("kw", DECODINGS)
@torch.no_grad()
def test_logprobs_are_the_models_log_softmax_at_the_chosen_tokens(models, kw):
    model, _ = models
    ids, mask = padded_prompts(7)
    res = generate(model, ids, 12, attention_mask=mask, return_logprobs=True,
                   generator=torch.Generator().manual_seed(1), **{"pad_token_id": 1, **kw})
    assert isinstance(res, GenerateOutput)
    seqs, T0 = res.sequences, ids.size(1)
    N = seqs.size(1) - T0
    assert res.logprobs.shape == (3, N)
    full_mask = F.pad(mask, (0, N), value=1)
    logits = model(seqs, attention_mask=full_mask, position_ids=positions_from_mask(full_mask))
    expected = torch.log_softmax(logits[:, T0 - 1:-1], -1).gather(-1, seqs[:, T0:, None])[..., 0]   # (B, N)
    stops = torch.tensor(kw.get("stop_tokens", []), dtype=torch.long)
    ended_before = torch.isin(seqs[:, T0:], stops).long().cumsum(1) - torch.isin(seqs[:, T0:], stops).long() > 0
    assert torch.allclose(res.logprobs[~ended_before], expected[~ended_before], atol=1e-4)
    assert torch.equal(res.logprobs[ended_before], torch.zeros(int(ended_before.sum())))
    assert (res.logprobs <= 0).all()
    # list input: one log-prob per generated token of each (trimmed) row
    listed = generate(model, [[3, 4, 5], [6]], 5, return_logprobs=True, temperature=0, stop_tokens=[9])
    for row, prompt, lp in zip(listed.sequences, [[3, 4, 5], [6]], listed.logprobs):
        assert len(lp) == len(row) - len(prompt)


BOS, EOS = 8, 9


class CopyState(DecoderState):
    """A toy encoder–decoder: the "decoder" emits the source tokens after BOS, then EOS."""

    def start_ids(self, input_ids, attention_mask):
        return torch.full((input_ids.size(0), 1), BOS), torch.ones(input_ids.size(0), 1, dtype=torch.long)

    def prefill(self, input_ids, attention_mask):
        self.src, self.t = input_ids, input_ids.size(1) - attention_mask.sum(1)     # next source index
        return self._logits()

    def step(self, next_ids):
        self.t = self.t + 1
        return self._logits()

    def reorder(self, index):
        self.src, self.t = self.src[index], self.t[index]

    def _logits(self):
        T = self.src.size(1)
        tok = torch.where(self.t < T, self.src.gather(1, self.t.clamp(max=T - 1)[:, None])[:, 0], EOS)
        return F.one_hot(tok, 10).float() * 5


class Copier(torch.nn.Module):
    def decoder_state(self, *, use_cache, static_cache, max_new_tokens, block_size):
        return CopyState()


def test_an_encoder_decoder_state_plugs_into_the_same_loop():
    src = [[1, 2, 3], [4], [5, 6]]
    for kw in (dict(temperature=0), dict(num_beams=3)):
        assert generate(Copier(), src, 6, stop_tokens=EOS, **kw) == [[BOS] + s + [EOS] for s in src]
    out = generate(Copier(), torch.tensor([[0, 1, 2], [3, 4, 5]]), 6, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
                   temperature=0, stop_tokens=EOS, return_logprobs=True)
    assert out.sequences.tolist() == [[BOS, 1, 2, EOS, EOS], [BOS, 3, 4, 5, EOS]]    # padded after the stop
    assert out.logprobs.shape == (2, 4) and out.logprobs[0, 3:].eq(0).all() and out.logprobs[1].lt(0).all()


def test_new_arguments_raise_value_errors(models):
    model, _ = models
    x = prompts(0)
    right_padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    for kw in (dict(attention_mask=right_padded), dict(attention_mask=torch.ones(2, 3)),
               dict(attention_mask=torch.full((2, 4), 2)), dict(use_cache="yes"), dict(pad_token_id=-1),
               dict(pad_token_id=V), dict(return_logprobs=1), dict(num_beams=2, length_penalty="long"),
               dict(do_sample="yes"), dict(generator=0)):
        with pytest.raises(ValueError):
            generate(model, x, 3, **kw)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(model, [[1, 2], [3]], 3, attention_mask=torch.ones(2, 2))

    class Counter(torch.nn.Module):
        def forward(self, ids):
            return F.one_hot((ids + 1) % 10, 10).float() * 5

    with pytest.raises(ValueError, match="static_cache"):
        generate(Counter(), x % 10, 3, static_cache=True)
    with pytest.raises(ValueError, match="padded"):
        generate(Counter(), x % 10, 3, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    assert generate(Counter(), [[1], [7, 8]], 2, temperature=0) == [[1, 2, 3], [7, 8, 9, 0]]   # by length
