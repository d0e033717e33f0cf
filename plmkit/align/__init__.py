"""Alignment: supervised fine-tuning (chapter 7) and learning from preferences (chapter 8).

Chapter 8's modules, one idea each: :mod:`.reward` (a reward model trained on
pairwise comparisons), :mod:`.dpo` (direct preference optimisation) and
:mod:`.ppo` (RLHF with proximal policy optimisation). Import them as modules:
``from plmkit.align import dpo``.
"""
