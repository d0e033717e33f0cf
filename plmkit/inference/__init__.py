"""Fast inference (chapter 9): the pieces an inference engine adds on top of a model.

    fast         static caches, one fixed-shape decode step (CUDA graphs on a GPU), fused q/k/v
    int8         weight-only int8 linear layers (per-output-channel absmax, round to nearest)
    speculative  speculative decoding with a draft model, exact in distribution
    paged        a paged KV cache (fixed-size blocks, a block table), for reading
    memory       bytes of weights and KV cache, FLOPs and bytes of prefill and decode, the roofline
"""
from .fast import FastDecoder, FastSeq2SeqState, StaticState, fuse_qkv_, unfuse_qkv_
from .int8 import Int8Linear, dequantize_int8, linear_weight_bytes, quantize_int8, quantize_model_int8_
from .memory import (DTYPE_BYTES, GPUS, LLAMA_CONFIGS, forward_cost, kv_bytes_per_token, kv_cache_bytes,
                     memory_report, pass_cost, roofline, weight_bytes)
from .paged import BlockPool, PagedKVCache, fragmentation, lookup_slot
from .speculative import (SpeculativeStats, accept_draft, expected_tokens_per_round, residual_distribution,
                          speculative_generate)

__all__ = ["FastDecoder", "FastSeq2SeqState", "StaticState", "fuse_qkv_", "unfuse_qkv_",
           "Int8Linear", "dequantize_int8", "linear_weight_bytes", "quantize_int8", "quantize_model_int8_",
           "DTYPE_BYTES", "GPUS", "LLAMA_CONFIGS", "forward_cost", "kv_bytes_per_token", "kv_cache_bytes",
           "memory_report", "pass_cost", "roofline", "weight_bytes",
           "BlockPool", "PagedKVCache", "fragmentation", "lookup_slot",
           "SpeculativeStats", "accept_draft", "expected_tokens_per_round", "residual_distribution",
           "speculative_generate"]
