"""plmkit.inference.fast: the static-cache, fixed-shape (compilable) decode path.

What tests/test_generate.py, test_cache.py, test_llama.py and test_t5.py already prove (the platform's
CachedState with growing and static caches equals a full pass) is not repeated. Here: the FastDecoder's
persistent static caches, its fused q/k/v projections and its step traced by torch.compile (backend
"eager": dynamo with fullgraph=True, so a graph break fails) give, at every step, the logits of an
uncached full forward over the whole sequence, for GPT, Llama with GQA and T5, with left-padded / padded
batches; and greedy tokens equal Hugging Face ``generate`` (with its cache) for GPT-2 and Llama.
"""
import pytest
import torch
import transformers

from plmkit.generate import CachedState, generate, positions_from_mask
from plmkit.inference import FastDecoder, fuse_qkv_, unfuse_qkv_
from plmkit.models.gpt import GPT, GPTConfig
from plmkit.models.llama import Llama, LlamaConfig
from plmkit.models.t5 import T5Config, T5ForConditionalGeneration

ATOL = 1e-5


def scaled(model, scale=0.15):
    """Weights larger than the default init (peaked, varied next-token choices), norm gains near 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name or "ln" in name else scale * torch.randn_like(p))
    return model.eval()


def gpt():
    torch.manual_seed(0)
    return scaled(GPT(GPTConfig(vocab_size=60, n_positions=40, n_embd=32, n_layer=2, n_head=4)))


def llama_gqa():
    torch.manual_seed(1)
    return scaled(Llama(LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)))


def t5():
    torch.manual_seed(2)
    return scaled(T5ForConditionalGeneration(T5Config(vocab_size=60, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                      num_heads=4, feed_forward_proj="gated-gelu",
                                                      tie_word_embeddings=False)), 0.2)


def left_padded_prompts():
    ids = torch.randint(3, 60, (3, 6), generator=torch.Generator().manual_seed(7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("make", [gpt, llama_gqa], ids=["gpt", "llama_gqa"])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "compiled"])
def test_fast_decoder_logits_equal_the_uncached_forward_at_every_step(make, traced):
    model = make()
    ids, mask = left_padded_prompts()
    new = torch.randint(3, 60, (3, 7), generator=torch.Generator().manual_seed(8))   # tokens fed one by one
    fast = FastDecoder(model, batch_size=3, max_length=16, compile=traced, backend="eager")
    assert model.blocks[0].attn.qkv_weight is not None                               # q/k/v fused
    with torch.no_grad():
        for _ in range(2):                       # twice: the second call reuses (and must reset) the caches
            state = fast.decoder_state(max_new_tokens=8)
            got = [state.prefill(ids, mask)]
            got += [state.step(new[:, t]) for t in range(new.shape[1])]
            full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
            unfuse_qkv_(model)                     # the reference: the model as it was, no cache at all
            full = model(full_ids, attention_mask=full_mask, position_ids=positions_from_mask(full_mask))
            fuse_qkv_(model)
            for t, logits in enumerate(got):
                torch.testing.assert_close(logits, full[:, ids.shape[1] - 1 + t], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_platform_cached_state_with_gqa_and_left_padding_equals_the_uncached_forward(static):
    """tests/test_llama.py checks Llama's caches without padding; here the left-padded GQA case."""
    model = llama_gqa()
    ids, mask = left_padded_prompts()
    new = torch.randint(3, 60, (3, 5), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        state = CachedState(model, max_new_tokens=6, static=static)
        got = [state.prefill(ids, mask)] + [state.step(new[:, t]) for t in range(new.shape[1])]
        full_mask = torch.cat([mask, torch.ones_like(new)], 1)
        full = model(torch.cat([ids, new], 1), attention_mask=full_mask, position_ids=positions_from_mask(full_mask))
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, full[:, ids.shape[1] - 1 + t], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "compiled"])
def test_fast_t5_decoder_steps_equal_a_full_pass_with_a_padded_encoder_batch(traced):
    model = t5()
    src = torch.randint(2, 60, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    dec = torch.randint(2, 60, (3, 6), generator=torch.Generator().manual_seed(4))
    fast = FastDecoder(model, batch_size=3, max_length=8, compile=traced, backend="eager")
    with torch.no_grad():
        state = fast.decoder_state(max_new_tokens=7)
        got = [state.prefill(src, mask)] + [state.step(dec[:, t]) for t in range(dec.shape[1])]
        unfuse_qkv_(model)
        start = torch.zeros(3, 1, dtype=torch.long)
        full = model(src, mask, decoder_input_ids=torch.cat([start, dec], 1))           # (B, 7, V)
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, full[:, t], atol=ATOL, rtol=1e-4)


