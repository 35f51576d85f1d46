"""Keys k (input of the MLP output projection) and residuals h at each fact's last subject token (MEMIT eq. 19)."""
import torch

from ..model.adapter import ModelAdapter
from ..model.trace import capture, run_until_stop
from .prompts import PromptBatch


def per_fact_mean(rows: torch.Tensor, batch: PromptBatch, chat_share: float | None = None) -> torch.Tensor:
    """Average per-prompt rows (P, d) of the rewriting prompts into per-fact rows (n, d). With `chat_share`, a
    fact that has both kinds gives its chat questions that share of the weight and its raw prompts the rest, so
    that more raw contexts do not pull the key away from the position a chat question reads (README, "Wake")."""
    if chat_share is None:
        kinds, shares = (batch.rewrite,), (torch.ones(batch.n_facts),)
    else:
        kinds = (batch.rewrite & ~batch.chat, batch.rewrite & batch.chat)
    counts = [torch.bincount(batch.fact[kind], minlength=batch.n_facts).float() for kind in kinds]
    if chat_share is not None:
        both = (counts[0] > 0) & (counts[1] > 0)
        shares = (torch.where(both, 1 - chat_share, 1.0), torch.where(both, chat_share, 1.0))
    weight = torch.zeros(len(batch.fact))
    for kind, count, share in zip(kinds, counts, shares):
        weight[kind] = (share / count.clamp(min=1))[batch.fact[kind]]
    total = torch.zeros(batch.n_facts, rows.shape[1], dtype=rows.dtype)
    return total.index_add_(0, batch.fact, rows * weight.to(rows.dtype).unsqueeze(1))


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
