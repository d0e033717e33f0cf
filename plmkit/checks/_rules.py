"""Forbidden-call rules that several chapters' checkers share (attention, masks).

Chapter 2 builds attention; chapters 3 to 9 build on it and forbid the same shortcuts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn import attention as _attn
from ._guard import Rule, aten_ops

SDPA = Rule("`F.scaled_dot_product_attention`",
            [F.scaled_dot_product_attention, *aten_ops(
                "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
                "_fused_sdp_choice", "_native_multi_head_attention")])
TORCH_MHA = Rule("`nn.MultiheadAttention`", [torch.nn.MultiheadAttention, F.multi_head_attention_forward])
PLMKIT_ATTENTION = Rule("plmkit's `pn.scaled_dot_product_attention` / `pn.MultiHeadAttention`",
                        [_attn.scaled_dot_product_attention, _attn.MultiHeadAttention])
CAUSAL_MASKS = [Rule("plmkit's `pn.causal_mask`", [_attn.causal_mask]),
                Rule("`nn.Transformer.generate_square_subsequent_mask`",
                     [torch.nn.Transformer.generate_square_subsequent_mask])]
