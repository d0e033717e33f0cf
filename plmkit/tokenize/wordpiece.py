"""WordPiece (Wu et al. 2016), the tokenizer of BERT, for an existing vocabulary.

BERT's tokenizer runs in two stages, and this file follows them in order:

1. *Basic tokenization* (`basic_tokenize`): drop control characters, put
   spaces around CJK characters (so each Chinese character is a word of its
   own), split on whitespace, lower-case and strip accents (uncased models),
   and split off every punctuation character.
2. *WordPiece* (`wordpiece_word`): cut each word greedily into the longest
   vocabulary entries, left to right. Pieces that continue a word carry the
   prefix ``##``; a word that cannot be covered (or has more than 100
   characters) becomes a single ``[UNK]``.

`WordPiece` wraps both with the vocabulary file, ids and BERT's special
tokens ([CLS] text [SEP]). Its output equals Hugging Face's `BertTokenizer`
on the same vocab.txt (tests/test_tokenize.py checks this on the real
all-MiniLM-L6-v2 vocabulary).

How WordPiece *learns* its vocabulary (merging the pair that most raises the
likelihood, count(ab) / (count(a) count(b)), instead of the most frequent
pair) is told in the chapter; here the vocabulary is given.
"""
from __future__ import annotations

import os
import re
import unicodedata
from typing import Iterable, Mapping, Sequence

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --------------------------------------------------------------------------
# 1. Basic tokenization
# --------------------------------------------------------------------------
def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    """ASCII symbols that are not letters or digits count too ('$', '^', '`' ...)."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (the blocks BERT splits into one word per character).

    >>> is_cjk("中"), is_cjk("a"), is_cjk("。")
    (True, False, False)
    """
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def _split_punctuation(word: str) -> list[str]:
    out: list[str] = []
    start_new = True
    for ch in word:
        if _is_punctuation(ch):
            out.append(ch)
            start_new = True
        else:
            if start_new:
                out.append("")
            start_new = False
            out[-1] += ch
    return out


def basic_tokenize(text: str, lowercase: bool = True, strip_accents: bool | None = None) -> list[str]:
    """BERT's first stage: clean, split CJK characters, whitespace, case, accents, punctuation.

    `strip_accents=None` follows `lowercase` (as BERT does for uncased models).

    >>> basic_tokenize("Héllo, WORLD! 你好")
    ['hello', ',', 'world', '!', '你', '好']
    """
    if strip_accents is None:
        strip_accents = lowercase
    chars = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
            continue
        if _is_whitespace(ch):
            chars.append(" ")
        elif is_cjk(ch):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    text = unicodedata.normalize("NFC", "".join(chars))
    words: list[str] = []
    for word in text.split():
        if lowercase:
            word = "".join(c.lower() for c in word)   # per character, as BERT does (so 'Σ' -> 'σ', never 'ς')
        if strip_accents:
            word = _strip_accents(word)
        words.extend(_split_punctuation(word))
    return " ".join(words).split()


