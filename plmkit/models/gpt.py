"""GPT-2: a stack of causal Transformer blocks that predicts the next token.

    token ids (B, T)
      -> token embedding wte + learned position embedding wpe, dropout
      -> n_layer Pre-LN decoder blocks (causal self-attention, GELU MLP), no cross-attention
      -> final LayerNorm ln_f
      -> LM head, tied to wte: logits (B, T, V)

Everything a block does comes from :mod:`plmkit.nn` (``DecoderBlock`` with
``norm_first=True, cross_attention=False``); this file adds the embeddings,
the final norm, the tied head, GPT-2's initialisation, and the conversion
to and from Hugging Face's GPT-2 checkpoint format. What it leaves out:
training (see :mod:`plmkit.train`) and decoding (see :mod:`plmkit.generate`).

Hugging Face's GPT-2 stores its linear layers as ``Conv1D`` with weight shape
(in, out), the transpose of ``nn.Linear``'s (out, in), and fuses the query,
key and value projections into one ``c_attn`` of width 3C:

    HF GPT2LMHeadModel                       plmkit GPT
    transformer.wte.weight        (V, C)     wte.weight
    transformer.wpe.weight        (P, C)     wpe.weight
    transformer.h.i.ln_1.*                   blocks.i.norm1.*
    transformer.h.i.attn.c_attn.weight (C, 3C) -> transpose, split in 3 -> blocks.i.attn.{q,k,v}_proj.weight
    transformer.h.i.attn.c_proj.weight (C, C)  -> transpose -> blocks.i.attn.out_proj.weight
    transformer.h.i.ln_2.*                   blocks.i.norm2.*
    transformer.h.i.mlp.c_fc.weight  (C, 4C) -> transpose -> blocks.i.ffn.fc1.weight
    transformer.h.i.mlp.c_proj.weight (4C, C) -> transpose -> blocks.i.ffn.fc2.weight
    transformer.ln_f.*                       ln_f.*
    lm_head.weight (tied: not stored)        lm_head.weight is wte.weight

    >>> cfg = GPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    >>> model = GPT(cfg)
    >>> tuple(model(torch.randint(50, (3, 10))).shape)          # (B, T, V)
    (3, 10, 50)

Letters in the shape comments: B batch, T time, C width (n_embd), V vocabulary, P positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import hub
from .common import init_weights_
from ..nn import DecoderBlock, LayerNorm, LearnedPositionalEmbedding
from .decoder import DecoderLM

__all__ = ["GPTConfig", "GPT"]


@dataclass
class GPTConfig:
    """The sizes of a GPT. Field names follow Hugging Face's ``GPT2Config``.

    ``GPTConfig()`` is GPT-2 small (124M parameters): 50257 tokens, 1024
    positions, width 768, 12 layers, 12 heads, MLP width 4 * 768.

    >>> GPTConfig(vocab_size=65, n_positions=256, n_embd=384, n_layer=6, n_head=6).n_inner
    1536
    """

    vocab_size: int = 50257
    n_positions: int = 1024          # the longest context (block size)
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None       # MLP width; None means 4 * n_embd
    dropout: float = 0.0             # embeddings, attention weights, residual branches, MLP
    activation: str = "gelu_tanh"    # GPT-2 uses the tanh approximation of GELU ("gelu_new")
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head must divide n_embd, got n_embd={self.n_embd}, n_head={self.n_head}")
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        if not isinstance(self.n_inner, int) or self.n_inner < 1:
            raise ValueError(f"n_inner must be None or a positive int, got {self.n_inner!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        hub.activation_to_hf(self.activation)        # ValueError for a name plmkit.nn does not know

    # -- Hugging Face config.json ----------------------------------------
    def to_hf_dict(self) -> dict:
        """The config as Hugging Face's GPT2Config writes it to config.json."""
        d = {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size, "n_positions": self.n_positions, "n_ctx": self.n_positions,
            "n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head, "n_inner": self.n_inner,
            "activation_function": hub.activation_to_hf(self.activation),
            "resid_pdrop": self.dropout, "embd_pdrop": self.dropout, "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon, "initializer_range": self.initializer_range,
            "tie_word_embeddings": True, "scale_attn_weights": True,
            "torch_dtype": "float32",
        }
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPTConfig":
        """Read a Hugging Face GPT-2 config.json (as a dict); refuse settings this GPT does not implement."""
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"expected a GPT-2 config (model_type 'gpt2'), got {d.get('model_type')!r}")
        act = hub.activation_from_hf(d.get("activation_function", "gelu_new"), "activation_function")
        for flag, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                         ("add_cross_attention", False), ("tie_word_embeddings", True),
                         ("scale_attn_weights", True)):
            if d.get(flag, ok) != ok:
                raise ValueError(f"config.json sets {flag}={d[flag]!r}; this GPT implements only {flag}={ok}")
        drops = {d.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
        return cls(vocab_size=d.get("vocab_size", 50257), n_positions=d.get("n_positions", 1024),
                   n_embd=d.get("n_embd", 768), n_layer=d.get("n_layer", 12), n_head=d.get("n_head", 12),
                   n_inner=d.get("n_inner"), dropout=max(drops), activation=act,
                   layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
                   initializer_range=d.get("initializer_range", 0.02),
                   bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))


