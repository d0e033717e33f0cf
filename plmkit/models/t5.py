"""T5: an encoder reads the input in both directions, a decoder writes the output one token at a time.

    input ids (B, S)                               decoder input ids (B, T) = labels shifted right
      -> shared token embedding, dropout             -> the same shared embedding, dropout
      -> num_layers encoder blocks:                  -> num_decoder_layers decoder blocks:
           bidirectional self-attention                 causal self-attention
           feed-forward                                 cross-attention over the encoder output
      -> final RMS norm, dropout  ---- memory ---->     feed-forward
                                                     -> final RMS norm, dropout
                                                     -> LM head: logits (B, T, V)

Every block is a Pre-LN block from :mod:`plmkit.nn` (``EncoderBlock`` /
``DecoderBlock`` with ``norm_first=True``). What makes it T5 (Raffel et al.
2020) rather than the textbook Transformer of Vaswani et al. (2017):

* **Relative position bias, no position embeddings.** Each stack learns one
  scalar per (head, distance bucket) (:class:`~plmkit.nn.relative.RelativePositionBias`:
  32 buckets, max distance 128; bidirectional in the encoder, causal in the
  decoder). It is computed once, in the first layer of a stack, and added to
  the scores of every layer's self-attention; cross-attention gets none.
* **No 1/sqrt(d) scaling** of the scores (``scale=1.0``): the initialisation
  of the query projection, std (d_model * d_kv)^-0.5, does that job instead.
* **RMS norm**: no mean subtraction, no bias, variance in float32 (:class:`~plmkit.nn.norms.RMSNorm`).
* **No biases** in any linear layer.
* **Feed-forward**: ReLU (T5 v1.0, ``feed_forward_proj="relu"``) or gated GELU
  (T5 v1.1, ``"gated-gelu"``, which Hugging Face computes with the tanh
  approximation ``gelu_new``): ``wo(gelu(wi_0 x) * wi_1 x)`` (Shazeer 2020).
* **LM head** tied to the embedding (v1.0; then the decoder output is scaled by
  d_model^-0.5 first) or a separate matrix (v1.1, ``tie_word_embeddings=False``).
* **Decoder inputs are the labels shifted right**, starting from the pad id
  (:func:`shift_right`).

Decoding runs the encoder once and then the decoder one token per step: each
decoder layer keeps its self-attention keys/values in a cache that grows by
one position per step, and the cross-attention keys/values of the encoder
output in a :class:`~plmkit.nn.cache.CrossAttentionCache`, computed on the
first step only (:class:`Seq2SeqState`, driven by :func:`plmkit.generate.generate`).

Checkpoints load and save in Hugging Face's T5 format through :mod:`plmkit.models.hub`:

    HF T5ForConditionalGeneration                       plmkit
    shared.weight                                       shared.weight
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                        {encoder,decoder}.relative_bias.weight
    encoder.block.i.layer.0.SelfAttention.{q,k,v,o}     encoder.blocks.i.attn.{q,k,v,out}_proj
    encoder.block.i.layer.0.layer_norm                  encoder.blocks.i.norm1
    encoder.block.i.layer.1.DenseReluDense.{wi,wo}      encoder.blocks.i.ffn.{fc1,fc2}
                            (gated: wi_0, wi_1, wo)     (gated: gate_proj, up_proj, down_proj)
    encoder.block.i.layer.1.layer_norm                  encoder.blocks.i.norm2
    decoder.block.i.layer.0 (self-attention)            decoder.blocks.i.attn, norm1
    decoder.block.i.layer.1.EncDecAttention, layer_norm decoder.blocks.i.cross_attn, norm_cross
    decoder.block.i.layer.2 (feed-forward)              decoder.blocks.i.ffn, norm2
    {encoder,decoder}.final_layer_norm                  {encoder,decoder}.final_norm
    lm_head.weight (absent when tied)                   lm_head.weight

    >>> cfg = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    >>> model = T5ForConditionalGeneration(cfg)
    >>> src, labels = torch.randint(2, 40, (3, 7)), torch.randint(2, 40, (3, 5))
    >>> tuple(model(src, labels=labels).shape)                       # (B, T, V)
    (3, 5, 40)

Letters in the shape comments: B batch, S source (encoder) positions, T target
(decoder) positions, K decoder key positions, C d_model, H heads, V vocabulary.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import build_attention_mask
from ..nn.blocks import DecoderBlock, EncoderBlock
from ..nn.cache import CrossAttentionCache, KVCache, StaticKVCache
from ..nn.ffn import FeedForward, GatedFeedForward
from ..nn.norms import RMSNorm
from ..nn.relative import RelativePositionBias
from . import hub
from .outputs import ModelOutput

__all__ = ["T5Config", "T5Model", "T5ForConditionalGeneration", "shift_right", "seq2seq_loss", "Seq2SeqState",
           "t5_keymap", "init_t5_weights", "T5Stack"]

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- config

@dataclass
class T5Config:
    """The sizes of a T5. Field names and defaults follow Hugging Face's ``T5Config`` (t5-small's sizes).

    ``feed_forward_proj``: "relu" (v1.0), "gated-gelu" (v1.1), or "[gated-]ACT" with ACT one of
    relu, gelu, gelu_new, silu. ``num_decoder_layers`` None means as many as ``num_layers``.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be an int in [0, vocab_size={self.vocab_size}), got {value!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        self.activation, self.is_gated = _parse_feed_forward(self.feed_forward_proj)

    def to_hf_dict(self) -> dict:
        """The config as Hugging Face's T5Config writes it to config.json."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                 use_cache=True, torch_dtype="float32", dense_act_fn=_hf_activation(self.feed_forward_proj),
                 is_gated_act=self.is_gated)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "T5Config":
        """Read a Hugging Face T5 config.json (as a dict)."""
        if d.get("model_type", "t5") != "t5":
            raise ValueError(f"expected a T5 config (model_type 't5'), got {d.get('model_type')!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _parse_feed_forward(spec: str) -> tuple[str, bool]:
    """"relu" -> ("relu", False); "gated-gelu" -> ("gelu_tanh", True) as in Hugging Face (gelu_new)."""
    if not isinstance(spec, str):
        raise ValueError(f"feed_forward_proj must be a string such as 'relu' or 'gated-gelu', got {spec!r}")
    parts = spec.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(f"feed_forward_proj must be 'ACT' or 'gated-ACT', got {spec!r}")
    act = "gelu_new" if spec == "gated-gelu" else parts[-1]       # HF's special case for T5 v1.1
    try:
        return hub.activation_from_hf(act, "feed_forward_proj"), gated
    except ValueError:
        raise ValueError(f"feed_forward_proj {spec!r}: the activation must be one of relu, gelu, gelu_new, silu") \
            from None


def _hf_activation(spec: str) -> str:
    return "gelu_new" if spec == "gated-gelu" else spec.split("-")[-1]


# ----------------------------------------------------------------------------- helpers

def shift_right(labels: torch.Tensor, decoder_start_token_id: int = 0, pad_token_id: int = 0) -> torch.Tensor:
    """Decoder inputs from labels: start token first, everything moved one place right, -100 -> pad.

    At step t the decoder reads labels[:t] (teacher forcing) and is scored on labels[t].

    >>> shift_right(torch.tensor([[5, 6, 1, -100]]))
    tensor([[0, 5, 6, 1]])
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or labels.is_floating_point():
        raise ValueError("labels must be an integer tensor of shape (B, T)")
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)            # (B, T)


