"""BERT: a stack of bidirectional Transformer encoder blocks, pre-trained by filling in blanks.

Devlin et al. (2019). Every token attends to every other token, left and
right, in every layer ("deep bidirectionality"), which is why BERT cannot be
trained to predict the next word and is trained with masked language modelling
instead (see :mod:`plmkit.objectives`). The model, top to bottom:

    input_ids, token_type_ids ──► embeddings: word + position + segment, LayerNorm   (B, T, H)
                               ──► L × EncoderBlock (Post-LN, from plmkit.nn)       (B, T, H)
                               ──► heads: MLM (every position, tied to the word embeddings)  (B, T, V)
                                          NSP / SOP and sequence classification ([CLS] → pooler)  (B, 2)
                                          token classification (every position)     (B, T, labels)
                                          span QA (start / end score per position)  (B, T) × 2

The ALBERT variant (Lan et al. 2020) is the same file with two switches of
:class:`BertConfig`: ``embedding_size`` E < H factorises the V × H embedding
into V × E plus an E → H projection, and ``share_layers=True`` runs ONE encoder
block L times. :func:`parameter_count` gives the count by formula.

Checkpoints: ``from_pretrained(folder)`` / ``save_pretrained(folder)`` read and
write Hugging Face BERT folders (``config.json`` + ``model.safetensors``)
through :mod:`plmkit.models.hub`. The table ``_HF_KEYS`` below is the whole
translation between Hugging Face's parameter names and ours; a ``bert.``
prefix (pre-training checkpoints) is accepted.

Every forward takes ``(input_ids, attention_mask=None, token_type_ids=None,
position_ids=None, *, output_hidden_states=False)``; with
``output_hidden_states=True`` it returns an object whose ``hidden_states``
lists the embedding output and then each layer's output (Hugging Face's
convention). Inputs are validated without a host-device sync on a GPU, and
the attention mask is built once per forward.

Letters in the shape comments: B batch, T time (sequence length), H hidden
width, E embedding width (= H in BERT), V vocabulary, K number of labels.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..nn import EncoderBlock, LayerNorm, activation_fn, padding_mask
from ..nn.validation import check_token_ids, values_readable
from . import hub
from .common import EncoderOutput, init_weights_
from .outputs import ModelOutput

__all__ = [
    "BertConfig", "BertEmbeddings", "BertModel", "BertPooler", "BertLMHead",
    "BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
    "BertForTokenClassification", "BertForQuestionAnswering", "parameter_count", "PRESETS", "mean_pool",
]

logger = logging.getLogger(__name__)


@dataclass
class BertConfig:
    """The sizes of a BERT (or ALBERT) model. Field names are those of Hugging Face's ``config.json``.

    >>> c = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                intermediate_size=64)
    >>> c.head_dim, c.embedding_width
    (8, 32)
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1   # plmkit.nn blocks use hidden_dropout_prob for both
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    num_labels: int = 2
    # ALBERT's two switches (BERT: None and False).
    embedding_size: int | None = None
    share_layers: bool = False
    extra: dict = field(default_factory=dict, repr=False)   # other config.json keys, kept for saving

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads must divide hidden_size={self.hidden_size}, "
                             f"got {self.num_attention_heads}")
        hub.activation_from_hf(self.hidden_act, "hidden_act")       # ValueError for an unknown name
        if self.embedding_size is not None and (not isinstance(self.embedding_size, int) or self.embedding_size < 1):
            raise ValueError(f"embedding_size must be None or a positive int, got {self.embedding_size!r}")
        if not 0.0 <= self.hidden_dropout_prob < 1.0:
            raise ValueError(f"hidden_dropout_prob must be in [0, 1), got {self.hidden_dropout_prob}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_width(self) -> int:
        """E: the width of the embedding tables (H for BERT, smaller for ALBERT)."""
        return self.embedding_size or self.hidden_size

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides) -> "BertConfig":
        """Build from a Hugging Face ``config.json`` dict; unknown keys are kept in ``extra``."""
        d = {**d, **overrides}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        if "num_labels" not in overrides and "id2label" in d:
            known["num_labels"] = len(d["id2label"])
        extra = {k: v for k, v in d.items() if k not in names and k not in ("id2label", "label2id")}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("extra", "num_labels")}
        if self.embedding_size is None:
            d.pop("embedding_size")
        if not self.share_layers:
            d.pop("share_layers")
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return {**self.extra, **d, "model_type": "bert"}

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        """A published size: 'bert-base', 'bert-large', 'albert-base', ... 'albert-xxlarge' (see PRESETS)."""
        if name not in PRESETS:
            raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # Devlin et al. 2019, Table/§3: 110M and 340M parameters.
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # Lan et al. 2020, Table 1: 12M, 18M, 60M, 235M parameters (vocabulary 30,000, E = 128);
    # the released xxlarge checkpoint has 223M, which is what the formula gives.
    "albert-base": dict(vocab_size=30000, embedding_size=128, share_layers=True, hidden_size=768,
                        num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "albert-large": dict(vocab_size=30000, embedding_size=128, share_layers=True, hidden_size=1024,
                         num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "albert-xlarge": dict(vocab_size=30000, embedding_size=128, share_layers=True, hidden_size=2048,
                          num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192),
    "albert-xxlarge": dict(vocab_size=30000, embedding_size=128, share_layers=True, hidden_size=4096,
                           num_hidden_layers=12, num_attention_heads=64, intermediate_size=16384),
}


def parameter_count(config: BertConfig, pooler: bool = True) -> int:
    """The number of parameters of ``BertModel(config)`` by formula (no heads; the pooler if `pooler`).

    embeddings  (V + P + S)·E + 2E           three tables and a LayerNorm
    projection  E·H + H                      only when E != H (ALBERT)
    one layer   4(H² + H) + 2H + (H·I + I) + (I·H + H) + 2H
                Q, K, V, O       LayerNorm   FFN in       FFN out    LayerNorm
    layers      one layer × L, or × 1 when they are shared (ALBERT)
    pooler      H² + H

    >>> parameter_count(BertConfig.preset("bert-base"))      # "110M"
    109482240
    >>> parameter_count(BertConfig.preset("albert-base"))    # "12M"
    11683584
    """
    V, P, S = config.vocab_size, config.max_position_embeddings, config.type_vocab_size
    H, I, L, E = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.embedding_width
    embeddings = (V + P + S) * E + 2 * E
    projection = E * H + H if E != H else 0
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    layers = layer * (1 if config.share_layers else L)
    return embeddings + projection + layers + (H * H + H if pooler else 0)


# ----------------------------------------------------------------------------- the model

class BertEmbeddings(nn.Module):
    """word + position + segment embeddings, summed, then LayerNorm and dropout (and E → H for ALBERT).

    >>> emb = BertEmbeddings(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...                                 num_attention_heads=2, intermediate_size=32))
    >>> tuple(emb(torch.tensor([[2, 7, 3]]), torch.tensor([[0, 0, 1]])).shape)
    (1, 3, 16)
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        E, H = config.embedding_width, config.hidden_size
        self.config = config
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, E)
        self.segment = nn.Embedding(config.type_vocab_size, E)
        self.norm = LayerNorm(E, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        self.project = nn.Linear(E, H) if E != H else nn.Identity()     # ALBERT's factorisation

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {getattr(input_ids, 'shape', input_ids)!r}")
        B, T = input_ids.shape
        if T > c.max_position_embeddings:
            raise ValueError(f"input_ids has {T} positions; this model has max_position_embeddings="
                             f"{c.max_position_embeddings}")
        # Value checks read the ids on the host: only where that costs no GPU sync (plmkit.nn.validation).
        check_token_ids(input_ids, c.vocab_size, "input_ids", "vocab_size")
        if token_type_ids is None:
            segment = self.segment.weight[0]                              # (E,): every token in segment 0
        else:
            if not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != input_ids.shape:
                raise ValueError(f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {getattr(token_type_ids, 'shape', token_type_ids)!r}")
            check_token_ids(token_type_ids, c.type_vocab_size, "token_type_ids", "type_vocab_size")
            segment = self.segment(token_type_ids)                        # (B, T, E)
        if position_ids is None:
            position = self.position.weight[:T]                          # (T, E): positions 0 .. T-1
        else:
            if not isinstance(position_ids, torch.Tensor) or position_ids.shape not in ((B, T), (1, T), (T,)):
                raise ValueError(f"position_ids must have shape (B, T) = ({B}, {T}) or (T,), got "
                                 f"{getattr(position_ids, 'shape', position_ids)!r}")
            check_token_ids(position_ids, c.max_position_embeddings, "position_ids", "max_position_embeddings")
            position = self.position(position_ids)                        # (B|1, T, E) or (T, E)
        x = self.word(input_ids) + position + segment                     # (B, T, E)
        return self.project(self.drop(self.norm(x)))                      # (B, T, H)


class BertPooler(nn.Module):
    """The sentence vector for [CLS]-based heads: tanh(W · h_[CLS] + b), shape (B, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))                       # (B, H)


