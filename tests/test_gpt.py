"""GPT against Hugging Face's GPT2LMHeadModel at tiny sizes: same folder, same logits, same loss."""
import json

import pytest
import torch
import torch.nn.functional as F

from plmkit.models import GPT, GPTConfig
from plmkit.objectives.clm import clm_loss, evaluate_lm, perplexity, random_windows
from plmkit.train import param_groups

import transformers  # a missing reference library fails the run; it never skips

TINY = dict(vocab_size=61, n_positions=24, n_embd=32, n_layer=2, n_head=4)


def hf_config(**kw):
    return transformers.GPT2Config(**{**TINY, **kw})


def test_plmkit_checkpoint_loads_in_transformers_with_equal_logits(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    with torch.no_grad():                         # non-trivial norms and biases, so every tensor matters
        for name, p in model.named_parameters():
            if "norm" in name or "ln_f" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(61, (3, 24))
    with torch.no_grad():
        assert torch.allclose(model(x), hf(x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_transformers_checkpoint_loads_in_plmkit_with_equal_logits(tmp_path, activation):
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(hf_config(activation_function=activation, n_inner=48)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path).eval()
    assert model.config.n_inner == 48
    x = torch.randint(61, (2, 17))
    with torch.no_grad():
        assert torch.allclose(model(x), hf(x).logits, atol=1e-5, rtol=0)


def test_checkpoint_layout_is_hugging_face_gpt2(tmp_path):
    from safetensors.torch import load_file
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new"
    keys = load_file(tmp_path / "model.safetensors")
    assert keys["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)      # Conv1D: (in, out)
    assert keys["transformer.h.1.mlp.c_fc.weight"].shape == (32, 128)
    assert "lm_head.weight" not in keys                                      # tied to transformer.wte.weight


def test_original_openai_key_names_load(tmp_path):
    """OpenAI's gpt2 files have no 'transformer.' prefix and keep the attn.bias mask buffers."""
    from safetensors.torch import load_file, save_file
    torch.manual_seed(2)
    model = GPT(GPTConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 24, 24)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    x = torch.randint(61, (1, 9))
    with torch.no_grad():
        assert torch.equal(GPT.from_pretrained(tmp_path)(x), model(x))


def test_loss_and_parameter_count_match_transformers(tmp_path):
    torch.manual_seed(3)
    model = GPT(GPTConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(61, (4, 20))
    labels = x.clone()
    labels[0, 12:] = -100
    with torch.no_grad():
        assert torch.allclose(clm_loss(model(x), labels), hf(x, labels=labels).loss, atol=1e-5)
    assert model.num_parameters() == hf.num_parameters()
    assert model.lm_head.weight is model.wte.weight


def test_causality_and_kv_cache_decoding():
    torch.manual_seed(4)
    model = GPT(GPTConfig(**TINY)).eval()
    x = torch.randint(61, (2, 12))
    with torch.no_grad():
        full = model(x)
        changed = x.clone()
        changed[:, 8] = (changed[:, 8] + 1) % 61
        assert torch.allclose(model(changed)[:, :8], full[:, :8], atol=1e-6)      # the future is invisible
        assert not torch.allclose(model(changed)[:, 8:], full[:, 8:])
        caches = model.new_caches()
        steps = [model(x[:, :5], caches=caches)] + [model(x[:, t:t + 1], caches=caches) for t in range(5, 12)]
        assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_initialisation_follows_gpt2():
    torch.manual_seed(5)
    cfg = GPTConfig(vocab_size=500, n_positions=64, n_embd=128, n_layer=8, n_head=4)
    model = GPT(cfg)
    assert abs(model.wte.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].ffn.fc1.weight.std().item() - 0.02) < 0.002
    scaled = 0.02 / (2 * cfg.n_layer) ** 0.5                                  # residual projections
    assert abs(model.blocks[3].attn.out_proj.weight.std().item() - scaled) < 0.1 * scaled
    assert abs(model.blocks[3].ffn.fc2.weight.std().item() - scaled) < 0.1 * scaled
    assert torch.equal(model.blocks[2].attn.q_proj.bias, torch.zeros(128))


def test_weight_decay_skips_embeddings_norms_and_biases():
    model = GPT(GPTConfig(**TINY))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decayed == {f"blocks.{i}.{m}.weight" for i in range(2)
                       for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ffn.fc1", "ffn.fc2")}
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "blocks.0.norm1.weight", "blocks.1.ffn.fc2.bias"} <= skipped
    assert len(decayed) + len(skipped) == len(list(model.parameters()))


def test_invalid_inputs_raise_value_errors(tmp_path):
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[3, 61]]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.0)
    with pytest.raises(ValueError, match="missing"):
        GPT.from_pretrained(tmp_path)
    bad = hf_config(scale_attn_by_inverse_layer_idx=True).to_dict()
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        GPTConfig.from_hf_dict(bad)


def test_perplexity_helpers_on_a_model():
    torch.manual_seed(6)
    model = GPT(GPTConfig(**TINY)).eval()
    ids = torch.randint(61, (200,))
    result = evaluate_lm(model, ids, block_size=24, batch_size=4)
    assert result["tokens"] == 199                                    # every token but the first, once
    with torch.no_grad():                                             # same as scoring window by window
        total = 0.0
        for s in range(0, 199, 24):
            w = ids[s:s + 25]
            total += F.cross_entropy(model(w[None, :-1])[0], w[1:], reduction="sum").item()
    assert abs(result["loss"] - total / 199) < 1e-5
    assert abs(result["perplexity"] - perplexity(result["loss"])) < 1e-6
    x, y = random_windows(ids, 24, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("module", ["plmkit.models.gpt", "plmkit.objectives.clm"])
def test_docstring_examples(module):
    import doctest
    import importlib
    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0 and failed == 0


# ----------------------------------------------------------------------------- masks, positions, caches

def _tiny_pair(tmp_path, seed=7):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    return model, transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()


def _left_padded(seed=0, lengths=(9, 5, 2), T=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(61, (len(lengths), T), generator=g)
    mask = torch.stack([torch.arange(T) >= T - n for n in lengths]).long()        # 0s then 1s
    return ids, mask


def test_hidden_states_match_transformers(tmp_path):
    model, hf = _tiny_pair(tmp_path)
    x = torch.randint(61, (2, 10))
    with torch.no_grad():
        ours = model(x, output_hidden_states=True)
        ref = hf(x, output_hidden_states=True)
    assert torch.equal(ours.logits, model(x))                          # same numbers as the plain call
    assert len(ours.hidden_states) == len(ref.hidden_states) == TINY["n_layer"] + 1
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(ours.logits, ref.logits, atol=1e-4)


def test_left_padded_batch_matches_transformers(tmp_path):
    """attention_mask + Hugging Face's position rule: every real position as HF computes it."""
    model, hf = _tiny_pair(tmp_path)
    ids, mask = _left_padded()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        ref = hf(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        real = mask.bool()
        assert torch.allclose(ours.logits[real], ref.logits[real], atol=1e-4)
        for a, b in zip(ours.hidden_states, ref.hidden_states):
            assert torch.allclose(a[real], b[real], atol=1e-5)
        # ...and each padded row equals that prompt alone, unpadded
        for b, n in enumerate(mask.sum(-1).tolist()):
            alone = model(ids[b:b + 1, -n:])[0]
            assert torch.allclose(ours.logits[b, -n:], alone, atol=1e-5)


@pytest.mark.parametrize("static", [False, True])
def test_cached_decoding_with_padding_equals_a_full_forward(static):
    torch.manual_seed(8)
    model = GPT(GPTConfig(**TINY)).eval()
    ids, mask = _left_padded(seed=1, lengths=(12, 7, 3), T=12)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    real = mask.bool()
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=pos)                    # (B, T, V)
        caches = model.new_caches(batch_size=3, max_length=16, static=static)
        chunks = [(0, 6)] + [(t, t + 1) for t in range(6, 12)]                      # a prompt, then token by token
        for a, b in chunks:
            m = mask if static else mask[:, :b]
            if static:
                m = torch.nn.functional.pad(mask, (0, 16 - 12), value=1)             # every slot of the buffer
            out = model(ids[:, a:b], attention_mask=m, position_ids=pos[:, a:b], caches=caches,
                        cache_position=torch.arange(a, b))
            assert torch.allclose(out[real[:, a:b]], full[:, a:b][real[:, a:b]], atol=1e-5), (a, b)


def test_forward_argument_errors():
    model = GPT(GPTConfig(**TINY))
    x = torch.randint(61, (2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        model(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="position_ids"):
        model(x, position_ids=torch.full((2, 5), 24))
    with pytest.raises(ValueError, match="position_ids"):
        model(x, position_ids=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="cache_position"):
        model(x, caches=model.new_caches(), cache_position=torch.arange(4))
    with pytest.raises(ValueError, match="max_length"):
        model.new_caches(batch_size=2, static=True)
