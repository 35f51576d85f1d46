"""Which writer an edited layer gets, from the module the loader put there: plain weights in any float dtype,
bitsandbytes layers (requantized or carrying a side branch), and a refusal that names anything else."""
from typing import Protocol

import torch
from transformers.pytorch_utils import Conv1D

from .architectures import UnsupportedModelError
from .dense import DenseWeight, Factors
from .side_branch import SideBranch

QUANTIZED_EDITS = ("side_branch", "requantize")     # how an edit reaches a bitsandbytes layer
PLAIN_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class LayerWeight(Protocol):
    """One edited layer: live = pristine + A Bᵀ, however the layer stores its weight."""

    def snapshot(self): """A CPU copy of everything that defines the layer's output."""

    def restore(self, snapshot, factors: Factors | None) -> None: """live = snapshot (+ A Bᵀ)."""

    def add(self, A: torch.Tensor, B: torch.Tensor) -> None: """live += A Bᵀ (an edit in progress)."""

    def matches(self, snapshot) -> bool: """live is bitwise the snapshot, with nothing added."""


def is_bitsandbytes(module: torch.nn.Module) -> bool:
    """A bitsandbytes Linear4bit or Linear8bitLt (or a subclass), recognised without importing bitsandbytes."""
    return any(c.__name__ in ("Linear4bit", "Linear8bitLt") and c.__module__.startswith("bitsandbytes")
               for c in type(module).__mro__)


def is_plain(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module) is torch.nn.Linear or isinstance(module, Conv1D)) and \
        type(weight) is torch.nn.Parameter and weight.dtype in PLAIN_DTYPES


def in_features(module: torch.nn.Module) -> int:
    return module.weight.shape[0] if isinstance(module, Conv1D) else module.in_features


def check_supported(module: torch.nn.Module, layer: int, quant_method: str | None) -> None:
    """Refuse, in words that name it, a layer that is neither plain nor bitsandbytes (GPTQ, AWQ, HQQ, FP8, ...)."""
    if is_plain(module) or is_bitsandbytes(module):
        return
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    weight = getattr(module, "weight", None)
    stored = f" with {weight.dtype} weights" if isinstance(weight, torch.Tensor) else ""
    how = f", quantized with '{quant_method}'" if quant_method else ""
    raise UnsupportedModelError(
        f"Sleeping LLM cannot write into layer {layer}'s MLP output projection: it is a {kind}{stored}{how}. "
        "It edits float32, bfloat16 and float16 weights and bitsandbytes 4-bit (NF4, FP4) and 8-bit layers: "
        "load the model unquantized or with bitsandbytes (BitsAndBytesConfig).")


def layer_weight(module: torch.nn.Module, quantized_edits: str) -> LayerWeight:
    if is_bitsandbytes(module):
        from .quantized import requantized
        base = requantized(module)
        return SideBranch.attach(module, base) if quantized_edits == "side_branch" else base
    return DenseWeight(module, conv1d=isinstance(module, Conv1D))
