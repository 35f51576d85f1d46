"""Arrays across the boundary: the solve, the ledger and the store stay in torch (they are small), the model in MLX."""
import mlx.core as mx
import numpy as np
import torch


def to_torch(x: mx.array) -> torch.Tensor:
    """A float32 CPU tensor of `x`'s values."""
    return torch.from_numpy(np.array(x.astype(mx.float32)))


def to_mx(t: torch.Tensor) -> mx.array:
    """An MLX array of `t`'s values, in its dtype (token ids stay integers)."""
    return mx.array(t.detach().cpu().numpy())
