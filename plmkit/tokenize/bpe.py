"""Byte-level BPE (字节对编码, byte-pair encoding), the tokenizer of GPT-2, RoBERTa and LLaMA-3.

Start from the 256 possible bytes, so that any text at all can be written
down (no [UNK] ever), then learn *merges*: the most frequent adjacent pair of
tokens becomes a new token, again and again, until the vocabulary is as big as
you asked for (Sennrich et al. 2016; byte-level as in GPT-2, Radford et al. 2019).

Read this file top to bottom:

1. `count_pairs` and `merge`: the two primitives (exercises 1.1 and 1.2).
2. `pretokenize`: GPT-2's regular expression cuts text into chunks (words,
   numbers, punctuation runs, whitespace) so that merges never cross them.
3. `train_merges_naive`: the textbook loop that recounts every pair after each
   merge (exercise 1.3). Clear, and slow: O(merges x corpus).
4. `train_merges`: the same merges, fast. It keeps a table of *distinct* chunks
   with their frequencies, counts pairs once, and after each merge updates only
   the counts of the chunks that contained the merged pair.
5. `encode_ids`: apply learned merges to new text, lowest rank first (exercise 1.4).
6. `ByteLevelBPE`: the tokenizer: train, encode, decode, special tokens, save/load,
   and `from_vocab` / `from_gguf`: a real model's vocabulary (SmolLM2's, from its GGUF file).

Ids 0..255 are the raw bytes; merge number i (counting from 0) creates id
256 + i; special tokens come after the merges.

Tie rule (used everywhere in this file): the pair with the highest count wins;
among pairs with the same count, the smallest pair wins, comparing (a, b) as
tuples of ints. A fixed rule makes training reproducible and testable.
"""
from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict
from typing import Iterable, Mapping, Sequence

import regex

# GPT-2's pre-tokenization pattern: contractions, an optional space followed by
# letters / numbers / other symbols, and whitespace runs (the last one kept
# apart from the next word, so " the" stays a chunk of its own).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SmolLM2's pre-tokenizer (a GGUF file's ``tokenizer.ggml.pre = "smollm"``: llama.cpp's
# LLAMA_VOCAB_PRE_TYPE_SMOLLM, i.e. Hugging Face's Sequence[Digits(individual_digits=True), ByteLevel]):
# every digit is a chunk of its own, then GPT-2's pattern runs inside the pieces between digits. One
# pattern does both: \p{N} comes first, " ?\p{N}+" goes, and a whitespace run that ends at a digit
# ends its piece, so it stays whole (the lookahead (?![^\s\p{N}]) lets a digit follow, where GPT-2's
# (?!\S) would give its last space to the next chunk). "a  12" -> ['a', '  ', '1', '2'].
SMOLLM_SPLIT_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

# GGUF's tokenizer.ggml.pre names -> our pattern (the names llama.cpp's converter writes).
GGUF_PRE_PATTERNS = {"default": GPT2_SPLIT_PATTERN, "gpt2": GPT2_SPLIT_PATTERN, "smollm": SMOLLM_SPLIT_PATTERN}
GGUF_CONTROL = 3                # tokenizer.ggml.token_type of a special (control) token: <|im_start|>, ...

Pair = tuple[int, int]


def gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-in for every byte: vocabulary files write tokens in these characters.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, ...) are
    mapped to U+0100 onwards in byte order, so a space is 'Ġ' and a newline 'Ċ'
    (GPT-2's ``bytes_to_unicode``).

    >>> chars = gpt2_byte_chars()
    >>> chars[ord("a")], chars[ord(" ")], chars[ord("\\n")], len(set(chars))
    ('a', 'Ġ', 'Ċ', 256)
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) \
        | set(range(ord("®"), ord("ÿ") + 1))
    chars, n = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return chars


