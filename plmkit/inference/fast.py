"""The fast decode path: static caches, one fixed-shape step, CUDA graphs on a GPU.

At batch 1 a decode step does little arithmetic: it reads every weight once
and the cache once, and on a GPU it launches a few hundred small kernels. The
launches cost more than the arithmetic unless the step is *captured*: a CUDA
graph replays the whole step with one launch. A graph can only be replayed if
every tensor it touches keeps its shape and its address, so the step must

* write keys/values in place into pre-allocated buffers (the platform's
  :class:`~plmkit.nn.cache.StaticKVCache`) instead of growing them;
* attend over the whole buffer (length L, fixed) with a mask that hides the
  slots not yet written, instead of over "what is there so far";
* take its position as a tensor (``cache_position`` (1,)), never as a Python int.

:class:`FastDecoder` wraps a model (GPT, Llama or T5) and owns such caches for
one batch size and one maximum length, reused by every :func:`plmkit.generate.generate`
call, so a compiled step is compiled once. It plugs into ``generate`` through
the decoder-state protocol (``FastDecoder.decoder_state``), so the decoding loop
(greedy, sampling, beam search, stop tokens) is the platform's, unchanged:

    >>> from plmkit.models.llama import Llama, LlamaConfig
    >>> from plmkit.generate import generate
    >>> model = Llama(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                           num_attention_heads=4, num_key_value_heads=2)).eval()
    >>> prompt = torch.tensor([[1, 5, 7]])
    >>> fast = FastDecoder(model, batch_size=1, max_length=16)
    >>> torch.equal(generate(fast, prompt, 8, temperature=0), generate(model, prompt, 8, temperature=0))
    True

The compiled step (``torch.compile(mode="reduce-overhead")``: inductor kernels
replayed as a CUDA graph) is used on CUDA only; on a CPU the step runs eagerly
(compiling there costs more than it saves in a notebook). ``compile=True`` with
``backend="eager"`` traces the step with dynamo without generating code: the
tests use it to prove the step is one graph with no breaks.

:func:`fuse_qkv_` merges each self-attention's three projections into one
matrix, so q, k and v come from one matrix product (one kernel, one read of x).

Letters: N rows (batch), L cache length, V vocabulary, C width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..generate import DecoderState, RecomputeState, positions_from_mask
from ..nn import CrossAttentionCache, MultiHeadAttention

__all__ = ["FastDecoder", "StaticState", "FastSeq2SeqState", "fuse_qkv_", "unfuse_qkv_"]


def fuse_qkv_(model: nn.Module) -> nn.Module:
    """Give every self-attention of `model` one fused (q | k | v) projection; returns `model`.

    The fused weight ((H + 2 H_kv) D, C) is a buffer; ``q_proj``/``k_proj``/``v_proj``
    keep their names and become *views* into it, so no memory is added, the
    state dict is unchanged and an in-place update of a view updates the fused
    matrix. Fuse after moving the model to its device and dtype (``.to()`` copies
    parameters and buffers separately and would break the sharing; call
    :func:`unfuse_qkv_` first). Cross-attention (T5's decoder) is left as it is:
    its keys and values come from the encoder output, not from x.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, attn in model.named_modules():
        if not isinstance(attn, MultiHeadAttention) or name.endswith("cross_attn") or attn.qkv_weight is not None:
            continue
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        weight = torch.cat([p.weight.detach() for p in projs], dim=0)          # ((H + 2 H_kv) D, C)
        has_bias = attn.q_proj.bias is not None
        bias = torch.cat([p.bias.detach() for p in projs]) if has_bias else None
        del attn.qkv_weight, attn.qkv_bias
        attn.register_buffer("qkv_weight", weight, persistent=False)
        attn.register_buffer("qkv_bias", bias, persistent=False)
        start = 0
        for p in projs:                                                         # views into the fused buffer
            n = p.weight.shape[0]
            p.weight = nn.Parameter(weight[start:start + n], requires_grad=p.weight.requires_grad)
            if has_bias:
                p.bias = nn.Parameter(bias[start:start + n], requires_grad=p.bias.requires_grad)
            start += n
    return model


def unfuse_qkv_(model: nn.Module) -> nn.Module:
    """Undo :func:`fuse_qkv_`: separate q/k/v weights again (each its own memory)."""
    for attn in model.modules():
        if isinstance(attn, MultiHeadAttention) and attn.qkv_weight is not None:
            for p in (attn.q_proj, attn.k_proj, attn.v_proj):
                p.weight = nn.Parameter(p.weight.detach().clone(), requires_grad=p.weight.requires_grad)
                if p.bias is not None:
                    p.bias = nn.Parameter(p.bias.detach().clone(), requires_grad=p.bias.requires_grad)
            del attn.qkv_weight, attn.qkv_bias
            attn.qkv_weight = attn.qkv_bias = None
    return model


class FastDecoder(nn.Module):
    """`model` with persistent static caches and a fixed-shape (compiled on CUDA) decode step.

    ``FastDecoder(model, batch_size, max_length, *, compile="auto", backend="inductor",
    fuse_qkv=True, dtype=None)``

    * batch_size: the rows every generate call must have (the caches are that wide);
      with beam search, prompts x beams.
    * max_length: prompt + generated tokens for a decoder-only model (capped at
      the model's ``n_positions`` if it has one), generated tokens for T5's decoder.
    * compile: "auto" = on CUDA only; True / False force it. `backend` as in
      ``torch.compile`` ("inductor" with CUDA graphs; "eager" only traces).
    * fuse_qkv: apply :func:`fuse_qkv_` to the model (changes the model in place).

    Pass the FastDecoder to :func:`plmkit.generate.generate` in place of the model.
    Calling it runs the wrapped model's forward. For T5 the step also reads the
    encoder's keys/values, whose length is the input's: a compiled step is
    recompiled for every new input length, so pad inputs to one length.
    """

    def __init__(self, model: nn.Module, batch_size: int, max_length: int, *, compile: bool | str = "auto",
                 backend: str = "inductor", fuse_qkv: bool = True, dtype: torch.dtype | None = None):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if compile not in ("auto", True, False):
            raise ValueError(f"compile must be 'auto', True or False, got {compile!r}")
        if not hasattr(model, "new_caches"):
            raise ValueError("model must offer new_caches(batch_size, max_length, static=True) (GPT, Llama, T5)")
        self.model = model.eval()
        self.seq2seq = hasattr(model, "encode") and hasattr(model, "decode")
        limit = getattr(getattr(model, "config", None), "n_positions", None)
        self.max_length = min(max_length, limit) if limit and not self.seq2seq else max_length
        self.batch_size = batch_size
        if fuse_qkv:
            fuse_qkv_(model)
        caches = model.new_caches(batch_size=batch_size, max_length=self.max_length, static=True, dtype=dtype)
        self.caches = [c[0] for c in caches] if self.seq2seq else caches      # the self-attention caches
        device = next(model.parameters()).device
        self.compiled = compile is True or (compile == "auto" and device.type == "cuda")
        step = self._seq2seq_step if self.seq2seq else self._step
        if self.compiled:
            mode = "reduce-overhead" if backend == "inductor" and device.type == "cuda" else None
            step = torch.compile(step, backend=backend, mode=mode, fullgraph=True, dynamic=False)
        self.step_fn = step

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # one decode step: fixed shapes (N, 1) ids, (N, L) mask, (N, 1) positions, (1,) cache position
    def _step(self, ids, mask, positions, cache_position):
        logits = self.model(ids, attention_mask=mask, position_ids=positions, caches=self.caches,
                            cache_position=cache_position)
        return logits[:, -1, :]                                                            # (N, V)

    def _seq2seq_step(self, ids, memory_mask, cache_position, caches):
        hidden = self.model.decode(ids, None, memory_mask, caches=caches, cache_position=cache_position)
        return self.model.logits(hidden[:, -1:])[:, 0]                                     # (N, V)

    def decoder_state(self, *, use_cache: bool = True, static_cache: bool = True, max_new_tokens: int,
                      block_size: int | None = None) -> DecoderState:
        """The state :func:`plmkit.generate.generate` drives (use_cache=False falls back to recomputing)."""
        if not use_cache:
            if self.seq2seq:
                return self.model.decoder_state(use_cache=False, max_new_tokens=max_new_tokens)
            return RecomputeState(self.model, block_size)
        if self.seq2seq:
            return FastSeq2SeqState(self, max_new_tokens)
        return StaticState(self, max_new_tokens, block_size)


class StaticState(DecoderState):
    """Decoder-only decoding on a :class:`FastDecoder`'s static caches.

    prefill: the (N, T) prompt in one eager pass, written to slots 0..T-1.
    step: one token at slot T + t through ``fast.step_fn``; the attention mask
    covers all L slots (prompt padding 0, everything after the prompt 1: the
    causal rule hides unwritten slots), positions count from each row's first
    real token (:func:`~plmkit.generate.positions_from_mask`).
    """

    def __init__(self, fast: FastDecoder, max_new_tokens: int, block_size: int | None = None):
        self.fast, self.max_new_tokens, self.block_size = fast, max_new_tokens, block_size

    def prefill(self, input_ids, attention_mask):
        N, T = input_ids.shape
        L = self.fast.max_length
        if N != self.fast.batch_size:
            raise ValueError(f"this FastDecoder holds caches for batch_size={self.fast.batch_size} rows, "
                             f"got {N} (prompts x beams)")
        if T + self.max_new_tokens - 1 > L:
            raise ValueError(f"prompt ({T}) + max_new_tokens ({self.max_new_tokens}) - 1 must fit the "
                             f"FastDecoder's max_length={L}")
        for cache in self.fast.caches:
            cache.crop(0)                                                 # forget the previous call
        self.mask = F.pad(attention_mask, (0, L - T), value=1)            # (N, L)
        positions = positions_from_mask(attention_mask)                   # (N, T)
        self.next_position = positions[:, -1:] + 1                        # (N, 1)
        self.cache_position = torch.tensor([T], device=input_ids.device)  # (1,) the next slot
        logits = self.fast.model(input_ids, attention_mask=self.mask, position_ids=positions,
                                 caches=self.fast.caches, cache_position=torch.arange(T, device=input_ids.device))
        return logits[:, -1, :]                                           # (N, V)

    def step(self, next_ids):
        logits = self.fast.step_fn(next_ids[:, None], self.mask, self.next_position, self.cache_position)
        self.next_position = self.next_position + 1
        self.cache_position = self.cache_position + 1                      # stays on the device: no sync
        return logits.clone()                          # a CUDA graph overwrites its output on the next replay

    def reorder(self, index):
        self.mask, self.next_position = self.mask[index], self.next_position[index]
        for cache in self.fast.caches:
            cache.reorder(index)


class FastSeq2SeqState(DecoderState):
    """T5 on a :class:`FastDecoder`: the encoder once (eager), then fixed-shape decoder steps.

    The self-attention caches are the FastDecoder's static ones (slot t for the
    t-th decoder token); the cross-attention caches are filled from the encoder
    output on the first (eager) decoder call and only read afterwards.
    """

    def __init__(self, fast: FastDecoder, max_new_tokens: int):
        self.fast, self.max_new_tokens = fast, max_new_tokens

    def start_ids(self, input_ids, attention_mask):
        start = torch.full((input_ids.shape[0], 1), self.fast.config.decoder_start_token_id,
                           dtype=torch.long, device=input_ids.device)
        return start, torch.ones_like(start)

    def prefill(self, input_ids, attention_mask):
        N = input_ids.shape[0]
        if N != self.fast.batch_size:
            raise ValueError(f"this FastDecoder holds caches for batch_size={self.fast.batch_size} rows, got {N}")
        if self.max_new_tokens > self.fast.max_length:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) must be <= the FastDecoder's "
                             f"max_length={self.fast.max_length}")
        model = self.fast.model
        memory = model.encode(input_ids, attention_mask)                               # (N, S, C), once
        self.memory_mask = attention_mask                                              # (N, S)
        for cache in self.fast.caches:
            cache.crop(0)
        self.caches = [(c, CrossAttentionCache()) for c in self.fast.caches]
        ids = self.start_ids(input_ids, attention_mask)[0]                              # (N, 1)
        hidden = model.decode(ids, memory, attention_mask, caches=self.caches,
                              cache_position=torch.zeros(1, dtype=torch.long, device=ids.device))
        self.cache_position = torch.ones(1, dtype=torch.long, device=ids.device)
        return model.logits(hidden[:, -1:])[:, 0]                                       # (N, V)

    def step(self, next_ids):
        logits = self.fast.step_fn(next_ids[:, None], self.memory_mask, self.cache_position, self.caches)
        self.cache_position = self.cache_position + 1
        return logits.clone()

    def reorder(self, index):
        self.memory_mask = self.memory_mask[index]
        for self_cache, cross_cache in self.caches:
            self_cache.reorder(index)
            cross_cache.reorder(index)
