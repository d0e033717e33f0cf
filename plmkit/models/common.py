"""What every model of :mod:`plmkit.models` shares besides checkpoints (those are in :mod:`.hub`).

    init_weights_(model, std)   the BERT/GPT-2/LLaMA initialisation, one module at a time
    EncoderOutput               what an encoder returns when asked for its hidden states

Token-id validation is :func:`plmkit.nn.validation.check_token_ids` (the
blocks of :mod:`plmkit.nn` use it too).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["init_weights_", "EncoderOutput"]


@dataclass
class EncoderOutput:
    """An encoder's output with ``output_hidden_states=True`` (BERT's BertModel, T5's encoder).

    ``last_hidden_state`` (B, T, H) is what the encoder returns by default;
    ``hidden_states`` lists L + 1 tensors (B, T, H): the embeddings' output, then
    each layer's (Hugging Face's convention). Models with a head return
    :class:`~plmkit.models.outputs.ModelOutput` (``logits``, ``hidden_states``).
    """

    last_hidden_state: torch.Tensor
    hidden_states: list[torch.Tensor]


def init_weights_(model: nn.Module, std: float) -> None:
    """Initialise every submodule of `model` in place, in ``model.modules()`` order.

    Linear weights and embedding tables (token or learned position) ~ N(0, std²),
    biases 0, norm gains 1 and shifts 0 (any module whose class name contains
    "Norm": LayerNorm, RMSNorm). An ``nn.Embedding``'s ``padding_idx`` row is
    zeroed. A tied matrix is drawn again by every module that holds it (the
    last one wins), so the random stream is the same as looping over modules
    by hand. Models add their own twists afterwards (GPT-2 scales the residual
    projections by 1/sqrt(2 * n_layer)).

    >>> m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    >>> init_weights_(m, std=0.02)
    >>> m[0].bias.abs().sum().item(), m[1].weight.tolist()
    (0.0, [1.0, 1.0, 1.0])
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(std, (int, float)) or isinstance(std, bool) or std <= 0:
        raise ValueError(f"std must be a number > 0, got {std!r}")
    for module in model.modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if bias is not None:
                nn.init.zeros_(bias)
        elif isinstance(module, nn.Embedding) or ("Embedding" in type(module).__name__
                                                  and isinstance(weight, nn.Parameter)):
            nn.init.normal_(weight, 0.0, std)
            if getattr(module, "padding_idx", None) is not None:
                with torch.no_grad():
                    weight[module.padding_idx].zero_()
        elif "Norm" in type(module).__name__:
            if isinstance(weight, nn.Parameter):
                nn.init.ones_(weight)
            if isinstance(bias, nn.Parameter):
                nn.init.zeros_(bias)
