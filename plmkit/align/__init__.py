"""Alignment: chat templates, supervised fine-tuning, LoRA (chapter 7)."""
