"""Train byte-level BPE with plmkit and with SentencePiece (BPE) on the same text and vocabulary size.

Prints, for each: training time (the best of --repeat runs), and bytes per token on
held-out text (the last 10% of the text; training uses the first 90%), then the
ratios plmkit / sentencepiece.
Hugging Face `tokenizers` (Rust) is shown as a third point of reference.

    python bench/bench_bpe.py                                  # 1 MB of Shakespeare, vocab 2048
    python bench/bench_bpe.py --text pydoc --vocab 4096
    python bench/bench_bpe.py --text my_book.txt --max-bytes 0 # a file of yours, all of it

Everything runs on one thread (sentencepiece and tokenizers are asked for one
thread too), so the times compare algorithms, not core counts.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")      # Hugging Face tokenizers: one thread

import sentencepiece as spm  # noqa: E402

from plmkit.data import load_corpus  # noqa: E402
from plmkit.tokenize import ByteLevelBPE  # noqa: E402


def best_of(repeat: int, fn):
    """Run `fn` `repeat` times; return (the shortest time, the last result)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_plmkit(train: str, test: str, vocab: int, repeat: int) -> tuple[float, float]:
    seconds, tok = best_of(repeat, lambda: ByteLevelBPE.train(train, vocab_size=vocab))
    ids = tok.encode(test)
    assert tok.decode(ids) == test
    return seconds, len(test.encode("utf-8")) / len(ids)


def bench_sentencepiece(train: str, test: str, vocab: int, repeat: int) -> tuple[float, float]:
    lines = [line for line in train.split("\n") if line.strip()]

    def run() -> bytes:
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab, model_type="bpe",
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            character_coverage=1.0, max_sentence_length=1 << 16, num_threads=1, minloglevel=2)
        return out.getvalue()

    seconds, proto = best_of(repeat, run)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    ids = sp.encode(test)
    assert sp.decode(ids) == test
    return seconds, len(test.encode("utf-8")) / len(ids)


def bench_hf(train: str, test: str, vocab: int, repeat: int) -> tuple[float, float]:
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    def run():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator([train], trainer=trainer)
        return tok

    seconds, tok = best_of(repeat, run)
    ids = tok.encode(test).ids
    return seconds, len(test.encode("utf-8")) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default="shakespeare", help="a corpus name (shakespeare, pydoc, chinese...) or a file path")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary size for both (default 2048)")
    ap.add_argument("--max-bytes", type=int, default=1_000_000, help="use the first N bytes (0: all; default 1 MB)")
    ap.add_argument("--repeat", type=int, default=3, help="train this many times, report the fastest (default 3)")
    args = ap.parse_args()
    if args.vocab < 300:
        ap.error("--vocab must be at least 300")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    text = load_corpus(args.text)
    if args.max_bytes:
        text = text.encode("utf-8")[: args.max_bytes].decode("utf-8", errors="ignore")
    cut = int(len(text) * 0.9)
    train, test = text[:cut], text[cut:]
    print(f"text: {args.text}, {len(text.encode('utf-8')):,} bytes (train 90%, held out 10%); vocab {args.vocab}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread used; "
          f"best of {args.repeat} runs\n")

    rows = [("plmkit ByteLevelBPE (Python)", *bench_plmkit(train, test, args.vocab, args.repeat)),
            ("sentencepiece BPE (C++)", *bench_sentencepiece(train, test, args.vocab, args.repeat)),
            ("HF tokenizers BPE (Rust)", *bench_hf(train, test, args.vocab, args.repeat))]
    print(f"{'tokenizer':30s} {'train s':>9s} {'bytes/token':>12s}")
    for name, seconds, bpt in rows:
        print(f"{name:30s} {seconds:9.2f} {bpt:12.3f}")
    (_, t_ours, b_ours), (_, t_spm, b_spm) = rows[0], rows[1]
    print(f"\nplmkit / sentencepiece: train time x{t_ours / t_spm:.2f}, bytes per token x{b_ours / b_spm:.3f}")


if __name__ == "__main__":
    main()