# --------------------------------------------------------------------------
# 1. The two primitives
# --------------------------------------------------------------------------
def count_pairs(ids: Sequence[int]) -> dict[Pair, int]:
    """Count every adjacent pair of ids, overlapping pairs included.

    >>> count_pairs([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    >>> count_pairs([7, 7, 7])          # 'aaa' holds the pair (a, a) twice
    {(7, 7): 2}
    """
    counts: dict[Pair, int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in `ids` by `new_id`, scanning left to right.

    Occurrences cannot overlap: once two ids are merged, the second one is
    used up, so 'aaa' with the pair (a, a) gives [X, a], not [X, X].

    >>> merge([1, 2, 3, 1, 2], (1, 2), 99)
    [99, 3, 99]
    >>> merge([7, 7, 7], (7, 7), 99)
    [99, 7]
    >>> merge([7, 7, 7, 7], (7, 7), 99)
    [99, 99]
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# --------------------------------------------------------------------------
# 2. Pre-tokenization: the table of distinct chunks
# --------------------------------------------------------------------------
def pretokenize(text: str, pattern: str = GPT2_SPLIT_PATTERN) -> list[str]:
    """Cut `text` into the chunks that BPE merges inside of (never across).

    >>> pretokenize("Hello world, it's 2024!")
    ['Hello', ' world', ',', ' it', "'s", ' 2024', '!']
    """
    return regex.findall(pattern, text)


def word_table(text: str, pattern: str = GPT2_SPLIT_PATTERN) -> dict[tuple[int, ...], int]:
    """The distinct chunks of `text` as tuples of UTF-8 bytes, with how often each occurs.

    Training works on this table instead of on the whole text: 1 MB of English
    has ~200,000 chunks but only ~20,000 distinct ones.

    >>> word_table("the cat the")
    {(116, 104, 101): 1, (32, 99, 97, 116): 1, (32, 116, 104, 101): 1}
    """
    counts = Counter(pretokenize(text, pattern))
    return {tuple(chunk.encode("utf-8")): n for chunk, n in counts.items()}


# --------------------------------------------------------------------------
# 3. Training, the textbook way
# --------------------------------------------------------------------------
def train_merges_naive(words: Mapping[tuple[int, ...], int], num_merges: int,
                       first_id: int = 256) -> list[Pair]:
    """Learn `num_merges` merges by recounting all pairs after every merge.

    `words` maps each distinct chunk (a tuple of ids) to its frequency. Merge i
    creates id `first_id + i`. Ties go to the smallest pair; training stops
    early when no chunk has two tokens left.

    >>> train_merges_naive({(1, 2, 3): 2, (2, 3): 1, (1, 2): 1}, 2, first_id=10)
    [(1, 2), (10, 3)]

    (1, 2) and (2, 3) both occur 3 times; the tie goes to the smaller pair, (1, 2).
    """
    _check_train_args(words, num_merges, first_id)
    seqs = [(list(w), f) for w, f in words.items()]
    merges: list[Pair] = []
    for i in range(num_merges):
        counts: dict[Pair, int] = defaultdict(int)
        for ids, freq in seqs:
            for pair in zip(ids, ids[1:]):
                counts[pair] += freq
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = [(merge(ids, best, first_id + i), freq) for ids, freq in seqs]
    return merges


# --------------------------------------------------------------------------
# 4. Training, fast: incremental pair counts over the distinct-chunk table
# --------------------------------------------------------------------------
def train_merges(words: Mapping[tuple[int, ...], int], num_merges: int, first_id: int = 256,
                 progress: bool = False) -> list[Pair]:
    """Learn the same merges as `train_merges_naive`, touching only what changes.

    Pair counts are computed once. For each pair we also remember which chunks
    contain it. A merge of (a, b) into X then visits only those chunks, and at
    each occurrence fixes just the counts around it: (a, b) goes away, the
    left neighbour L loses (L, a) and gains (L, X), the right neighbour R
    loses (b, R) and gains (X, R) (each weighted by the chunk's frequency).
    The next best pair comes from a heap of (-count, pair) entries; entries
    whose count has changed since they were pushed are skipped.

    >>> train_merges({(1, 2, 3): 2, (2, 3): 1, (1, 2): 1}, 2, first_id=10)
    [(1, 2), (10, 3)]
    """
    _check_train_args(words, num_merges, first_id)
    seqs: list[list[int]] = [list(w) for w in words]
    freqs: list[int] = list(words.values())
    counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)     # pair -> indices of chunks that may contain it
    for wi, ids in enumerate(seqs):
        f = freqs[wi]
        for pair in zip(ids, ids[1:]):
            counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    bar = _progress(num_merges, "BPE merges") if progress else None
    while len(merges) < num_merges:
        while heap and (-heap[0][0] != counts.get(heap[0][1], 0) or heap[0][0] == 0):
            heapq.heappop(heap)                         # a stale entry: its count changed since
        if not heap:
            break                                       # nothing left to merge
        _, best = heapq.heappop(heap)
        new_id = first_id + len(merges)
        merges.append(best)
        changed: set[Pair] = set()
        for wi in where.pop(best):
            seqs[wi] = _merge_and_count(seqs[wi], best, new_id, freqs[wi], wi, counts, where, changed)
        counts.pop(best, None)
        for pair in changed:
            c = counts.get(pair, 0)
            if c > 0:
                heapq.heappush(heap, (-c, pair))
            else:
                counts.pop(pair, None)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges


