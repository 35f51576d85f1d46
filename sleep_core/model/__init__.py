"""Adapters over a loaded model: which module is edited, and how to read and write it (torch or MLX)."""
from .adapter import ModelAdapter, unwrap
from .architectures import ARCHITECTURES, UnsupportedModelError, architecture_for
from .backend import Adapter, adapter_for, hf_tokenizer, is_mlx

__all__ = ["Adapter", "ModelAdapter", "adapter_for", "hf_tokenizer", "is_mlx", "UnsupportedModelError",
           "ARCHITECTURES", "architecture_for", "unwrap"]
