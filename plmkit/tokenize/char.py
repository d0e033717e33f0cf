"""The character tokenizer (字符级分词): one token per Unicode character.

The simplest tokenizer there is, and the baseline of chapter 1: its
vocabulary is the set of characters seen in training, so it is small, but
sequences are long (one token per character), and a character never seen in
training has no id: it becomes [UNK] (未登录词, the out-of-vocabulary problem),
and its information is lost. Byte-level BPE (bpe.py) removes both problems.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence


class CharTokenizer:
    """Characters to ids and back; id 0 is the unknown token.

    >>> tok = CharTokenizer.train("hello")
    >>> tok.vocab_size, tok.encode("hole"), tok.encode("hi")
    (5, [2, 4, 3, 1], [2, 0])
    >>> tok.decode(tok.encode("hi"))
    'h[UNK]'
    """

    def __init__(self, chars: Iterable[str], unk_token: str = "[UNK]"):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars must be single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat a character")
        if not isinstance(unk_token, str) or not unk_token:
            raise ValueError(f"unk_token must be a non-empty string, got {unk_token!r}")
        self.unk_token = unk_token
        self.itos: list[str] = [unk_token] + chars
        self.stoi: dict[str, int] = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str, unk_token: str = "[UNK]") -> "CharTokenizer":
        """The vocabulary: every distinct character of `text`, sorted, after the unknown token.

        >>> CharTokenizer.train("banana").itos
        ['[UNK]', 'a', 'b', 'n']
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return cls(sorted(set(text)), unk_token)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def unk_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        """One id per character; characters outside the vocabulary get `unk_id` (0)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return [self.stoi.get(c, 0) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Join the characters of `ids` (the unknown id decodes to `unk_token`)."""
        out = []
        for k, i in enumerate(ids):
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size:
                raise ValueError(f"ids[{k}] must be an int in [0, {self.vocab_size}), got {i!r}")
            out.append(self.itos[i])
        return "".join(out)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"type": "plmkit.CharTokenizer", "unk_token": self.unk_token, "chars": self.itos[1:]}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("type") != "plmkit.CharTokenizer":
            raise ValueError(f"path must name a file written by CharTokenizer.save, got {str(path)!r}")
        return cls(data["chars"], data["unk_token"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
