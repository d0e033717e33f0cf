"""The unigram language-model tokenizer (Kudo 2018): the most probable segmentation, by Viterbi.

A unigram model is a vocabulary in which every piece has a probability; the
probability of a segmentation is the product of its pieces' probabilities, so
its log-probability is the SUM of their scores (log-probabilities). Encoding
picks the segmentation with the largest sum. There are exponentially many
segmentations, but the best one for ``text[:end]`` is the best one for some
shorter prefix ``text[:start]`` plus the last piece ``text[start:end]``, so one
pass over the end positions finds it (Viterbi, dynamic programming):

    best[0]   = 0
    best[end] = max over pieces text[start:end] of best[start] + score(text[start:end])

and walking back from ``best[len(text)]`` gives the pieces. Cost: O(len(text) x
the longest piece).

`viterbi` is that recursion (chapter 1, Exercise 1.6). `UnigramModel` adds what
SentencePiece (Kudo and Richardson 2018) does around it, so that its output
equals ``SentencePieceProcessor.encode(text, out_type=str)`` for a unigram
model (tests/test_tokenize.py checks this on hundreds of held-out lines):

* pre-processing: the *dummy prefix* ``▁`` in front, every space written as ``▁``
  (the model must be trained with ``normalization_rule_name="identity"`` and
  ``remove_extra_whitespaces=False``; `UnigramModel.from_sentencepiece` checks);
* unknown characters: a character that is no piece may stand alone with the
  score (lowest piece score - 10), SentencePiece's *unk penalty*; runs of such
  characters come out as one piece (or, with byte fallback, as ``<0xNN>`` byte
  pieces);
* ties (never met in practice) go, as in SentencePiece, to the segmentation
  whose last piece starts first.

SentencePiece adds scores in float32; `viterbi` adds Python floats (float64).
The two can only disagree where two segmentations' sums differ by less than
float32's rounding (~1e-6), which the tests never meet.

    >>> viterbi("▁lower", {"▁": -2.0, "l": -4.0, "o": -4.0, "w": -4.0, "e": -3.0, "r": -3.0,
    ...                    "▁low": -5.0, "er": -4.0, "▁lo": -6.0, "wer": -3.5})
    ['▁low', 'er']
"""
from __future__ import annotations

import math
import os
import struct
from typing import Mapping

SPACE = "\u2581"          # '▁', SentencePiece's visible space
UNK_PENALTY = 10.0        # an unknown character scores (lowest piece score - 10), as in SentencePiece


def _check_pieces(pieces) -> None:
    if not isinstance(pieces, Mapping):
        raise ValueError(f"pieces must be a dict {{piece: log-probability}}, got {type(pieces).__name__}")
    for piece, score in pieces.items():
        if not isinstance(piece, str) or not piece:
            raise ValueError(f"pieces must have non-empty str keys, got {piece!r}")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"pieces[{piece!r}] must be a finite number (a log-probability), got {score!r}")


