"""Pre-training objectives: what the model is asked to predict, and on which positions.

    mlm        mask_tokens (15% selection, 80/10/10), mlm_loss (masked positions only)
    pairs      nsp_pairs (BERT), sop_pairs (ALBERT), pair_inputs ([CLS] A [SEP] B [SEP])
    clm        clm_loss, perplexity, random_windows, evaluate_lm (GPT)
    span       span_corruption with sentinels (T5), random_spans_noise_mask, reassemble_spans
    denoising  text_infilling, sentence_permutation (BART)
    prefix     prefix_lm_mask (UniLM, T5's prefix LM)
    glm        blank_infilling, glm_attention_mask (GLM: Part A / Part B, 2-D positions)
    qa         qa_loss (start/end cross-entropy), best_span (extractive QA read-out)
"""
from .mlm import IGNORE_INDEX, mask_tokens, mlm_loss
from .pairs import IS_NEXT, NOT_NEXT, nsp_pairs, pair_inputs, sop_pairs
from .clm import clm_loss, evaluate_lm, perplexity, random_windows
from .span import corrupt_spans, random_spans_noise_mask, reassemble_spans, sentinel_id, span_corruption
from .denoising import sentence_permutation, text_infilling
from .prefix import prefix_lm_mask
from .glm import blank_infilling, glm_attention_mask
from .qa import best_span, qa_loss
