"""Tokenizers, from the simplest to the ones real models use (chapter 1).

    char.py       CharTokenizer           one token per character; unseen characters become [UNK]
    bpe.py        ByteLevelBPE            byte-level BPE as in GPT-2: trained merges, never [UNK]
    wordpiece.py  WordPiece               BERT's tokenizer for an existing vocab.txt ('##' pieces)
    spm.py        SentencePieceTokenizer  a lossless wrapper around sentencepiece (unigram or BPE, '▁')
    unigram.py    viterbi, UnigramModel   the unigram LM's best segmentation (Viterbi), equal to sentencepiece's

    >>> from plmkit.tokenize import ByteLevelBPE
    >>> tok = ByteLevelBPE.train("the cat sat on the mat " * 20, vocab_size=270)
    >>> tok.decode(tok.encode("the bat 🦇")) == "the bat 🦇"
    True
"""
from .bpe import ByteLevelBPE
from .char import CharTokenizer
from .spm import SentencePieceTokenizer
from .unigram import UnigramModel, viterbi
from .wordpiece import WordPiece

__all__ = ["CharTokenizer", "ByteLevelBPE", "WordPiece", "SentencePieceTokenizer", "UnigramModel", "viterbi"]
