"""Keys and residuals at each prompt's last subject token on an mlx-lm model (editing/keys.py, MEMIT eq. 19)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import torch

from ...editing.prompts import PromptBatch
from .capture import capture
from .convert import to_mx, to_torch

if TYPE_CHECKING:
    from .adapter import MlxAdapter


def measure(adapter: MlxAdapter, batch: PromptBatch, layer: int, target_layer: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt keys at `layer` (P, d_in) and residuals after `target_layer` (P, d), float32 torch on the CPU."""
    keys = torch.zeros(len(batch.fact), adapter.d_in)
    resid = torch.zeros(len(batch.fact), adapter.d_model)
    for rows, inputs in batch.groups():
        spots = {"inputs": {"k": adapter.out_proj_spot(layer)}, "outputs": {"h": adapter.block_spot(target_layer)}}
        with capture(**spots) as seen:
            adapter.model(to_mx(inputs["input_ids"]))    # right-padded: causal attention never sees the pads
        local, pos = mx.arange(len(rows)), to_mx(batch.subject_pos[rows])
        k, h = seen["k"][local, pos], seen["h"][local, pos]
        mx.eval(k, h)       # together: one at a time would run the lower layers again
        keys[rows], resid[rows] = to_torch(k), to_torch(h)
    return keys, resid
