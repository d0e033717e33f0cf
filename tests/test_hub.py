"""plmkit.models.hub (the one checkpoint module), the shared init and the token-id check.

Outside references: Hugging Face transformers (sharded GPT-2 folders, Llama's
rotate-half RoPE, activation functions) and Meta's interleaved RoPE formula.
"""
import json
import math

import pytest
import torch
from torch import nn

import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from plmkit.models import GPT, BertConfig, BertForPreTraining, GPTConfig, hub
from plmkit.models.common import init_weights_
from plmkit.nn import LayerNorm, LearnedPositionalEmbedding
from plmkit.nn.ffn import ACTIVATIONS, activation_fn
from plmkit.nn.validation import check_token_ids


# ----------------------------------------------------------------------------- RoPE layouts

def meta_rotary(x, theta=10000.0):
    """Meta's LLaMA apply_rotary_emb on x (B, T, H, D): neighbours (2j, 2j+1) form complex numbers."""
    B, T, H, D = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, D, 2).float() / D)                      # (D/2,)
    angles = torch.outer(torch.arange(T).float(), freqs)                            # (T, D/2)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]      # (1, T, 1, D/2)
    xc = torch.view_as_complex(x.float().reshape(B, T, H, D // 2, 2))
    return torch.view_as_real(xc * freqs_cis).flatten(3)                            # (B, T, H, D)


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (4, 2)])
def test_rope_permutation_turns_meta_layout_into_hugging_face_layout(n_heads, n_kv_heads):
    torch.manual_seed(0)
    C, D, B, T = 32, 8, 2, 7
    wq, wk = torch.randn(n_heads * D, C), torch.randn(n_kv_heads * D, C)             # Meta's rows
    x = torch.randn(B, T, C)
    # Meta: project, rotate neighbouring pairs.
    q_meta = meta_rotary((x @ wq.T).view(B, T, n_heads, D)).transpose(1, 2)         # (B, H, T, D)
    k_meta = meta_rotary((x @ wk.T).view(B, T, n_kv_heads, D)).transpose(1, 2)
    # Hugging Face: permuted rows, rotate halves (transformers' own Llama functions).
    wq_hf, wk_hf = hub.interleaved_to_half(wq, n_heads), hub.interleaved_to_half(wk, n_kv_heads)
    cfg = transformers.LlamaConfig(hidden_size=C, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                                   head_dim=D, max_position_embeddings=16)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, torch.arange(T)[None].expand(B, T))
    q_hf, k_hf = apply_rotary_pos_emb((x @ wq_hf.T).view(B, T, n_heads, D).transpose(1, 2),
                                      (x @ wk_hf.T).view(B, T, n_kv_heads, D).transpose(1, 2), cos, sin)
    # Same features in another order within each head, hence the same attention scores.
    def to_half(t):                                                                  # reorder features of (..., D)
        return t.reshape(*t.shape[:-1], D // 2, 2).transpose(-1, -2).reshape(t.shape)
    assert torch.allclose(q_hf, to_half(q_meta), atol=1e-5)
    assert torch.allclose(k_hf, to_half(k_meta), atol=1e-5)
    rep = n_heads // n_kv_heads
    scores_meta = q_meta @ k_meta.repeat_interleave(rep, dim=1).transpose(-1, -2)
    scores_hf = q_hf @ k_hf.repeat_interleave(rep, dim=1).transpose(-1, -2)
    assert torch.allclose(scores_meta, scores_hf, atol=1e-4)
    # The inverse, and the Transform wrapping both (biases too: Qwen-style q/k biases).
    assert torch.equal(hub.half_to_interleaved(wq_hf, n_heads), wq)
    t = hub.RopePermute(n_kv_heads)
    bias = torch.randn(n_kv_heads * D)
    assert torch.equal(t.to_ours([wk])[0], wk_hf)
    assert torch.equal(t.to_hf(t.to_ours([bias]))[0], bias)
    assert torch.equal(hub.Inverse(t).to_ours([wk_hf])[0], wk)


def test_rope_permutation_rejects_odd_heads():
    with pytest.raises(ValueError, match="n_heads"):
        hub.interleaved_to_half(torch.zeros(12, 4), n_heads=4)              # head width 3 is odd
    with pytest.raises(ValueError, match="n_heads"):
        hub.RopePermute(0)


# ----------------------------------------------------------------------------- transforms and tables

def test_split_and_chain_round_trip_with_unequal_parts():
    fused = torch.randn(16, 16)                                              # (in, q 8 + k 4 + v 4) Conv1D-style
    t = hub.Chain(hub.TRANSPOSE, hub.Split([8, 4, 4]))
    q, k, v = t.to_ours([fused.T.contiguous().T])                             # any strides
    assert (q.shape, k.shape, v.shape) == ((8, 16), (4, 16), (4, 16))
    assert torch.equal(t.to_hf([q, k, v])[0], fused)
    with pytest.raises(ValueError, match="split"):
        hub.Split(3).to_ours([torch.zeros(8, 2)])
    with pytest.raises(ValueError, match="parts"):
        hub.Split([4, 0])


class Tiny(nn.Module):
    def __init__(self, n=2):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(n))
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight                                   # tied
        self.extra = nn.Linear(4, 1)


