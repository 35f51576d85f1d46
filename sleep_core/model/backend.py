"""Which adapter a loaded model gets: torch/transformers or MLX (mlx-lm), and what both offer the editing code."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Protocol

import torch

from .adapter import ModelAdapter
from .weights import LayerWeight

if TYPE_CHECKING:
    from ..editing.hparams import EditConfig
    from ..editing.prompts import PromptBatch
    from ..editing.values import Targets


class Adapter(Protocol):
    """A loaded model as the editing, the ledger and the facade see it. Keys, residuals, targets and moments come
    back as float32 torch tensors on the CPU, and updates go in as torch factors, whatever the backend."""
    model: object
    layers: tuple[int, ...]
    weights: dict[int, LayerWeight]
    d_in: int
    d_model: int

    def fingerprint(self) -> str: """The same for the same weights in either backend."""

    def add_update(self, layer: int, A: torch.Tensor, B: torch.Tensor) -> None: """live += A Bᵀ."""

    def measure(self, batch: PromptBatch, layer: int, target_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt keys at `layer` (P, d_in) and residuals after `target_layer` (P, d_model)."""

    def optimize_targets(self, batch: PromptBatch, layer: int, cfg: EditConfig) -> Targets:
        """The residual change after `layer` that makes each fact's object likely."""

    def compute_moments(self, tokenizer, texts: Iterable[str], max_tokens: int,
                        progress: Callable[[int, int], None] | None = None) -> dict[int, torch.Tensor]:
        """Second moment of each edited layer's keys over the text."""


def is_mlx(model) -> bool:
    """An MLX module (an mlx-lm model), recognised without importing mlx."""
    return any(c.__module__.split(".")[0] in ("mlx", "mlx_lm") for c in type(model).__mro__)


def adapter_for(model, layers: tuple[int, ...] | None = None, quantized_edits: str = "side_branch") -> Adapter:
    if is_mlx(model):
        from .mlx import MlxAdapter
        return MlxAdapter(model, layers)
    return ModelAdapter(model, layers, quantized_edits)


def hf_tokenizer(tokenizer):
    """The Hugging Face tokenizer itself: mlx-lm's TokenizerWrapper forwards its attributes but is not callable."""
    return tokenizer._tokenizer if type(tokenizer).__module__.startswith("mlx_lm") else tokenizer
