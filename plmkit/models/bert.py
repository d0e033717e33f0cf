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
write Hugging Face BERT folders (``config.json`` + ``model.safetensors``). The
table ``_HF_LAYER_NAMES`` below is the whole translation between Hugging Face's
parameter names and ours; a ``bert.`` prefix (pre-training checkpoints) is
accepted.

Letters in the shape comments: B batch, T time (sequence length), H hidden
width, E embedding width (= H in BERT), V vocabulary, K number of labels.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..nn import EncoderBlock, LayerNorm, activation_fn, padding_mask

__all__ = [
    "BertConfig", "BertEmbeddings", "BertModel", "BertPooler", "BertLMHead",
    "BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
    "BertForTokenClassification", "BertForQuestionAnswering", "parameter_count", "PRESETS", "mean_pool",
]

# Hugging Face's `hidden_act` names -> plmkit.nn activation names.
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


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
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}")
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

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if T > c.max_position_embeddings:
            raise ValueError(f"input_ids has {T} positions; this model has max_position_embeddings="
                             f"{c.max_position_embeddings}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= c.vocab_size):
            raise ValueError(f"input_ids must be token ids in [0, vocab_size={c.vocab_size}), got values "
                             f"from {int(input_ids.min())} to {int(input_ids.max())}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(token_type_ids.shape)}")
        elif token_type_ids.numel() and (token_type_ids.min() < 0 or token_type_ids.max() >= c.type_vocab_size):
            raise ValueError(f"token_type_ids must be in [0, type_vocab_size={c.type_vocab_size})")
        positions = torch.arange(T, device=input_ids.device)              # (T,)
        x = self.word(input_ids) + self.position(positions) + self.segment(token_type_ids)   # (B, T, E)
        return self.project(self.drop(self.norm(x)))                      # (B, T, H)


class BertPooler(nn.Module):
    """The sentence vector for [CLS]-based heads: tanh(W · h_[CLS] + b), shape (B, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))                       # (B, H)


class _Base(nn.Module):
    """Weight initialisation and Hugging Face checkpoint loading/saving shared by every BERT class."""

    config: BertConfig
    _hf_architecture = "BertModel"
    _uses_pooler = True           # token classification and QA read every position, not the pooled [CLS]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- Hugging Face names ------------------------------------------------------
    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under Hugging Face's names (tied and shared copies listed once)."""
        out = {}
        for ours, tensor in self.state_dict().items():
            theirs = self._to_hf(ours)
            if theirs is not None:
                out[theirs] = tensor
        return out

    def _to_hf(self, key: str) -> str | None:
        return _bert_key_to_hf(key)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights named as in a Hugging Face BERT checkpoint (with or without the ``bert.`` prefix).

        Encoder weights must all be there (ValueError otherwise); a missing head
        is left at its random initialisation with a warning (fine-tuning a task
        head on a pre-trained encoder); checkpoint weights this class has no use
        for (an MLM head when loading a BertModel) are ignored.
        """
        # Accept both "bert.encoder..." (pre-training / task checkpoints) and "encoder..." (BertModel).
        if not any(k.startswith("bert.") for k in state):
            state = {("bert." + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v
                     for k, v in state.items()}
        if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
            state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
        wanted = {}
        for ours in self.state_dict():
            theirs = self._to_hf(ours)
            if theirs is not None:
                wanted[ours] = "bert." + theirs if isinstance(self, BertModel) else theirs
        missing = [theirs for theirs in wanted.values() if theirs not in state]
        # The pooler is optional: Hugging Face's token-classification and QA models have none.
        base_missing = [k for k in missing if k.startswith("bert.") and not k.startswith("bert.pooler.")]
        if base_missing:
            raise ValueError(f"the checkpoint lacks {len(base_missing)} encoder weights, e.g. "
                             f"{base_missing[:3]}: is it a BERT checkpoint with this config?")
        if not self._uses_pooler:
            missing = [k for k in missing if not k.startswith("bert.pooler.")]
        if missing:
            warnings.warn(f"{type(self).__name__}: newly initialised (not in the checkpoint): {missing}")
        new_state = self.state_dict()
        for ours, theirs in wanted.items():
            if theirs in state:
                t = state[theirs]
                if tuple(t.shape) != tuple(new_state[ours].shape):
                    raise ValueError(f"checkpoint weight {theirs} has shape {tuple(t.shape)}, "
                                     f"the model expects {tuple(new_state[ours].shape)}")
                new_state[ours] = t.to(new_state[ours].dtype)
        self.load_state_dict(new_state)
        self._tie()

    def _tie(self) -> None:
        """Point every output embedding at the input embedding (MLM heads)."""

    # -- folders ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides):
        """Load a Hugging Face-format folder (``config.json`` + ``model.safetensors``); eval mode.

        `overrides` replace config values (e.g. ``num_labels=3``, ``hidden_dropout_prob=0.0``).
        """
        from safetensors.torch import load_file
        path = os.fspath(path)
        cfg_file, weights = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        for f in (cfg_file, weights):
            if not os.path.isfile(f):
                raise ValueError(f"path must be a folder with config.json and model.safetensors; {f} is missing")
        with open(cfg_file) as fh:
            d = json.load(fh)
        if d.get("model_type", "bert") != "bert":
            raise ValueError(f"path holds a {d.get('model_type')!r} checkpoint; this class reads 'bert' ones")
        model = cls(BertConfig.from_dict(d, **overrides))
        model.load_hf_state_dict(load_file(weights))
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` that Hugging Face's ``from_pretrained`` reads."""
        from safetensors.torch import save_file
        c = self.config
        if c.share_layers or c.embedding_width != c.hidden_size:
            raise ValueError("the ALBERT variant (share_layers / embedding_size) has no Hugging Face BERT format; "
                             "save it with torch.save(model.state_dict(), ...)")
        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.hf_state_dict().items()}
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        cfg = {**c.to_dict(), "architectures": [self._hf_architecture], "torch_dtype": "float32"}
        with open(os.path.join(path, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2, sort_keys=True)


class BertModel(_Base):
    """The encoder: ``model(input_ids, attention_mask=None, token_type_ids=None)`` → hidden states (B, T, H).

    `attention_mask` (B, T) holds 1 for real tokens and 0 for padding; padded
    positions are never attended to (their own outputs are meaningless).
    ``model.pooler(hidden)`` gives the (B, H) [CLS] sentence vector.

    >>> cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                  intermediate_size=64)
    >>> model = BertModel(cfg).eval()
    >>> h = model(torch.tensor([[1, 5, 6, 2, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
    >>> tuple(h.shape)
    (1, 5, 32)
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        c = config
        self.embeddings = BertEmbeddings(c)

        def block():
            return EncoderBlock(c.hidden_size, c.num_attention_heads, c.intermediate_size, dropout=c.hidden_dropout_prob,
                                norm_first=False, activation=_ACTIVATIONS[c.hidden_act], eps=c.layer_norm_eps)

        # ALBERT: one block, applied num_hidden_layers times. BERT: num_hidden_layers blocks.
        self.encoder = nn.ModuleList([block() for _ in range(1 if c.share_layers else c.num_hidden_layers)])
        self.pooler = BertPooler(c)
        self.apply(self._init_weights)

    def blocks(self):
        """The block applied at each of the num_hidden_layers steps (the same one L times in ALBERT)."""
        return [self.encoder[0 if self.config.share_layers else i] for i in range(self.config.num_hidden_layers)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)                    # (B, T, H)
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            mask = padding_mask(attention_mask)                           # (B, 1, 1, T) bool, True = attend
        for block in self.blocks():
            x = block(x, mask=mask)                                       # (B, T, H)
        return x


def _bert_key_to_hf(key: str) -> str | None:
    """plmkit name of an encoder weight → Hugging Face ``BertModel`` name (None: not in HF's format)."""
    parts = key.split(".")
    if parts[0] == "embeddings":
        name = {"word": "word_embeddings", "position": "position_embeddings",
                "segment": "token_type_embeddings", "norm": "LayerNorm"}.get(parts[1])
        return None if name is None else ".".join(["embeddings", name, *parts[2:]])
    if parts[0] == "encoder":
        i, rest = parts[1], ".".join(parts[2:])
        for ours, theirs in _HF_LAYER_NAMES.items():
            if rest.startswith(ours + "."):
                return f"encoder.layer.{i}.{theirs}{rest[len(ours):]}"
        return None
    if parts[0] == "pooler":
        return key
    return None


# One encoder layer: plmkit.nn.EncoderBlock name -> Hugging Face BertLayer name.
_HF_LAYER_NAMES = {
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.out_proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "ffn.fc1": "intermediate.dense",
    "ffn.fc2": "output.dense",
    "norm2": "output.LayerNorm",
}


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
        self.act = activation_fn(_ACTIVATIONS[config.hidden_act])
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

    >>> cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                  intermediate_size=64)
    >>> mlm, nsp = BertForPreTraining(cfg)(torch.tensor([[1, 5, 6, 2]]))
    >>> tuple(mlm.shape), tuple(nsp.shape)
    ((1, 4, 100), (1, 2))
    """

    _hf_architecture = "BertForPreTraining"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = BertLMHead(config, self.bert.embeddings.word)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.mlm.apply(self._init_weights)
        self.nsp.apply(self._init_weights)
        self._tie()

    def _tie(self) -> None:
        self.mlm.decoder.weight = self.bert.embeddings.word.weight

    def _to_hf(self, key: str) -> str | None:
        if key.startswith("bert."):
            k = _bert_key_to_hf(key[5:])
            return None if k is None else "bert." + k
        return {"mlm.dense.weight": "cls.predictions.transform.dense.weight",
                "mlm.dense.bias": "cls.predictions.transform.dense.bias",
                "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
                "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
                "mlm.bias": "cls.predictions.bias",
                "nsp.weight": "cls.seq_relationship.weight",
                "nsp.bias": "cls.seq_relationship.bias"}.get(key)     # mlm.decoder.weight: tied, not stored

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)    # (B, T, H)
        return self.mlm(hidden), self.nsp(self.bert.pooler(hidden))      # (B, T, V), (B, 2)


class BertForMaskedLM(BertForPreTraining):
    """BERT with the MLM head only in use: ``model(input_ids, ...)`` → logits (B, T, V).

    (RoBERTa's setting: no NSP. The NSP layer is kept, unused, so that
    checkpoints stay interchangeable with :class:`BertForPreTraining`.)
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlm(self.bert(input_ids, attention_mask, token_type_ids))   # (B, T, V)


class _TaskModel(_Base):
    """BERT + one small task head, initialised at random (fine-tuning)."""

    _head = "classifier"

    def __init__(self, config: BertConfig, out_features: int):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        setattr(self, self._head, nn.Linear(config.hidden_size, out_features))
        getattr(self, self._head).apply(self._init_weights)

    def _to_hf(self, key: str) -> str | None:
        if key.startswith("bert."):
            k = _bert_key_to_hf(key[5:])
            return None if k is None else "bert." + k
        return key if key.startswith(self._head + ".") else None


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)    # (B, T, H)
        return self.classifier(self.drop(self.bert.pooler(hidden)))      # (B, K)


class BertForTokenClassification(_TaskModel):
    """One label per token (e.g. named entities): → logits (B, T, K)."""

    _hf_architecture = "BertForTokenClassification"
    _uses_pooler = False

    def __init__(self, config: BertConfig):
        super().__init__(config, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)    # (B, T, H)
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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)    # (B, T, H)
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