# One encoder: Hugging Face BertModel name -> plmkit BertModel name ({i}: the layer).
_HF_LAYER_NAMES = {                       # plmkit.nn.EncoderBlock -> Hugging Face BertLayer
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.out_proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "ffn.fc1": "intermediate.dense",
    "ffn.fc2": "output.dense",
    "norm2": "output.LayerNorm",
}
_HF_KEYS = [
    ("embeddings.word_embeddings.weight", "embeddings.word.weight"),
    ("embeddings.position_embeddings.weight", "embeddings.position.weight"),
    ("embeddings.token_type_embeddings.weight", "embeddings.segment.weight"),
    ("embeddings.LayerNorm.weight", "embeddings.norm.weight"),
    ("embeddings.LayerNorm.bias", "embeddings.norm.bias"),
    *[(f"encoder.layer.{{i}}.{theirs}.{p}", f"encoder.{{i}}.{ours}.{p}")
      for ours, theirs in _HF_LAYER_NAMES.items() for p in ("weight", "bias")],
    ("pooler.dense.weight", "pooler.dense.weight"),
    ("pooler.dense.bias", "pooler.dense.bias"),
]
# Names Hugging Face files may hold that no plmkit weight reads: a buffer, and copies of tied weights.
_HF_IGNORE = ["*embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]


class _Base(nn.Module):
    """Weight initialisation and Hugging Face checkpoint loading/saving shared by every BERT class.

    A subclass says what it adds to the encoder: ``_head_keys`` (its rules for
    :class:`plmkit.models.hub.KeyMap`, outside the ``bert.`` encoder) and
    ``_tied`` (its weights that are another weight).
    """

    config: BertConfig
    _hf_architecture = "BertModel"
    _uses_pooler = True           # token classification and QA read every position, not the pooled [CLS]
    _head_keys: list = []
    _tied: tuple = ()

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation of `module` and everything in it: N(0, 0.02) weights, zero biases."""
        init_weights_(module, self.config.initializer_range)

    # -- Hugging Face names ------------------------------------------------------
    def _encoder(self) -> "BertModel":
        return self if isinstance(self, BertModel) else self.bert

    def _keymap(self) -> hub.KeyMap:
        prefix = "" if isinstance(self, BertModel) else "bert."
        rules = [(prefix + theirs, prefix + ours) for theirs, ours in _HF_KEYS] + list(self._head_keys)
        return hub.KeyMap(rules, len(self._encoder().encoder), tied=self._tied, ignore=_HF_IGNORE)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under Hugging Face's names (tied and shared copies listed once)."""
        return hub.hf_state_dict(self, self._keymap())

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights named as in a Hugging Face BERT checkpoint (with or without the ``bert.`` prefix).

        Encoder weights must all be there (ValueError otherwise); a missing head
        is left at its random initialisation with a warning (fine-tuning a task
        head on a pre-trained encoder); checkpoint weights this class has no use
        for (an MLM head when loading a BertModel) are ignored.
        """
        if isinstance(self, BertModel):          # "bert.encoder..." -> "encoder..."; heads are then ignored
            state = {k[5:] if k.startswith("bert.") else k: v for k, v in state.items()}
        else:                                    # "encoder..." (a BertModel folder) -> "bert.encoder..."
            state = {("bert." + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v
                     for k, v in state.items()}
        if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
            state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
        keymap = self._keymap()
        # The pooler is optional (Hugging Face's token-classification and QA models have none), and so is
        # every head; encoder weights are not.
        optional = [k for k in self.state_dict()
                    if k.startswith(("pooler.", "bert.pooler.")) or not k.startswith(("bert.", "embeddings.", "encoder."))]
        new = hub.load_hf_state(self, state, keymap, optional=optional, unexpected="ignore")
        if not self._uses_pooler:
            new = [k for k in new if not k.startswith(("pooler.", "bert.pooler."))]
        if new:
            # logged, as Hugging Face does, not warnings.warn: a warning prints this file's path
            logger.warning(f"{type(self).__name__}: newly initialised (not in the checkpoint): "
                           f"{[keymap.hf_name(k) for k in new]}")
        self._tie()

    def _tie(self) -> None:
        """Point every output embedding at the input embedding (MLM heads)."""

    # -- folders ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides):
        """Load a Hugging Face-format folder (``config.json`` + ``model.safetensors``); eval mode.

        `overrides` replace config values (e.g. ``num_labels=3``, ``hidden_dropout_prob=0.0``).
        """
        d, state = hub.read_folder(path)
        if d.get("model_type", "bert") != "bert":
            raise ValueError(f"path holds a {d.get('model_type')!r} checkpoint; this class reads 'bert' ones")
        model = cls(BertConfig.from_dict(d, **overrides))
        model.load_hf_state_dict(state)
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` that Hugging Face's ``from_pretrained`` reads."""
        c = self.config
        if c.share_layers or c.embedding_width != c.hidden_size:
            raise ValueError("the ALBERT variant (share_layers / embedding_size) has no Hugging Face BERT format; "
                             "save it with torch.save(model.state_dict(), ...)")
        cfg = {**c.to_dict(), "architectures": [self._hf_architecture], "torch_dtype": "float32"}
        hub.write_folder(path, cfg, self.hf_state_dict())

    def _output(self, result, encoded, output_hidden_states: bool):
        """`result` as it is, or with the hidden states of `encoded` (an EncoderOutput) when asked."""
        if not output_hidden_states:
            return result
        return ModelOutput(logits=result, hidden_states=encoded.hidden_states)


class BertModel(_Base):
    """The encoder: ``model(input_ids, attention_mask=None, token_type_ids=None)`` → hidden states (B, T, H).

    `attention_mask` (B, T) holds 1 for real tokens and 0 for padding; padded
    positions are never attended to (their own outputs are meaningless).
    `position_ids` (B, T) or (T,) picks each token's position embedding
    (default 0 .. T-1). ``model.pooler(hidden)`` gives the (B, H) [CLS] sentence
    vector. With ``output_hidden_states=True`` the result is an
    :class:`~plmkit.models.common.EncoderOutput`: ``last_hidden_state`` and
    ``hidden_states`` (L + 1 tensors (B, T, H), the embeddings' output first).

    >>> cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                  intermediate_size=64)
    >>> model = BertModel(cfg).eval()
    >>> h = model(torch.tensor([[1, 5, 6, 2, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
    >>> tuple(h.shape)
    (1, 5, 32)
    >>> len(model(torch.tensor([[1, 5]]), output_hidden_states=True).hidden_states)   # embeddings + 2 layers
    3
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        c = config
        self.embeddings = BertEmbeddings(c)
        act = hub.activation_from_hf(c.hidden_act, "hidden_act")

        def block():
            return EncoderBlock(c.hidden_size, c.num_attention_heads, c.intermediate_size, dropout=c.hidden_dropout_prob,
                                norm_first=False, activation=act, eps=c.layer_norm_eps)

        # ALBERT: one block, applied num_hidden_layers times. BERT: num_hidden_layers blocks.
        self.encoder = nn.ModuleList([block() for _ in range(1 if c.share_layers else c.num_hidden_layers)])
        self.pooler = BertPooler(c)
        self._init_weights(self)

    def blocks(self):
        """The block applied at each of the num_hidden_layers steps (the same one L times in ALBERT)."""
        return [self.encoder[0 if self.config.share_layers else i] for i in range(self.config.num_hidden_layers)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
                output_hidden_states: bool = False):
        x = self.embeddings(input_ids, token_type_ids, position_ids)      # (B, T, H)
        mask = None
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {getattr(attention_mask, 'shape', attention_mask)!r}")
            mask = padding_mask(attention_mask)                           # (B, 1, 1, T) bool, once per forward
        hidden = [x]
        for block in self.blocks():
            x = block(x, mask=mask)                                       # (B, T, H)
            hidden.append(x)
        if output_hidden_states:
            return EncoderOutput(last_hidden_state=x, hidden_states=hidden)
        return x


class BertLMHead(nn.Module):
    """The MLM head: dense H→E, GELU, LayerNorm, then scores against every word embedding (+ bias).

    The output matrix IS the input embedding table (weight tying), so a
    token's input vector and its output vector are the same parameters.
    Works on any leading shape: (B, T, H) → (B, T, V), or (N, H) → (N, V) for
    the N masked positions only, which is all the loss needs.
    """

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        E = config.embedding_width
        self.dense = nn.Linear(config.hidden_size, E)
        self.act = activation_fn(hub.activation_from_hf(config.hidden_act, "hidden_act"))
        self.norm = LayerNorm(E, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(E, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight                     # tied: (V, E)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden)))) + self.bias   # (..., V)


class BertForPreTraining(_Base):
    """BERT with its two pre-training heads: ``model(input_ids, ...)`` → (MLM logits (B, T, V), NSP logits (B, 2)).

    NSP label 0 means "B follows A" (IsNext), 1 "B is random" (NotNext), as in
    Hugging Face. For ALBERT the same head predicts sentence order (SOP).
    With ``output_hidden_states=True``: a ModelOutput whose ``logits`` is that pair.

    >>> cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                  intermediate_size=64)
    >>> mlm, nsp = BertForPreTraining(cfg)(torch.tensor([[1, 5, 6, 2]]))
    >>> tuple(mlm.shape), tuple(nsp.shape)
    ((1, 4, 100), (1, 2))
    """

    _hf_architecture = "BertForPreTraining"
    _head_keys = [
        ("cls.predictions.transform.dense.weight", "mlm.dense.weight"),
        ("cls.predictions.transform.dense.bias", "mlm.dense.bias"),
        ("cls.predictions.transform.LayerNorm.weight", "mlm.norm.weight"),
        ("cls.predictions.transform.LayerNorm.bias", "mlm.norm.bias"),
        ("cls.predictions.bias", "mlm.bias"),
        ("cls.seq_relationship.weight", "nsp.weight"),
        ("cls.seq_relationship.bias", "nsp.bias"),
    ]
    _tied = ("mlm.decoder.weight",)                                       # is bert.embeddings.word.weight

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = BertLMHead(config, self.bert.embeddings.word)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self._init_weights(self.mlm)
        self._init_weights(self.nsp)
        self._tie()

    def _tie(self) -> None:
        self.mlm.decoder.weight = self.bert.embeddings.word.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
                output_hidden_states: bool = False):
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=True)
        hidden = enc.last_hidden_state                                    # (B, T, H)
        logits = self.mlm(hidden), self.nsp(self.bert.pooler(hidden))     # (B, T, V), (B, 2)
        return self._output(logits, enc, output_hidden_states)


class BertForMaskedLM(BertForPreTraining):
    """BERT with the MLM head only in use: ``model(input_ids, ...)`` → logits (B, T, V).

    (RoBERTa's setting: no NSP. The NSP layer is kept, unused, so that
    checkpoints stay interchangeable with :class:`BertForPreTraining`.)
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
                output_hidden_states: bool = False):
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=True)
        return self._output(self.mlm(enc.last_hidden_state), enc, output_hidden_states)   # (B, T, V)


