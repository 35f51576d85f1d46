"""Live weight = pristine + Σ active fact columns: the only way an edited weight ever changes.

Revert is never subtraction: every change rebuilds the layer from the pristine copy and the surviving
columns in a fixed order, so reverting any edit, or all of them, restores the weights bitwise.
"""
from contextlib import contextmanager
from typing import Iterator

import torch

from ..model.adapter import ModelAdapter
from .facts import FactEdit


class WeightLedger:
    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        self.pristine = {l: adapter.read_weight(l).detach().to("cpu", copy=True) for l in adapter.layers}
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

    def delta(self, layer: int) -> torch.Tensor | None:
        """Σ a bᵀ over active facts in id order, float32 (d_out, d_in), or None without edits."""
        if not self.columns:
            return None
        ids = sorted(self.columns)
        A = torch.stack([self.columns[i].a[layer] for i in ids], 1)
        B = torch.stack([self.columns[i].b[layer] for i in ids], 1)
        return A @ B.T

    def rebuild(self) -> None:
        for layer in self.adapter.layers:
            live, base, delta = self.adapter.read_weight(layer), self.pristine[layer], self.delta(layer)
            weight = base if delta is None else self.adapter.to_stored(self.adapter.as_matrix(base) + delta, like=base)
            self.adapter.write_weight(layer, weight.to(live.device))

    def keys(self, layer: int) -> torch.Tensor:
        """Keys of the active facts, (d_in, N): what a constrained update must preserve."""
        ids = sorted(self.columns)
        if not ids:
            return torch.zeros(self.adapter.d_in, 0)
        return torch.stack([self.columns[i].k[layer] for i in ids], 1)

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
        return all(torch.equal(self.adapter.read_weight(l).cpu(), self.pristine[l]) for l in self.adapter.layers)
