"""Measures: recall probes, specificity, perplexity."""
from .perplexity import perplexity
from .probes import (HELDOUT_CONTEXTS, RAW_CONTEXT, AnswerScore, chat_answers, chat_recall, generate, greedy_tokens,
                     known_facts, knows, mentions, raw_recall, score_answers, specificity)

__all__ = ["perplexity", "RAW_CONTEXT", "HELDOUT_CONTEXTS", "AnswerScore", "score_answers", "generate", "raw_recall",
           "chat_answers", "chat_recall", "greedy_tokens", "known_facts", "knows", "mentions", "specificity"]
