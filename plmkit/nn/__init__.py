"""plmkit.nn — the layers every later model (BERT, GPT, T5, LLaMA) is assembled from.

Read the modules in this order; each one is a single idea:

    attention.py    scaled_dot_product_attention, causal_mask, padding_mask,
                    build_attention_mask, prefix_lm_mask, split_heads, merge_heads,
                    repeat_kv, MultiHeadAttention
    cache.py        KVCache (growing), StaticKVCache (pre-allocated), CrossAttentionCache
    positional.py   sinusoidal_table, SinusoidalPositionalEncoding, LearnedPositionalEmbedding
    norms.py        layer_norm, LayerNorm
    ffn.py          FeedForward (relu / gelu / gelu_tanh)
    blocks.py       EncoderBlock, DecoderBlock (Post-LN or Pre-LN)
    transformer.py  Encoder, Decoder, Seq2SeqTransformer, record_attention

Masks everywhere: boolean True = "may attend" (or float, added to the scores),
broadcastable to (B, H, T_q, T_k).
"""
from .attention import (MultiHeadAttention, build_attention_mask, causal_mask, merge_heads, padding_mask,
                        prefix_lm_mask, repeat_kv, scaled_dot_product_attention, split_heads)
from .blocks import DecoderBlock, EncoderBlock
from .cache import CrossAttentionCache, KVCache, StaticKVCache
from .ffn import ACTIVATIONS, FeedForward, activation_fn
from .norms import LayerNorm, layer_norm
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, sinusoidal_table
from .transformer import Decoder, Encoder, Seq2SeqTransformer, record_attention

__all__ = [
    "scaled_dot_product_attention", "causal_mask", "padding_mask", "build_attention_mask", "prefix_lm_mask",
    "split_heads", "merge_heads", "repeat_kv", "MultiHeadAttention",
    "KVCache", "StaticKVCache", "CrossAttentionCache",
    "sinusoidal_table", "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding",
    "layer_norm", "LayerNorm", "ACTIVATIONS", "activation_fn", "FeedForward",
    "EncoderBlock", "DecoderBlock", "Encoder", "Decoder", "Seq2SeqTransformer", "record_attention",
]
