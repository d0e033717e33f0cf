"""plmkit.models.llama against Hugging Face's LlamaForCausalLM (transformers as pinned), at tiny random sizes.

Logits through a saved folder in both directions (MHA, GQA, MQA; rope_theta and linear RoPE scaling; biases,
tied head; a left-padded batch), cached decoding against a full pass, greedy generation token for token,
parameter counts of real configurations from the config alone, and the GPT switch: with GPT-2's four
choices the same class computes chapter 4's GPT.
"""
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from plmkit.generate import generate
from plmkit.models.gpt import GPT, GPTConfig
from plmkit.models.llama import Llama, LlamaConfig

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_hf(n_kv=4, theta=10000.0, **kw):
    cfg = dict(vocab_size=97, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=n_kv, max_position_embeddings=64, rope_theta=theta, rms_norm_eps=1e-6,
               bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    cfg.update(kw)
    model = LlamaForCausalLM(HFLlamaConfig(**cfg)).eval()
    with torch.no_grad():                          # larger than the default init, and non-trivial norm gains
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


CASES = {"mha": dict(n_kv=4), "gqa": dict(n_kv=2, theta=500000.0), "mqa": dict(n_kv=1, theta=1234.5),
         "pi_bias_tied": dict(n_kv=2, rope_scaling={"rope_type": "linear", "factor": 4.0}, attention_bias=True,
                              mlp_bias=True, tie_word_embeddings=True)}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_hf_through_saved_folders(case, tmp_path):
    hf = tiny_hf(**CASES[case])
    ids = torch.randint(3, 97, (2, 13))
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = Llama.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.num_key_value_heads == CASES[case]["n_kv"]
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(ours(ids), expected, atol=ATOL, rtol=1e-4)
    # and back: our folder read by Hugging Face
    ours.save_pretrained(tmp_path / "ours")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, expected, atol=ATOL, rtol=1e-4)
    assert ours.num_parameters() == ours.config.num_parameters() == hf.num_parameters()


def test_padded_batch_and_hidden_states_equal_hf(tmp_path):
    hf = tiny_hf(n_kv=2, theta=20000.0)
    hf.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 97, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4] = 0                                                   # left padding
    mask[2, :8] = 0                                                   # one real token
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        out = ours(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    real = mask.bool()
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits[real], ref.logits[real], atol=ATOL, rtol=1e-4)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a[real], b[real], atol=ATOL, rtol=1e-4)
    # a padded row gives the same logits as the same tokens alone
    with torch.no_grad():
        alone = ours(ids[1:2, 4:])
    torch.testing.assert_close(out.logits[1, 4:], alone[0], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("static", [False, True])
def test_cached_decoding_equals_full_pass(static):
    model = Llama(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)).eval()
    ids = torch.randint(50, (2, 10))
    with torch.no_grad():
        full = model(ids)
        caches = model.new_caches(batch_size=2, max_length=10, static=static)
        mask = torch.ones(2, 10, dtype=torch.long)
        steps = [model(ids[:, :4], attention_mask=mask if static else mask[:, :4], caches=caches)]
        for t in range(4, 10):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask if static else mask[:, :t + 1],
                               caches=caches, cache_position=torch.tensor([t])))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=1e-4)
    if static:                                   # the cache holds H_kv = 2 heads, not 4: GQA's saving
        assert caches[0].k.shape[1] == 2


@pytest.mark.parametrize("n_kv", [4, 1])
def test_greedy_generation_equals_hf(n_kv, tmp_path):
    hf = tiny_hf(n_kv=n_kv)
    hf.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path).eval()
    prompt = torch.randint(3, 97, (2, 5))
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                               do_sample=False, pad_token_id=0, eos_token_id=None)
    got = generate(ours, prompt, max_new_tokens=12, temperature=0)
    assert got.tolist() == expected.tolist()
    # ragged prompts, left-padded by generate itself, match Hugging Face on the same padded batch
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                               eos_token_id=None)
    got = generate(ours, prompt, max_new_tokens=8, temperature=0, attention_mask=mask)
    assert got.tolist() == expected.tolist()


def test_gpt_switches_give_chapter_4_gpt():
    """Llama with GPT-2's four choices loads a GPT's state dict unchanged and computes the same logits."""
    gpt = GPT(GPTConfig(vocab_size=60, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    cfg = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=32, rms_norm_eps=1e-5, hidden_act="gelu_tanh",
                      attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                      norm="layernorm", mlp="plain", positions="learned")
    as_gpt = Llama(cfg).eval()
    as_gpt.load_state_dict(gpt.state_dict())
    ids = torch.randint(60, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(as_gpt(ids), gpt(ids), atol=ATOL, rtol=1e-4)
    assert cfg.num_parameters() == gpt.num_parameters() == as_gpt.num_parameters()
    with pytest.raises(ValueError, match="Hugging Face"):
        cfg.to_hf_dict()


@pytest.mark.parametrize("switches", [dict(norm="layernorm"), dict(mlp="plain", hidden_act="gelu"),
                                      dict(positions="sinusoidal"), dict(positions="none"), {}])
def test_ablation_switches_count_parameters_and_run(switches):
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=40, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=16, **switches)
    model = Llama(cfg)
    assert model.num_parameters() == cfg.num_parameters()
    assert model(torch.randint(40, (1, 16))).shape == (1, 16, 40)


def test_parameter_counts_of_real_configurations():
    llama_7b = LlamaConfig()                                                     # Touvron et al. 2023a
    assert llama_7b.num_parameters() == 6_738_415_616
    llama2_70b = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                             num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096)
    assert llama2_70b.num_parameters() == 68_976_648_192
    llama3_8b = LlamaConfig(vocab_size=128256, intermediate_size=14336, num_key_value_heads=8,
                            max_position_embeddings=8192, rope_theta=500000.0)
    assert llama3_8b.num_parameters() == 8_030_261_248
    # independent check: Hugging Face's own count of a small model built from the same config
    small = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=172, num_hidden_layers=3,
                        num_attention_heads=8, num_key_value_heads=2)
    hf = LlamaForCausalLM(HFLlamaConfig(**{k: v for k, v in small.to_hf_dict().items()
                                           if k not in ("model_type", "architectures")}))
    assert small.num_parameters() == hf.num_parameters()
    # KV cache per token: 7B (MHA) 512 KiB in fp16; 70B with 8 KV heads 320 KiB despite 10x the parameters
    assert llama_7b.kv_cache_bytes_per_token() == 2 * 32 * 32 * 128 * 2
    assert llama2_70b.kv_cache_bytes_per_token() == 2 * 80 * 8 * 128 * 2


def test_validation():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LlamaConfig(num_key_value_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        LlamaConfig(hidden_size=30, num_attention_heads=2, head_dim=15)
    with pytest.raises(ValueError, match="positions"):
        LlamaConfig(positions="alibi")
    with pytest.raises(ValueError, match="rope_scaling"):
        LlamaConfig.from_hf_dict({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(ValueError, match="model_type"):
        LlamaConfig.from_hf_dict({"model_type": "gpt2"})
    model = Llama(LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=8))
    with pytest.raises(ValueError, match="input_ids must be in"):
        model(torch.tensor([[0, 20]]))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    # RoPE has no table to run out of: positions past max_position_embeddings are computed
    assert torch.isfinite(model(torch.zeros(1, 20, dtype=torch.long))).all()
    learned = Llama(LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=8, positions="learned"))
    with pytest.raises(ValueError, match="position_ids"):
        learned(torch.zeros(1, 9, dtype=torch.long))


def test_docstring_examples():
    import doctest

    import plmkit.models.llama as module
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