def _merge_and_count(ids: list[int], pair: Pair, new_id: int, f: int, wi: int,
                     counts: dict, where: dict, changed: set) -> list[int]:
    """`merge(ids, pair, new_id)`, updating the pair counts around each occurrence as it goes.

    The left neighbour is read from the output, so in 'abab' -> [X, X] the
    second occurrence sees X (already merged) on its left, and 'aaa' with
    (a, a) gives [X, a] with the counts (a, a) -2, (X, a) +1.
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while True:
        try:
            j = ids.index(a, i)                          # jump to the next `a` at C speed
        except ValueError:
            out.extend(ids[i:])
            return out
        if j + 1 < n and ids[j + 1] == b:
            out.extend(ids[i:j])
            counts[pair] -= f
            if out:
                left = out[-1]
                counts[(left, a)] -= f
                counts[(left, new_id)] += f
                where[(left, new_id)].add(wi)
                changed.add((left, a))
                changed.add((left, new_id))
            if j + 2 < n:
                right = ids[j + 2]
                counts[(b, right)] -= f
                counts[(new_id, right)] += f
                where[(new_id, right)].add(wi)
                changed.add((b, right))
                changed.add((new_id, right))
            out.append(new_id)
            i = j + 2
        else:
            out.extend(ids[i:j + 1])
            i = j + 1


def _check_train_args(words, num_merges, first_id) -> None:
    if not isinstance(num_merges, int) or isinstance(num_merges, bool) or num_merges < 0:
        raise ValueError(f"num_merges must be a non-negative int, got {num_merges!r}")
    if not isinstance(first_id, int) or first_id < 0:
        raise ValueError(f"first_id must be a non-negative int, got {first_id!r}")
    for w, f in words.items():
        if not isinstance(f, int) or f < 1:
            raise ValueError(f"words must map chunks to positive int frequencies, got {f!r} for {w!r}")
        if any((not isinstance(t, int)) or t < 0 or t >= first_id for t in w):
            raise ValueError(f"words must hold ids in [0, first_id={first_id}), got {w!r}")


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


# --------------------------------------------------------------------------
# 5. Encoding with learned merges
# --------------------------------------------------------------------------
def encode_ids(ids: Sequence[int], merges: Mapping[Pair, int]) -> list[int]:
    """Apply learned merges to `ids`, always the earliest-learned (lowest-rank) pair first.

    `merges` maps a pair to the id it was merged into; a smaller new id means
    the merge was learned earlier. Training merged in that order, so encoding
    must too: in 'abc' with merges {(b, c): X, (a, b): Y}, (b, c) came first
    and 'abc' becomes [a, X], although (a, b) sits further left.

    >>> encode_ids([1, 2, 3], {(2, 3): 10, (1, 2): 11})
    [1, 10]
    >>> encode_ids([1, 2, 3, 1, 2], {(1, 2): 10, (10, 3): 11})
    [11, 10]
    """
    ids = list(ids)
    while len(ids) >= 2:
        best, best_id = None, None
        for pair in zip(ids, ids[1:]):
            new_id = merges.get(pair)
            if new_id is not None and (best_id is None or new_id < best_id):
                best, best_id = pair, new_id
        if best is None:
            break
        ids = merge(ids, best, best_id)
    return ids


# --------------------------------------------------------------------------
# 6. The tokenizer
# --------------------------------------------------------------------------
class ByteLevelBPE:
    """A byte-level BPE tokenizer with GPT-2's pre-tokenization and optional special tokens.

    Build one by training (`ByteLevelBPE.train(text, vocab_size)`, a classmethod),
    from a list of merges (`ByteLevelBPE(merges)`), or from a file (`ByteLevelBPE.load`).

    >>> tok = ByteLevelBPE.train("low lower lowest " * 50, vocab_size=260)
    >>> [tok.token_bytes(i) for i in range(256, 260)]
    [b'lo', b'low', b' low', b' lowe']
    >>> ids = tok.encode("lowest")
    >>> ids, tok.decode(ids)
    ([257, 101, 115, 116], 'lowest')
    """

    def __init__(self, merges: Iterable[Pair] = (), special_tokens: Iterable[str] = (),
                 pattern: str = GPT2_SPLIT_PATTERN):
        self.merges: list[Pair] = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._split = regex.compile(pattern)
        self._vocab: list[bytes] = [bytes([i]) for i in range(256)]
        self._ranks: dict[Pair, int] = {}
        for i, (a, b) in enumerate(self.merges):
            new_id = 256 + i
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merges[{i}] = {(a, b)} must hold ids below {new_id} (ids made by earlier merges)")
            self._ranks[(a, b)] = new_id
            self._vocab.append(self._vocab[a] + self._vocab[b])
        specials = list(special_tokens)
        for s in specials:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special_tokens must be non-empty strings, got {s!r}")
        if len(set(specials)) != len(specials):
            raise ValueError(f"special_tokens must be distinct, got {specials!r}")
        first = 256 + len(self.merges)
        # A tokenizer of an existing vocabulary (from_vocab) numbers its tokens as the file does:
        # _file_ids[our id] is the file's id (-1: a byte the file has no token for), _file_bytes[file id]
        # its bytes. A trained one keeps ours (None).
        self._file_ids: list[int] | None = None
        self._file_bytes: list[bytes] | None = None
        self._unk_id: int | None = None
        self._set_specials({s: first + i for i, s in enumerate(specials)})

    def _set_specials(self, specials: dict[str, int]) -> None:
        self.special_tokens: dict[str, int] = dict(specials)
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        self._special_split = (regex.compile("(" + "|".join(regex.escape(s) for s in
                                                              sorted(specials, key=len, reverse=True)) + ")")
                               if specials else None)
        self._cache: dict[str, list[int]] = {}

    # -- an existing vocabulary -------------------------------------------------
    @classmethod
    def from_vocab(cls, tokens: Sequence[str], merges: Sequence[str | tuple[str, str]],
                   special_ids: Iterable[int] = (), pattern: str = GPT2_SPLIT_PATTERN,
                   unk_id: int | None = None) -> "ByteLevelBPE":
        """A trained model's tokenizer: its tokens (written in :func:`gpt2_byte_chars`) and merges, in rank order.

        `tokens[i]` is the token of id i; each merge is ``"a b"`` (or a pair) of two earlier tokens.
        `special_ids` are the control tokens (``<|im_start|>``, ...), matched as whole strings
        before pre-tokenization. Ids are the file's; internally merge k still makes our id 256 + k,
        so :func:`encode_ids` applies merges in rank order. A byte that has no token in `tokens`
        (SmolLM2 lacks 21, e.g. 0x04 and 0xF1) becomes `unk_id`, one for a run of such bytes, as
        Hugging Face's BPE does with ``fuse_unk=True``; without `unk_id` it is dropped.

        >>> tok = ByteLevelBPE.from_vocab(["<s>", "a", "b", "Ġ", "ab", "Ġab"], ["a b", "Ġ ab"], special_ids=[0])
        >>> tok.encode("<s>ab ab b"), tok.decode([4, 5])
        ([0, 4, 5, 3, 2], 'ab ab')
        """
        byte_of = {c: b for b, c in enumerate(gpt2_byte_chars())}
        specials = set(special_ids)
        if any(not isinstance(i, int) or not 0 <= i < len(tokens) for i in specials):
            raise ValueError(f"special_ids must be ids in [0, {len(tokens)}), got {sorted(specials)!r}")
        if unk_id is not None and (not isinstance(unk_id, int) or not 0 <= unk_id < len(tokens)):
            raise ValueError(f"unk_id must be None or an id in [0, {len(tokens)}), got {unk_id!r}")

        def to_bytes(token: str, where: str) -> bytes:
            try:
                return bytes(byte_of[c] for c in token)
            except KeyError as e:
                raise ValueError(f"{where} = {token!r} has a character outside GPT-2's byte alphabet: "
                                 f"{e.args[0]!r}") from None

        file_bytes, file_id = [], {}
        for i, t in enumerate(tokens):
            if not isinstance(t, str) or not t:
                raise ValueError(f"tokens[{i}] must be a non-empty str, got {t!r}")
            if i in specials:
                file_bytes.append(t.encode("utf-8"))
                continue
            b = to_bytes(t, f"tokens[{i}]")
            if b in file_id:
                raise ValueError(f"tokens[{i}] = {t!r} repeats tokens[{file_id[b]}]")
            file_id[b] = i
            file_bytes.append(b)
        ours = {bytes([b]): b for b in range(256)}                  # bytes -> our id
        pairs: list[Pair] = []
        for k, m in enumerate(merges):
            parts = m.split(" ") if isinstance(m, str) else list(m)
            if len(parts) != 2:
                raise ValueError(f"merges[{k}] must be two tokens 'a b', got {m!r}")
            a, b = (to_bytes(p, f"merges[{k}]") for p in parts)
            if a not in ours or b not in ours:
                raise ValueError(f"merges[{k}] = {m!r} joins a token that no earlier merge makes")
            if a + b in ours:
                raise ValueError(f"merges[{k}] = {m!r} makes {a + b!r} a second time")
            if a + b not in file_id:
                raise ValueError(f"merges[{k}] = {m!r} makes a token that is not in tokens")
            ours[a + b] = 256 + k
            pairs.append((ours[a], ours[b]))
        tok = cls(pairs, (), pattern)
        tok._file_ids = [file_id.get(bytes([b]), -1) for b in range(256)] + \
            [file_id[tok._vocab[256 + k]] for k in range(len(pairs))]
        tok._file_bytes = file_bytes
        tok._unk_id = unk_id
        tok._set_specials({tokens[i]: i for i in sorted(specials)})
        return tok

    @classmethod
    def from_gguf(cls, path_or_metadata) -> "ByteLevelBPE":
        """The tokenizer stored in a GGUF file (``tokenizer.ggml.model == "gpt2"``), or in its metadata dict.

        Tokens, merges and control tokens come from ``tokenizer.ggml.*``; the pre-tokenizer
        pattern from ``tokenizer.ggml.pre`` (:data:`GGUF_PRE_PATTERNS`: SmolLM2's "smollm"
        isolates digits). A BOS token is never added: ``encode`` returns the text's ids only
        (SmolLM2's file says ``add_bos_token = False``). Bytes without a token become
        ``tokenizer.ggml.unknown_token_id``.

            >>> tok = ByteLevelBPE.from_gguf(smollm2.gguf_path())                   # doctest: +SKIP
            >>> tok.encode("<|im_start|>user\\nHello")   # doctest: +SKIP
            [1, 4093, 198, 19556]
        """
        if isinstance(path_or_metadata, dict):
            meta = path_or_metadata
        else:
            from ..models.hub import read_gguf
            meta, _ = read_gguf(path_or_metadata, tensors=False)
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"the GGUF tokenizer must be byte-level BPE (tokenizer.ggml.model 'gpt2'), got {kind!r}")
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in GGUF_PRE_PATTERNS:
            raise ValueError(f"tokenizer.ggml.pre must be one of {sorted(GGUF_PRE_PATTERNS)}, got {pre!r}")
        tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type", [])
        return cls.from_vocab(tokens, meta["tokenizer.ggml.merges"],
                              [i for i, t in enumerate(types) if t == GGUF_CONTROL], GGUF_PRE_PATTERNS[pre],
                              unk_id=meta.get("tokenizer.ggml.unknown_token_id"))

    # -- training ---------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = (),
              pattern: str = GPT2_SPLIT_PATTERN, progress: bool = False) -> "ByteLevelBPE":
        """Learn merges on `text` until the vocabulary has `vocab_size` entries.

        `vocab_size` counts the 256 bytes, the merges and the special tokens.
        Special tokens found in `text` are cut out before counting. If the
        text runs out of pairs first, the vocabulary is smaller.

        >>> ByteLevelBPE.train("aaab" * 10, vocab_size=258, special_tokens=["<|eot|>"]).vocab_size
        258
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        specials = list(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be an int >= 256 + {len(specials)} special tokens "
                             f"= {256 + len(specials)}, got {vocab_size!r}")
        if specials:
            parts = regex.split("|".join(regex.escape(s) for s in specials), text)
        else:
            parts = [text]
        words: Counter = Counter()
        for part in parts:
            words.update(word_table(part, pattern))
        merges = train_merges(dict(words), vocab_size - 256 - len(specials), progress=progress)
        return cls(merges, specials, pattern)

    # -- vocabulary -------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """256 bytes + merges + special tokens (a file's vocabulary: its number of tokens)."""
        if self._file_bytes is not None:
            return len(self._file_bytes)
        return len(self._vocab) + len(self.special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes that token `token_id` stands for (a special token: its UTF-8 text).

        >>> ByteLevelBPE().token_bytes(104)
        b'h'
        """
        self._check_id(token_id, "token_id")
        if self._file_bytes is not None:
            return self._file_bytes[token_id]
        if token_id in self._special_by_id:
            return self._special_by_id[token_id].encode("utf-8")
        return self._vocab[token_id]

    def _check_id(self, i, name: str) -> None:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size:
            raise ValueError(f"{name} must be an int in [0, {self.vocab_size}), got {i!r}")

    # -- encoding ---------------------------------------------------------
    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Text to ids: split out special tokens, pre-tokenize, then merge bytes inside each chunk.

        With `allow_special=False` a special token's text is encoded as plain
        text (safer for untrusted input).

        >>> ByteLevelBPE().encode("hé")          # no merges: one id per UTF-8 byte
        [104, 195, 169]
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if self._special_split is None or not allow_special:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for k, part in enumerate(self._special_split.split(text)):
            if k % 2:                       # odd parts are the special tokens themselves
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in self._split.findall(text):
            got = cache.get(chunk)
            if got is None:
                got = encode_ids(list(chunk.encode("utf-8")), self._ranks)
                if self._file_ids is not None:
                    got = self._to_file_ids(got)
                if len(cache) > 100_000:
                    cache.clear()
                cache[chunk] = got
            ids.extend(got)
        return ids

    def _to_file_ids(self, ids: list[int]) -> list[int]:
        """Our ids -> the file's; a run of bytes the file has no token for -> one unk_id (or nothing)."""
        out, missing = [], False
        for j in map(self._file_ids.__getitem__, ids):
            if j >= 0:
                out.append(j)
            elif self._unk_id is not None and not missing:
                out.append(self._unk_id)
            missing = j < 0
        return out

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Ids to text: concatenate the bytes of every token, then decode UTF-8.

        A cut in the middle of a multi-byte character decodes to U+FFFD
        (`errors='replace'`); pass errors='strict' to get an error instead.

        >>> ByteLevelBPE().decode([104, 195, 169])
        'hé'
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Ids to the raw bytes they stand for."""
        out = []
        for k, i in enumerate(ids):
            self._check_id(i, f"ids[{k}]")
            out.append(self.token_bytes(i))
        return b"".join(out)

    # -- save / load ------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the merges, special tokens and split pattern to a JSON file."""
        if self._file_ids is not None:
            raise ValueError("save() writes trained tokenizers; one of an existing vocabulary is loaded from "
                             "its file again (ByteLevelBPE.from_gguf)")
        data = {"type": "plmkit.ByteLevelBPE", "version": 1, "pattern": self.pattern,
                "special_tokens": list(self.special_tokens), "merges": [list(p) for p in self.merges]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ByteLevelBPE":
        """Read a tokenizer written by `save`."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("type") != "plmkit.ByteLevelBPE":
            raise ValueError(f"path must name a file written by ByteLevelBPE.save, got {str(path)!r}")
        return cls([tuple(p) for p in data["merges"]], data["special_tokens"], data["pattern"])

    def __repr__(self) -> str:
        return (f"ByteLevelBPE(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")
