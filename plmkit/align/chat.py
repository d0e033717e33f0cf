"""The chat template: a conversation (a list of messages) written as one string.

    [{"role": "user", "content": "Which city is Kalo Venmar from ?"},
     {"role": "assistant", "content": "Oslo"}]
    ->
    <|user|>
    Which city is Kalo Venmar from ?<|end|>
    <|assistant|>
    Oslo<|end|>

Every message is a role header (a special token and a newline), the content,
the end-of-turn token ``<|end|>`` and a newline. ``add_generation_prompt``
appends the assistant header, so that the model's next tokens are its answer.
The same template is written in Jinja (:data:`CHAT_TEMPLATE`) and saved with the
tokenizer by :func:`save_tokenizer` (transformers 4.57 writes it to
``chat_template.jinja`` and reads it back), so that Hugging Face's
``tokenizer.apply_chat_template(messages, tokenize=False)`` gives exactly
:func:`render`'s text.

The chapter's tokenizer is word-level (one id per word, punctuation split
off, whitespace dropped): :func:`build_tokenizer` makes one with the
`tokenizers` library from a word list.
"""
from __future__ import annotations

import os

__all__ = ["ROLES", "ROLE_TOKENS", "END_OF_TURN", "SPECIAL_TOKENS", "CHAT_TEMPLATE", "render", "render_segments",
           "build_tokenizer", "save_tokenizer", "load_tokenizer", "hf_tokenizer"]

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {r: f"<|{r}|>" for r in ROLES}
END_OF_TURN = "<|end|>"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS.values(), END_OF_TURN]    # ids 0..7 in this order

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('role must be system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with role in {ROLES} and a str content, got {m!r:.80}")


def render_segments(messages: list[dict], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_response) pieces whose concatenation is :func:`render`.

    ``is_response`` is True for what the model must learn to write: each
    assistant turn's content and its end-of-turn token. Headers, user and
    system turns and the newlines between turns are prompt.
    """
    _check_messages(messages)
    pieces: list[tuple[str, bool]] = []
    for m in messages:
        pieces.append((ROLE_TOKENS[m["role"]] + "\n", False))
        if m["role"] == "assistant":
            pieces += [(m["content"] + END_OF_TURN, True), ("\n", False)]
        else:
            pieces.append((m["content"] + END_OF_TURN + "\n", False))
    if add_generation_prompt:
        pieces.append((ROLE_TOKENS["assistant"] + "\n", False))
    return pieces


def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as one string (see the module docstring)."""
    return "".join(text for text, _ in render_segments(messages, add_generation_prompt))


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(words: list[str]):
    """A word-level `tokenizers.Tokenizer`: :data:`SPECIAL_TOKENS` (ids 0..7), then `words`.

    Text is split on whitespace and punctuation; an unknown word becomes ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = [w for w in dict.fromkeys(words) if w not in SPECIAL_TOKENS]
    if not words:
        raise ValueError("words must hold at least one ordinary word")
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)     # joins words with single spaces
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def hf_tokenizer(tokenizer):
    """Wrap a `tokenizers.Tokenizer` as transformers' `PreTrainedTokenizerFast` with our chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=CHAT_TEMPLATE, pad_token=PAD,
                                   bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   additional_special_tokens=[*ROLE_TOKENS.values(), END_OF_TURN])


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the chat template."""
    hf_tokenizer(tokenizer).save_pretrained(directory)


def load_tokenizer(directory: str | os.PathLike):
    """The `tokenizers.Tokenizer` saved in `directory` by :func:`save_tokenizer`."""
    from tokenizers import Tokenizer

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"directory must hold a tokenizer.json, none in {directory!r}")
    return Tokenizer.from_file(path)
