"""Whole models, each in one file, loading and saving Hugging Face-format checkpoint folders.

    bert.py    BERT (and the ALBERT variant): encoder + MLM/NSP, classification and QA heads
    gpt.py     GPT-2: Pre-LN decoder blocks, learned positions, tied LM head, KV cache
    llama.py   LLaMA: GPT plus RMSNorm, SwiGLU, RoPE and grouped-query attention
"""
from .bert import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from .gpt import GPTConfig, GPT
from .llama import Llama, LlamaConfig
