"""What inference costs: bytes of weights and KV cache, FLOPs and bytes of a forward pass, the roofline.

**KV cache.** Every layer keeps a key and a value vector for each key/value
head at each position:

    bytes per token = 2 (K and V) x layers x H_kv x head_dim x bytes per value

Multi-head attention has H_kv = H (so H_kv x head_dim is the model width),
grouped-query attention fewer (LLaMA-2-70B: 8 of 64), multi-query one. The
cache for a batch is that times batch x context length.

**Prefill vs decode.** A forward pass over T_new new tokens with T_past cached
ones does about 2 x parameters x T_new FLOPs in the matrix products (one
multiply and one add per weight per token) plus the attention scores and
weighted sums, 4 x layers x H x head_dim FLOPs per (query, key) pair. It reads
every weight matrix once, reads the cached keys/values and writes the new ones
(:func:`pass_cost`).
Arithmetic intensity = FLOPs / bytes. Prefill (T_new in the hundreds) does
hundreds of FLOPs per byte; a decode step at batch 1 (T_new = 1) about one per
byte per weight (2 FLOPs per 2-byte weight).

**Roofline** (Williams et al. 2009): attainable FLOP/s = min(peak FLOP/s,
intensity x memory bandwidth). Below the ridge point peak / bandwidth the
pass is memory-bound: decode at batch 1 is, far below it.

    >>> from plmkit.models.llama import LlamaConfig
    >>> kv_cache_bytes(LLAMA_CONFIGS["LLaMA-2-7B"], batch=1, context=4096) / 2**30     # GiB in fp16
    2.0
    >>> kv_cache_bytes(LLAMA_CONFIGS["LLaMA-2-70B"], batch=1, context=4096) / 2**30    # GQA: 8 KV heads of 64
    1.25
"""
from __future__ import annotations

from ..models.llama import LlamaConfig

__all__ = ["LLAMA_CONFIGS", "GPUS", "DTYPE_BYTES", "kv_bytes_per_token", "kv_cache_bytes", "weight_bytes",
           "pass_cost", "forward_cost", "roofline", "memory_report"]

# Published configurations (Hugging Face config.json of meta-llama/Llama-2-7b-hf, Llama-2-70b-hf,
# Meta-Llama-3-8B; Touvron et al. 2023b, Grattafiori et al. 2024).
LLAMA_CONFIGS = {
    "LLaMA-2-7B": LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "LLaMA-2-70B": LlamaConfig(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                               num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096),
    "LLaMA-3-8B": LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                              rope_theta=500000.0),
}

# Dense (no sparsity) 16-bit tensor-core peak and memory bandwidth from NVIDIA's data sheets;
# memory in GiB as sold (80 GB = 80e9 bytes is ~74.5 GiB; the table keeps the sold figure in GB).
GPUS = {
    "A100-80GB (SXM)": {"memory_gb": 80, "bf16_tflops": 312.0, "bandwidth_tbs": 2.039},
    "H100 (SXM)": {"memory_gb": 80, "bf16_tflops": 989.0, "bandwidth_tbs": 3.35},
    "RTX 4090": {"memory_gb": 24, "bf16_tflops": 165.0, "bandwidth_tbs": 1.008},
}

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}


def _check_config(config) -> None:
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"config must be a LlamaConfig, got {type(config).__name__}")


def _check_positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def kv_bytes_per_token(config: LlamaConfig, bytes_per_value: float = 2) -> float:
    """2 x layers x H_kv x head_dim x bytes: the cache one token of context costs (one sequence)."""
    _check_config(config)
    _check_positive(bytes_per_value=bytes_per_value)
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * bytes_per_value


def kv_cache_bytes(config: LlamaConfig, batch: int, context: int, bytes_per_value: float = 2) -> float:
    """The KV cache of `batch` sequences of `context` tokens."""
    _check_positive(batch=batch, context=context)
    return kv_bytes_per_token(config, bytes_per_value) * batch * context


def weight_bytes(config: LlamaConfig, bytes_per_value: float = 2) -> float:
    """All parameters at `bytes_per_value` each."""
    _check_config(config)
    _check_positive(bytes_per_value=bytes_per_value)
    return config.num_parameters() * bytes_per_value