class GPT(DecoderLM):
    """GPT-2 language model: ``GPT(config)(input_ids)`` -> logits (B, T, V).

    The forward pass, caches and checkpoint loading are the decoder skeleton of
    :class:`plmkit.models.decoder.DecoderLM` (see there for every argument of
    ``forward``); GPT-2 contributes a learned position vector added to each token
    embedding, LayerNorm and a GELU MLP in its Pre-LN blocks, and a head tied to
    the token embedding.
    """

    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)                  # token embedding (V, C)
        self.wpe = LearnedPositionalEmbedding(c.n_positions, c.n_embd)   # position embedding (P, C)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(c.n_embd, c.n_head, c.n_inner, dropout=c.dropout, norm_first=True,
                         cross_attention=False, activation=c.activation, eps=c.layer_norm_epsilon)
            for _ in range(c.n_layer))
        self.ln_f = LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight                            # tied: one (V, C) matrix
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit norms, and the two
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layer),
        so that the stream's variance does not grow with depth."""
        std = self.config.initializer_range
        init_weights_(self, std)
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.ffn.fc2):
                nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * self.config.n_layer))

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied head is the token embedding); optionally without embeddings.

        >>> GPT(GPTConfig(vocab_size=10, n_positions=4, n_embd=8, n_layer=1, n_head=2)).num_parameters()
        1000
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n

    # -- what the decoder skeleton asks of a model ---------------------------------
    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids) + F.embedding(position_ids, self.wpe.weight)        # (B, T, C)

    def _kv_shape(self) -> tuple[int, int]:
        return self.config.n_head, self.config.n_embd // self.config.n_head

    def _position_limit(self) -> tuple[int, str]:
        return self.config.n_positions, "n_positions"

    @staticmethod
    def _keymap(config: GPTConfig) -> hub.KeyMap:
        return _keymap(config)

    @classmethod
    def _hf_state(cls, state: dict) -> dict:
        # Original OpenAI checkpoints have no "transformer." prefix.
        return {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in state.items()}


# ----------------------------------------------------------------------------- key mapping

# Hugging Face GPT2LMHeadModel name -> plmkit name; Conv1D weights are transposed, c_attn is q, k, v fused.
_QKV = tuple(f"blocks.{{i}}.attn.{p}_proj" for p in "qkv")
_HF_KEYS = [
    ("transformer.wte.weight", "wte.weight"),
    ("transformer.wpe.weight", "wpe.weight"),
    ("transformer.h.{i}.ln_1.weight", "blocks.{i}.norm1.weight"),
    ("transformer.h.{i}.ln_1.bias", "blocks.{i}.norm1.bias"),
    ("transformer.h.{i}.attn.c_attn.weight", tuple(q + ".weight" for q in _QKV), hub.Chain(hub.TRANSPOSE, hub.Split(3))),
    ("transformer.h.{i}.attn.c_attn.bias", tuple(q + ".bias" for q in _QKV), hub.Split(3)),
    ("transformer.h.{i}.attn.c_proj.weight", "blocks.{i}.attn.out_proj.weight", hub.TRANSPOSE),
    ("transformer.h.{i}.attn.c_proj.bias", "blocks.{i}.attn.out_proj.bias"),
    ("transformer.h.{i}.ln_2.weight", "blocks.{i}.norm2.weight"),
    ("transformer.h.{i}.ln_2.bias", "blocks.{i}.norm2.bias"),
    ("transformer.h.{i}.mlp.c_fc.weight", "blocks.{i}.ffn.fc1.weight", hub.TRANSPOSE),
    ("transformer.h.{i}.mlp.c_fc.bias", "blocks.{i}.ffn.fc1.bias"),
    ("transformer.h.{i}.mlp.c_proj.weight", "blocks.{i}.ffn.fc2.weight", hub.TRANSPOSE),
    ("transformer.h.{i}.mlp.c_proj.bias", "blocks.{i}.ffn.fc2.bias"),
    ("transformer.ln_f.weight", "ln_f.weight"),
    ("transformer.ln_f.bias", "ln_f.bias"),
]


def _keymap(config: GPTConfig) -> hub.KeyMap:
    # lm_head.weight is wte.weight (tied): not saved, and skipped if a file has it. Old files also
    # keep the causal-mask buffers attn.bias and attn.masked_bias.
    return hub.KeyMap(_HF_KEYS, config.n_layer, tied=["lm_head.weight"],
                      ignore=["lm_head.weight", "transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias"])