def _rms_norm(d_model: int, eps: float) -> RMSNorm:
    return RMSNorm(d_model, eps=eps)


def _check_ids(ids: torch.Tensor, name: str, vocab_size: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape (B, T), got "
                         f"{getattr(ids, 'shape', type(ids).__name__)}")
    if ids.device.type == "cpu" and ids.numel() and not torch.compiler.is_compiling():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} must be token ids in [0, vocab_size={vocab_size}), got values in [{lo}, {hi}]")


def _padding_mask(attention_mask: torch.Tensor | None, shape) -> torch.Tensor | None:
    """(B, S) 1/0 -> (B, 1, 1, S) bool, True = real token (a key every query may read)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must have the shape of the encoder input {tuple(shape)}, got "
                         f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    return attention_mask.bool()[:, None, None, :]


# ----------------------------------------------------------------------------- the two stacks

class T5Stack(nn.Module):
    """The blocks of one side (encoder or decoder), their shared relative bias and the final norm.

    The token embedding lives in the model (both stacks share it); a stack gets embeddings.
    ``cross_attention=False`` makes a decoder stack without cross-attention (a decoder-only
    model built from T5's blocks, for comparisons); its caches are (self, None) pairs.
    """

    def __init__(self, config: T5Config, is_decoder: bool, cross_attention: bool = True):
        super().__init__()
        c = config
        self.is_decoder = is_decoder
        n_layers = c.num_decoder_layers if is_decoder else c.num_layers
        if c.is_gated:
            def ffn(d_model, d_ff):
                return GatedFeedForward(d_model, d_ff, activation=c.activation, bias=False, dropout=c.dropout_rate)
        else:
            def ffn(d_model, d_ff):
                return FeedForward(d_model, d_ff, activation=c.activation, dropout=c.dropout_rate, bias=False)
        options = dict(dropout=c.dropout_rate, norm_first=True, eps=c.layer_norm_epsilon, bias=False,
                       norm=_rms_norm, ffn=ffn, head_dim=c.d_kv, scale=1.0)
        if is_decoder:
            options["cross_attention"] = cross_attention    # False: T5 blocks as a decoder-only model
        Block = DecoderBlock if is_decoder else EncoderBlock
        self.blocks = nn.ModuleList(Block(c.d_model, c.num_heads, c.d_ff, **options) for _ in range(n_layers))
        # One table for the whole stack (Hugging Face keeps it in block 0's self-attention).
        self.relative_bias = RelativePositionBias(c.num_heads, c.relative_attention_num_buckets,
                                                  c.relative_attention_max_distance, bidirectional=not is_decoder)
        self.final_norm = RMSNorm(c.d_model, eps=c.layer_norm_epsilon)
        self.dropout = nn.Dropout(c.dropout_rate)

    def encode(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encoder: x (B, S, C) embeddings -> hidden states [input, block 1, ..., final] (each (B, S, C))."""
        S = x.shape[1]
        mask = _padding_mask(attention_mask, x.shape[:2])                        # (B, 1, 1, S)
        bias = self.relative_bias(torch.arange(S, device=x.device), S)           # (1, H, S, S), every layer
        x = self.dropout(x)
        hidden = [x]
        for block in self.blocks:
            x = block(x, mask=mask, position_bias=bias)
            hidden.append(x)
        hidden[-1] = self.dropout(self.final_norm(x))
        return hidden

    def decode(self, x: torch.Tensor, memory: torch.Tensor | None, memory_mask: torch.Tensor | None,
               attention_mask: torch.Tensor | None = None, caches: list | None = None,
               cache_position: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Decoder: x (B, T, C) embeddings of the new tokens -> hidden states (each (B, T, C)).

        `memory` (B, S, C) is the encoder output (may be None once every cross cache is set),
        `memory_mask` its (B, 1, 1, S) padding mask. `caches`: one (self, cross) pair per block.
        """
        B, T, _ = x.shape
        if cache_position is None:
            past = len(caches[0][0]) if caches else 0
            cache_position = torch.arange(past, past + T, device=x.device)           # (T,)
        if caches is None:
            key_length = T
        elif isinstance(caches[0][0], StaticKVCache):
            key_length = caches[0][0].max_length                                    # the whole buffer
        else:
            key_length = len(caches[0][0]) + T                                      # past + new
        # One causal (+ padding) mask and one bias for every layer of the stack.
        mask = build_attention_mask(attention_mask, cache_position, key_length, causal=True)   # (B|1, 1, T, K)
        bias = self.relative_bias(cache_position, key_length)                                   # (1, H, T, K)
        x = self.dropout(x)
        hidden = [x]
        for i, block in enumerate(self.blocks):
            self_cache, cross_cache = caches[i] if caches is not None else (None, None)
            x = block(x, memory, mask=mask, memory_mask=memory_mask, cache=self_cache, is_causal=False,
                      cache_position=cache_position, position_bias=bias, cross_cache=cross_cache)
            hidden.append(x)
        hidden[-1] = self.dropout(self.final_norm(x))
        return hidden


# ----------------------------------------------------------------------------- the models

def init_t5_weights(model: nn.Module, c: T5Config, shared: nn.Embedding, stacks) -> None:
    """Hugging Face's T5 initialisation (factor f = initializer_factor), which replaces the 1/sqrt(d):
    embedding N(0, f²); q N(0, f²/(C·d_kv)); k, v N(0, f²/C); o N(0, f²/(H·d_kv)); feed-forward
    in N(0, f²/C), out N(0, f²/d_ff); relative bias N(0, f²/C); norms 1."""
    f = c.initializer_factor
    nn.init.normal_(shared.weight, 0.0, f * 1.0)
    for stack in stacks:
        nn.init.normal_(stack.relative_bias.weight, 0.0, f * c.d_model ** -0.5)
        for block in stack.blocks:
            attns = [block.attn] + ([block.cross_attn] if getattr(block, "has_cross", False) else [])
            for attn in attns:
                nn.init.normal_(attn.q_proj.weight, 0.0, f * (c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(attn.k_proj.weight, 0.0, f * c.d_model ** -0.5)
                nn.init.normal_(attn.v_proj.weight, 0.0, f * c.d_model ** -0.5)
                nn.init.normal_(attn.out_proj.weight, 0.0, f * (c.num_heads * c.d_kv) ** -0.5)
            ins = [block.ffn.gate_proj, block.ffn.up_proj] if c.is_gated else [block.ffn.fc1]
            out = block.ffn.down_proj if c.is_gated else block.ffn.fc2
            for lin in ins:
                nn.init.normal_(lin.weight, 0.0, f * c.d_model ** -0.5)
            nn.init.normal_(out.weight, 0.0, f * c.d_ff ** -0.5)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class T5Model(nn.Module):
    """Encoder + decoder without the LM head: returns the decoder's last hidden state (B, T, C).

    ``forward(input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
    encoder_output=None, caches=None, cache_position=None)``
    """

    def __init__(self, config: T5Config):
        super().__init__()
        if not isinstance(config, T5Config):
            raise ValueError(f"config must be a T5Config, got {type(config).__name__}")
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)                 # (V, C), both stacks
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Hugging Face's T5 initialisation (see :func:`init_t5_weights`)."""
        init_t5_weights(self, self.config, self.shared, (self.encoder, self.decoder))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               output_hidden_states: bool = False):
        """Run the encoder once: (B, S) ids -> (B, S, C) (or every layer's output)."""
        _check_ids(input_ids, "input_ids", self.config.vocab_size)
        hidden = self.encoder.encode(self.shared(input_ids), attention_mask)
        return hidden if output_hidden_states else hidden[-1]

    def decode(self, decoder_input_ids: torch.Tensor, encoder_output: torch.Tensor | None,
               attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None, *,
               caches: list | None = None, cache_position: torch.Tensor | None = None,
               output_hidden_states: bool = False):
        """Run the decoder on (B, T) ids reading the encoder output (B, S, C); -> (B, T, C)."""
        _check_ids(decoder_input_ids, "decoder_input_ids", self.config.vocab_size)
        if caches is not None and len(caches) != len(self.decoder.blocks):
            raise ValueError(f"caches must hold one (self, cross) cache pair per decoder block "
                             f"({len(self.decoder.blocks)}), got {len(caches)}")
        memory_mask = None
        if attention_mask is not None:
            if encoder_output is not None:
                memory_mask = _padding_mask(attention_mask, encoder_output.shape[:2])   # (B, 1, 1, S)
            else:
                memory_mask = attention_mask.bool()[:, None, None, :]
        hidden = self.decoder.decode(self.shared(decoder_input_ids), encoder_output, memory_mask,
                                     decoder_attention_mask, caches, cache_position)
        return hidden if output_hidden_states else hidden[-1]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                *, encoder_output: torch.Tensor | None = None, caches: list | None = None,
                cache_position: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_output is None:
            if input_ids is None:
                raise ValueError("pass input_ids (B, S) or a precomputed encoder_output (B, S, C)")
            encoder_output = self.encode(input_ids, attention_mask)
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids (B, T) is required (use shift_right(labels))")
        return self.decode(decoder_input_ids, encoder_output, attention_mask, decoder_attention_mask,
                           caches=caches, cache_position=cache_position)

    def new_caches(self, batch_size: int | None = None, max_length: int | None = None, static: bool = False,
                   dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> list:
        """One (self-attention cache, cross-attention cache) pair per decoder block.

        The self-attention cache grows by one position per step (or is a static
        (batch_size, H, max_length, d_kv) buffer with ``static=True``); the
        cross-attention cache is filled with the encoder's keys/values on the
        first step and read on every later one.
        """
        c = self.config
        if static:
            for name, value in (("batch_size", batch_size), ("max_length", max_length)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name} must be a positive int for a static cache, got {value!r}")
            ref = self.shared.weight
            return [(StaticKVCache(batch_size, c.num_heads, max_length, c.d_kv, dtype=dtype or ref.dtype,
                                   device=device or ref.device), CrossAttentionCache())
                    for _ in self.decoder.blocks]
        return [(KVCache(), CrossAttentionCache()) for _ in self.decoder.blocks]

    def num_parameters(self) -> int:
        """Parameters counted once (a tied LM head is the embedding)."""
        return sum(p.numel() for p in self.parameters())

    # -- Hugging Face checkpoints --------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors in Hugging Face's T5 format."""
        keymap = t5_keymap(self.config, lm_head=hasattr(self, "lm_head"))
        hub.write_folder(directory, self.config.to_hf_dict(), hub.hf_state_dict(self, keymap))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"):
        """Load a T5 checkpoint folder (config.json + model.safetensors), ours or Hugging Face's."""
        config_dict, state = hub.read_folder(directory, device=map_location)
        config = T5Config.from_hf_dict(config_dict)
        model = cls(config)
        hub.load_hf_state(model, state, t5_keymap(config, lm_head=hasattr(model, "lm_head")))
        return model.to(map_location)


class T5ForConditionalGeneration(T5Model):
    """T5 with its LM head: ``model(input_ids, attention_mask, decoder_input_ids | labels)`` -> logits (B, T, V).

    With `labels` and no `decoder_input_ids` the decoder reads ``shift_right(labels)``
    (the loss is :func:`seq2seq_loss`). With ``output_hidden_states=True`` a
    :class:`~plmkit.models.outputs.ModelOutput` comes back whose ``hidden_states``
    are the decoder's (embeddings first, the last after the final norm) and
    ``encoder_hidden_states`` the encoder's.
    """

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight                    # one (V, C) matrix
        else:
            nn.init.normal_(self.lm_head.weight, 0.0, config.initializer_factor * 1.0)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, T, C) -> logits (B, T, V); a tied head first scales by d_model^-0.5."""
        if self.config.tie_word_embeddings:
            hidden = hidden * self.config.d_model ** -0.5
        return self.lm_head(hidden)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                *, labels: torch.Tensor | None = None, encoder_output: torch.Tensor | None = None,
                caches: list | None = None, cache_position: torch.Tensor | None = None,
                output_hidden_states: bool = False):
        c = self.config
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids (B, T) or labels (B, T)")
            decoder_input_ids = shift_right(labels, c.decoder_start_token_id, c.pad_token_id)
        encoder_hidden = None
        if encoder_output is None:
            if input_ids is None:
                raise ValueError("pass input_ids (B, S) or a precomputed encoder_output (B, S, C)")
            encoder_hidden = self.encode(input_ids, attention_mask, output_hidden_states=True)
            encoder_output = encoder_hidden[-1]
        hidden = self.decode(decoder_input_ids, encoder_output, attention_mask, decoder_attention_mask,
                             caches=caches, cache_position=cache_position, output_hidden_states=True)
        logits = self.logits(hidden[-1])                                               # (B, T, V)
        if not output_hidden_states:
            return logits
        out = ModelOutput(logits=logits, hidden_states=hidden)
        out.encoder_hidden_states = encoder_hidden
        return out

    def decoder_state(self, *, use_cache: bool = True, static_cache: bool = False, max_new_tokens: int,
                      block_size: int | None = None) -> "Seq2SeqState":
        """The state :func:`plmkit.generate.generate` drives: encoder once, decoder step by step."""
        return Seq2SeqState(self, max_new_tokens, use_cache=use_cache, static=static_cache)


def seq2seq_loss(model: T5ForConditionalGeneration, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of the labels (B, T) given the inputs; positions with label -100 are skipped.

    `batch` holds ``input_ids`` (B, S), ``labels`` (B, T) and optionally ``attention_mask`` (B, S).
    """
    logits = model(batch["input_ids"], batch.get("attention_mask"), labels=batch["labels"])     # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------- decoding

try:                                              # the platform's decoder-state protocol
    from ..generate import DecoderState as _DecoderState
except ImportError:                               # pragma: no cover (older plmkit.generate)
    _DecoderState = object


class Seq2SeqState(_DecoderState):
    """An encoder–decoder behind :func:`plmkit.generate.generate`'s decoder-state protocol.

    prefill(input_ids, attention_mask): run the ENCODER once on the (N, S) inputs,
        then the decoder on the start token; return its next-token logits (N, V).
    step(next_ids): feed one token per row to the decoder and return the next logits.
        Cached: only the new token goes through the decoder; each layer appends its
        key/value to its self-attention cache and reads the cross-attention
        keys/values computed on the first step. Uncached: the decoder reruns over
        all tokens so far (the encoder output is still reused).
    reorder(index): beam search keeps rows `index`: the encoder output, its mask
        and every cache follow.
    start_ids: the returned sequences begin with the decoder start token, not the input.
    """

    def __init__(self, model: T5ForConditionalGeneration, max_new_tokens: int, use_cache: bool = True,
                 static: bool = False):
        if static and not use_cache:
            raise ValueError("static_cache=True needs use_cache=True")
        self.model, self.max_new_tokens, self.use_cache, self.static = model, max_new_tokens, use_cache, static
        self.encoder_runs = 0                       # how often the encoder ran (1 per generate call)

    def start_ids(self, input_ids, attention_mask):
        start = torch.full((input_ids.shape[0], 1), self.model.config.decoder_start_token_id,
                           dtype=torch.long, device=input_ids.device)
        return start, torch.ones_like(start)

    def prefill(self, input_ids, attention_mask):
        self.memory = self.model.encode(input_ids, attention_mask)                 # (N, S, C), once
        self.encoder_runs += 1
        self.memory_mask = attention_mask                                          # (N, S)
        self.ids = self.start_ids(input_ids, attention_mask)[0]                     # (N, 1)
        N = input_ids.shape[0]
        self.caches = (self.model.new_caches(N, self.max_new_tokens, static=self.static)
                       if self.use_cache else None)
        return self._logits(self.ids)

    def step(self, next_ids):
        self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)                  # (N, t+1)
        return self._logits(next_ids[:, None] if self.use_cache else self.ids)

    def reorder(self, index):
        self.memory, self.memory_mask, self.ids = self.memory[index], self.memory_mask[index], self.ids[index]
        for self_cache, cross_cache in self.caches or []:
            self_cache.reorder(index)
            cross_cache.reorder(index)

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        if self.use_cache:
            t = self.ids.shape[1] - ids.shape[1]                                     # positions already cached
            position = torch.arange(t, t + ids.shape[1], device=ids.device)
            # after the first step the cross caches hold the encoder's keys/values: no need to pass memory
            memory = self.memory if not self.caches[0][1].is_set else None
            hidden = self.model.decode(ids, memory, self.memory_mask, caches=self.caches, cache_position=position)
        else:
            hidden = self.model.decode(ids, self.memory, self.memory_mask)
        return self.model.logits(hidden[:, -1:])[:, 0]                               # (N, V)