class _TaskModel(_Base):
    """BERT + one small task head, initialised at random (fine-tuning).

    ``forward(input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
    output_hidden_states=False)`` runs the encoder, then the subclass's ``_predict``.
    """

    _head = "classifier"

    def __init__(self, config: BertConfig, out_features: int):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        setattr(self, self._head, nn.Linear(config.hidden_size, out_features))
        self._init_weights(getattr(self, self._head))
        # The head keeps its name in Hugging Face's files ("classifier.weight", "qa_outputs.bias").
        self._head_keys = [(f"{self._head}.{p}", f"{self._head}.{p}") for p in ("weight", "bias")]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
                output_hidden_states: bool = False):
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=True)
        return self._output(self._predict(enc.last_hidden_state), enc, output_hidden_states)

    def _predict(self, hidden: torch.Tensor):
        """The head on the encoder's output (B, T, H)."""
        raise NotImplementedError


class BertForSequenceClassification(_TaskModel):
    """One label per input from the pooled [CLS] vector: → logits (B, K), K = config.num_labels.

    >>> cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                  intermediate_size=64, num_labels=3)
    >>> tuple(BertForSequenceClassification(cfg)(torch.tensor([[1, 5, 2], [1, 7, 2]])).shape)
    (2, 3)
    """

    _hf_architecture = "BertForSequenceClassification"

    def __init__(self, config: BertConfig):
        super().__init__(config, config.num_labels)

    def _predict(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.bert.pooler(hidden)))     # (B, K)


