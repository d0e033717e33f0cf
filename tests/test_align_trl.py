"""plmkit's DPO and reward-model losses equal TRL's (an outside reference) on a tiny random Llama.

Path taken: TRL's own trainers are built on the same weights and data (``DPOTrainer`` /
``RewardTrainer`` with their collators and tokenisation), and their ``compute_loss`` is
called on one batch; loss and every parameter gradient are compared with plmkit's
on our :class:`plmkit.models.llama.Llama` loaded from the same Hugging Face folder.
"""
import copy
import logging
import warnings

import pytest
import torch

import datasets
import transformers
import trl
from tokenizers import Tokenizer, models, pre_tokenizers

from plmkit.align import dpo, reward
from plmkit.models.llama import Llama

WORDS = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(29)]
PAIRS = [("w1 w2 w3", " w4 w5", " w6"),
         ("w7 w8", " w9", " w10 w11 w12"),
         ("w13", " w14 w15 w16", " w17 w18"),
         ("w19 w20 w21 w22", " w23", " w24")]


def tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")
    return fast


def hf_config():
    return transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def ours_from(hf_model, tmp_path, name):
    hf_model.save_pretrained(tmp_path / name)
    return Llama.from_pretrained(tmp_path / name).double()


RENAME = [("model.embed_tokens", "wte"), ("model.layers", "blocks"), ("input_layernorm", "norm1"),
          ("post_attention_layernorm", "norm2"), ("self_attn.o_proj", "attn.out_proj"), ("self_attn", "attn"),
          ("mlp", "ffn"), ("model.norm", "ln_f")]


def ours_name(hf_name):
    for a, b in RENAME:
        hf_name = hf_name.replace(a, b)
    return hf_name


def assert_all_grads_equal(ours, hf_named, unused=()):
    """Every parameter of the Hugging Face model has a gradient equal to ours (same name after renaming);
    `unused`: our parameters that the loss does not reach (the reward model's unused vocabulary head)."""
    mine = {n: p for n, p in ours.named_parameters() if n not in unused}
    assert sorted(mine) == sorted(ours_name(n) for n in hf_named)
    for name, p in hf_named.items():
        q = mine[ours_name(name)]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad.to(q.grad.dtype), atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_and_gradients_equal_trl_dpo_trainer(tmp_path, loss_type):
    torch.manual_seed(0)
    policy_hf = transformers.LlamaForCausalLM(hf_config()).double()
    with torch.no_grad():                         # a reference that differs from the policy
        ref_hf = copy.deepcopy(policy_hf)
        for p in ref_hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy, ref = ours_from(policy_hf, tmp_path, "policy"), ours_from(ref_hf, tmp_path, "ref")

    data = datasets.Dataset.from_dict({"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
                                       "rejected": [r for _, _, r in PAIRS]})
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), beta=0.1, loss_type=[loss_type], report_to=[],
                         per_device_train_batch_size=len(PAIRS), use_cpu=True, bf16=False, fp16=False,
                         dataset_num_proc=None, logging_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        trainer = trl.DPOTrainer(model=policy_hf, ref_model=ref_hf, args=args, train_dataset=data,
                                 processing_class=tokenizer())
        logging.disable(logging.NOTSET)
    examples = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    batch = trainer.data_collator(examples)
    trainer.model.train()
    want = trainer.compute_loss(trainer.model, batch)
    want.backward()

    # the same pairs through plmkit: the token ids TRL produced (EOS appended to each completion)
    ours_batch = dpo.preference_batch([e["prompt_ids"] for e in examples], [e["chosen_ids"] for e in examples],
                                      [e["rejected_ids"] for e in examples], pad_id=0)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(ours_batch[key], batch[key].cpu()), key
    got, metrics = dpo.dpo_step(policy, ref, ours_batch, beta=0.1, loss_type=loss_type)
    got.backward()
    assert abs(got.item() - want.item()) < 1e-5, (got.item(), want.item())
    assert abs(want.item() - 0.6931) > 1e-3 or loss_type == "ipo"   # not the trivial policy == reference value

    assert_all_grads_equal(policy, dict(trainer.model.named_parameters()))
    assert all(p.grad is None for p in ref.parameters())
    if loss_type == "sigmoid":                  # the logged metrics agree too
        trl_metrics = trainer._metrics["train"]
        assert abs(metrics["rewards/margin"] - trl_metrics["rewards/margins"][-1]) < 1e-6
        assert abs(metrics["rewards/accuracy"] - trl_metrics["rewards/accuracies"][-1]) < 1e-9


def test_reward_loss_and_gradients_equal_trl_reward_trainer(tmp_path):
    torch.manual_seed(1)
    config = hf_config()
    config.num_labels = 1
    hf = transformers.LlamaForSequenceClassification(config).double()
    # our reward model: the same backbone (through a causal-LM folder) and the same score vector
    lm = transformers.LlamaForCausalLM(hf_config()).double()
    lm.model.load_state_dict(hf.model.state_dict())
    backbone = ours_from(lm, tmp_path, "rm")
    ours = reward.RewardModel(backbone).double()
    with torch.no_grad():
        ours.score.weight.copy_(hf.score.weight)

    data = datasets.Dataset.from_dict({"chosen": [p + c for p, c, _ in PAIRS], "rejected": [p + r for p, _, r in PAIRS]})
    args = trl.RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], per_device_train_batch_size=len(PAIRS),
                            use_cpu=True, bf16=False, fp16=False, center_rewards_coefficient=None,
                            dataset_num_proc=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.RewardTrainer(model=hf, args=args, train_dataset=data, processing_class=tokenizer())
    examples = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    batch = trainer.data_collator(examples)
    trainer.model.train()
    want = trainer.compute_loss(trainer.model, dict(batch))
    want.backward()

    ci, cm = reward.pad_right([e["chosen_ids"] for e in examples], 0)
    ri, rm = reward.pad_right([e["rejected_ids"] for e in examples], 0)
    got, metrics = reward.reward_loss(ours, ci, cm, ri, rm)
    got.backward()
    assert abs(got.item() - want.item()) < 1e-5, (got.item(), want.item())
    hf_named = {n: p for n, p in hf.named_parameters() if n.startswith("model.")}
    assert_all_grads_equal(ours.backbone, hf_named, unused=("lm_head.weight",))
    torch.testing.assert_close(ours.score.weight.grad, hf.score.weight.grad, atol=1e-5, rtol=1e-5)
    assert abs(metrics["accuracy"] - trainer._metrics["train"]["accuracy"][-1]) < 1e-9
