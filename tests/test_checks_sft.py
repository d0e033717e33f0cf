"""The chapter-7 checkers pass the reference answers and fail blank answers, shortcuts and plausible bugs.

Mutation table (``MUTANTS``): for every exercise at least three hand-written bugs of its
solution, each run in-process against the checker (no notebook kernel), and through
record -> judge_recorded for the reference answers.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checker_harness import (assert_blank_fails, assert_fails, assert_mutant_fails, assert_mutants_cover,
                             assert_reference_passes, assert_refused, case_ids, make_blank, mutant_ids,
                             recorded_passes)
from plmkit.align import chat as plmkit_chat
from plmkit.align import lora as plmkit_lora
from plmkit.align import sft as plmkit_sft
from plmkit.checks import sft as checks
from plmkit.nn import build_attention_mask

IGNORE = -100


blank = make_blank(7)


# ---------------------------------------------------------------- reference answers (as in the notebook)
def render_chat(messages, add_generation_prompt=False):
    text = ""
    for m in messages:
        text += f"<|{m['role']}|>\n{m['content']}<|end|>\n"
    if add_generation_prompt:
        text += "<|assistant|>\n"
    return text


def encode_untrusted(tokenizer, text):
    unk = tokenizer.token_to_id("<unk>")
    ids = []
    for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text):      # no special-token match first
        i = tokenizer.token_to_id(piece)
        ids.append(unk if i is None else i)
    return ids


def response_labels(input_ids, assistant_id, end_id):
    labels, inside = [], False
    for t in input_ids:
        if inside:
            labels.append(t)
            inside = t != end_id
        else:
            labels.append(-100)
            inside = t == assistant_id
    return labels


def masked_lm_loss(logits, labels):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)          # position t predicts token t + 1
    target = labels[:, 1:]
    keep = target != -100
    picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return -(picked * keep).sum() / keep.sum()


def pack_two(a, b):
    T = len(a) + len(b)
    input_ids = torch.tensor(a + b)
    position_ids = torch.cat([torch.arange(len(a)), torch.arange(len(b))])
    segment = torch.tensor([0] * len(a) + [1] * len(b))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = causal & (segment[:, None] == segment[None, :])
    return input_ids, position_ids, mask


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scaling, self.merged = base, alpha / r, False
        base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        y = self.base(x)
        if not self.merged:
            y = y + self.scaling * self.lora_B(self.lora_A(x))
        return y

    @torch.no_grad()
    def merge(self):
        self.base.weight += self.scaling * self.lora_B.weight @ self.lora_A.weight
        self.merged = True


def exact_match_score(generations, answers, end_id):
    hits = 0
    for gen, ans in zip(generations, answers):
        cut = gen.index(end_id) if end_id in gen else len(gen)
        hits += gen[:cut] == ans
    return hits / len(answers)


def _collate(mb, pad_id, pad_label=-100):
    T = max(len(ids) for ids, _ in mb)
    input_ids = torch.full((len(mb), T), pad_id)
    labels = torch.full((len(mb), T), pad_label)
    attention_mask = torch.zeros(len(mb), T, dtype=torch.long)
    for b, (ids, lab) in enumerate(mb):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(ids)] = torch.tensor(lab)
        attention_mask[b, :len(ids)] = 1
    return input_ids, labels, attention_mask


def sft_step(model, optimizer, micro_batches, pad_id):
    padded = [_collate(mb, pad_id) for mb in micro_batches]
    n = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in padded)
    total = 0.0
    for input_ids, labels, attention_mask in padded:
        logits = model(input_ids, attention_mask=attention_mask)
        summed = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                 ignore_index=-100, reduction="sum")
        (summed / n).backward()
        total += summed.item()
    optimizer.step()
    optimizer.zero_grad()
    return total / n


CASES = [
    (checks.check_render_chat, render_chat),
    (checks.check_encode_untrusted, encode_untrusted),
    (checks.check_response_labels, response_labels),
    (checks.check_masked_lm_loss, masked_lm_loss),
    (checks.check_pack_two, pack_two),
    (checks.check_lora_linear, LoRALinear),
    (checks.check_exact_match, exact_match_score),
    (checks.check_sft_step, sft_step),
]


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_reference_answer_passes_with_a_stable_verdict(check, fn, capsys):
    assert_reference_passes(check, fn, capsys)


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_recorded_answers_are_judged_the_same(check, fn, tmp_path):
    assert recorded_passes(check, fn, 1234, tmp_path)
    assert not recorded_passes(check, blank, 1234, tmp_path)


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_blank_fails(check, fn, capsys):
    assert_blank_fails(check, blank, capsys)


@pytest.mark.parametrize("check,fn", CASES, ids=case_ids(CASES))
def test_returning_none_fails(check, fn, capsys):
    if check is checks.check_lora_linear:
        class NoneLayer(LoRALinear):
            def forward(self, x):
                return None
        assert_fails(check, NoneLayer, capsys)
    else:
        assert_fails(check, lambda *a, **k: None, capsys)


def _segments_labels(input_ids, assistant_id, end_id):
    return plmkit_sft.encode_conversation(None, [])[1] or response_labels(input_ids, assistant_id, end_id)


def _lora_shortcut(base, r, alpha):
    return plmkit_lora.LoRALinear(base, r, alpha)


def _peft_lora_shortcut(base, r, alpha):
    from peft.tuners.lora.layer import Linear
    return Linear(base, "default", r=r, lora_alpha=alpha)


def _split_special_shortcut(tok, text):
    from tokenizers import Tokenizer
    plain = Tokenizer.from_str(tok.to_str())
    plain.encode_special_tokens = True
    return plain.encode(text, add_special_tokens=False).ids


def _hf_split_special_shortcut(tok, text):
    return plmkit_chat.hf_tokenizer(tok)(text, add_special_tokens=False, split_special_tokens=True).input_ids


_SPECIAL_RE = "(" + "|".join(map(__import__("re").escape, plmkit_chat.SPECIAL_TOKENS)) + ")"


def untrusted_specials_kept(tokenizer, text):
    import re
    ids = []
    for part in re.split(_SPECIAL_RE, text):
        ids += [tokenizer.token_to_id(part)] if part in plmkit_chat.SPECIAL_TOKENS else encode_untrusted(tokenizer, part)
    return ids


def untrusted_specials_deleted(tokenizer, text):
    import re
    return encode_untrusted(tokenizer, re.sub(_SPECIAL_RE, " ", text))


def untrusted_one_unk_each(tokenizer, text):
    import re
    ids = []
    for part in re.split(_SPECIAL_RE, text):
        ids += [tokenizer.token_to_id("<unk>")] if part in plmkit_chat.SPECIAL_TOKENS else encode_untrusted(tokenizer, part)
    return ids


def untrusted_unknown_dropped(tokenizer, text):
    return [i for i in (tokenizer.token_to_id(p) for p, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text))
            if i is not None]


@pytest.mark.parametrize("check,shortcut", [
    (checks.check_render_chat, plmkit_chat.render),
    (checks.check_render_chat, functools.partial(plmkit_chat.render)),
    (checks.check_render_chat, lambda m, add_generation_prompt=False: "".join(
        t for t, _ in plmkit_chat.render_segments(m, add_generation_prompt))),
    (checks.check_encode_untrusted, lambda tok, text: tok.encode(text, add_special_tokens=False).ids),
    (checks.check_encode_untrusted, _split_special_shortcut),
    (checks.check_encode_untrusted, _hf_split_special_shortcut),
    (checks.check_response_labels, _segments_labels),
    (checks.check_masked_lm_loss, plmkit_sft.sft_loss),
    (checks.check_masked_lm_loss, lambda lg, lb: F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]),
                                                                 lb[:, 1:].reshape(-1), ignore_index=-100)),
    (checks.check_pack_two, lambda a, b: (torch.tensor(a + b), pack_two(a, b)[1], build_attention_mask(
        None, None, len(a) + len(b), segment_ids=torch.tensor([[0] * len(a) + [1] * len(b)]))[0, 0])),
    (checks.check_pack_two, lambda a, b: plmkit_sft.pack([(a, a), (b, b)], len(a) + len(b), 0) and pack_two(a, b)),
    (checks.check_lora_linear, plmkit_lora.LoRALinear),
    (checks.check_lora_linear, _lora_shortcut),
    (checks.check_lora_linear, _peft_lora_shortcut),
    (checks.check_sft_step, plmkit_sft.sft_step),
    (checks.check_sft_step, lambda m, o, mbs, pad: plmkit_sft.sft_step(m, o, mbs, pad)),
    (checks.check_sft_step, lambda m, o, mbs, pad: plmkit_sft.pad_batch(mbs[0], pad) and sft_step(m, o, mbs, pad)),
    (checks.check_exact_match, lambda gens, answers, end: plmkit_sft.exact_match(
        [" ".join(map(str, plmkit_sft.extract_answer(g, end))) for g in gens], [" ".join(map(str, a)) for a in answers])),
], ids=["render", "render-partial", "render-segments", "Tokenizer.encode", "encode_special_tokens",
        "split_special_tokens", "encode", "sft_loss", "F.cross_entropy", "build_mask",
        "pack", "LoRALinear", "LoRA-wrapper", "peft-LoRA", "sft_step", "sft_step-wrapper", "pad_batch", "exact_match"])
def test_references_and_builtins_are_refused(check, shortcut, capsys):
    assert_refused(check, shortcut, capsys)


# ---------------------------------------------------------------- the mutation table: plausible bugs
def render_no_newline_after_end(messages, add_generation_prompt=False):
    return render_chat(messages, add_generation_prompt).replace("<|end|>\n", "<|end|>")


def render_always_prompt(messages, add_generation_prompt=False):
    return render_chat(messages, True)


def render_no_header_newline(messages, add_generation_prompt=False):
    text = render_chat(messages, add_generation_prompt)
    for role in ("system", "user", "assistant"):
        text = text.replace(f"<|{role}|>\n", f"<|{role}|>")
    return text


def render_in_place(messages, add_generation_prompt=False):
    for m in messages:
        m["content"] = m["content"].strip()
    messages.append({"role": "assistant", "content": ""}) if add_generation_prompt else None
    text = render_chat(messages[:-1] if add_generation_prompt else messages, add_generation_prompt)
    return text


def labels_with_header(input_ids, assistant_id, end_id):
    labels = response_labels(input_ids, assistant_id, end_id)
    return [t if t == assistant_id else lab for t, lab in zip(input_ids, labels)]


def labels_without_end(input_ids, assistant_id, end_id):
    return [-100 if t == end_id else lab for t, lab in zip(input_ids, response_labels(input_ids, assistant_id, end_id))]


def labels_last_turn_only(input_ids, assistant_id, end_id):
    start = len(input_ids) - 1 - input_ids[::-1].index(assistant_id)
    return [-100] * (start + 1) + response_labels(input_ids[start:], assistant_id, end_id)[1:]


def labels_inverted(input_ids, assistant_id, end_id):
    labels = response_labels(input_ids, assistant_id, end_id)
    return [t if lab == -100 else -100 for t, lab in zip(input_ids, labels)]


def loss_no_shift(logits, labels):
    logp = torch.log_softmax(logits, dim=-1)
    keep = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return -(picked * keep).sum() / keep.sum()


def loss_mean_over_all(logits, labels):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    keep = target != -100
    picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return -(picked * keep).mean()


def loss_sum(logits, labels):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    keep = target != -100
    return -(logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * keep).sum()


def loss_detached(logits, labels):
    return masked_lm_loss(logits.detach(), labels)


def pack_no_position_reset(a, b):
    ids, pos, mask = pack_two(a, b)
    return ids, torch.arange(len(a) + len(b)), mask


def pack_block_only(a, b):
    ids, pos, _ = pack_two(a, b)
    seg = torch.tensor([0] * len(a) + [1] * len(b))
    return ids, pos, seg[:, None] == seg[None, :]


def pack_causal_only(a, b):
    ids, pos, _ = pack_two(a, b)
    T = len(a) + len(b)
    return ids, pos, torch.ones(T, T, dtype=torch.bool).tril()


def pack_int_mask(a, b):
    ids, pos, mask = pack_two(a, b)
    return ids, pos, mask.long()


class LoRAAlphaNotDivided(LoRALinear):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.scaling = alpha


class LoRARandomB(LoRALinear):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.normal_(self.lora_B.weight)


class LoRABaseTrainable(LoRALinear):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        base.requires_grad_(True)


class LoRAMergeTwice(LoRALinear):
    @torch.no_grad()
    def merge(self):
        self.base.weight += self.scaling * self.lora_B.weight @ self.lora_A.weight        # forgets merged = True


class LoRAMergeTransposed(LoRALinear):
    @torch.no_grad()
    def merge(self):
        self.base.weight += self.scaling * (self.lora_A.weight.T @ self.lora_B.weight.T).T.contiguous() * 0 + \
            self.scaling * (self.lora_B.weight @ self.lora_A.weight) / self.scaling
        self.merged = True


def em_off_by_one(generations, answers, end_id):
    hits = 0
    for gen, ans in zip(generations, answers):
        cut = gen.index(end_id) - 1 if end_id in gen else len(gen)
        hits += gen[:cut] == ans
    return hits / len(answers)


def em_prefix(generations, answers, end_id):
    return sum(gen[:len(ans)] == ans for gen, ans in zip(generations, answers)) / len(answers)


def em_whole(generations, answers, end_id):
    return sum(gen == ans for gen, ans in zip(generations, answers)) / len(answers)


def em_last_end(generations, answers, end_id):
    hits = 0
    for gen, ans in zip(generations, answers):
        cut = len(gen) - 1 - gen[::-1].index(end_id) if end_id in gen else len(gen)
        hits += gen[:cut] == ans
    return hits / len(answers)


def em_count(generations, answers, end_id):
    return float(sum(exact_match_score([g], [a], end_id) for g, a in zip(generations, answers)))


def _buggy_step(bug):
    """sft_step with one likely bug (the names are the likely-bugs table of Exercise 7.8)."""
    def step(model, optimizer, micro_batches, pad_id):
        padded = []
        for mb in micro_batches:
            input_ids, labels, mask = _collate(mb, pad_id, pad_id if bug == "padding_counted" else -100)
            if bug == "prompt_in_loss":
                labels = input_ids.masked_fill(mask == 0, -100)
            padded.append((input_ids, labels, mask))
        shift = 0 if bug == "not_shifted" else 1
        n = sum(int((labels[:, shift:] != -100).sum()) for _, labels, _ in padded)
        if bug == "minus_100_kept":
            n = sum(labels[:, 1:].numel() for _, labels, _ in padded)
        total = 0.0
        for input_ids, labels, attention_mask in padded:
            logits = model(input_ids, attention_mask=attention_mask)
            V = logits.shape[-1]
            pred, target = (logits, labels) if bug == "not_shifted" else (logits[:, :-1], labels[:, 1:])
            if bug == "minus_100_kept":
                logp = torch.log_softmax(pred, dim=-1)
                summed = -logp.gather(-1, target.clamp(min=0)[..., None]).sum()
            else:
                summed = F.cross_entropy(pred.reshape(-1, V), target.reshape(-1), ignore_index=-100, reduction="sum")
            if bug == "mean_of_means":
                loss = summed / int((target != -100).sum()) / len(padded)
            elif bug == "constant":                            # CS336's normalize_constant = 1, / accumulation steps
                loss = summed / len(padded)
            else:
                loss = summed / n
            loss.backward()
            total += loss.item()
        if bug != "no_zero_grad":
            optimizer.step()
            optimizer.zero_grad()
        else:
            optimizer.step()
        return total                        # the sum of what each micro-batch back-propagated
    step.__name__ = f"step_{bug}"
    return step


MUTANTS = [
    (checks.check_render_chat, render_no_newline_after_end, "newline"),
    (checks.check_render_chat, render_always_prompt, "add_generation_prompt"),
    (checks.check_render_chat, render_no_header_newline, "header"),
    (checks.check_render_chat, render_in_place, "in place"),
    (checks.check_encode_untrusted, untrusted_specials_kept, "became its special id"),
    (checks.check_encode_untrusted, untrusted_specials_deleted, "do not delete"),
    (checks.check_encode_untrusted, untrusted_one_unk_each, "is ordinary text"),
    (checks.check_encode_untrusted, untrusted_unknown_dropped, None),
    (checks.check_response_labels, labels_with_header, "header is prompt"),
    (checks.check_response_labels, labels_without_end, "<|end|> token must carry loss"),
    (checks.check_response_labels, labels_last_turn_only, "not only the last one"),
    (checks.check_response_labels, labels_inverted, None),
    (checks.check_masked_lm_loss, loss_no_shift, "no shift"),
    (checks.check_masked_lm_loss, loss_mean_over_all, "labelled tokens only"),
    (checks.check_masked_lm_loss, loss_sum, "a sum"),
    (checks.check_masked_lm_loss, loss_detached, "autograd graph"),
    (checks.check_pack_two, pack_no_position_reset, "positions restart"),
    (checks.check_pack_two, pack_block_only, "only block-diagonal"),
    (checks.check_pack_two, pack_causal_only, "only causal"),
    (checks.check_pack_two, pack_int_mask, "dtype"),
    (checks.check_lora_linear, LoRAAlphaNotDivided, "alpha / r"),
    (checks.check_lora_linear, LoRARandomB, "B starts at zero"),
    (checks.check_lora_linear, LoRABaseTrainable, "freeze the base layer"),
    (checks.check_lora_linear, LoRAMergeTwice, "must not be added again"),
    (checks.check_exact_match, em_off_by_one, None),
    (checks.check_exact_match, em_prefix, "merely starts with"),
    (checks.check_exact_match, em_whole, "cut each generation"),
    (checks.check_exact_match, em_last_end, None),
    (checks.check_exact_match, em_count, None),
    (checks.check_sft_step, _buggy_step("mean_of_means"), "mean of the micro-batch means"),
    (checks.check_sft_step, _buggy_step("constant"), "divided by a constant"),
    (checks.check_sft_step, _buggy_step("not_shifted"), "labels not shifted"),
    (checks.check_sft_step, _buggy_step("padding_counted"), "padding counted"),
    (checks.check_sft_step, _buggy_step("prompt_in_loss"), "prompt tokens in the loss"),
    (checks.check_sft_step, _buggy_step("minus_100_kept"), "-100 not ignored"),
    (checks.check_sft_step, _buggy_step("no_zero_grad"), "zero_grad"),
]


@pytest.mark.parametrize("check,mutant,named", MUTANTS, ids=mutant_ids(MUTANTS))
def test_plausible_bug_fails_and_is_named(check, mutant, named, capsys):
    assert_mutant_fails(check, mutant, named, capsys)


def test_every_exercise_has_three_mutants():
    assert_mutants_cover(MUTANTS, chapter=7, n_exercises=8)


# ---------------------------------------------------------------- plmkit's sft_step against outside references
def test_plmkit_sft_step_is_one_big_batch_and_hf_num_items_in_batch_loss():
    """sft.sft_step over uneven micro-batches = one SGD step on all examples in one batch, and its loss is
    transformers' ForCausalLMLoss with num_items_in_batch (the 2024 fix) summed over the micro-batches."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(0)

    def example(prompt, response):
        ids = torch.randint(1, checks.STEP_V, (prompt + response,), generator=g).tolist()
        return ids, [-100] * prompt + ids[prompt:]

    micro = [[example(2, 1)], [example(3, 6), example(1, 3), example(4, 5)], [example(2, 2), example(5, 1)]]
    a, b = checks._step_model(7), checks._step_model(7)
    n = sum(sum(t != -100 for t in lab[1:]) for mb in micro for _, lab in mb)
    with torch.no_grad():
        hf = sum(float(ForCausalLMLoss(a(x["input_ids"], attention_mask=x["attention_mask"]), x["labels"],
                                       checks.STEP_V, num_items_in_batch=torch.tensor(n)))
                 for x in (plmkit_sft.pad_batch(mb, 0) for mb in micro))
        mean_of_means = sum(float(plmkit_sft.sft_loss(a(x["input_ids"]), x["labels"]))
                            for x in (plmkit_sft.pad_batch(mb, 0) for mb in micro)) / len(micro)
    loss = plmkit_sft.sft_step(a, torch.optim.SGD(a.parameters(), lr=0.5), micro, 0)
    whole = plmkit_sft.sft_step(b, torch.optim.SGD(b.parameters(), lr=0.5), [[ex for mb in micro for ex in mb]], 0)
    assert math.isclose(loss, hf, rel_tol=1e-5) and math.isclose(loss, whole, rel_tol=1e-5)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert not math.isclose(mean_of_means, loss, rel_tol=1e-3)     # the cases tell the two normalisations apart


def test_the_books_own_solutions_pass():
    """The exercise cells of solutions/07_sft.ipynb (not the copies above) pass their checkers."""
    from solution_code import solutions
    ns = solutions("07_sft")
    for check, name in [(checks.check_render_chat, "render_chat"), (checks.check_encode_untrusted, "encode_untrusted"),
                        (checks.check_response_labels, "response_labels"),
                        (checks.check_masked_lm_loss, "masked_lm_loss"), (checks.check_pack_two, "pack_two"),
                        (checks.check_lora_linear, "LoRALinear"), (checks.check_exact_match, "exact_match_score"),
                        (checks.check_sft_step, "sft_step")]:
        verdict = check.honour(ns[name], seed=3)
        assert verdict, (name, verdict.line)
