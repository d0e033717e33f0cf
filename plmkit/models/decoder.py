"""The decoder-only skeleton that GPT (chapter 4) and Llama (chapter 6) share.

Both models are the same loop:

    token ids (B, T) -> embeddings -> n Pre-norm DecoderBlocks -> final norm -> LM head

and differ only in what the subclass plugs in: how a position enters (GPT adds
a learned vector in ``_embed``; Llama rotates q and k through ``_rotary``), the
norm and feed-forward inside the blocks, and the Hugging Face key table. This
module holds the rest once: argument checks, cache positions, the attention
mask built once per call, the block loop with optional hidden states, the
key/value caches, and loading/saving Hugging Face folders.

A subclass sets ``config_class`` and defines ``_embed(input_ids, position_ids)``,
``_keymap(config)`` (a :class:`plmkit.models.hub.KeyMap`), ``_kv_shape()`` ->
(key/value heads, head width) and ``_position_limit()`` -> (size, config field
name) of a position table, or ``None`` when positions are unbounded (RoPE).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..nn import KVCache, StaticKVCache, build_attention_mask
from ..nn.validation import check_token_ids, values_readable
from . import hub
from .outputs import ModelOutput


def key_length(cache, T: int) -> int:
    """Keys attention sees with this cache and T new tokens: a static cache's whole buffer,
    a growing one's stored positions plus the new ones (both known on the host)."""
    return cache.max_length if isinstance(cache, StaticKVCache) else len(cache) + T


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