# ----------------------------------------------------------------------------- checkpoint table

def t5_keymap(config: T5Config, lm_head: bool = True) -> hub.KeyMap:
    """The key table between Hugging Face's T5 and ours, for this config's depths and feed-forward
    (`lm_head`: the model has one, i.e. T5ForConditionalGeneration rather than T5Model)."""
    if config.is_gated:
        ffn = [("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")]
    else:
        ffn = [("wi", "fc1"), ("wo", "fc2")]
    attn = [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")]
    rules = [("shared.weight", "shared.weight")]
    for side, n_layers in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
        ffn_layer = 2 if side == "decoder" else 1
        rules.append((f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      f"{side}.relative_bias.weight"))
        rules.append((f"{side}.final_layer_norm.weight", f"{side}.final_norm.weight"))
        for i in range(n_layers):                   # written out: the two stacks may differ in depth
            hf, ours = f"{side}.block.{i}.layer", f"{side}.blocks.{i}"
            rules += [(f"{hf}.0.SelfAttention.{a}.weight", f"{ours}.attn.{b}.weight") for a, b in attn]
            rules.append((f"{hf}.0.layer_norm.weight", f"{ours}.norm1.weight"))
            if side == "decoder":
                rules += [(f"{hf}.1.EncDecAttention.{a}.weight", f"{ours}.cross_attn.{b}.weight") for a, b in attn]
                rules.append((f"{hf}.1.layer_norm.weight", f"{ours}.norm_cross.weight"))
            rules += [(f"{hf}.{ffn_layer}.DenseReluDense.{a}.weight", f"{ours}.ffn.{b}.weight") for a, b in ffn]
            rules.append((f"{hf}.{ffn_layer}.layer_norm.weight", f"{ours}.norm2.weight"))
    tied = []
    if lm_head and config.tie_word_embeddings:
        tied.append("lm_head.weight")
    elif lm_head:
        rules.append(("lm_head.weight", "lm_head.weight"))
    # Older exports also store the tied copies of the embedding (and of a tied head).
    ignore = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if config.tie_word_embeddings or not lm_head:
        ignore.append("lm_head.weight")
    return hub.KeyMap(rules, n_layers=0, tied=tied, ignore=ignore)
