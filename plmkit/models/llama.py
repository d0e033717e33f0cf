"""LLaMA (Touvron et al., 2023): GPT-2's decoder with four changes.

    token ids (B, T)
      -> token embedding wte                        (1) no position embedding added here ...
      -> n_layer Pre-norm decoder blocks:
           x = x + attn(norm1(x))                    ... (1) RoPE rotates q and k inside attention
           x = x + ffn(norm2(x))                     (2) RMSNorm instead of LayerNorm
                                                     (3) SwiGLU feed-forward, hidden width ~ 8/3 C
                                                     (4) grouped-query attention: H_kv <= H key/value heads
      -> final RMSNorm ln_f -> LM head (untied): logits (B, T, V)

and no biases anywhere. Each change is one field of :class:`LlamaConfig`
(``positions``, ``norm``, ``mlp``, ``num_key_value_heads``); set them to GPT-2's
choices (learned positions, LayerNorm with biases, GELU MLP, one K/V head per
query head, tied head) and this class computes exactly chapter 4's GPT: the
tests load a GPT's state dict into it and compare logits. That is how the
chapter's ablation ladder changes one thing at a time.

Every piece comes from :mod:`plmkit.nn`: ``DecoderBlock`` (with ``norm=RMSNorm``,
``ffn=GatedFeedForward``, ``n_kv_heads``, and a ``rotary`` function passed to
attention), ``RotaryEmbedding``/``apply_rotary``, ``build_attention_mask``
and the caches. This file adds the configuration, the embeddings and head,
and the conversion to and from Hugging Face's Llama format through
:mod:`plmkit.models.hub`:

    HF LlamaForCausalLM                            plmkit Llama
    model.embed_tokens.weight                      wte.weight
    model.layers.{i}.input_layernorm.weight        blocks.{i}.norm1.weight
    model.layers.{i}.self_attn.{q,k,v}_proj.weight blocks.{i}.attn.{q,k,v}_proj.weight
    model.layers.{i}.self_attn.o_proj.weight       blocks.{i}.attn.out_proj.weight
    model.layers.{i}.post_attention_layernorm.weight  blocks.{i}.norm2.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.weight   blocks.{i}.ffn.{gate,up,down}_proj.weight
    model.norm.weight                              ln_f.weight
    lm_head.weight                                 lm_head.weight (absent when tied)

Hugging Face's Llama weights are already in the rotate-half RoPE layout that
:func:`plmkit.nn.apply_rotary` uses; Meta's original files are interleaved
and need :class:`plmkit.models.hub.RopePermute` on q and k. So do llama.cpp's
GGUF files, which :meth:`Llama.from_gguf` reads through the GGUF table of
:func:`plmkit.models.hub.gguf_llama_rules` (SmolLM2-135M-Instruct: :mod:`plmkit.models.smollm2`).

    >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    >>> tuple(Llama(cfg)(torch.randint(50, (3, 10))).shape)          # (B, T, V)
    (3, 10, 50)

Letters: B batch, T time, C width (hidden_size), H heads, D head width, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import (DecoderBlock, FeedForward, GatedFeedForward, LayerNorm, LearnedPositionalEmbedding, RMSNorm,
                  RotaryEmbedding, apply_rotary, sinusoidal_table)
from . import hub
from .decoder import DecoderLM

__all__ = ["LlamaConfig", "Llama", "LLAMA_KEYS"]

NORMS = ("rmsnorm", "layernorm")
MLPS = ("gated", "plain")
POSITIONS = ("rope", "learned", "sinusoidal", "none")


@dataclass
class LlamaConfig:
    """The sizes of a LLaMA. Field names follow Hugging Face's ``LlamaConfig``.

    ``LlamaConfig()`` is LLaMA-7B (Touvron et al. 2023a): 32000 tokens, width
    4096, 32 layers of 32 heads, SwiGLU width 11008, 2048 positions.

    The last four fields are the chapter's ablation switches (not part of the
    Hugging Face format): LLaMA's choices by default.

    >>> f"{LlamaConfig().num_parameters() / 1e9:.2f}B"
    '6.74B'
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None        # None: = num_attention_heads (MHA); 1: MQA
    head_dim: int | None = None                   # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0              # > 1: linear position interpolation (Chen et al. 2023)
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    # the four changes, switchable for the ablation ladder
    norm: str = "rmsnorm"                         # or "layernorm" (with bias, GPT-2)
    mlp: str = "gated"                            # or "plain": fc2(act(fc1(x))) (GPT-2)
    positions: str = "rope"                       # or "learned" (GPT-2), "sinusoidal", "none"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        H = self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = H
        if not isinstance(self.num_key_value_heads, int) or self.num_key_value_heads < 1 \
                or H % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads must be a positive int dividing num_attention_heads={H}, "
                             f"got {self.num_key_value_heads!r}")
        if self.head_dim is None:
            if self.hidden_size % H:
                raise ValueError(f"num_attention_heads={H} must divide hidden_size={self.hidden_size} "
                                 f"(or set head_dim)")
            self.head_dim = self.hidden_size // H
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int (RoPE rotates pairs), got {self.head_dim!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rope_scaling_factor >= 1.0:
            raise ValueError(f"rope_scaling_factor must be >= 1, got {self.rope_scaling_factor!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        hub.activation_to_hf(self.hidden_act)                       # raises ValueError for an unknown name
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def is_llama(self) -> bool:
        """True when the four switches hold LLaMA's choices (only then is the Hugging Face format exact)."""
        return (self.norm, self.mlp, self.positions) == ("rmsnorm", "gated", "rope")

    def num_parameters(self) -> int:
        """Parameters implied by the configuration alone (no model built): embeddings, blocks, final norm, head.

        >>> llama2_70b = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        ...                          num_attention_heads=64, num_key_value_heads=8)
        >>> f"{llama2_70b.num_parameters() / 1e9:.2f}B"
        '68.98B'
        """
        C, F_, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        q_width, kv_width = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = C * q_width + 2 * C * kv_width + q_width * C
        if self.attention_bias:
            attn += q_width + 2 * kv_width + C
        n_mats = 3 if self.mlp == "gated" else 2
        mlp = n_mats * C * F_ + ((n_mats - 1) * F_ + C if self.mlp_bias else 0)
        norm = C if self.norm == "rmsnorm" else 2 * C
        block = attn + mlp + 2 * norm
        positions = self.max_position_embeddings * C if self.positions == "learned" else 0
        head = 0 if self.tie_word_embeddings else V * C
        return V * C + positions + L * block + norm + head

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Bytes the KV cache holds per token of context: 2 (K and V) x layers x H_kv x D x bytes.

        >>> LlamaConfig().kv_cache_bytes_per_token()       # LLaMA-7B in fp16: 512 KiB per token
        524288
        """
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * bytes_per_value

    # -- Hugging Face config.json ----------------------------------------
    def to_hf_dict(self) -> dict:
        """The config as Hugging Face's LlamaConfig writes it (refused unless the switches are LLaMA's)."""
        if not self.is_llama:
            raise ValueError(f"only LLaMA's choices (norm='rmsnorm', mlp='gated', positions='rope') have a Hugging "
                             f"Face Llama format; got norm={self.norm!r}, mlp={self.mlp!r}, "
                             f"positions={self.positions!r}")
        d = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
             "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
             "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
             "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
             "head_dim": self.head_dim, "max_position_embeddings": self.max_position_embeddings,
             "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
             "rope_scaling": (None if self.rope_scaling_factor == 1.0 else
                              {"rope_type": "linear", "factor": self.rope_scaling_factor}),
             "hidden_act": hub.activation_to_hf(self.hidden_act), "attention_bias": self.attention_bias,
             "mlp_bias": self.mlp_bias, "tie_word_embeddings": self.tie_word_embeddings,
             "attention_dropout": self.dropout, "initializer_range": self.initializer_range,
             "torch_dtype": "float32"}
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_gguf_metadata(cls, meta: dict, tie_word_embeddings: bool = False) -> "LlamaConfig":
        """The config a GGUF file's metadata describes (``general.architecture == "llama"``).

        Field names are llama.cpp's, prefixed by the architecture: ``llama.block_count`` is
        ``num_hidden_layers``, ``llama.embedding_length`` is ``hidden_size``, and so on. The
        vocabulary size is the number of tokens. The metadata does not say whether the head is
        tied to the token embedding: the tensors do (no ``output.weight``), so the caller passes
        `tie_word_embeddings` (:meth:`Llama.from_gguf` does). Token ids come from the tokenizer's fields. Refused: other architectures, RoPE scaling other than none or linear,
        mixtures of experts.

        >>> meta = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 32,
        ...         "llama.feed_forward_length": 64, "llama.attention.head_count": 4,
        ...         "llama.attention.head_count_kv": 2, "llama.context_length": 128,
        ...         "llama.rope.freq_base": 1e5, "llama.attention.layer_norm_rms_epsilon": 1e-5,
        ...         "tokenizer.ggml.tokens": ["a"] * 50}
        >>> c = LlamaConfig.from_gguf_metadata(meta)
        >>> c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.vocab_size, c.rope_theta
        (2, 2, 8, 50, 100000.0)
        """
        if not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict of GGUF metadata, got {type(meta).__name__}")
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"expected a GGUF file of a Llama (general.architecture 'llama'), got {arch!r}")

        def get(key, default=None):
            value = meta.get(f"llama.{key}", default)
            if value is None:
                raise ValueError(f"the GGUF metadata lacks llama.{key}: is it a complete llama.cpp file?")
            return value

        if meta.get("llama.expert_count", 0):
            raise ValueError("mixtures of experts (llama.expert_count > 0) are not implemented")
        kind = meta.get("llama.rope.scaling.type", "none")
        if kind not in ("none", "linear"):
            raise ValueError(f"llama.rope.scaling.type {kind!r} is not implemented; only none or 'linear'")
        heads = get("attention.head_count")
        width = get("embedding_length")
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = meta.get("llama.vocab_size") or (len(tokens) if tokens else None)
        if vocab is None:
            raise ValueError("the GGUF metadata has neither llama.vocab_size nor tokenizer.ggml.tokens")
        head_dim = meta.get("llama.attention.key_length") or meta.get("llama.rope.dimension_count") \
            or width // heads
        return cls(vocab_size=int(vocab), hidden_size=width, intermediate_size=get("feed_forward_length"),
                   num_hidden_layers=get("block_count"), num_attention_heads=heads,
                   num_key_value_heads=get("attention.head_count_kv", heads), head_dim=int(head_dim),
                   max_position_embeddings=get("context_length"),
                   rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
                   rope_theta=float(get("rope.freq_base", 10000.0)),
                   rope_scaling_factor=float(meta.get("llama.rope.scaling.factor", 1.0)) if kind == "linear" else 1.0,
                   tie_word_embeddings=bool(tie_word_embeddings),
                   bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                   eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
                   pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))

    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        """Read a Hugging Face Llama config.json (as a dict); refuse settings this model does not implement."""
        if d.get("model_type", "llama") != "llama":
            raise ValueError(f"expected a Llama config (model_type 'llama'), got {d.get('model_type')!r}")
        scaling = d.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ("default", "linear"):
            raise ValueError(f"rope_scaling of type {kind!r} is not implemented; only none or 'linear'")
        if d.get("pretraining_tp", 1) != 1:
            raise ValueError("pretraining_tp != 1 is not supported")
        heads = d.get("num_attention_heads", 32)
        return cls(vocab_size=d.get("vocab_size", 32000), hidden_size=d.get("hidden_size", 4096),
                   intermediate_size=d.get("intermediate_size", 11008),
                   num_hidden_layers=d.get("num_hidden_layers", 32), num_attention_heads=heads,
                   num_key_value_heads=d.get("num_key_value_heads") or heads, head_dim=d.get("head_dim"),
                   max_position_embeddings=d.get("max_position_embeddings", 2048),
                   rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=d.get("rope_theta", 10000.0),
                   rope_scaling_factor=float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0,
                   hidden_act=hub.activation_from_hf(d.get("hidden_act", "silu")),
                   attention_bias=d.get("attention_bias", False), mlp_bias=d.get("mlp_bias", False),
                   tie_word_embeddings=d.get("tie_word_embeddings", False),
                   dropout=d.get("attention_dropout", 0.0), initializer_range=d.get("initializer_range", 0.02),
                   bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
                   pad_token_id=d.get("pad_token_id"))


# Hugging Face name -> ours; {i} is the layer. LLaMA's q/k rows are already in rotate-half order.
LLAMA_KEYS = [
    ("model.embed_tokens.weight", "wte.weight"),
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.norm1.weight"),
    ("model.layers.{i}.self_attn.q_proj.weight", "blocks.{i}.attn.q_proj.weight"),
    ("model.layers.{i}.self_attn.k_proj.weight", "blocks.{i}.attn.k_proj.weight"),
    ("model.layers.{i}.self_attn.v_proj.weight", "blocks.{i}.attn.v_proj.weight"),
    ("model.layers.{i}.self_attn.o_proj.weight", "blocks.{i}.attn.out_proj.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.norm2.weight"),
    ("model.layers.{i}.mlp.gate_proj.weight", "blocks.{i}.ffn.gate_proj.weight"),
    ("model.layers.{i}.mlp.up_proj.weight", "blocks.{i}.ffn.up_proj.weight"),
    ("model.layers.{i}.mlp.down_proj.weight", "blocks.{i}.ffn.down_proj.weight"),
    ("model.norm.weight", "ln_f.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
_BIAS_KEYS = [(hf.replace(".weight", ".bias"), ours.replace(".weight", ".bias")) for hf, ours in LLAMA_KEYS
              if "_proj" in hf]


def _keymap(config: LlamaConfig) -> "hub.KeyMap":
    rules = [r for r in LLAMA_KEYS if not (config.tie_word_embeddings and r[0] == "lm_head.weight")]
    rules += [r for r in _BIAS_KEYS if (config.attention_bias and "self_attn" in r[0])
              or (config.mlp_bias and ".mlp." in r[0])]
    tied = ["lm_head.weight"] if config.tie_word_embeddings else []
    return hub.KeyMap(rules, n_layers=config.num_hidden_layers, tied=tied,
                      ignore=["lm_head.weight"] if config.tie_word_embeddings else [])


def _gguf_keymap(config: LlamaConfig) -> "hub.KeyMap":
    """The GGUF table (:func:`plmkit.models.hub.gguf_llama_rules`) expanded for this config."""
    rules = [r for r in hub.gguf_llama_rules(config.num_attention_heads, config.num_key_value_heads)
             if not (config.tie_word_embeddings and r[0] == "output.weight")]
    return hub.KeyMap(rules, n_layers=config.num_hidden_layers,
                      tied=["lm_head.weight"] if config.tie_word_embeddings else [])


class Llama(DecoderLM):
    """LLaMA causal language model: ``Llama(config)(input_ids)`` -> logits (B, T, V).

    ``forward(input_ids, attention_mask=None, position_ids=None, *, caches=None,
    cache_position=None, output_hidden_states=False)`` — the same signature and
    meaning as :class:`plmkit.models.gpt.GPT` (see there), so :func:`plmkit.generate.generate`
    drives both. `position_ids` pick the rotation angles; unlike GPT-2's table
    they are not limited to ``max_position_embeddings`` (what happens past it is
    the chapter's length-extrapolation experiment).
    """

    config_class = LlamaConfig
    _unexpected = "error"

    def __init__(self, config: LlamaConfig):
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"config must be a LlamaConfig, got {type(config).__name__}")
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.hidden_size)                      # (V, C)
        if c.positions == "learned":
            self.wpe = LearnedPositionalEmbedding(c.max_position_embeddings, c.hidden_size)
        elif c.positions == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_table(c.max_position_embeddings, c.hidden_size),
                                 persistent=False)
        self.rotary = (RotaryEmbedding(c.head_dim, c.max_position_embeddings, c.rope_theta, c.rope_scaling_factor)
                       if c.positions == "rope" else None)
        self.drop = nn.Dropout(c.dropout)
        if c.norm == "rmsnorm":
            norm = RMSNorm
        else:
            def norm(d, eps):
                return LayerNorm(d, eps=eps)
        if c.mlp == "gated":
            def ffn(d, d_ff):
                return GatedFeedForward(d, d_ff, activation=c.hidden_act, bias=c.mlp_bias, dropout=c.dropout)
        else:
            def ffn(d, d_ff):
                return FeedForward(d, d_ff, activation=c.hidden_act, bias=c.mlp_bias, dropout=c.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(c.hidden_size, c.num_attention_heads, c.intermediate_size, dropout=c.dropout,
                         norm_first=True, cross_attention=False, eps=c.rms_norm_eps, bias=c.attention_bias,
                         norm=norm, ffn=ffn, head_dim=c.head_dim, n_kv_heads=c.num_key_value_heads)
            for _ in range(c.num_hidden_layers))
        self.ln_f = norm(c.hidden_size, eps=c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LLaMA's initialisation as in Hugging Face: N(0, initializer_range) for every matrix and table,
        zero biases, unit norm gains."""
        from .common import init_weights_

        init_weights_(self, self.config.initializer_range)

    def num_parameters(self) -> int:
        """Parameters counted once (a tied head is the token embedding); equals config.num_parameters()."""
        return sum(p.numel() for p in self.parameters())

    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token embedding plus, for GPT-style models, an absolute position vector; RoPE adds nothing here."""
        x = self.wte(input_ids)                                                    # (B, T, C)
        if self.config.positions == "learned":
            x = x + F.embedding(position_ids, self.wpe.weight)
        elif self.config.positions == "sinusoidal":      # as in chapter 2 (Vaswani et al.): embeddings scaled
            x = x * self.config.hidden_size ** 0.5 + F.embedding(position_ids, self.sinusoid)   # up to the table's
        return x

    def _rotary(self, position_ids: torch.Tensor):
        """RoPE: rotate q and k by angles of their positions, inside every attention layer."""
        if self.rotary is None:
            return None
        cos, sin = self.rotary(position_ids, dtype=self.wte.weight.dtype)          # (B|1, T, D) each

        def rotary(q, k):
            return apply_rotary(q, k, cos, sin)
        return rotary

    def _kv_shape(self) -> tuple[int, int]:
        return self.config.num_key_value_heads, self.config.head_dim

    def _position_limit(self) -> tuple[int, str] | None:
        """A table of positions bounds them; RoPE has none to outrun (the length-extrapolation experiment)."""
        if self.config.positions in ("learned", "sinusoidal"):
            return self.config.max_position_embeddings, "max_position_embeddings"
        return None

    @staticmethod
    def _keymap(config: LlamaConfig) -> "hub.KeyMap":
        return _keymap(config)

    @classmethod
    def from_gguf(cls, path, map_location: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "Llama":
        """Load a llama.cpp GGUF file: config from its metadata, weights dequantized by the `gguf` package.

        The q/k rows come back from llama.cpp's interleaved RoPE order through the GGUF key table
        (:func:`plmkit.models.hub.gguf_llama_rules`); a file without ``output.weight`` has its head
        tied to the token embedding. Quantized weights are dequantized (a Q4_1 file gives the
        4-bit model's weights in float32, not the original fp16 ones).

            >>> model = Llama.from_gguf(smollm2.gguf_path())                       # doctest: +SKIP
            >>> model.config.num_hidden_layers, model.config.num_key_value_heads   # doctest: +SKIP
            (30, 3)
        """
        meta, state = hub.read_gguf(path)
        return cls.from_gguf_state(meta, state, map_location=map_location, dtype=dtype)

    @classmethod
    def from_gguf_state(cls, meta: dict, state: dict, map_location: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "Llama":
        """:meth:`from_gguf` for a file already read by :func:`plmkit.models.hub.read_gguf` (metadata, tensors)."""
        config = LlamaConfig.from_gguf_metadata(meta, tie_word_embeddings="output.weight" not in state)
        with torch.device("meta"):                     # no memory, no random initialisation: every weight
            model = cls(config)                        # becomes the file's tensor itself (assign, no copy)
        hub.load_hf_state(model, state, _gguf_keymap(config), assign=True)
        model.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                       config.rope_scaling_factor)               # the one buffer, not in the file
        if config.tie_word_embeddings:
            model.lm_head.weight = model.wte.weight
        return model.to(device=map_location, dtype=dtype).eval()
