"""OpenBLAS under MLX on Linux: the `mlx[cpu]` wheel bundles the reference BLAS, whose matrix products are 15-20
times slower (SmolLM2-135M, a 64-token forward on one core: 6.2 s, with OpenBLAS 0.36 s).

Loading Debian's OpenBLAS globally before `mlx.core` is imported makes MLX's BLAS calls resolve to it, as
`LD_PRELOAD=libopenblas.so.0` would; once mlx is loaded its calls are bound and it is too late. Without
OpenBLAS (`apt-get install libopenblas0-pthread`; `install.py` does it where it can) MLX runs, slowly.
"""
import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)
_openblas: ctypes.CDLL | None = None


def use_openblas() -> bool:
    """Load OpenBLAS for MLX if it is installed and it is not too late; True when MLX will use it."""
    global _openblas
    if _openblas is not None or not sys.platform.startswith("linux"):
        return _openblas is not None
    name = ctypes.util.find_library("openblas")
    if name is None:
        log.warning("OpenBLAS is not installed: MLX on the CPU uses its bundled reference BLAS, 15-20x slower "
                    "(Debian: apt-get install libopenblas0-pthread)")
        return False
    if "mlx.core" in sys.modules and "openblas" not in os.environ.get("LD_PRELOAD", ""):
        log.warning("mlx was imported before sleep_core.model.mlx, so it keeps its bundled reference BLAS, "
                    "15-20x slower: import sleep_core.model.mlx first, or run with LD_PRELOAD=%s", name)
        return False
    _openblas = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    return True


def blas_threads(n: int) -> None:
    """Threads OpenBLAS uses for MLX's matrix products (by default $OPENBLAS_NUM_THREADS, else one per core)."""
    if _openblas is not None:
        _openblas.openblas_set_num_threads(n)
