"""Pre-training objectives: what the model is asked to predict, and on which positions.

    mlm      mask_tokens (15% selection, 80/10/10), mlm_loss (masked positions only)
    pairs    nsp_pairs (BERT), sop_pairs (ALBERT), pair_inputs ([CLS] A [SEP] B [SEP])
"""
from .mlm import IGNORE_INDEX, mask_tokens, mlm_loss
from .pairs import IS_NEXT, NOT_NEXT, nsp_pairs, pair_inputs, sop_pairs
from .clm import clm_loss, evaluate_lm, perplexity, random_windows
