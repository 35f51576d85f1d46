"""The writer of an edited mlx-lm layer: live = pristine + A Bᵀ, summed in float32 and rounded once into the
layer's dtype, so forgetting restores the pristine array bitwise (the ledger's LayerWeight, for MLX)."""
import mlx.core as mx
import mlx.nn as nn
import torch

from ..architectures import UnsupportedModelError
from ..dense import Factors
from .convert import to_mx


def _plus(weight: mx.array, A: torch.Tensor, B: torch.Tensor) -> mx.array:
    """weight + A Bᵀ, evaluated now: a lazy array built here could not be evaluated from another thread."""
    out = (weight.astype(mx.float32) + to_mx(A) @ to_mx(B).T).astype(weight.dtype)
    mx.eval(out)
    return out


class MlxDenseWeight:
    def __init__(self, module: nn.Linear):
        self.module = module

    def snapshot(self) -> mx.array:
        pristine = mx.array(self.module.weight)
        mx.eval(pristine)
        return pristine

    def restore(self, snapshot: mx.array, factors: Factors | None) -> None:
        self.module.weight = snapshot if factors is None else _plus(snapshot, *factors)

    def add(self, A: torch.Tensor, B: torch.Tensor) -> None:
        self.module.weight = _plus(self.module.weight, A, B)

    def matches(self, snapshot: mx.array) -> bool:
        weight = self.module.weight
        return weight.dtype == snapshot.dtype and mx.array_equal(weight, snapshot).item()


def layer_weight(module, layer: int) -> MlxDenseWeight:
    """The writer of a plain Linear; quantized and other layers are refused in words that name them."""
    if isinstance(module, nn.QuantizedLinear):
        raise UnsupportedModelError(
            f"Sleeping LLM cannot write into layer {layer}'s MLP output projection: it is an MLX QuantizedLinear "
            f"({module.bits}-bit, group size {module.group_size}). With MLX it edits float32, bfloat16 and float16 "
            "weights: load an unquantized folder (the Hugging Face one, or mlx_lm.convert without -q).")
    weight = getattr(module, "weight", None)
    if type(module) is not nn.Linear or not mx.issubdtype(weight.dtype, mx.floating):
        raise UnsupportedModelError(
            f"Sleeping LLM cannot write into layer {layer}'s MLP output projection: it is a "
            f"{type(module).__module__}.{type(module).__qualname__}; with MLX it edits plain Linear layers.")
    return MlxDenseWeight(module)
