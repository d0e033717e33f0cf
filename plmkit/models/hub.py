"""Hugging Face checkpoints: one loader and one saver for every model of the book.

A Hugging Face model folder holds two files (large models split the second
into shards listed in ``model.safetensors.index.json``):

    config.json          the sizes, a JSON object whose field names differ per model family
    model.safetensors    a flat dictionary {name: tensor}

Our modules name their weights differently from Hugging Face's, and a few
keep them in another layout. Each model describes the difference ONCE, as a
table of rules, and this module does the rest: renaming, changing layouts,
and refusing a checkpoint that does not fit, with a message that names the
tensor. A rule is ``(hf_key, our_key)`` or ``(hf_key(s), our_key(s), transform)``;
``{i}`` in a key stands for the layer number, so one rule covers every layer:

    GPT2_KEYS = [
        # Hugging Face name                      plmkit name                          transform
        ("transformer.wte.weight",               "wte.weight"),
        ("transformer.h.{i}.attn.c_proj.weight", "blocks.{i}.attn.out_proj.weight",   TRANSPOSE),
        ("transformer.h.{i}.attn.c_attn.weight", ("blocks.{i}.attn.q_proj.weight",    # one fused tensor
                                                  "blocks.{i}.attn.k_proj.weight",    # -> three of ours
                                                  "blocks.{i}.attn.v_proj.weight"), Chain(TRANSPOSE, Split(3))),
        ...
    ]
    keys = KeyMap(GPT2_KEYS, n_layers=12, tied=["lm_head.weight"], ignore=["lm_head.weight"])

The API, top to bottom:

    read_folder(path, device="cpu") -> (config dict, {hf name: tensor})
    write_folder(path, config, state)          config.json + model.safetensors
    KeyMap(rules, n_layers, tied=(), ignore=())
        .to_ours(hf_state, unexpected="error") -> {our name: tensor}
        .to_hf(our_state)                      -> {hf name: tensor}
        .hf_name(our_key)                      the checkpoint name a weight comes from
    load_hf_state(model, hf_state, keymap, optional=(), unexpected="error") -> newly initialised names
    hf_state_dict(model, keymap)               what save_pretrained writes
    transforms (checkpoint layout <-> ours): TRANSPOSE, Split(parts, dim=0), Chain(*steps),
        RopePermute(n_heads), Inverse(transform); Transform is the base class
    interleaved_to_half(w, n_heads), half_to_interleaved(w, n_heads)   RoPE row orders
    HF_ACTIVATIONS, activation_from_hf(name), activation_to_hf(name)   one activation map
    read_gguf(path) -> (metadata dict, {GGUF name: fp32 tensor})   a llama.cpp file, dequantized
    gguf_llama_rules(n_heads, n_kv_heads)      the GGUF table of a Llama (same rules, same KeyMap)

`tied` lists our weights that are the same tensor as another one (an LM head
tied to the token embedding): they are neither written nor expected.
`ignore` lists checkpoint names to skip (shell patterns; ``{i}`` matches any
layer): buffers old files kept, a tied copy some exporters write.
`optional` (our names, shell patterns) may be absent from a checkpoint: they
keep their random initialisation (a new task head) and are returned, so that
the caller can warn. Every other absent weight, every unexpected checkpoint
tensor (unless ``unexpected="ignore"``) and every shape mismatch raises
``ValueError`` naming the tensor.

RoPE layouts. Rotary embeddings rotate pairs of query/key features. Meta's
original LLaMA code pairs neighbours, (0, 1), (2, 3), ... ("interleaved"),
while Hugging Face's ``apply_rotary_pos_emb`` pairs feature j with j + D/2
("rotate-half"). Both give the same attention scores once the rows of the q
and k projections are reordered within each head, which is what Hugging
Face's LLaMA conversion script does (``permute``) and what
:func:`interleaved_to_half` does here.
"""
from __future__ import annotations

