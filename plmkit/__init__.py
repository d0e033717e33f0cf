"""plmkit: the shared package of the PLM book.

Every chapter of the book builds one piece of a pre-trained language model and
keeps it here, so that later chapters can stand on it:

    device      pick cuda / mps / cpu, seeds, size profiles
    data        named corpora, cached on first use
    tokenize    char, byte-level BPE, WordPiece, SentencePiece
    nn          attention, positions, norms, feed-forward, blocks
    models      BERT, GPT, T5, LLaMA (Hugging Face-format checkpoints)
    objectives  MLM, NSP/SOP, CLM, span corruption
    train       the Trainer
    generate    decoding strategies and the KV cache
    checks      the checkers behind every graded exercise
    grading     notebook authoring and the grader
"""
__version__ = "0.1.0"