def test_fast_uncached_cached_and_static_generation_give_identical_tokens():
    for make, prompts in ((gpt, [[5, 9, 11], [7, 3, 3, 8, 1]]), (llama_gqa, [[5, 9, 11], [7, 3, 3, 8, 1]]),
                          (t5, [[5, 9, 11, 4], [7, 3]])):
        model = make()
        kw = dict(max_new_tokens=10, temperature=0)
        want = generate(model, prompts, use_cache=False, **kw)
        assert generate(model, prompts, **kw) == want
        assert generate(model, prompts, static_cache=True, **kw) == want
        fast = FastDecoder(model, batch_size=2, max_length=16, compile=True, backend="eager")
        assert generate(fast, prompts, **kw) == want
        assert len({tuple(row[-10:]) for row in want}) > 1 or len(set(want[0][-10:])) > 1   # not degenerate
        # beam search goes through the same state (reorder of the static caches)
        beams = FastDecoder(model, batch_size=4, max_length=16, fuse_qkv=False)
        assert generate(beams, prompts, num_beams=2, max_new_tokens=6) == \
            generate(model, prompts, num_beams=2, max_new_tokens=6)
        # sampling with a seeded generator: the same draws
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        assert generate(fast, prompts, max_new_tokens=8, top_k=5, generator=g1) == \
            generate(model, prompts, max_new_tokens=8, top_k=5, generator=g2)


def test_greedy_fast_decoding_equals_hugging_face_generate(tmp_path):
    model = gpt()
    model.save_pretrained(tmp_path / "gpt")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt").eval()
    prompt = torch.randint(3, 60, (1, 5), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                           pad_token_id=0, eos_token_id=None, use_cache=True)
    assert generate(FastDecoder(model, 1, 32, compile=True, backend="eager"), prompt, 20, temperature=0).tolist() \
        == want.tolist()

    model = llama_gqa()
    model.save_pretrained(tmp_path / "llama")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama", attn_implementation="eager").eval()
    ids, mask = left_padded_prompts()
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                           eos_token_id=None, use_cache=True)
    got = generate(FastDecoder(model, 3, 24, compile=True, backend="eager"), ids, 12, temperature=0,
                   attention_mask=mask)
    assert got.tolist() == want.tolist()


def test_fused_qkv_shares_memory_and_keeps_the_state_dict():
    model = llama_gqa()
    keys = set(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_qkv_(model)
    attn = model.blocks[0].attn
    assert set(model.state_dict()) == keys
    assert attn.q_proj.weight.data_ptr() == attn.qkv_weight.data_ptr()                 # a view, no copy
    assert attn.qkv_weight.shape == (32 + 2 * 2 * 8, 32)                             # H*D + 2*H_kv*D rows
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    unfuse_qkv_(model)
    assert attn.qkv_weight is None and attn.q_proj.weight.data_ptr() != attn.k_proj.weight.data_ptr()


def test_fast_decoder_validation():
    model = gpt()
    with pytest.raises(ValueError, match="batch_size"):
        FastDecoder(model, 0, 16)
    with pytest.raises(ValueError, match="compile"):
        FastDecoder(model, 1, 16, compile="yes")
    fast = FastDecoder(model, 1, 8)
    with pytest.raises(ValueError, match="batch_size=1"):
        generate(fast, torch.ones(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="max_length=8"):
        generate(fast, torch.ones(1, 3, dtype=torch.long), 7)
    with pytest.raises(ValueError, match="nn.Module"):
        fuse_qkv_("model")


@pytest.mark.parametrize("make", [gpt, llama_gqa, t5], ids=["gpt", "llama_gqa", "t5"])
def test_the_compiled_step_is_one_graph_across_steps_and_calls(make):
    """Positions move and later generate calls come: the traced step is neither broken nor retraced.
    (T5's step reads the encoder's keys/values, so a new input LENGTH is a new shape: pad inputs to one length.)"""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fast = FastDecoder(make(), batch_size=2, max_length=20, compile=True, backend="eager")
    generate(fast, [[4, 5, 6], [7, 8]], max_new_tokens=8, temperature=0)
    generate(fast, [[9, 8, 7], [3]], max_new_tokens=10, temperature=0)     # T5: same encoder length
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
