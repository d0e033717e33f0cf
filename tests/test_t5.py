"""plmkit's T5 against Hugging Face's T5ForConditionalGeneration (transformers as pinned).

Tiny random models saved and loaded through both libraries (no T5 weights install
offline): logits to 1e-5 in float32 in both directions, v1.0 (ReLU, tied head)
and v1.1 (gated GELU, untied), with padded encoder inputs and sequences longer
than the relative-attention max distance; greedy and beam search token for token
against HF generate; cached, uncached and static-cache decoding alike.
"""
import doctest

import pytest
import torch
import transformers
from transformers import T5Config as HFT5Config
from transformers import T5ForConditionalGeneration as HFT5

import plmkit.models.t5 as t5mod
from plmkit.generate import generate
from plmkit.models.t5 import T5Config, T5ForConditionalGeneration, T5Model, seq2seq_loss, shift_right

ATOL = RTOL = 1e-5      # float32; the untied v1.1 head (std 1.0, as HF initialises it) gives logits ~10
SIZES = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, relative_attention_num_buckets=8,
             relative_attention_max_distance=20, dropout_rate=0.0)
VERSIONS = {
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf_model(version, num_layers=2, num_decoder_layers=3, seed=0):
    torch.manual_seed(seed)
    cfg = HFT5Config(**SIZES, **VERSIONS[version], num_layers=num_layers, num_decoder_layers=num_decoder_layers,
                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return HFT5(cfg).eval()


def our_model(version, num_layers=2, num_decoder_layers=3, seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(**SIZES, **VERSIONS[version], num_layers=num_layers, num_decoder_layers=num_decoder_layers)
    return T5ForConditionalGeneration(cfg).eval()


def batch(seed=1, B=3, S=26, T=23):
    """Encoder inputs longer than max_distance (20), right padding in two rows, and labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, -5:] = 0
    mask[2, -11:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = torch.randint(2, 64, (B, T), generator=g)
    return ids, mask, labels


def compare(ours, theirs, ids, mask, labels):
    dec = shift_right(labels)
    with torch.no_grad():
        got = ours(ids, mask, dec)
        want = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=ATOL, rtol=RTOL), (got - want).abs().max()


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_logits_equal_hugging_face_loading_its_folder(version, tmp_path):
    theirs = hf_model(version)
    theirs.save_pretrained(tmp_path)
    ours = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert ours.config.is_gated == (version == "v1.1")
    assert (ours.lm_head.weight is ours.shared.weight) == (version == "v1.0")
    compare(ours, theirs, *batch())


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_logits_equal_hugging_face_reading_our_folder(version, tmp_path):
    ours = our_model(version, seed=3)
    ours.save_pretrained(tmp_path)
    theirs = HFT5.from_pretrained(tmp_path).eval()
    assert theirs.config.feed_forward_proj == VERSIONS[version]["feed_forward_proj"]
    assert theirs.config.num_decoder_layers == 3 and theirs.config.num_layers == 2
    compare(ours, theirs, *batch(seed=4))


def test_padding_changes_nothing_for_the_real_tokens():
    model = our_model("v1.0")
    ids, mask, labels = batch()
    with torch.no_grad():
        short = model(ids[2:, :15], mask[2:, :15], labels=labels[2:])
        padded = model(ids[2:], mask[2:], labels=labels[2:])
        left = model(torch.roll(ids[2:], 11, 1), torch.roll(mask[2:], 11, 1), labels=labels[2:])
    assert torch.allclose(short, padded, atol=ATOL) and torch.allclose(short, left, atol=ATOL)


def test_loss_equals_hugging_face_with_ignored_labels(tmp_path):
    theirs = hf_model("v1.1")
    theirs.save_pretrained(tmp_path)
    ours = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask, labels = batch()
    labels[0, -4:] = -100
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = seq2seq_loss(ours, dict(input_ids=ids, attention_mask=mask, labels=labels))
    assert torch.allclose(got, want, atol=ATOL)


def test_shift_right_equals_hugging_face():
    theirs = hf_model("v1.0")
    labels = torch.tensor([[5, 6, 1, -100, -100], [7, 8, 9, 10, 1]])
    assert torch.equal(shift_right(labels), theirs._shift_right(labels))


def test_t5_model_without_head_matches_hugging_face(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.T5Model(HFT5Config(**SIZES, num_layers=2, num_decoder_layers=2)).eval()
    theirs.save_pretrained(tmp_path)
    ours = T5Model.from_pretrained(tmp_path).eval()
    ids, mask, labels = batch()
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=shift_right(labels)).last_hidden_state
        got = ours(ids, mask, shift_right(labels))
    assert torch.allclose(got, want, atol=ATOL)


def test_hidden_states_follow_hugging_faces_convention(tmp_path):
    theirs = hf_model("v1.0")
    theirs.save_pretrained(tmp_path)
    ours = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask, labels = batch()
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        got = ours(ids, mask, labels=labels, output_hidden_states=True)
    assert len(got.hidden_states) == len(want.decoder_hidden_states) == 4
    for a, b in zip(got.hidden_states, want.decoder_hidden_states):
        assert torch.allclose(a, b, atol=ATOL)
    for a, b in zip(got.encoder_hidden_states, want.encoder_hidden_states):
        assert torch.allclose(a, b, atol=ATOL)


def test_cached_decoder_steps_equal_a_full_pass():
    model = our_model("v1.1")
    ids, mask, labels = batch()
    dec = shift_right(labels)
    with torch.no_grad():
        memory = model.encode(ids, mask)
        full = model.logits(model.decode(dec, memory, mask))                          # (B, T, V)
        for static in (False, True):
            caches = model.new_caches(batch_size=3, max_length=dec.shape[1], static=static)
            steps = []
            for t in range(dec.shape[1]):
                h = model.decode(dec[:, t:t + 1], memory if t == 0 else None, mask, caches=caches,
                                 cache_position=torch.tensor([t]))
                steps.append(model.logits(h))
            assert torch.allclose(torch.cat(steps, 1), full, atol=ATOL), static
            assert all(cross.is_set for _, cross in caches)


def left_padded(seed=5, B=3, S=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, :4] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def paired(tmp_path, version, seed=0):
    theirs = hf_model(version, num_layers=2, num_decoder_layers=2, seed=seed)   # HF generate needs equal depths
    theirs.save_pretrained(tmp_path)
    return T5ForConditionalGeneration.from_pretrained(tmp_path).eval(), theirs


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_greedy_equals_hugging_face_generate(version, tmp_path):
    ours, theirs = paired(tmp_path, version)
    ids, mask = left_padded()
    want = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=False, num_beams=1)
    got = generate(ours, ids, max_new_tokens=15, temperature=0, attention_mask=mask, stop_tokens=1, pad_token_id=0)
    assert torch.equal(got, want)


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_beam_search_equals_hugging_face_generate(version, tmp_path):
    ours, theirs = paired(tmp_path, version, seed=2)
    ids, mask = left_padded(seed=6)
    want = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, num_beams=3, do_sample=False)
    got = generate(ours, ids, max_new_tokens=12, num_beams=3, attention_mask=mask, stop_tokens=1, pad_token_id=0)
    assert torch.equal(got, want)


def test_generation_stops_at_eos_like_hugging_face(tmp_path):
    ours, theirs = paired(tmp_path, "v1.1", seed=4)
    ids, mask = left_padded(seed=7, B=4)
    first = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    j = int(first[:, 1:].flatten().mode().values)          # the token greedy decoding picks most often
    with torch.no_grad():                                   # EOS now wins wherever j would have: rows end early
        for m in (ours, theirs):
            m.lm_head.weight[1] = m.lm_head.weight[j] * 1.05
    want = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    got = generate(ours, ids, max_new_tokens=20, temperature=0, attention_mask=mask, stop_tokens=1, pad_token_id=0)
    assert (want == 1).any()
    assert torch.equal(got, want)
    beams = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, num_beams=3, do_sample=False)
    # HF's beam search fills finished rows with `pad_token_id or eos_token_id`: pad 0 counts as
    # missing there, so its rows end in EOS repeated; ask ours for the same filler.
    assert torch.equal(generate(ours, ids, max_new_tokens=20, num_beams=3, attention_mask=mask, stop_tokens=1,
                                pad_token_id=1), beams)


def test_cached_uncached_and_static_decoding_give_the_same_tokens():
    model = our_model("v1.1", num_decoder_layers=2)
    ids, mask = left_padded()
    runs = [generate(model, ids, max_new_tokens=14, temperature=0, attention_mask=mask, stop_tokens=1,
                     use_cache=c, static_cache=s) for c, s in ((True, False), (False, False), (True, True))]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    beams = [generate(model, ids, max_new_tokens=10, num_beams=2, attention_mask=mask, stop_tokens=1,
                      use_cache=c) for c in (True, False)]
    assert torch.equal(beams[0], beams[1])


def test_encoder_runs_once_per_generate_call(monkeypatch):
    model = our_model("v1.0")
    calls = []
    encode = model.encoder.encode
    monkeypatch.setattr(model.encoder, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    ids, mask = left_padded()
    generate(model, ids, max_new_tokens=8, temperature=0, attention_mask=mask, stop_tokens=1)
    assert len(calls) == 1
    generate(model, ids, max_new_tokens=8, num_beams=2, attention_mask=mask, stop_tokens=1)
    assert len(calls) == 2


def test_initialisation_follows_hugging_face_scales():
    cfg = T5Config(vocab_size=500, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4, initializer_factor=1.0)
    torch.manual_seed(0)
    m = T5ForConditionalGeneration(cfg)
    attn = m.encoder.blocks[0].attn
    for tensor, std in ((m.shared.weight, 1.0), (attn.q_proj.weight, (64 * 16) ** -0.5),
                        (attn.k_proj.weight, 64 ** -0.5), (attn.out_proj.weight, (4 * 16) ** -0.5),
                        (m.encoder.blocks[0].ffn.fc1.weight, 64 ** -0.5), (m.encoder.blocks[0].ffn.fc2.weight, 256 ** -0.5)):
        assert abs(tensor.std().item() / std - 1) < 0.1


def test_config_round_trip_and_validation():
    cfg = T5Config(**SIZES, **VERSIONS["v1.1"], num_layers=2)
    hf = HFT5Config(**cfg.to_hf_dict())
    assert hf.is_gated_act and hf.dense_act_fn == "gelu_new" and not hf.tie_word_embeddings
    assert T5Config.from_hf_dict(hf.to_dict()) == cfg
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-gelu-x")
    with pytest.raises(ValueError, match="d_kv"):
        T5Config(d_kv=0)
    model = our_model("v1.0")
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[70, 2]]), labels=torch.tensor([[3]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[5, 2]]), torch.ones(1, 3), labels=torch.tensor([[3]]))
    with pytest.raises(ValueError, match="labels"):
        model(torch.tensor([[5, 2]]))


def test_doctests():
    assert doctest.testmod(t5mod, raise_on_error=False).failed == 0
