"""A small encoder–decoder Transformer assembled from plmkit.nn's parts.

    src ids (B, S) -> embed * sqrt(C) + positions -> Encoder (n_layers EncoderBlocks) -> memory (B, S, C)
    tgt ids (B, T) -> embed * sqrt(C) + positions -> Decoder (n_layers DecoderBlocks,
                      each reading memory by cross-attention) -> lm_head -> logits (B, T, V)

The encoder turns the whole source into a memory of S vectors; each decoder
position queries that memory instead of a single context vector.

Submodules of :class:`Seq2SeqTransformer`: ``src_embed``, ``tgt_embed``
(``nn.Embedding``), ``pos`` (sinusoidal or learned), ``encoder.layers[i]``,
``encoder.norm``, ``decoder.layers[i]``, ``decoder.norm``, ``lm_head``.
A Pre-LN stack (``norm_first=True``) ends in a LayerNorm (``norm``); a Post-LN
stack already ends normalised and its ``norm`` is the identity.

:func:`record_attention` collects the attention maps of any model built from
:class:`~plmkit.nn.attention.MultiHeadAttention`.

Letters: B batch, S source length, T target length, C width, V vocabulary.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .attention import MultiHeadAttention, build_attention_mask, padding_mask
from .blocks import DecoderBlock, EncoderBlock
from .cache import CrossAttentionCache, KVCache
from .norms import LayerNorm
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .validation import values_readable

__all__ = ["Encoder", "Decoder", "Seq2SeqTransformer", "record_attention"]


def _check_block_options(options: dict) -> dict:
    allowed = {"norm", "ffn", "head_dim", "n_kv_heads", "scale", "bias"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"block options must be among {sorted(allowed)}, got {sorted(unknown)}")
    if isinstance(options.get("ffn"), nn.Module):
        raise ValueError("ffn must be a factory ffn(d_model, d_ff) in a stack: one module cannot serve every layer")
    return options


class Encoder(nn.Module):
    """A stack of EncoderBlocks: ``layers`` (nn.ModuleList) then ``norm``.

    Extra keyword arguments (`norm`, `ffn` factory, `head_dim`, `n_kv_heads`,
    `scale`, `bias`) go to every :class:`EncoderBlock`; ``forward(x, mask=None,
    *, position_bias=None, rotary=None)`` gives each layer the same mask and bias.

    >>> enc = Encoder(n_layers=2, d_model=8, n_heads=2, d_ff=16, norm_first=True)
    >>> tuple(enc(torch.randn(3, 5, 8)).shape)
    (3, 5, 8)
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 norm_first: bool = False, activation: str = "gelu", eps: float = 1e-5, **block_options):
        super().__init__()
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        _check_block_options(block_options)
        self.layers = nn.ModuleList(EncoderBlock(d_model, n_heads, d_ff, dropout, norm_first, activation, eps,
                                                 **block_options) for _ in range(n_layers))
        make_norm = block_options.get("norm") or LayerNorm
        self.norm = make_norm(d_model, eps=eps) if norm_first else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                position_bias: torch.Tensor | None = None, rotary=None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask=mask, position_bias=position_bias, rotary=rotary)
        return self.norm(x)                                          # (B, S, C)


