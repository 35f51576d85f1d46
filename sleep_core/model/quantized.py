"""bitsandbytes layers (4-bit NF4/FP4 `Linear4bit`, 8-bit `Linear8bitLt`): the pristine codes and scales are kept,
and an edit is written by dequantizing them, adding A Bᵀ and quantizing again (mlx-lm's LoRA `fuse`); the other
way, leaving the codes alone, is `side_branch.py`.

Imported only for a model that has bitsandbytes modules."""
import copy
import logging
from abc import ABC, abstractmethod

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import torch

from .dense import DenseWeight, Factors

log = logging.getLogger(__name__)


def disable_cpu_repacking(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for AVX512-BF16 CPUs on the first forward, after which dequantizing
    returns garbage: switch that off on every layer, and undo it where a forward has already run."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                _unpack(module)


def _unpack(module: bnb.nn.Linear4bit) -> None:
    """bitsandbytes' own inverse restores the codes; without double quantization it leaves the scales in the
    packed layout ((K / blocksize, N), bfloat16), so they are put back in row order here."""
    state = module.weight.quant_state
    nested, packed_absmax = state.original_nested, state.absmax
    data, state = bnbf._convert_weight_packed_for_cpu_inverse(module.weight.data, state)
    if not nested:
        state.absmax = packed_absmax.T.reshape(-1).float().contiguous()
    module.weight.data = data
    log.info("undid bitsandbytes' AVX512-BF16 repacking of a %s layer", state.quant_type)


class _Requantized(ABC):
    """live = quantize(dequantize(pristine) + A Bᵀ); writing the pristine codes and scales back restores it bitwise."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    @abstractmethod
    def _live(self) -> list[torch.Tensor]:
        """The layer's own tensors that define its weight, in a fixed order."""

    @abstractmethod
    def _dequantize(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Such tensors -> the float32 (d_out, d_in) weight on the layer's device."""

    @abstractmethod
    def _quantize(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        """A float32 (d_out, d_in) weight -> tensors in the order of `_live`."""

    def _write(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for live, value in zip(self._live(), tensors):
                live.copy_(value)

    def snapshot(self) -> list[torch.Tensor]:
        return [t.detach().to("cpu", copy=True) for t in self._live()]

    def restore(self, snapshot: list[torch.Tensor], factors: Factors | None) -> None:
        if factors is None:
            self._write(snapshot)
        else:
            self._write(self._quantize(self._dequantize(snapshot) + _update(factors, self.module)))

    def add(self, A: torch.Tensor, B: torch.Tensor) -> None:
        self._write(self._quantize(self._dequantize(self._live()) + _update((A, B), self.module)))

    def matches(self, snapshot: list[torch.Tensor]) -> bool:
        return all(torch.equal(t.cpu(), s) for t, s in zip(self._live(), snapshot))


def _update(factors: Factors, module: torch.nn.Module) -> torch.Tensor:
    A, B = factors
    return (A @ B.T).to(module.weight.device)


class Requantized4bit(_Requantized):
    """NF4/FP4 blocks, quantized again with the layer's own block size, type and double quantization."""

    def _scales(self, state) -> list[torch.Tensor]:
        """The block scales and, with double quantization, their own offset and scales."""
        return [state.absmax, *([state.offset, state.state2.absmax] if state.nested else [])]

    def _live(self) -> list[torch.Tensor]:
        return [self.module.weight.data, *self._scales(self.module.weight.quant_state)]

    def _dequantize(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        live = self.module.weight.quant_state
        state = copy.copy(live)
        data, state.absmax, *nested = [t.to(self.module.weight.device) for t in tensors]
        if live.nested:
            state.state2 = copy.copy(live.state2)
            state.offset, state.state2.absmax = nested
        return bnbf.dequantize_4bit(data, state).float()

    def _quantize(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        state = self.module.weight.quant_state
        data, new = bnbf.quantize_4bit(matrix.to(state.dtype), blocksize=state.blocksize,
                                       compress_statistics=state.nested, quant_type=state.quant_type,
                                       quant_storage=self.module.weight.dtype)
        return [data, *self._scales(new)]


class Requantized8bit(_Requantized):
    """LLM.int8() rows: codes CB (the weight's data, shared with the layer's state) and one scale per row SCB."""

    def _live(self) -> list[torch.Tensor]:
        # the first forward moves the row scales from the weight to the layer's state
        state = self.module.state
        return [self.module.weight.data, state.SCB if state.SCB is not None else self.module.weight.SCB]

    def _dequantize(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        codes, scales = (t.to(self.module.weight.device) for t in tensors)
        return bnbf.int8_vectorwise_dequant(codes, scales).float()

    def _quantize(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        codes, scales, _ = bnbf.int8_vectorwise_quant(matrix.half())
        return [codes, scales]


def requantized(module: torch.nn.Module):
    """The writer for one bitsandbytes layer; 8-bit layers that keep float16 weights are written as plain ones."""
    if isinstance(module, bnb.nn.Linear4bit):
        return Requantized4bit(module)
    if isinstance(module, bnb.nn.Linear8bitLt):
        return DenseWeight(module, conv1d=False) if module.weight.is_floating_point() else Requantized8bit(module)
    raise TypeError(f"not a bitsandbytes linear layer: {type(module).__name__}")
