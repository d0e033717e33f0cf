"""Whole models, each in one file, loading and saving Hugging Face-format checkpoint folders.

    bert.py    BERT (and the ALBERT variant): encoder + MLM/NSP, classification and QA heads
    gpt.py     GPT-2: Pre-LN decoder blocks, learned positions, tied LM head, KV cache
    llama.py   LLaMA: GPT plus RMSNorm, SwiGLU, RoPE and grouped-query attention
    t5.py      T5: encoder-decoder with relative position bias, RMS norm, no biases, v1.0/v1.1 feed-forward
"""
from .bert import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from .gpt import GPTConfig, GPT
from .llama import Llama, LlamaConfig
from .t5 import T5Config, T5ForConditionalGeneration, T5Model