def viterbi(text: str, pieces: Mapping[str, float], unk_score: float | None = None) -> list[str]:
    """The segmentation of `text` into `pieces` with the largest sum of scores.

    text       the string to cut (already pre-processed: spaces are '▁')
    pieces     {piece: score}; scores are log-probabilities (<= 0 in a trained model)
    unk_score  None: a character that starts no piece makes `text` impossible to
               segment, and a ValueError says which one. A number: such a character
               may stand alone as an unknown piece with this score (SentencePiece's rule).
    Returns the pieces in order; ``"".join(result) == text``; ``[]`` for ``""``.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    _check_pieces(pieces)
    if unk_score is not None and (isinstance(unk_score, bool) or not isinstance(unk_score, (int, float))
                                  or not math.isfinite(unk_score)):
        raise ValueError(f"unk_score must be None or a finite number, got {unk_score!r}")
    longest = max(map(len, pieces), default=1)
    n = len(text)
    best_score: list[float | None] = [0.0] + [None] * n    # best_score[i]: best sum for text[:i]
    best_start = [0] * (n + 1)                              # where the last piece of that best path starts
    for end in range(1, n + 1):
        for start in range(max(0, end - longest), end):     # earlier starts first: ties keep the longer piece
            if best_score[start] is None:
                continue
            piece = text[start:end]
            if piece in pieces:
                score = pieces[piece]
            elif unk_score is not None and end == start + 1:
                score = unk_score                           # an unknown character, alone
            else:
                continue
            candidate = best_score[start] + score
            if best_score[end] is None or candidate > best_score[end]:
                best_score[end], best_start[end] = candidate, start
    if best_score[n] is None:
        bad = next(i for i in range(n) if best_score[i] is not None and
                   not any(text[i:j] in pieces for j in range(i + 1, min(n, i + longest) + 1)))
        raise ValueError(f"text cannot be segmented into pieces: no piece starts with {text[bad]!r} "
                         f"at position {bad}")
    out, end = [], n
    while end > 0:                                          # walk the best path back from the end
        out.append(text[best_start[end]:end])
        end = best_start[end]
    return out[::-1]


def score_of(segmentation: list[str], pieces: Mapping[str, float]) -> float:
    """The log-probability of a segmentation: the sum of its pieces' scores."""
    return sum(pieces[p] for p in segmentation)


