"""A thin wrapper around SentencePiece (Kudo and Richardson 2018), the tokenizer of T5 and LLaMA.

SentencePiece treats text as a plain stream of Unicode characters, spaces
included: a space is written as the visible piece ``▁`` (U+2581), so no
language-specific pre-tokenization is needed (this is why it suits Chinese and
Japanese, which do not put spaces between words). It trains either BPE or a
*unigram* language model (Kudo 2018): start from a large set of candidate
pieces and prune the ones whose removal costs the corpus likelihood least.

Its defaults are lossy: 'naïve café' comes back as 'na ⁇ ve caf ⁇' (unknown
characters) and double spaces collapse. This wrapper always trains with

    byte_fallback=True                  unknown characters fall back to UTF-8 byte pieces <0xNN>
    normalization_rule_name='identity'  no NFKC rewriting
    remove_extra_whitespaces=False      keep every space
    minloglevel=2                       no training log in the notebook

(and hard_vocab_limit=False for unigram, so a small corpus does not make a
large vocabulary an error), so that `decode(encode(text)) == text` for any text
that does not itself contain ``▁`` (U+2581): SentencePiece reserves that character
for the space, so a ``▁`` in the input comes back as a space (a limitation of
SentencePiece, pinned in tests/test_tokenize.py). Training is in memory: no files
are written.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

LOSSLESS = dict(byte_fallback=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, minloglevel=2)


def _sentencepiece():
    """The `sentencepiece` package, imported on first use (the rest of plmkit.tokenize does not need it)."""
    try:
        import sentencepiece
    except ImportError as e:  # pragma: no cover
        raise ImportError("SentencePieceTokenizer needs the sentencepiece package: pip install sentencepiece") from e
    return sentencepiece


class SentencePieceTokenizer:
    """Train (unigram or BPE) and run a lossless SentencePiece model.

    >>> tok = SentencePieceTokenizer.train("low lower lowest\\n" * 200, vocab_size=275, model_type="bpe")
    >>> tok.encode_pieces("lowest  naïve")[:3]
    ['▁lowest', '▁', '▁']
    >>> tok.decode(tok.encode("lowest  naïve")) == "lowest  naïve"
    True
    """

    MODEL_TYPES = ("unigram", "bpe")

    def __init__(self, model_proto: bytes):
        if not isinstance(model_proto, (bytes, bytearray)) or not model_proto:
            raise ValueError("model_proto must be the non-empty bytes of a SentencePiece model")
        self.model_proto = bytes(model_proto)
        self.sp = _sentencepiece().SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(cls, text: str, vocab_size: int, model_type: str = "unigram",
              character_coverage: float = 0.9995, **options) -> "SentencePieceTokenizer":
        """Train on `text` (one sentence per line) with the lossless settings above.

        `vocab_size` counts everything: <unk>, <s>, </s>, the 256 byte pieces
        and the learned pieces, so it must be at least 260. Extra keyword
        `options` go to `sentencepiece.SentencePieceTrainer.train` unchanged.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty str")
        if model_type not in cls.MODEL_TYPES:
            raise ValueError(f"model_type must be one of {cls.MODEL_TYPES}, got {model_type!r}")
        if not isinstance(vocab_size, int) or vocab_size < 260:
            raise ValueError(f"vocab_size must be an int >= 260 (3 specials + 256 bytes + at least one piece), "
                             f"got {vocab_size!r}")
        if not 0.0 < character_coverage <= 1.0:
            raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage!r}")
        lines = [line for line in text.split("\n") if line.strip()]
        settings = dict(LOSSLESS, vocab_size=vocab_size, model_type=model_type,
                        character_coverage=character_coverage, max_sentence_length=1 << 16,
                        num_threads=min(os.cpu_count() or 1, 8))
        if model_type == "unigram":
            settings["hard_vocab_limit"] = False
        settings.update(options)
        out = io.BytesIO()
        try:
            _sentencepiece().SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, **settings)
        except RuntimeError as e:
            raise ValueError(f"SentencePiece could not train with vocab_size={vocab_size} on this text: {e}") from e
        return cls(out.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Text to ids (no <s> or </s> added)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return self.sp.encode(text)

    def encode_pieces(self, text: str) -> list[str]:
        """Text to pieces, e.g. ['▁low', 'est']."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return self.sp.encode(text, out_type=str)

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        for k, i in enumerate(ids):
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size:
                raise ValueError(f"ids[{k}] must be an int in [0, {self.vocab_size}), got {i!r}")
        return self.sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        if not isinstance(i, int) or not 0 <= i < self.vocab_size:
            raise ValueError(f"i must be an int in [0, {self.vocab_size}), got {i!r}")
        return self.sp.id_to_piece(i)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model (the usual .model protobuf file, readable by sentencepiece itself)."""
        with open(path, "wb") as f:
            f.write(self.model_proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        with open(path, "rb") as f:
            return cls(f.read())

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size})"
