"""The MLX backend: mlx-lm models (Apple Silicon; on Linux the `mlx[cpu]` build) behind the same Memory.

    from sleep_core.model.mlx import load
    model, tokenizer = load(folder)            # mlx_lm.load, from a local folder, RoPE settings fixed
    memory = Memory.open(model, tokenizer)

Importing this package first lets MLX use OpenBLAS on Linux (see blas.py)."""
from .blas import blas_threads, use_openblas

use_openblas()

from .adapter import MlxAdapter  # noqa: E402  (mlx.core must load after OpenBLAS)
from .load import load  # noqa: E402

__all__ = ["MlxAdapter", "load", "blas_threads", "use_openblas"]
