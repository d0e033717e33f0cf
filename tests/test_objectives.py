"""plmkit.objectives: MLM masking statistics, the masked loss, NSP/SOP pair builders.

Outside references: Hugging Face's DataCollatorForLanguageModeling (the same
15% / 80-10-10 recipe) for the masking statistics, PyTorch's cross-entropy for
the loss, and BertTokenizer's pair layout for ``[CLS] A [SEP] B [SEP]``.
"""
import random

import pytest
import torch
import torch.nn.functional as F

from plmkit.objectives import IGNORE_INDEX, mask_tokens, mlm_loss, nsp_pairs, pair_inputs, sop_pairs

V, MASK, CLS, SEP, PAD = 1000, 4, 1, 2, 0
SPECIAL = (PAD, CLS, SEP, MASK)


def batch(B=64, T=256, seed=0):
    """Random sentences framed by [CLS] ... [SEP] and right-padded to T."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = CLS, SEP
        ids[i, n:] = PAD
    return ids


def rates(ids, masked, labels):
    sel = labels != IGNORE_INDEX
    n = sel.sum().item()
    ordinary = ~torch.isin(ids, torch.tensor(SPECIAL))
    return dict(
        selected=n / ordinary.sum().item(),
        mask=((masked == MASK) & sel).sum().item() / n,
        kept=((masked == ids) & sel).sum().item() / n,
        random=((masked != MASK) & (masked != ids) & sel).sum().item() / n,
    )


def test_masking_statistics_match_the_recipe():
    ids = batch()
    masked, labels = mask_tokens(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(1))
    r = rates(ids, masked, labels)
    # about 11,000 ordinary tokens: standard error of the 15% rate is 0.34 points
    assert abs(r["selected"] - 0.15) < 0.015
    assert abs(r["mask"] - 0.8) < 0.04
    assert abs(r["random"] - 0.1) < 0.03
    assert abs(r["kept"] - 0.1) < 0.03


def test_masking_statistics_agree_with_hugging_face_collator(tmp_path):
    from transformers import BertTokenizer, DataCollatorForLanguageModeling
    vocab = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"] + [f"w{i}" for i in range(5, V)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    assert tok.mask_token_id == MASK and len(tok) == V
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, return_tensors="pt")
    ids = batch(seed=2)
    torch.manual_seed(0)
    special = torch.isin(ids, torch.tensor(SPECIAL))
    hf_masked, hf_labels = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
    ours = rates(ids, *mask_tokens(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(3)))
    theirs = rates(ids, hf_masked, hf_labels)
    for key in ours:
        assert abs(ours[key] - theirs[key]) < 0.05, (key, ours, theirs)


def test_special_tokens_never_selected_and_labels_exact():
    ids = batch(seed=4)
    masked, labels = mask_tokens(ids, MASK, V, SPECIAL, mlm_probability=0.5)
    special = torch.isin(ids, torch.tensor(SPECIAL))
    sel = labels != IGNORE_INDEX
    assert not (sel & special).any()
    assert torch.equal(masked[special], ids[special])            # [CLS], [SEP], [PAD] untouched
    assert torch.equal(labels[sel], ids[sel])                     # labels hold the original token
    assert torch.equal(masked[~sel], ids[~sel])                   # unselected positions unchanged
    assert ((masked >= 0) & (masked < V)).all()


def test_input_not_modified_and_generator_reproduces():
    ids = batch(B=4, T=32)
    before = ids.clone()
    a = mask_tokens(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(7))
    c = mask_tokens(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(8))
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])   # static masking: same seed, same masks
    assert not torch.equal(a[1], c[1])                            # dynamic masking: new draw, new masks


@pytest.mark.parametrize("p", [0.0, 1.0, 0.4])
def test_mlm_probability_extremes(p):
    ids = batch(B=16, T=64, seed=5)
    masked, labels = mask_tokens(ids, MASK, V, SPECIAL, mlm_probability=p)
    ordinary = ~torch.isin(ids, torch.tensor(SPECIAL))
    rate = (labels != IGNORE_INDEX).sum().item() / ordinary.sum().item()
    assert abs(rate - p) < 0.05


def test_mask_tokens_validates_arguments():
    ids = batch(B=2, T=8)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, MASK, V, SPECIAL, mlm_probability=1.5)
    with pytest.raises(ValueError, match="mask_token_id"):
        mask_tokens(ids, V, V, SPECIAL)
    with pytest.raises(ValueError, match="vocab_size"):
        mask_tokens(ids, MASK, 10, SPECIAL)
    with pytest.raises(ValueError, match="input_ids"):
        mask_tokens(ids.float(), MASK, V, SPECIAL)


def test_mlm_loss_counts_only_selected_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 17, generator=g)
    targets = torch.randint(0, 17, (3, 10), generator=g)
    keep = torch.rand(3, 10, generator=g) < 0.3
    labels = torch.where(keep, targets, torch.full_like(targets, IGNORE_INDEX))
    expected = F.cross_entropy(logits[keep], targets[keep])       # mean over the selected positions
    assert torch.allclose(mlm_loss(logits, labels), expected, atol=1e-6)
    with pytest.raises(ValueError, match="logits"):
        mlm_loss(logits[:, :5], labels)


def docs_with_origins(n_docs=30, seed=0):
    rng = random.Random(seed)
    return [[f"d{d}s{s}" for s in range(rng.randint(1, 12))] for d in range(n_docs)]


def parse(sentence):
    d, s = sentence[1:].split("s")
    return int(d), int(s)


def test_nsp_pairs_labels_mean_what_they_say():
    docs = docs_with_origins()
    pairs = nsp_pairs(docs, random.Random(1))
    assert len(pairs) == sum(len(d) - 1 for d in docs)
    labels = [lab for _, _, lab in pairs]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    for a, b, lab in pairs:
        (da, sa), (db, sb) = parse(a), parse(b)
        if lab == 0:
            assert (db, sb) == (da, sa + 1)                      # IsNext: the true next sentence
        else:
            assert db != da                                      # NotNext: from another document
    with pytest.raises(ValueError, match="at least 2"):
        nsp_pairs([["only", "one", "doc"]])


def test_sop_pairs_swap_within_the_document():
    docs = docs_with_origins(seed=3)
    pairs = sop_pairs(docs, random.Random(2))
    assert len(pairs) == sum(len(d) - 1 for d in docs)
    assert 0.4 < sum(lab for *_, lab in pairs) / len(pairs) < 0.6
    for a, b, lab in pairs:
        (da, sa), (db, sb) = parse(a), parse(b)
        assert da == db
        assert sb - sa == (1 if lab == 0 else -1)


def test_pair_inputs_match_bert_tokenizer_layout(tmp_path):
    from transformers import BertTokenizer
    vocab = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"] + [f"w{i}" for i in range(20)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    a, b = [7, 8, 9], [10, 11]
    ids, types = pair_inputs(a, b, cls_id=1, sep_id=2)
    assert ids == tok.build_inputs_with_special_tokens(a, b)
    assert types == tok.create_token_type_ids_from_sequences(a, b)
    ids, types = pair_inputs(list(range(5, 15)), [20, 21], cls_id=1, sep_id=2, max_len=9)
    assert len(ids) == 9 and ids[-3:] == [20, 21, 2] and types.count(1) == 3


def _old_mask_tokens(ids, mask_id, vocab_size, special_ids, p, generator):
    """mask_tokens as it was before the GPU fix (CPU draws, boolean-index writes): the CPU reference."""
    rand = lambda: torch.rand(ids.shape, generator=generator)                          # noqa: E731
    special = torch.isin(ids, torch.tensor(list(special_ids)))
    selected = (rand() < p) & ~special
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    u = rand()
    to_mask, to_random = selected & (u < 0.8), selected & (u >= 0.8) & (u < 0.9)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    masked = ids.clone()
    masked[to_mask] = mask_id
    masked[to_random] = random_ids[to_random]
    return masked, labels


def test_mask_tokens_gives_the_same_cpu_masks_as_before():
    ids = batch(B=8, T=64, seed=5)
    for seed in range(3):
        new = mask_tokens(ids, MASK, V, SPECIAL, mlm_probability=0.3, generator=torch.Generator().manual_seed(seed))
        old = _old_mask_tokens(ids, MASK, V, SPECIAL, 0.3, torch.Generator().manual_seed(seed))
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    int32 = mask_tokens(ids.int(), MASK, V, SPECIAL, generator=torch.Generator().manual_seed(0))
    assert int32[0].dtype == torch.int32


def test_mask_tokens_draws_on_the_ids_device_and_never_reads_values():
    """On the meta device there are no values: a host read (a GPU sync) or a CPU draw would fail or show."""
    ids = batch(B=4, T=32).to("meta")
    masked, labels = mask_tokens(ids, MASK, V, SPECIAL)
    assert masked.device.type == labels.device.type == "meta"
    assert masked.shape == labels.shape == ids.shape and masked.dtype == ids.dtype
