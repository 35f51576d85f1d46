"""Plain weights (float32, bfloat16, float16; a Linear or GPT-2's transposed Conv1D): the update is summed in
float32 and written back in the model's own dtype."""
import torch

Factors = tuple[torch.Tensor, torch.Tensor]    # A (d_out, n), B (d_in, n): ΔW = A Bᵀ


def as_matrix(stored: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """Stored weight -> float32 (d_out, d_in)."""
    w = stored.float()
    return w.T if conv1d else w


def to_stored(matrix: torch.Tensor, like: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """float32 (d_out, d_in) -> the stored orientation, dtype and device of `like`."""
    w = matrix.T if conv1d else matrix
    return w.to(dtype=like.dtype, device=like.device)


class DenseWeight:
    """live = pristine + A Bᵀ, rounded once into the model's dtype: never an update of an update."""

    def __init__(self, module: torch.nn.Module, conv1d: bool):
        self.module, self.conv1d = module, conv1d

    def snapshot(self) -> torch.Tensor:
        return self.module.weight.detach().to("cpu", copy=True)

    def restore(self, snapshot: torch.Tensor, factors: Factors | None) -> None:
        weight = snapshot
        if factors is not None:
            A, B = factors
            weight = to_stored(as_matrix(snapshot, self.conv1d) + A @ B.T, snapshot, self.conv1d)
        with torch.no_grad():
            self.module.weight.copy_(weight)

    def add(self, A: torch.Tensor, B: torch.Tensor) -> None:
        live = self.module.weight.detach()
        update = (A @ B.T).to(live.device)
        with torch.no_grad():
            live.copy_(to_stored(as_matrix(live, self.conv1d) + update, live, self.conv1d))

    def matches(self, snapshot: torch.Tensor) -> bool:
        return torch.equal(self.module.weight.detach().cpu(), snapshot)