def pass_cost(n_params: int, n_layers: int, n_heads: int, head_dim: int, n_kv_heads: int, new_tokens: int,
              past_tokens: int = 0, bytes_per_value: float = 2) -> tuple[float, float, float]:
    """(FLOPs, bytes, FLOPs per byte) of one forward pass of one sequence.

    n_params: the parameters used as matrices (every linear layer, the LM head;
    not the embedding table, of which a pass reads only its tokens' rows).
    FLOPs: 2 per parameter per new token (a multiply and an add), plus attention,
    4 x layers x heads x head_dim per (query, visible key) pair (q.k and the
    weighted sum of v, 2 FLOPs per element each); causal: new token i sees
    past_tokens + i + 1 keys. Bytes: every parameter read once, the cached
    keys/values read, the new ones written (2 x layers x n_kv_heads x head_dim
    values per token), activations ignored.

    >>> f, b, i = pass_cost(1000, 2, 4, 8, 2, new_tokens=1, past_tokens=9, bytes_per_value=2)
    >>> f, b                   # 2*1000 + 4*2*4*8*10 ;  1000*2 + (2*2*2*8*2)*10
    (4560.0, 3280.0)
    """
    for name, value in (("n_params", n_params), ("n_layers", n_layers), ("n_heads", n_heads),
                        ("head_dim", head_dim), ("n_kv_heads", n_kv_heads), ("new_tokens", new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(past_tokens, bool) or not isinstance(past_tokens, int) or past_tokens < 0:
        raise ValueError(f"past_tokens must be an int >= 0, got {past_tokens!r}")
    _check_positive(bytes_per_value=bytes_per_value)
    pairs = new_tokens * past_tokens + new_tokens * (new_tokens + 1) // 2
    flops = 2 * n_params * new_tokens + 4 * n_layers * n_heads * head_dim * pairs
    kv_per_token = 2 * n_layers * n_kv_heads * head_dim * bytes_per_value
    bytes_moved = n_params * bytes_per_value + kv_per_token * (past_tokens + new_tokens)
    return float(flops), float(bytes_moved), flops / bytes_moved


def forward_cost(config: LlamaConfig, new_tokens: int, past_tokens: int = 0, batch: int = 1,
                 bytes_per_value: float = 2) -> dict:
    """:func:`pass_cost` for a LLaMA configuration and `batch` sequences (the weights are read once for all).

    Returns a dict of flops, bytes and intensity.
    """
    _check_config(config)
    _check_positive(batch=batch)
    c = config
    matmul = c.num_parameters() - (0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size)
    flops, _, _ = pass_cost(matmul, c.num_hidden_layers, c.num_attention_heads, c.head_dim,
                            c.num_key_value_heads, new_tokens, past_tokens, bytes_per_value)
    kv = kv_bytes_per_token(c, bytes_per_value)
    bytes_moved = matmul * bytes_per_value + batch * kv * (past_tokens + new_tokens)
    return {"flops": batch * flops, "bytes": float(bytes_moved), "intensity": batch * flops / bytes_moved}


def roofline(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """Attainable FLOP/s at `intensity` FLOPs/byte: min(peak, intensity x bandwidth).

    >>> roofline(1.0, 989e12, 3.35e12) / 1e12, roofline(1000.0, 989e12, 3.35e12) / 1e12
    (3.35, 989.0)
    """
    _check_positive(intensity=intensity, peak_flops=peak_flops, bandwidth=bandwidth)
    return min(peak_flops, intensity * bandwidth)


def memory_report(config: LlamaConfig, batch: int, context: int, weight_dtype: str = "bf16",
                  kv_dtype: str = "bf16", gpu_memory_gb: float = 80.0) -> dict:
    """Weights + KV cache in GB (1e9 bytes), and whether they fit a GPU of `gpu_memory_gb`.

    Activations and the framework's own memory are left out: "fits" is optimistic.
    """
    for name, value in (("weight_dtype", weight_dtype), ("kv_dtype", kv_dtype)):
        if value not in DTYPE_BYTES:
            raise ValueError(f"{name} must be one of {sorted(DTYPE_BYTES)}, got {value!r}")
    _check_positive(gpu_memory_gb=gpu_memory_gb)
    w = weight_bytes(config, DTYPE_BYTES[weight_dtype]) / 1e9
    kv = kv_cache_bytes(config, batch, context, DTYPE_BYTES[kv_dtype]) / 1e9
    return {"weights_gb": w, "kv_cache_gb": kv, "total_gb": w + kv, "fits": w + kv <= gpu_memory_gb}
