"""Keys k (input of the MLP output projection) and residuals h at each fact's last subject token (MEMIT eq. 19)."""
import torch

from ..model.adapter import ModelAdapter
from ..model.trace import capture, run_until_stop
from .prompts import PromptBatch


def per_fact_mean(rows: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Average per-prompt rows (P, d) of the rewriting prompts into per-fact rows (n, d)."""
    index = batch.fact[batch.rewrite]
    total = torch.zeros(batch.n_facts, rows.shape[1], dtype=rows.dtype).index_add_(0, index, rows[batch.rewrite])
    return total / torch.bincount(index, minlength=batch.n_facts).clamp(min=1).unsqueeze(1)


@torch.no_grad()
def measure(adapter: ModelAdapter, batch: PromptBatch, layer: int, target_layer: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt keys at `layer` (P, d_in) and residuals after `target_layer` (P, d), float32 on CPU."""
    keys = torch.zeros(len(batch.fact), adapter.d_in)
    resid = torch.zeros(len(batch.fact), adapter.d_model)
    device = adapter.input_device()
    for rows, inputs in batch.groups():
        with capture(inputs={"k": adapter.out_proj(layer)}, outputs={"h": adapter.blocks[target_layer]},
                     stop_after=adapter.blocks[max(layer, target_layer)]) as seen:
            run_until_stop(adapter.model, **{k: v.to(device) for k, v in inputs.items()})
        local = torch.arange(len(rows))
        pos = batch.subject_pos[rows]
        keys[rows] = seen["k"][local, pos.to(seen["k"].device)].float().cpu()
        resid[rows] = seen["h"][local, pos.to(seen["h"].device)].float().cpu()
    return keys, resid