import fnmatch
import json
import os
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "read_folder", "write_folder", "KeyMap", "load_hf_state", "hf_state_dict",
    "Transform", "TRANSPOSE", "Split", "Chain", "RopePermute", "Inverse",
    "interleaved_to_half", "half_to_interleaved",
    "HF_ACTIVATIONS", "activation_from_hf", "activation_to_hf",
    "read_gguf", "gguf_metadata", "gguf_llama_rules", "GGUF_INSTALL",
]

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"


# ----------------------------------------------------------------------------- folders

def read_folder(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a checkpoint folder: (the config.json dict, {checkpoint name: tensor} on `device`)."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    config_file = os.path.join(path, CONFIG_FILE)
    weights, index = os.path.join(path, WEIGHTS_FILE), os.path.join(path, INDEX_FILE)
    if not os.path.isfile(weights) and os.path.isfile(index):       # sharded: the index names the files
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shards]
    else:
        files = [weights]
    for f in [config_file, *files]:
        if not os.path.isfile(f):
            raise ValueError(f"path must be a folder with config.json and model.safetensors; {f} is missing")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f, device=str(device)))
    return config, state


def write_folder(path: str | os.PathLike, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (tensors moved to the CPU, made contiguous)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- transforms

class Transform:
    """A reversible change of layout between a checkpoint's tensors and ours.

    ``to_ours`` maps the list of checkpoint tensors of one rule to the list of
    our tensors (same order as the rule's keys); ``to_hf`` goes back. The base
    class copies one tensor unchanged.
    """

    def to_ours(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(tensors)

    def to_hf(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(tensors)

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class _Transpose(Transform):
    """(in, out) <-> (out, in): GPT-2's ``Conv1D`` stores the transpose of ``nn.Linear``'s weight."""

    def to_ours(self, tensors):
        for t in tensors:
            if t.ndim != 2:
                raise ValueError(f"TRANSPOSE needs 2-d weights, got shape {tuple(t.shape)}")
        return [t.t() for t in tensors]

    to_hf = to_ours

    def __repr__(self) -> str:
        return "TRANSPOSE"


TRANSPOSE = _Transpose()


class Split(Transform):
    """One fused checkpoint tensor <-> several of ours, cut along `dim`.

    `parts` is a count (equal pieces) or the list of sizes (grouped-query
    attention fuses a wide q with narrower k and v).

    >>> [tuple(t.shape) for t in Split(3).to_ours([torch.zeros(6, 4)])]
    [(2, 4), (2, 4), (2, 4)]
    >>> tuple(Split([4, 2, 2], dim=1).to_hf([torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(3, 2)])[0].shape)
    (3, 8)
    """

    def __init__(self, parts: int | Sequence[int], dim: int = 0):
        if isinstance(parts, int):
            if parts < 1:
                raise ValueError(f"parts must be a positive int or a list of sizes, got {parts!r}")
        elif not (len(parts) > 0 and all(isinstance(p, int) and p > 0 for p in parts)):
            raise ValueError(f"parts must be a positive int or a list of positive sizes, got {parts!r}")
        self.parts, self.dim = parts, dim

    def to_ours(self, tensors):
        (t,) = tensors
        size = t.shape[self.dim]
        if isinstance(self.parts, int):
            if size % self.parts:
                raise ValueError(f"cannot split a size of {size} along dim {self.dim} into {self.parts} equal parts")
            sizes = [size // self.parts] * self.parts
        else:
            sizes = list(self.parts)
            if sum(sizes) != size:
                raise ValueError(f"cannot split a size of {size} along dim {self.dim} into parts {sizes}")
        return list(t.split(sizes, dim=self.dim))

    def to_hf(self, tensors):
        return [torch.cat(list(tensors), dim=self.dim)]

    def __repr__(self) -> str:
        return f"Split({self.parts!r}, dim={self.dim})"


class Chain(Transform):
    """Several transforms in a row: ``to_ours`` applies them in order, ``to_hf`` undoes them in reverse."""

    def __init__(self, *steps: Transform):
        if not steps or not all(isinstance(s, Transform) for s in steps):
            raise ValueError(f"steps must be one or more Transform objects, got {steps!r}")
        self.steps = steps

    def to_ours(self, tensors):
        for step in self.steps:
            tensors = step.to_ours(tensors)
        return tensors

    def to_hf(self, tensors):
        for step in reversed(self.steps):
            tensors = step.to_hf(tensors)
        return tensors

    def __repr__(self) -> str:
        return "Chain(" + ", ".join(map(repr, self.steps)) + ")"


class Inverse(Transform):
    """The same transform in the other direction (for a checkpoint in our layout and a model in theirs)."""

    def __init__(self, transform: Transform):
        if not isinstance(transform, Transform):
            raise ValueError(f"transform must be a Transform, got {type(transform).__name__}")
        self.transform = transform

    def to_ours(self, tensors):
        return self.transform.to_hf(tensors)

    def to_hf(self, tensors):
        return self.transform.to_ours(tensors)

    def __repr__(self) -> str:
        return f"Inverse({self.transform!r})"


def _rope_shape(w: torch.Tensor, n_heads: int) -> int:
    if not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
    if w.ndim not in (1, 2) or w.shape[0] % n_heads or (w.shape[0] // n_heads) % 2:
        raise ValueError(f"w must be a q/k weight (H*D, C) or bias (H*D,) with n_heads={n_heads} "
                         f"dividing its rows into heads of even width D, got shape {tuple(w.shape)}")
    return w.shape[0] // n_heads


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection from interleaved RoPE pairs to rotate-half pairs.

    Within each head of width D, output row 2j (first of pair j in Meta's
    layout) moves to row j and row 2j + 1 to row j + D/2, as Hugging Face's
    LLaMA conversion script does (``w.view(H, D//2, 2, C).transpose(1, 2)``).

    >>> interleaved_to_half(torch.arange(8), n_heads=2)     # two heads of width 4
    tensor([0, 2, 1, 3, 4, 6, 5, 7])
    """
    D = _rope_shape(w, n_heads)
    return w.reshape(n_heads, D // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`interleaved_to_half`.

    >>> half_to_interleaved(torch.tensor([0, 2, 1, 3, 4, 6, 5, 7]), n_heads=2)
    tensor([0, 1, 2, 3, 4, 5, 6, 7])
    """
    D = _rope_shape(w, n_heads)
    return w.reshape(n_heads, 2, D // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class RopePermute(Transform):
    """Checkpoint q/k rows in the interleaved RoPE layout <-> ours in rotate-half (HF's) layout.

    Wrap in :class:`Inverse` for the opposite case. `n_heads` is the number of
    heads of THIS projection (the key/value head count for k under GQA).
    """

    def __init__(self, n_heads: int):
        if not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
        self.n_heads = n_heads

    def to_ours(self, tensors):
        return [interleaved_to_half(t, self.n_heads) for t in tensors]

    def to_hf(self, tensors):
        return [half_to_interleaved(t, self.n_heads) for t in tensors]

    def __repr__(self) -> str:
        return f"RopePermute({self.n_heads})"


# ----------------------------------------------------------------------------- the key table

def _as_keys(keys) -> tuple[str, ...]:
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"a rule's keys must be a name or a non-empty list of names, got {keys!r}")
    return keys


class KeyMap:
    """A model's table of checkpoint names, expanded for `n_layers` layers.

    >>> km = KeyMap([("h.{i}.fc.weight", "blocks.{i}.fc1.weight", TRANSPOSE)], n_layers=2)
    >>> sorted(km.to_ours({"h.0.fc.weight": torch.zeros(2, 3), "h.1.fc.weight": torch.ones(2, 3)}))
    ['blocks.0.fc1.weight', 'blocks.1.fc1.weight']
    >>> km.hf_name("blocks.1.fc1.weight")
    'h.1.fc.weight'
    """

    def __init__(self, rules: Iterable[tuple], n_layers: int, *, tied: Iterable[str] = (),
                 ignore: Iterable[str] = ()):
        if not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"n_layers must be an int >= 0, got {n_layers!r}")
        self.n_layers = n_layers
        self.tied = tuple(tied)
        self.ignore = tuple(p.replace("{i}", "*") for p in ignore)
        self.rules: list[tuple[tuple[str, ...], tuple[str, ...], Transform]] = []
        for rule in rules:
            if not isinstance(rule, (tuple, list)) or len(rule) not in (2, 3):
                raise ValueError(f"a rule is (hf_key, our_key) or (hf_key(s), our_key(s), transform), got {rule!r}")
            hf, ours = _as_keys(rule[0]), _as_keys(rule[1])
            transform = rule[2] if len(rule) == 3 else Transform()
            if not isinstance(transform, Transform):
                raise ValueError(f"the third item of a rule must be a Transform, got {transform!r}")
            per_layer = any("{i}" in k for k in hf + ours)
            for i in range(n_layers) if per_layer else [None]:
                fill = (lambda k: k.replace("{i}", str(i))) if per_layer else (lambda k: k)
                self.rules.append((tuple(map(fill, hf)), tuple(map(fill, ours)), transform))
        self._hf_of = {o: hf[0] if len(hf) == 1 else "+".join(hf) for hf, ours, _ in self.rules for o in ours}

    def hf_name(self, our_key: str) -> str:
        """The checkpoint name(s) our weight `our_key` is read from (our name if no rule covers it)."""
        return self._hf_of.get(our_key, our_key)

    def ignored(self, hf_key: str) -> bool:
        return any(fnmatch.fnmatchcase(hf_key, p) for p in self.ignore)

    def to_ours(self, hf_state: dict[str, torch.Tensor], unexpected: str = "error") -> dict[str, torch.Tensor]:
        """Rename and re-lay-out a checkpoint's tensors. A rule whose checkpoint tensors are absent is
        skipped (:func:`load_hf_state` reports what the model then lacks); a checkpoint tensor that no
        rule reads raises, unless it is ignored or ``unexpected="ignore"``."""
        if unexpected not in ("error", "ignore"):
            raise ValueError(f"unexpected must be 'error' or 'ignore', got {unexpected!r}")
        out, used = {}, set()
        for hf, ours, transform in self.rules:
            if not all(k in hf_state for k in hf):
                continue
            try:
                tensors = transform.to_ours([hf_state[k] for k in hf])
            except (ValueError, RuntimeError) as e:
                shapes = [tuple(hf_state[k].shape) for k in hf]
                raise ValueError(f"cannot convert checkpoint tensor {'+'.join(hf)} of shape "
                                 f"{shapes[0] if len(shapes) == 1 else shapes} with {transform!r}: {e}") from e
            out.update(zip(ours, tensors))
            used.update(hf)
        extra = sorted(k for k in hf_state if k not in used and not self.ignored(k))
        if extra and unexpected == "error":
            raise ValueError(f"the checkpoint has {len(extra)} tensors this model does not use, e.g. "
                             f"{extra[:5]}: is it a checkpoint of this architecture and config?")
        return out

    def to_hf(self, our_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our tensors under checkpoint names and layouts. Every weight must be covered by a rule or
        listed as tied, so that nothing is silently left out of a saved file."""
        out, used = {}, set()
        for hf, ours, transform in self.rules:
            absent = [k for k in ours if k not in our_state]
            if absent:
                raise ValueError(f"the model has no weight {absent[0]!r} (rule for {'+'.join(hf)})")
            out.update(zip(hf, transform.to_hf([our_state[k] for k in ours])))
            used.update(ours)
        left = sorted(k for k in our_state if k not in used and k not in self.tied)
        if left:
            raise ValueError(f"no rule saves {left[:5]}: add them to the key table (or to tied)")
        return out


# ----------------------------------------------------------------------------- a model's state

def load_hf_state(model: nn.Module, hf_state: dict[str, torch.Tensor], keymap: KeyMap, *,
                  optional: Iterable[str] = (), unexpected: str = "error", assign: bool = False) -> list[str]:
    """Load a checkpoint's tensors into `model` through `keymap`; return the weights left as initialised.

    Raises ``ValueError`` for a shape that differs from the model's, for a
    weight the checkpoint lacks (unless it matches a pattern in `optional`,
    our names) and, unless ``unexpected="ignore"``, for a checkpoint tensor
    no rule reads. Tensors are copied into the model's parameters, so tied
    weights stay tied and dtypes/devices stay the model's. ``assign=True`` makes the
    checkpoint's tensors the parameters instead (no copy: for a model built on the
    ``meta`` device; the caller re-ties tied weights).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    state = keymap.to_ours(hf_state, unexpected=unexpected)
    expected = model.state_dict()
    unknown = sorted(k for k in state if k not in expected)
    if unknown:
        raise ValueError(f"the key table names weights the model does not have: {unknown[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"checkpoint tensor {keymap.hf_name(k)} gives {k} the shape {tuple(v.shape)}, "
                             f"the model expects {tuple(expected[k].shape)}: does config.json match the weights?")
    absent = [k for k in expected if k not in state and k not in keymap.tied]
    new = [k for k in absent if any(fnmatch.fnmatchcase(k, p) for p in optional)]
    required = [keymap.hf_name(k) for k in absent if k not in new]
    if required:
        raise ValueError(f"the checkpoint lacks {len(required)} weights, e.g. {required[:5]}")
    model.load_state_dict(state, strict=False, assign=assign)
    return new


def hf_state_dict(model: nn.Module, keymap: KeyMap) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint names and layouts (tied copies left out)."""
    return keymap.to_hf({k: v.detach() for k, v in model.state_dict().items()})


# ----------------------------------------------------------------------------- activations

# Hugging Face's activation names (config.json's hidden_act / activation_function) -> plmkit.nn's.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu", "swish": "silu"}
# plmkit.nn's names -> the name written to config.json (GPT-2's "gelu_new" for the tanh GELU).
TO_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def activation_from_hf(name: str, field: str = "hidden_act") -> str:
    """plmkit.nn's name for a Hugging Face activation name; `field` names the config entry in errors.

    >>> activation_from_hf("gelu_new")
    'gelu_tanh'
    """
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"{field} must be one of {sorted(HF_ACTIVATIONS)}, got {name!r}")
    return HF_ACTIVATIONS[name]


def activation_to_hf(name: str) -> str:
    """The Hugging Face name to write for plmkit.nn's activation `name`.

    >>> activation_to_hf("gelu_tanh")
    'gelu_new'
    """
    if name not in TO_HF_ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(TO_HF_ACTIVATIONS)}, got {name!r}")
    return TO_HF_ACTIVATIONS[name]


# ----------------------------------------------------------------------------- GGUF (llama.cpp's files)
#
# A GGUF file is one binary file: a header of typed metadata (the config, the tokenizer's tokens and
# merges, the chat template) and then the tensors, most of them *quantized* in blocks (Q4_1: 32 weights
# share one fp16 scale d and one fp16 minimum m, each weight a 4-bit q: w = d*q + m). The `gguf` package,
# maintained with llama.cpp, parses the file (GGUFReader) and dequantizes the blocks
# (gguf.quants.dequantize); plmkit maps the names with the same KeyMap machinery as Hugging Face folders.
# Shapes: GGUF lists a tensor's dimensions fastest-first ([in, out]); the data arrive as numpy arrays in
# row-major order (out, in), which is nn.Linear's layout already.

GGUF_INSTALL = "pip install gguf==0.19.0"


def _gguf_reader(path):
    try:
        import gguf
    except ImportError as e:                                           # pragma: no cover - pinned in requirements
        raise ImportError(f"reading GGUF files needs the gguf package: {GGUF_INSTALL}") from e
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path must be a GGUF file, got {path!r} (no such file)")
    try:
        return gguf, gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"path must be a GGUF file, got {path!r}: {e}") from e


def _field_value(field):
    """A metadata field as Python data: str, int, float, bool or a list of them."""
    value = field.contents()
    return value.tolist() if hasattr(value, "tolist") else value


def gguf_metadata(reader) -> dict:
    """Every metadata field of an open ``gguf.GGUFReader`` as ``{key: Python value}``."""
    return {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def read_gguf(path: str | os.PathLike, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a GGUF file: (metadata {key: value}, {GGUF tensor name: fp32 tensor}).

    Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 by
    ``gguf.quants.dequantize``; F32/F16 tensors are converted. With
    ``tensors=False`` only the metadata is read (the tokenizer's needs).

        >>> meta, state = read_gguf(smollm2.gguf_path())                  # doctest: +SKIP
        >>> meta["llama.block_count"], tuple(state["blk.0.attn_q.weight"].shape)   # doctest: +SKIP
        (30, (576, 576))
    """
    gguf, reader = _gguf_reader(path)
    meta = gguf_metadata(reader)
    state: dict[str, torch.Tensor] = {}
    if tensors:
        for t in reader.tensors:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype("float32", copy=False)   # (out, in)
            if not w.flags.writeable:                                  # F32 tensors: a view of the mapped file
                w = w.copy()
            state[t.name] = torch.from_numpy(w)
    return meta, state


def gguf_llama_rules(n_heads: int, n_kv_heads: int) -> list[tuple]:
    """The GGUF key table of a Llama (llama.cpp's names -> plmkit's), for :class:`KeyMap`.

    llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) stores the q and k
    projections with their rows in Meta's *interleaved* RoPE order (pairs (0, 1), (2, 3), ... of a
    head), because llama.cpp's kernel rotates neighbours. plmkit rotates halves (j with j + D/2),
    as Hugging Face does, so :class:`RopePermute` undoes the permutation on the way in
    (`n_kv_heads` for k under grouped-query attention). Every other matrix is copied as it is.

    >>> [r[0] for r in gguf_llama_rules(9, 3)][:3]
    ['token_embd.weight', 'blk.{i}.attn_norm.weight', 'blk.{i}.attn_q.weight']
    """
    return [
        # GGUF name                        plmkit name                          transform
        ("token_embd.weight",              "wte.weight"),
        ("blk.{i}.attn_norm.weight",       "blocks.{i}.norm1.weight"),
        ("blk.{i}.attn_q.weight",          "blocks.{i}.attn.q_proj.weight",     RopePermute(n_heads)),
        ("blk.{i}.attn_k.weight",          "blocks.{i}.attn.k_proj.weight",     RopePermute(n_kv_heads)),
        ("blk.{i}.attn_v.weight",          "blocks.{i}.attn.v_proj.weight"),
        ("blk.{i}.attn_output.weight",     "blocks.{i}.attn.out_proj.weight"),
        ("blk.{i}.ffn_norm.weight",        "blocks.{i}.norm2.weight"),
        ("blk.{i}.ffn_gate.weight",        "blocks.{i}.ffn.gate_proj.weight"),
        ("blk.{i}.ffn_up.weight",          "blocks.{i}.ffn.up_proj.weight"),
        ("blk.{i}.ffn_down.weight",        "blocks.{i}.ffn.down_proj.weight"),
        ("output_norm.weight",             "ln_f.weight"),
        ("output.weight",                  "lm_head.weight"),             # absent when tied to token_embd
    ]
