"""Live weight = pristine + Σ active fact columns: the only way an edited weight ever changes.

Revert is never subtraction: every change rebuilds the layer from the pristine copy and the surviving
columns in a fixed order, so reverting any edit, or all of them, restores the weights bitwise. The sum is
formed in float32 and written in the layer's own form (its dtype, or its quantization) by the adapter.
"""
from contextlib import contextmanager
from typing import Iterator

import torch

from ..model.backend import Adapter
from .facts import FactEdit


class WeightLedger:
    def __init__(self, adapter: Adapter):
        self.adapter = adapter
        self.pristine = {l: adapter.weights[l].snapshot() for l in adapter.layers}
        self.columns: dict[int, FactEdit] = {}

    def set(self, fact_id: int, edit: FactEdit) -> None:
        self.columns[fact_id] = edit

    def remove(self, fact_id: int) -> None:
        self.columns.pop(fact_id, None)

    def clear(self) -> None:
        self.columns.clear()

    def snapshot(self) -> dict[int, FactEdit]:
        return dict(self.columns)

    def restore(self, snapshot: dict[int, FactEdit]) -> None:
        self.columns = dict(snapshot)
        self.rebuild()

    def factors(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) with Σ a bᵀ = A Bᵀ over active facts in id order, float32, or None without edits."""
        if not self.columns:
            return None
        ids = sorted(self.columns)
        return (torch.stack([self.columns[i].a[layer] for i in ids], 1),
                torch.stack([self.columns[i].b[layer] for i in ids], 1))

    def rebuild(self) -> None:
        for layer in self.adapter.layers:
            self.adapter.weights[layer].restore(self.pristine[layer], self.factors(layer))

    def keys(self, layer: int) -> torch.Tensor:
        """Keys of the active facts, (d_in, N): what a constrained update must preserve."""
        ids = sorted(self.columns)
        if not ids:
            return torch.zeros(self.adapter.d_in, 0)
        return torch.cat([self.columns[i].keys(layer) for i in ids], 1)

    @contextmanager
    def pristine_weights(self) -> Iterator[None]:
        """The unedited model for the duration (statistics of general text are measured on it)."""
        saved = self.columns
        self.columns = {}
        try:
            self.rebuild()
            yield
        finally:
            self.columns = saved
            self.rebuild()

    def is_pristine(self) -> bool:
        return all(self.adapter.weights[l].matches(self.pristine[l]) for l in self.adapter.layers)
