"""Adapters over a loaded model: which module is edited, and how to read and write it."""
from .adapter import ModelAdapter, unwrap
from .architectures import ARCHITECTURES, UnsupportedModelError, architecture_for

__all__ = ["ModelAdapter", "UnsupportedModelError", "ARCHITECTURES", "architecture_for", "unwrap"]