class DecoderLM(nn.Module):
    """Base class of decoder-only language models; see the module docstring.

    ``forward(input_ids, attention_mask=None, position_ids=None, *, caches=None,
    cache_position=None, output_hidden_states=False, segment_ids=None)``

    * `input_ids` (B, T) LongTensor: the new tokens (all of them without a cache).
    * `attention_mask` (B, K), 1 = real token, 0 = padding, over every key
      position: the cached ones and the new ones (K = past + T for growing caches,
      the buffer length for static ones). Padding goes on the LEFT for decoding.
    * `position_ids` (B, T) or (T,): default `cache_position`. With left padding pass
      ``(attention_mask.cumsum(-1) - 1).clamp(min=0)`` (Hugging Face's rule).
    * `caches` from :meth:`new_caches`: keys/values kept from earlier calls, so
      that each call feeds only the new tokens; `cache_position` (T,) says which
      slots the new tokens occupy (default: right after what the caches hold).
    * `segment_ids` (B, T): packed sequences; a token attends only inside its own
      segment (pass `position_ids` restarting at each segment too). Not with caches.
    * ``output_hidden_states=True`` returns a :class:`~plmkit.models.outputs.ModelOutput`
      with ``.logits`` and ``.hidden_states`` (n_layer + 1 tensors, embeddings first).

    The (B, 1, T, K) boolean mask (query q sees key k iff ``attention_mask[b, k]``,
    ``k <= cache_position[q]`` and both are in one segment) is built once per call
    and shared by every block. Without a mask, caches or segments no mask is built
    and the blocks use the fused causal kernel (training's path).
    """

    config_class: type = object

    # -- what a subclass provides --------------------------------------------
    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _rotary(self, position_ids: torch.Tensor):
        """A function (q, k) -> (q, k) applied inside attention, or None (GPT)."""
        return None

    def _kv_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def _position_limit(self) -> tuple[int, str] | None:
        raise NotImplementedError

    @staticmethod
    def _keymap(config) -> "hub.KeyMap":
        raise NotImplementedError

    # -- caches ----------------------------------------------------------------
    def new_caches(self, batch_size: int | None = None, max_length: int | None = None, static: bool = False,
                   dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> list:
        """One empty key/value cache per block, for step-by-step decoding.

        Growing caches (the default) append each call's keys/values; the other
        arguments are not needed. ``static=True`` pre-allocates (batch_size,
        H_kv, max_length, head_dim) buffers written in place at `cache_position`
        (fixed shapes: CUDA graphs, torch.compile); dtype and device default to the model's.
        """
        if not static:
            return [KVCache() for _ in self.blocks]
        limit = self._position_limit()
        hi = limit[0] if limit else None
        for name, value, top in (("batch_size", batch_size, None), ("max_length", max_length, hi)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (top and value > top):
                raise ValueError(f"{name} must be an int in [1, {top or 'inf'}] for a static cache, got {value!r}")
        ref = self.wte.weight
        n_kv, head_dim = self._kv_shape()
        return [StaticKVCache(batch_size, n_kv, max_length, head_dim,
                              dtype=dtype or ref.dtype, device=device or ref.device) for _ in self.blocks]

    # -- the forward pass -----------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, *, caches: list | None = None,
                cache_position: torch.Tensor | None = None, output_hidden_states: bool = False,
                segment_ids: torch.Tensor | None = None):
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {_shape(input_ids)}")
        B, T = input_ids.shape
        dev = input_ids.device
        limit = self._position_limit()
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold one cache per block ({len(self.blocks)}), got {len(caches)}")
        if cache_position is None:
            past = len(caches[0]) if caches else 0         # (a static cache's length syncs: pass cache_position)
            if limit and past + T > limit[0]:
                raise ValueError(f"sequence of {past + T} tokens is longer than the model's {limit[1]}={limit[0]}: "
                                 f"its position_ids would run past the position table")
            cache_position = torch.arange(past, past + T, device=dev)                 # (T,)
        elif not isinstance(cache_position, torch.Tensor) or cache_position.shape != (T,) \
                or cache_position.is_floating_point():
            raise ValueError(f"cache_position must be an integer tensor of shape (T,) = ({T},), got "
                             f"{_shape(cache_position)}")
        K = key_length(caches[0], T) if caches else T
        if position_ids is None:
            position_ids = cache_position
        elif not isinstance(position_ids, torch.Tensor) or position_ids.is_floating_point() \
                or position_ids.shape not in ((B, T), (1, T), (T,)):
            raise ValueError(f"position_ids must be an integer tensor of shape (B, T) = ({B}, {T}) or (T,), "
                             f"got {_shape(position_ids)}")
        if position_ids.ndim == 1:
            position_ids = position_ids[None]                                          # (1, T)
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                           or attention_mask.shape != (B, K)):
            raise ValueError(f"attention_mask must be a tensor of shape (B, K) = ({B}, {K}): one entry "
                             f"per key position, cached and new, 1 = real token; got {_shape(attention_mask)}")
        if segment_ids is not None and (caches is not None or not isinstance(segment_ids, torch.Tensor)
                                        or segment_ids.shape != (B, T) or segment_ids.is_floating_point()):
            raise ValueError(f"segment_ids must be an integer tensor of shape (B, T) = ({B}, {T}) and is not "
                             f"used with caches; got {_shape(segment_ids)}")
        # Value checks read tensors on the host only where that is free (CPU, outside torch.compile);
        # on a GPU an out-of-range id or position fails inside the embedding kernel instead.
        check_token_ids(input_ids, self.config.vocab_size)
        if limit:
            check_token_ids(position_ids, limit[0], "position_ids", limit[1])
        elif values_readable(position_ids) and position_ids.numel() and int(position_ids.min()) < 0:
            raise ValueError(f"position_ids must be >= 0, got {int(position_ids.min())}")

        mask = None                     # no padding, cache or packing: the blocks' fused causal path
        if attention_mask is not None or caches is not None or segment_ids is not None:
            mask = build_attention_mask(attention_mask, cache_position, K, segment_ids=segment_ids)  # (B|1,1,T,K)
        rotary = self._rotary(position_ids)
        x = self.drop(self._embed(input_ids, position_ids))                            # (B, T, C)
        hidden = [x]                    # kept only when asked for (they would hold memory)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, cache=caches[i] if caches is not None else None, is_causal=mask is None,
                      cache_position=cache_position if caches is not None else None, rotary=rotary)
            if output_hidden_states:
                hidden.append(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)                                                       # (B, T, V)
        if not output_hidden_states:
            return logits
        hidden[-1] = x                  # Hugging Face's convention: the last one after the final norm
        return ModelOutput(logits=logits, hidden_states=hidden)

    # -- Hugging Face checkpoints ------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors in Hugging Face's format for this model."""
        hub.write_folder(directory, self.config.to_hf_dict(), hub.hf_state_dict(self, self._keymap(self.config)))

    @classmethod
    def _hf_state(cls, state: dict) -> dict:
        """Hook: rename keys of a checkpoint before loading (GPT-2's files without a prefix)."""
        return state

    _unexpected = "error"

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"):
        """Load a checkpoint folder (config.json + model.safetensors), ours or Hugging Face's."""
        config_dict, state = hub.read_folder(directory, device=map_location)
        config = cls.config_class.from_hf_dict(config_dict)
        model = cls(config)
        hub.load_hf_state(model, cls._hf_state(state), cls._keymap(config), unexpected=cls._unexpected)
        return model.to(map_location)