RULES = [("model.embed.weight", "emb.weight"),
         ("model.layers.{i}.proj.weight", "blocks.{i}.weight", hub.TRANSPOSE),
         ("model.layers.{i}.proj.bias", "blocks.{i}.bias"),
         ("score.weight", "extra.weight"), ("score.bias", "extra.bias")]


def test_keymap_round_trip_tied_ignored_and_optional():
    torch.manual_seed(1)
    model = Tiny()
    km = hub.KeyMap(RULES, n_layers=2, tied=["head.weight"], ignore=["model.layers.{i}.rotary.inv_freq"])
    hf = hub.hf_state_dict(model, km)
    assert set(hf) == {"model.embed.weight", "model.layers.0.proj.weight", "model.layers.0.proj.bias",
                       "model.layers.1.proj.weight", "model.layers.1.proj.bias", "score.weight", "score.bias"}
    assert torch.equal(hf["model.layers.1.proj.weight"], model.blocks[1].weight.T)
    other = Tiny()
    hf_plus = {**hf, "model.layers.0.rotary.inv_freq": torch.ones(2)}       # ignored
    del hf_plus["score.weight"], hf_plus["score.bias"]
    new = hub.load_hf_state(other, hf_plus, km, optional=["extra.*"])
    assert new == ["extra.weight", "extra.bias"]
    assert torch.equal(other.blocks[1].weight, model.blocks[1].weight)
    assert other.head.weight is other.emb.weight and torch.equal(other.head.weight, model.emb.weight)


def test_keymap_errors_name_the_tensor():
    model = Tiny()
    km = hub.KeyMap(RULES, n_layers=2, tied=["head.weight"])
    hf = hub.hf_state_dict(model, km)
    with pytest.raises(ValueError, match=r"lacks 1 weights.*model\.layers\.1\.proj\.bias"):
        hub.load_hf_state(Tiny(), {k: v for k, v in hf.items() if k != "model.layers.1.proj.bias"}, km)
    with pytest.raises(ValueError, match=r"does not use.*model\.layers\.2\.proj\.bias"):
        hub.load_hf_state(Tiny(), {**hf, "model.layers.2.proj.bias": torch.zeros(4)}, km)
    assert hub.load_hf_state(Tiny(), {**hf, "model.layers.2.proj.bias": torch.zeros(4)}, km,
                             unexpected="ignore") == []
    with pytest.raises(ValueError, match=r"model\.embed\.weight gives emb\.weight the shape \(6, 4\)"):
        hub.load_hf_state(Tiny(), {**hf, "model.embed.weight": torch.zeros(6, 4)}, km)
    with pytest.raises(ValueError, match=r"no rule saves \['head\.weight'\]"):
        hub.hf_state_dict(model, hub.KeyMap(RULES, n_layers=2))              # tied head not declared
    with pytest.raises(ValueError, match="TRANSPOSE"):
        hub.load_hf_state(Tiny(), {**hf, "model.layers.0.proj.weight": torch.zeros(16)}, km)
    with pytest.raises(ValueError, match="rule"):
        hub.KeyMap([("a",)], n_layers=1)


