"""Real assets prepared once and cached: the embedded default model and the general-text corpus."""

from .corpus import Corpus, ensure_corpus
from .model import ensure_default_model

__all__ = ["Corpus", "ensure_corpus", "ensure_default_model"]
