"""plmkit.align (chapter 7) against outside references: transformers' chat-template renderer,
the `peft` library's LoRA, and one-by-one computation for packing."""
import math
import random

import peft
import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from plmkit.align import bios
from plmkit.align.chat import (CHAT_TEMPLATE, END_OF_TURN, ROLE_TOKENS, build_tokenizer, hf_tokenizer, load_tokenizer,
                               render, render_segments, save_tokenizer)
from plmkit.align.lora import LoRALinear, add_lora, count_parameters, lora_state_dict, merge_lora, unmerge_lora
from plmkit.align.sft import (IGNORE_INDEX, encode_conversation, exact_match, extract_answer, pack, pad_batch,
                              sft_loss, sft_loss_fn)
from plmkit.models.llama import Llama, LlamaConfig

PEOPLE = bios.make_people(50, seed=3)
WORDS = bios.corpus_words(PEOPLE)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(WORDS)


def random_conversation(rng: random.Random, turns: int | None = None) -> list[dict]:
    """Optional system turn, then alternating user/assistant turns, sometimes ending on a user turn."""
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 5)))})
    for i in range(turns or rng.randint(1, 6)):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append({"role": role, "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))})
    return msgs


# ----------------------------------------------------------------------------- chat template

def test_bios_are_deterministic_and_cover_the_vocabulary(tok):
    assert bios.make_people(20, seed=1) == bios.make_people(20, seed=1)
    assert len({p["name"] for p in bios.make_people(1000, seed=0)}) == 1000
    rng = random.Random(0)
    for p in PEOPLE:
        for variety in (1, 5):
            text = bios.biography(p, rng, variety)
            assert tok.token_to_id("<unk>") not in tok.encode(text).ids
            for attr in bios.ATTRIBUTES:
                assert p[attr] in text
        for q, a in bios.qa_pairs(p):
            assert tok.token_to_id("<unk>") not in tok.encode(q + " " + a).ids
    assert bios.biography(PEOPLE[0], random.Random(1), 1) == bios.biography(PEOPLE[0], random.Random(2), 1)
    with pytest.raises(ValueError, match="variety"):
        bios.biography(PEOPLE[0], rng, 6)


def test_render_equals_transformers_apply_chat_template(tok, tmp_path):
    save_tokenizer(tok, tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path)         # the saved folder, as a user loads it
    assert hf.chat_template == CHAT_TEMPLATE
    rng = random.Random(0)
    for _ in range(40):
        msgs = random_conversation(rng)
        for gen in (False, True):
            text = render(msgs, add_generation_prompt=gen)
            assert hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == text
            assert hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen) == tok.encode(text).ids
    assert load_tokenizer(tmp_path).encode("When was").ids == tok.encode("When was").ids


def test_render_shape_and_errors():
    msgs = [{"role": "user", "content": "Hi ?"}, {"role": "assistant", "content": "Oslo"}]
    assert render(msgs) == "<|user|>\nHi ?<|end|>\n<|assistant|>\nOslo<|end|>\n"
    assert render(msgs[:1], add_generation_prompt=True) == "<|user|>\nHi ?<|end|>\n<|assistant|>\n"
    assert "".join(t for t, _ in render_segments(msgs)) == render(msgs)
    with pytest.raises(ValueError, match="role"):
        render([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="messages"):
        render("hello")


# ----------------------------------------------------------------------------- labels and loss

def labelled_by_scanning(ids: list[int], tok) -> list[bool]:
    """Independent rule on the token stream: a token carries loss iff it comes after an
    <|assistant|> header and is at or before that turn's <|end|>."""
    header, end = tok.token_to_id(ROLE_TOKENS["assistant"]), tok.token_to_id(END_OF_TURN)
    inside, out = False, []
    for t in ids:
        if t == header and not inside:
            out.append(False)
            inside = True
        elif inside:
            out.append(True)
            inside = t != end
        else:
            out.append(False)
    return out


def test_response_only_labels_are_exactly_the_assistant_tokens(tok):
    rng = random.Random(1)
    for _ in range(50):
        msgs = random_conversation(rng)
        ids, labels = encode_conversation(tok, msgs)
        assert ids == tok.encode(render(msgs)).ids                 # piecewise tokenization = whole text
        want = labelled_by_scanning(ids, tok)
        assert [lab != IGNORE_INDEX for lab in labels] == want
        assert all(lab == i for lab, i, w in zip(labels, ids, want) if w)
        n_assistant = sum(m["role"] == "assistant" for m in msgs)
        assert sum(i == tok.token_to_id(END_OF_TURN) and lab != IGNORE_INDEX
                   for i, lab in zip(ids, labels)) == n_assistant          # every turn's <|end|> is learned
        ids_all, labels_all = encode_conversation(tok, msgs, response_only=False)
        assert ids_all == ids and labels_all == ids


def test_sft_loss_is_the_hand_computed_mean(tok):
    rng = random.Random(2)
    examples = [encode_conversation(tok, random_conversation(rng, turns=rng.randint(2, 5))) for _ in range(4)]
    batch = pad_batch(examples, pad_id=0)
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, tok.get_vocab_size(), dtype=torch.float64)
    terms = []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = int(batch["labels"][b, t + 1])
            if y != IGNORE_INDEX:
                terms.append(-torch.log_softmax(logits[b, t], -1)[y].item())
    assert math.isclose(sft_loss(logits, batch["labels"]).item(), sum(terms) / len(terms), rel_tol=1e-12)
    per_token = sft_loss(logits, batch["labels"], reduction="none")
    assert per_token.shape == (logits.shape[0], logits.shape[1] - 1)
    assert math.isclose(per_token.sum().item(), sum(terms), rel_tol=1e-12)
    assert sft_loss(logits, torch.full_like(batch["labels"], IGNORE_INDEX)).item() == 0.0
    with pytest.raises(ValueError, match="labels"):
        sft_loss(logits, batch["labels"][:, :-1])


def tiny_llama(vocab: int, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Llama(cfg).double().eval()


def test_packed_batch_gives_the_same_per_token_losses_as_one_by_one(tok):
    rng = random.Random(3)
    examples = [encode_conversation(tok, random_conversation(rng), response_only=rng.random() < 0.5)
                for _ in range(7)]
    model = tiny_llama(tok.get_vocab_size())
    packed = pack(examples, max_length=96, pad_id=0)
    assert packed["input_ids"].shape[0] < len(examples)             # some rows hold several conversations
    losses = sft_loss(model(packed["input_ids"], position_ids=packed["position_ids"],
                            segment_ids=packed["segment_ids"]), packed["labels"], reduction="none")
    # walk the packed rows in order: each example's tokens and per-token losses must match its own forward
    r, start = 0, 0
    for ids, labels in examples:
        if start + len(ids) > 96:
            r, start = r + 1, 0
        one = torch.tensor([ids])
        want = sft_loss(model(one), torch.tensor([labels]), reduction="none")[0]        # (len - 1,)
        assert torch.equal(packed["input_ids"][r, start:start + len(ids)], one[0])
        assert torch.equal(packed["position_ids"][r, start:start + len(ids)], torch.arange(len(ids)))
        got = losses[r, start:start + len(ids) - 1]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        if start > 0:        # the previous example's last token does not learn to predict this one's first
            assert losses[r, start - 1] == 0 and packed["labels"][r, start] == IGNORE_INDEX
        start += len(ids)
    # the mean over the packed batch is the mean over every example's labelled tokens
    total = sum(sft_loss(model(torch.tensor([i])), torch.tensor([lab]), reduction="none").sum() for i, lab in examples)
    count = sum(sum(x != IGNORE_INDEX for x in lab[1:]) for _, lab in examples)
    loss, metrics = sft_loss_fn(model, packed)
    torch.testing.assert_close(loss, total / count, rtol=1e-10, atol=1e-10)
    assert metrics["tokens"].item() == count


def test_packing_without_segment_ids_leaks_across_conversations(tok):
    """The mask matters: without segment ids a packed conversation sees the previous one."""
    rng = random.Random(4)
    examples = [encode_conversation(tok, random_conversation(rng, turns=2)) for _ in range(2)]
    model = tiny_llama(tok.get_vocab_size())
    packed = pack(examples, max_length=200, pad_id=0)
    with_mask = model(packed["input_ids"], position_ids=packed["position_ids"], segment_ids=packed["segment_ids"])
    without = model(packed["input_ids"], position_ids=packed["position_ids"])
    n0 = len(examples[0][0])
    assert torch.allclose(with_mask[0, :n0], without[0, :n0])
    assert not torch.allclose(with_mask[0, n0:n0 + len(examples[1][0])], without[0, n0:n0 + len(examples[1][0])])


def test_pad_and_pack_validate():
    with pytest.raises(ValueError, match="examples"):
        pad_batch([], 0)
    with pytest.raises(ValueError, match="max_length"):
        pack([([1, 2, 3], [1, 2, 3])], max_length=2, pad_id=0)


def test_answers_and_exact_match():
    assert extract_answer([5, 6, 7, 9, 7], end_id=7) == [5, 6]
    assert extract_answer([5, 6], end_id=7) == [5, 6]
    assert exact_match(["Oslo", " March  3 , 1950 ", "x"], ["Oslo", "March 3 , 1950", "y"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="predictions"):
        exact_match(["a"], [])


# ----------------------------------------------------------------------------- LoRA vs peft

class Holder(torch.nn.Module):
    """peft reads ``model.config`` as a transformers config; ours is a dataclass, so hide it one level down."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def peft_twin(model: Llama, ours: Llama, r: int, alpha: float):
    """peft's LoraModel on the base model, with our adapters' weights copied in."""
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    twin = peft.LoraModel(Holder(model), config, "default")
    ours_layers = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    n_copied = 0
    for name, module in twin.model.named_modules():
        if isinstance(module, peft.tuners.lora.Linear):
            mine = ours_layers[name.removeprefix("inner.")]
            with torch.no_grad():
                module.lora_A["default"].weight.copy_(mine.lora_A.weight)
                module.lora_B["default"].weight.copy_(mine.lora_B.weight)
            n_copied += 1
    assert n_copied == len(ours_layers) > 0
    return twin


def test_lora_equals_peft_merged_and_unmerged(tok):
    r, alpha = 4, 12.0
    base = tiny_llama(tok.get_vocab_size(), seed=1)
    ours = tiny_llama(tok.get_vocab_size(), seed=1)
    wrapped = add_lora(ours, targets=("q_proj", "v_proj"), r=r, alpha=alpha)
    assert len(wrapped) == 4
    x = torch.randint(8, tok.get_vocab_size(), (2, 11))
    torch.testing.assert_close(ours(x), base(x))                     # B = 0: the base model exactly
    torch.manual_seed(5)
    for m in ours.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B.weight, std=0.3)             # a trained-looking update
    twin = peft_twin(base, ours, r, alpha)
    want = twin(x)
    torch.testing.assert_close(ours(x), want, rtol=1e-10, atol=1e-10)
    # merged: W + (alpha / r) B A, and the same outputs as peft's merged model
    q = ours.blocks[0].attn.q_proj
    w0 = q.base.weight.clone()
    merge_lora(ours)
    torch.testing.assert_close(q.base.weight, w0 + alpha / r * q.lora_B.weight @ q.lora_A.weight)
    twin.merge_adapter()
    torch.testing.assert_close(ours(x), twin(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours(x), want, rtol=1e-10, atol=1e-10)
    unmerge_lora(ours)
    twin.unmerge_adapter()
    torch.testing.assert_close(q.base.weight, w0, rtol=0, atol=1e-14)
    torch.testing.assert_close(ours(x), twin(x), rtol=1e-10, atol=1e-10)


def test_lora_trains_only_the_adapters(tok):
    model = tiny_llama(tok.get_vocab_size()).float().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, targets=("q_proj", "k_proj", "v_proj", "out_proj"), r=2, alpha=4.0, dropout=0.1)
    trainable, total = count_parameters(model)
    C, kv = 32, 16
    assert trainable == 2 * 2 * ((C + C) + (C + kv) + (C + kv) + (C + C))
    assert set(lora_state_dict(model)) == {k for k, v in model.named_parameters() if v.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(8, tok.get_vocab_size(), (2, 9))
    for _ in range(3):
        loss = F.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in before.items():
        name = k.replace("q_proj.", "q_proj.base.").replace("k_proj.", "k_proj.base.") \
            .replace("v_proj.", "v_proj.base.").replace("out_proj.", "out_proj.base.")
        assert torch.equal(after[name], v), k                     # every base weight untouched
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in lora_state_dict(model).items() if "lora_B" in k)


def test_lora_validates():
    with pytest.raises(ValueError, match="r must"):
        LoRALinear(torch.nn.Linear(4, 3), r=4)
    with pytest.raises(ValueError, match="base"):
        LoRALinear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="match no"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), targets=("q_proj",))