def test_folders_round_trip_and_missing_files(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    hub.write_folder(tmp_path / "m", {"model_type": "x", "n": 1}, state)
    config, back = hub.read_folder(tmp_path / "m")
    assert config == {"model_type": "x", "n": 1}
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="model.safetensors"):
        hub.read_folder(tmp_path)


def test_gpt_reads_a_sharded_hugging_face_folder(tmp_path):
    torch.manual_seed(2)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=61, n_positions=24, n_embd=32,
                                                              n_layer=2, n_head=4)).eval()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    model = GPT.from_pretrained(tmp_path).eval()
    x = torch.randint(61, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(x), hf(x).logits, atol=1e-5)


def test_bert_hf_state_names_are_hugging_faces(tmp_path):
    cfg = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
               max_position_embeddings=12)
    ours = BertForPreTraining(BertConfig(**cfg))
    hf = transformers.BertForPreTraining(transformers.BertConfig(**cfg))
    theirs = {k for k in hf.state_dict() if not k.endswith(("position_ids", "decoder.weight", "decoder.bias"))}
    assert set(ours.hf_state_dict()) == theirs


# ----------------------------------------------------------------------------- activations, init, ids

def test_activation_map_agrees_with_hugging_face():
    from transformers.activations import ACT2FN
    x = torch.linspace(-5, 5, 101)
    checked = []
    for hf_name, ours in hub.HF_ACTIVATIONS.items():
        if ours in ACTIVATIONS:                          # silu arrives in plmkit.nn with chapter 6
            assert torch.allclose(activation_fn(ours)(x), ACT2FN[hf_name](x), atol=1e-6), hf_name
            checked.append(ours)
        assert hub.activation_from_hf(hub.activation_to_hf(ours)) == ours
    assert {"gelu", "gelu_tanh", "relu"} <= set(checked)
    with pytest.raises(ValueError, match="activation_function"):
        hub.activation_from_hf("tanh", "activation_function")


def _old_gpt_init(model, std):
    """GPT's initialisation loop before the shared helper (the random stream must not change)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, LearnedPositionalEmbedding)):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for block in model.blocks:
        for proj in (block.attn.out_proj, block.ffn.fc2):
            nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * model.config.n_layer))


def test_shared_init_draws_the_same_numbers_as_before():
    cfg = GPTConfig(vocab_size=40, n_positions=8, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(4)
    a = GPT(cfg)
    torch.manual_seed(4)
    b = GPT(cfg)
    torch.manual_seed(5)
    a.reset_parameters()
    torch.manual_seed(5)
    _old_gpt_init(b, cfg.initializer_range)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    padded = nn.Embedding(6, 3, padding_idx=2)
    init_weights_(padded, 0.5)
    assert torch.equal(padded.weight[2], torch.zeros(3)) and padded.weight.std() > 0.2
    with pytest.raises(ValueError, match="std"):
        init_weights_(padded, 0)


def test_token_id_check_reads_values_only_on_the_cpu():
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=5\), got values in \[-1, 3\]"):
        check_token_ids(torch.tensor([[-1, 3]]), 5)
    with pytest.raises(ValueError, match="integer"):
        check_token_ids(torch.zeros(2), 5)
    check_token_ids(torch.tensor([[9]], device="meta"), 5)     # values unreadable without a sync: not read
