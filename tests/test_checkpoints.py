"""The shipped biography checkpoints (chapters 7-9 start from them) load and still score their recorded loss."""
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from plmkit.align import bios
from plmkit.align.chat import CHAT_TEMPLATE, load_tokenizer, render
from plmkit.align.study import bio_loss, checkpoint, load_base
from plmkit.models.llama import Llama

NAMES = ["bios-llama", "bios-llama-v1", "bios-llama-draft"]
ROOT = Path(__file__).resolve().parents[1] / "checkpoints"


def test_checkpoints_fit_the_size_budget():
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file() and f.parent != ROOT)
    assert total <= 5 * 2 ** 20, f"checkpoints/ holds {total / 2 ** 20:.2f} MiB, the budget is 5 MiB"


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_scores_its_recorded_loss(name):
    record = json.load(open(ROOT / name / "pretraining.json"))
    model, tok, people = load_base(checkpoint(name))
    assert record["corpus"]["people"] == len(people) and record["parameters"] == model.num_parameters()
    loss = bio_loss(model, tok, people, record["corpus"]["variety"], seed=record["held_out"]["seed"],
                    rows=record["held_out"]["rows"])
    assert abs(loss - record["held_out"]["loss"]) < 1e-4, (loss, record["held_out"]["loss"])
    assert loss < 0.5 * torch.log(torch.tensor(float(tok.get_vocab_size()))).item()    # far below uniform


def test_base_checkpoint_is_a_hugging_face_llama_with_a_chat_template():
    folder = checkpoint("bios-llama")
    ours = Llama.from_pretrained(folder).eval()
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    hf_tok = PreTrainedTokenizerFast.from_pretrained(folder)
    tok = load_tokenizer(folder)
    assert hf_tok.chat_template == CHAT_TEMPLATE
    person = bios.make_people(1000, seed=0)[0]
    messages = [{"role": "user", "content": bios.qa_pairs(person)[1][0]}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True)
    assert ids == tok.encode(render(messages, add_generation_prompt=True)).ids
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, rtol=1e-4, atol=1e-4)