class UnigramModel:
    """A unigram tokenizer: pieces with scores, SentencePiece's pre-processing and unknown-character rule.

    >>> m = UnigramModel({"▁": -2.0, "a": -3.0, "b": -3.0, "▁ab": -4.0})
    >>> m.encode("ab ba"), m.encode("abc")
    (['▁ab', '▁', 'b', 'a'], ['▁ab', 'c'])
    """

    def __init__(self, pieces: Mapping[str, float], add_dummy_prefix: bool = True, byte_fallback: bool = False):
        _check_pieces(pieces)
        if not pieces:
            raise ValueError("pieces must not be empty")
        self.pieces = dict(pieces)
        self.add_dummy_prefix = bool(add_dummy_prefix)
        self.byte_fallback = bool(byte_fallback)
        self.unk_score = min(self.pieces.values()) - UNK_PENALTY

    def normalize(self, text: str) -> str:
        """SentencePiece's pre-processing (identity rule): dummy prefix '▁', spaces -> '▁'."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if not text:
            return ""
        return (SPACE if self.add_dummy_prefix else "") + text.replace(" ", SPACE)

    def encode(self, text: str) -> list[str]:
        """Text to pieces, as ``sp.encode(text, out_type=str)``: unknown runs merged, or bytes with byte fallback."""
        out: list[str] = []
        unknown_before = False
        for piece in viterbi(self.normalize(text), self.pieces, unk_score=self.unk_score):
            unknown = piece not in self.pieces
            if unknown and self.byte_fallback:
                out.extend(f"<0x{b:02X}>" for b in piece.encode("utf-8"))
            elif unknown and unknown_before:
                out[-1] += piece                            # a run of unknown characters is one piece
            else:
                out.append(piece)
            unknown_before = unknown
        return out

    def decode(self, pieces: list[str]) -> str:
        """Pieces back to text: join, '▁' -> space, drop the dummy prefix (byte pieces are not decoded)."""
        text = "".join(pieces).replace(SPACE, " ")
        return text[1:] if self.add_dummy_prefix and text.startswith(" ") else text

    @classmethod
    def from_sentencepiece(cls, model) -> "UnigramModel":
        """Read pieces and scores from a SentencePiece unigram model.

        `model`: the bytes of a .model file, a path to one, or a `SentencePieceTokenizer`.
        The file is a protocol buffer; it is read here directly (no sentencepiece
        call), keeping NORMAL pieces, and its settings are checked: unigram, the
        identity normalisation, remove_extra_whitespaces=False, whitespace as
        prefix, no user-defined symbols. Control pieces (<s>, </s>) and <unk> are
        never matched in text, as in SentencePiece.
        """
        if hasattr(model, "model_proto"):
            model = model.model_proto
        if isinstance(model, (str, os.PathLike)):
            with open(model, "rb") as f:
                model = f.read()
        if not isinstance(model, (bytes, bytearray)) or not model:
            raise ValueError("model must be the bytes of a SentencePiece model, a path to one, "
                             "or a SentencePieceTokenizer")
        spec = read_model_proto(bytes(model))
        problems = []
        if spec["model_type"] != 1:
            problems.append(f"model_type is {({2: 'bpe', 3: 'word', 4: 'char'}).get(spec['model_type'])}, not unigram")
        if spec["normalization_rule_name"] != "identity":
            problems.append(f"normalization_rule_name is {spec['normalization_rule_name']!r}, not 'identity'")
        if spec["remove_extra_whitespaces"]:
            problems.append("remove_extra_whitespaces is True")
        if not spec["escape_whitespaces"] or spec["treat_whitespace_as_suffix"]:
            problems.append("whitespace is not escaped as a '▁' prefix")
        if any(t == 4 for _, _, t in spec["pieces"]):
            problems.append("it has user-defined symbols")
        if problems:
            raise ValueError("this SentencePiece model is not supported: " + "; ".join(problems))
        pieces = {p: s for p, s, t in spec["pieces"] if t == 1}
        return cls(pieces, add_dummy_prefix=spec["add_dummy_prefix"], byte_fallback=spec["byte_fallback"])

    def __len__(self) -> int:
        return len(self.pieces)

    def __repr__(self) -> str:
        return f"UnigramModel({len(self.pieces)} pieces, add_dummy_prefix={self.add_dummy_prefix})"


# --------------------------------------------------------------------------
# Reading a SentencePiece .model file (a protocol buffer) without sentencepiece
# --------------------------------------------------------------------------
def _fields(buf: bytes):
    """(field number, wire type, value) for each field of one protobuf message."""
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value
    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 1:
            yield number, wire, buf[i:i + 8]
            i += 8
        elif wire == 2:
            size = varint()
            yield number, wire, buf[i:i + size]
            i += size
        elif wire == 5:
            yield number, wire, buf[i:i + 4]
            i += 4
        else:
            raise ValueError(f"not a SentencePiece model (protobuf wire type {wire})")


def read_model_proto(data: bytes) -> dict:
    """The parts of sentencepiece_model.proto the encoder needs (field numbers from that file).

    ModelProto: pieces = 1, trainer_spec = 2, normalizer_spec = 3.
    SentencePiece: piece = 1, score = 2 (float32), type = 3 (NORMAL 1, UNKNOWN 2, CONTROL 3,
    USER_DEFINED 4, UNUSED 5, BYTE 6). TrainerSpec: model_type = 3 (UNIGRAM 1), byte_fallback = 35,
    treat_whitespace_as_suffix = 24. NormalizerSpec: name = 1, add_dummy_prefix = 3,
    remove_extra_whitespaces = 4, escape_whitespaces = 5 (the last three default to true).
    """
    spec = {"pieces": [], "model_type": 1, "byte_fallback": False, "treat_whitespace_as_suffix": False,
            "normalization_rule_name": "", "add_dummy_prefix": True, "remove_extra_whitespaces": True,
            "escape_whitespaces": True}
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                piece, score, kind = "", 0.0, 1
                for n, w, v in _fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2 and w == 5:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        kind = v
                spec["pieces"].append((piece, score, kind))
            elif number == 2 and wire == 2:
                for n, w, v in _fields(value):
                    if w == 0 and n in (3, 24, 35):
                        spec[{3: "model_type", 24: "treat_whitespace_as_suffix", 35: "byte_fallback"}[n]] = (
                            v if n == 3 else bool(v))
            elif number == 3 and wire == 2:
                for n, w, v in _fields(value):
                    if n == 1 and w == 2:
                        spec["normalization_rule_name"] = v.decode("utf-8")
                    elif w == 0 and n in (3, 4, 5):
                        spec[{3: "add_dummy_prefix", 4: "remove_extra_whitespaces",
                              5: "escape_whitespaces"}[n]] = bool(v)
    except (IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"not a SentencePiece model: {e}") from e
    if not spec["pieces"]:
        raise ValueError("not a SentencePiece model: no pieces")
    return spec
