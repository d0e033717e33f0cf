"""Alignment: supervised fine-tuning (chapter 7) and learning from preferences (chapter 8).

Chapter 7's modules: :mod:`.chat` (the chat template and its Jinja export), :mod:`.sft`
(response-only labels, the masked loss, packing), :mod:`.lora` (low-rank adapters),
:mod:`.bios` (the synthetic biographies) and :mod:`.study` (one fine-tuning run and its
measurements). Chapter 8's, one idea each: :mod:`.reward` (a reward model trained on
pairwise comparisons), :mod:`.dpo` (direct preference optimisation), :mod:`.ppo`
(RLHF with proximal policy optimisation) and :mod:`.policy_gradient` (value-free policy gradients:
REINFORCE, RLOO, GRPO). Import them as modules:
``from plmkit.align import dpo``.
"""