class Decoder(nn.Module):
    """A stack of DecoderBlocks with cross-attention: ``layers`` then ``norm``.

    Block options as in :class:`Encoder`. For incremental decoding pass
    ``caches`` (one :class:`KVCache` / :class:`~plmkit.nn.cache.StaticKVCache`
    per layer, see :meth:`new_caches`), ``cross_caches`` (one
    :class:`CrossAttentionCache` per layer; `memory` may then be None after the
    first step) and ``cache_position`` (T,).

    >>> dec = Decoder(n_layers=2, d_model=8, n_heads=2, d_ff=16)
    >>> tuple(dec(torch.randn(3, 4, 8), memory=torch.randn(3, 6, 8)).shape)
    (3, 4, 8)
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 norm_first: bool = False, activation: str = "gelu", eps: float = 1e-5, **block_options):
        super().__init__()
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        _check_block_options(block_options)
        self.layers = nn.ModuleList(DecoderBlock(d_model, n_heads, d_ff, dropout, norm_first, True, activation, eps,
                                                 **block_options) for _ in range(n_layers))
        make_norm = block_options.get("norm") or LayerNorm
        self.norm = make_norm(d_model, eps=eps) if norm_first else nn.Identity()

    def new_caches(self) -> tuple[list[KVCache], list[CrossAttentionCache]]:
        """Empty (self-attention, cross-attention) caches, one of each per layer."""
        return [KVCache() for _ in self.layers], [CrossAttentionCache() for _ in self.layers]

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, *, is_causal: bool = True, caches=None,
                cross_caches=None, cache_position: torch.Tensor | None = None,
                position_bias: torch.Tensor | None = None, rotary=None) -> torch.Tensor:
        for name, given in (("caches", caches), ("cross_caches", cross_caches)):
            if given is not None and len(given) != len(self.layers):
                raise ValueError(f"{name} must hold one cache per layer ({len(self.layers)}), got {len(given)}")
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, mask=mask, memory_mask=memory_mask, is_causal=is_causal,
                      cache=None if caches is None else caches[i], cache_position=cache_position,
                      cross_cache=None if cross_caches is None else cross_caches[i],
                      position_bias=position_bias, rotary=rotary)
        return self.norm(x)                                          # (B, T, C)


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder Transformer for token sequences (Vaswani et al., 2017), small enough for a CPU.

    ``forward(src, tgt)`` returns next-token logits (B, T, V): position t of
    `tgt` (the decoder input, starting with a BOS token) predicts target token t.
    Source tokens equal to `pad_id` are masked out of cross- and self-attention.

    >>> model = Seq2SeqTransformer(vocab_size=12, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=20)
    >>> src, tgt = torch.randint(0, 12, (2, 7)), torch.randint(0, 12, (2, 5))
    >>> tuple(model(src, tgt).shape)
    (2, 5, 12)
    >>> tuple(model.generate(src, bos_id=1, max_new_tokens=4).shape)
    (2, 4)
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 2, d_ff: int = 256,
                 max_len: int = 128, dropout: float = 0.0, norm_first: bool = False, activation: str = "gelu",
                 positional: str = "sinusoidal", pad_id: int | None = None, eps: float = 1e-5):
        super().__init__()
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {positional!r}")
        self.vocab_size, self.d_model, self.pad_id, self.max_len = vocab_size, d_model, pad_id, max_len
        self.src_embed = nn.Embedding(vocab_size, d_model)
        self.tgt_embed = nn.Embedding(vocab_size, d_model)
        self.pos = (SinusoidalPositionalEncoding(d_model, max_len) if positional == "sinusoidal"
                    else LearnedPositionalEmbedding(max_len, d_model))
        self.drop = nn.Dropout(dropout)
        self.encoder = Encoder(n_layers, d_model, n_heads, d_ff, dropout, norm_first, activation, eps)
        self.decoder = Decoder(n_layers, d_model, n_heads, d_ff, dropout, norm_first, activation, eps)
        self.lm_head = nn.Linear(d_model, vocab_size)
        for table in (self.src_embed, self.tgt_embed):   # std C^-1/2, so that embed * sqrt(C) has unit scale
            nn.init.normal_(table.weight, std=d_model ** -0.5)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        if ids.ndim != 2:
            raise ValueError(f"token ids must have shape (B, T), got {tuple(ids.shape)}")
        if ids.numel() and values_readable(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):  # no GPU sync
            raise ValueError(f"token ids must lie in [0, {self.vocab_size - 1}], got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return self.drop(self.pos(table(ids) * math.sqrt(self.d_model), offset=offset))   # (B, T, C)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Source ids (B, S) -> (memory (B, S, C), source mask (B, 1, 1, S) or None)."""
        src_mask = padding_mask(src != self.pad_id) if self.pad_id is not None else None
        return self.encoder(self._embed(self.src_embed, src), mask=src_mask), src_mask

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor | None, src_mask: torch.Tensor | None = None, *,
               caches=None, cross_caches=None, offset: int = 0) -> torch.Tensor:
        """Decoder input ids (B, T) and memory -> logits (B, T, V).

        With ``caches, cross_caches = model.decoder.new_caches()`` `tgt` may hold
        only the new tokens, `offset` of them already decoded; `memory` is read
        once into the cross-attention caches (pass None afterwards)."""
        x = self._embed(self.tgt_embed, tgt, offset)
        if caches is None:
            h = self.decoder(x, memory, memory_mask=src_mask)
        else:                                    # the causal mask over cache positions, built once for all layers
            positions = torch.arange(offset, offset + tgt.shape[1], device=tgt.device)
            mask = build_attention_mask(None, positions, offset + tgt.shape[1])
            h = self.decoder(x, memory, mask, memory_mask=src_mask, is_causal=False, caches=caches,
                             cross_caches=cross_caches, cache_position=positions)
        return self.lm_head(h)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt, memory, src_mask)                    # (B, T, V)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, bos_id: int, max_new_tokens: int, use_cache: bool = False) -> torch.Tensor:
        """Greedy decoding: the (B, max_new_tokens) most likely continuation after `bos_id`.

        ``use_cache=True`` feeds one new token per step, keeping self-attention
        keys/values in a KVCache and the memory's keys/values in a
        CrossAttentionCache per layer; the tokens are the same."""
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens < self.max_len:
            raise ValueError(f"max_new_tokens must be an int in [1, {self.max_len - 1}], got {max_new_tokens!r}")
        memory, src_mask = self.encode(src)
        out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        caches, cross_caches = self.decoder.new_caches() if use_cache else (None, None)
        for t in range(max_new_tokens):
            if use_cache:                                   # only the newest token; memory read on step 0 only
                logits = self.decode(out[:, -1:], memory if t == 0 else None, src_mask,
                                     caches=caches, cross_caches=cross_caches, offset=t)
            else:                                           # the whole prefix again
                logits = self.decode(out, memory, src_mask)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
        return out[:, 1:]


@contextlib.contextmanager
def record_attention(model: nn.Module):
    """Collect every MultiHeadAttention's weights during the forward passes run inside the block.

    Yields a dict {module name: weights (B, H, T_q, T_k)}, filled as the model runs
    (the last call of each module wins).

    >>> enc = Encoder(n_layers=2, d_model=8, n_heads=2, d_ff=16)
    >>> with record_attention(enc) as maps:
    ...     _ = enc(torch.randn(1, 5, 8))
    >>> {name: tuple(w.shape) for name, w in maps.items()}
    {'layers.0.attn': (1, 2, 5, 5), 'layers.1.attn': (1, 2, 5, 5)}
    """
    maps: dict[str, torch.Tensor] = {}
    handles, previous = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, MultiHeadAttention):
            previous.append((mod, mod.need_weights))
            mod.need_weights = True
            handles.append(mod.register_forward_hook(
                lambda m, args, out, name=name: maps.__setitem__(name, m.last_weights)))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
        for mod, flag in previous:
            mod.need_weights = flag
