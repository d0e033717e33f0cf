"""Fast inference (chapter 9): the pieces an inference engine adds on top of a model.

    fast         static caches, one fixed-shape decode step (CUDA graphs on a GPU), fused q/k/v
    int8         weight-only int8 linear layers (per-output-channel absmax, round to nearest)
    speculative  speculative decoding with a draft model, exact in distribution
    paged        a paged KV cache (fixed-size blocks, a block table), for reading
    memory       bytes of weights and KV cache, FLOPs and bytes of prefill and decode, the roofline
"""
from .fast import FastDecoder, FastSeq2SeqState, StaticState, fuse_qkv_, unfuse_qkv_

__all__ = ["FastDecoder", "FastSeq2SeqState", "StaticState", "fuse_qkv_", "unfuse_qkv_"]