# --------------------------------------------------------------------------
# 2. Greedy longest-match-first
# --------------------------------------------------------------------------
def wordpiece_word(word: str, vocab: Mapping[str, int] | set, unk_token: str = "[UNK]",
                   max_chars: int = 100, prefix: str = "##") -> list[str]:
    """Cut one word into the longest vocabulary pieces, left to right.

    At each position take the longest piece in the vocabulary; a piece that
    does not start the word is looked up with the ``##`` prefix. If some
    position has no piece at all, or the word has more than `max_chars`
    characters, the whole word becomes `[unk_token]`.

    >>> vocab = {"un", "##aff", "##able", "aff", "able", "##a"}
    >>> wordpiece_word("unaffable", vocab)
    ['un', '##aff', '##able']
    >>> wordpiece_word("unaffablex", vocab)
    ['[UNK]']
    """
    if len(word) > max_chars:
        return [unk_token]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        end = len(word)
        piece = None
        while start < end:
            candidate = word[start:end] if start == 0 else prefix + word[start:end]
            if candidate in vocab:
                piece = candidate
                break
            end -= 1
        if piece is None:
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# --------------------------------------------------------------------------
# 3. The tokenizer
# --------------------------------------------------------------------------
class WordPiece:
    """BERT's tokenizer: basic tokenization, then WordPiece, with [CLS]/[SEP] and ids.

    >>> tok = WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "!"])
    >>> tok.tokenize("Unaffable!")
    ['un', '##aff', '##able', '!']
    >>> tok.encode("Unaffable!")
    [2, 5, 6, 7, 8, 3]
    >>> tok.decode(tok.encode("Unaffable!"))
    '[CLS] unaffable! [SEP]'
    """

    def __init__(self, vocab: Sequence[str], lowercase: bool = True, strip_accents: bool | None = None,
                 max_chars: int = 100):
        tokens = list(vocab)
        self.vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if not isinstance(t, str) or not t:
                raise ValueError(f"vocab[{i}] must be a non-empty string, got {t!r}")
            self.vocab[t] = i                      # a repeated token keeps its last id, as in BERT
        missing = [s for s in SPECIAL_TOKENS if s not in self.vocab]
        if missing:
            raise ValueError(f"vocab must contain BERT's special tokens {SPECIAL_TOKENS}; missing {missing}")
        if not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive int, got {max_chars!r}")
        self.itos = tokens
        self.lowercase, self.strip_accents, self.max_chars = lowercase, strip_accents, max_chars
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.vocab[s] for s in SPECIAL_TOKENS)
        self._special_split = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, lowercase: bool = True, **kwargs) -> "WordPiece":
        """Read a BERT vocab.txt (one token per line; the line number is the id)."""
        if not os.path.isfile(path):
            raise ValueError(f"path must name a vocab.txt file, got {str(path)!r} (no such file)")
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        if tokens and tokens[-1] == "":
            tokens.pop()
        return cls(tokens, lowercase=lowercase, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        """Text to WordPiece tokens (no [CLS]/[SEP]); special tokens written in the text are kept whole.

        >>> WordPiece(list(SPECIAL_TOKENS) + ["hi"]).tokenize("Hi [MASK] hi")
        ['hi', '[MASK]', 'hi']
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        out: list[str] = []
        for k, part in enumerate(self._special_split.split(text)):
            if k % 2:
                out.append(part)
                continue
            for word in basic_tokenize(part, self.lowercase, self.strip_accents):
                out.extend(wordpiece_word(word, self.vocab, "[UNK]", self.max_chars))
        return out

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        out = []
        for k, i in enumerate(ids):
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size:
                raise ValueError(f"ids[{k}] must be an int in [0, {self.vocab_size}), got {i!r}")
            out.append(self.itos[i])
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text to ids, wrapped as [CLS] ... [SEP] unless `add_special_tokens=False`."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        return [self.cls_id] + ids + [self.sep_id] if add_special_tokens else ids

    def encode_pair(self, text_a: str, text_b: str) -> tuple[list[int], list[int]]:
        """A sentence pair as BERT reads it: ids of [CLS] a [SEP] b [SEP], and token type ids (0 for a, 1 for b).

        >>> tok = WordPiece(list(SPECIAL_TOKENS) + ["hi", "yo"])
        >>> tok.encode_pair("hi", "yo yo")
        ([2, 5, 3, 6, 6, 3], [0, 0, 0, 1, 1, 1])
        """
        a = self.encode(text_a, add_special_tokens=False)
        b = self.encode(text_b, add_special_tokens=False)
        ids = [self.cls_id] + a + [self.sep_id] + b + [self.sep_id]
        return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = True) -> str:
        """Ids to text: join tokens with spaces, glue ``##`` pieces on, tidy spaces before punctuation.

        Lower-casing and stripped accents cannot be undone: WordPiece for an
        uncased model is lossy. Matches `BertTokenizer.decode`.
        """
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in SPECIAL_TOKENS]
        text = " ".join(tokens).replace(" ##", "").strip()
        if clean_up_tokenization_spaces:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def __repr__(self) -> str:
        return f"WordPiece(vocab_size={self.vocab_size}, lowercase={self.lowercase})"