class BertForTokenClassification(_TaskModel):
    """One label per token (e.g. named entities): → logits (B, T, K)."""

    _hf_architecture = "BertForTokenClassification"
    _uses_pooler = False

    def __init__(self, config: BertConfig):
        super().__init__(config, config.num_labels)

    def _predict(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(hidden))                        # (B, T, K)


class BertForQuestionAnswering(_TaskModel):
    """Extractive QA: a start score and an end score per token of ``[CLS] question [SEP] passage [SEP]``.

    → (start_logits (B, T), end_logits (B, T)); the answer is the passage span
    maximising start + end score.
    """

    _hf_architecture = "BertForQuestionAnswering"
    _uses_pooler = False
    _head = "qa_outputs"

    def __init__(self, config: BertConfig):
        super().__init__(config, 2)

    def _predict(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.qa_outputs(hidden).unbind(-1)                  # (B, T) each
        return start, end


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the vectors of the real tokens of each row: the sentence vector of Sentence-BERT.

    Padding must not count: with ``mask = [1, 1, 0]`` the result is the mean of
    the first two vectors, whatever the third holds. (Reimers & Gurevych 2019;
    MiniLM sentence embeddings then L2-normalise this vector.)

    >>> h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])    # (B=1, T=3, H=2)
    >>> mean_pool(h, torch.tensor([[1, 1, 0]]))
    tensor([[2., 3.]])
    """
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (B, T, H) and attention_mask (B, T); got {tuple(hidden.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)                    # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)                # (B, H)
