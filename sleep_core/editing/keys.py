"""Keys k (input of the MLP output projection) and residuals h at each fact's last subject token (MEMIT eq. 19)."""
import torch

from ..model.adapter import ModelAdapter
from ..model.trace import capture, run_until_stop
from .hparams import EditConfig
from .prompts import PromptBatch


def chat_shares(batch: PromptBatch, cfg: EditConfig) -> torch.Tensor:
    """Each fact's chat questions' share of its key, NaN for a plain mean over its prompts: `key_chat_share` for
    every fact, `shared_key_chat_share` for a fact whose subject carries others (README, "Wake")."""
    per_target = torch.bincount(batch.fact_target, minlength=batch.n_targets)
    shared = per_target[batch.fact_target] > 1
    alone = float("nan") if cfg.key_chat_share is None else cfg.key_chat_share
    together = alone if cfg.shared_key_chat_share is None else cfg.shared_key_chat_share
    return torch.where(shared, torch.tensor(together), torch.tensor(alone))


def _kinds(batch: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (P,) of the rewriting prompts that are raw prompts and that are chat questions."""
    return batch.rewrite & ~batch.chat, batch.rewrite & batch.chat


def _kind_counts(batch: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each fact's number of raw prompts and of chat questions among its rewriting prompts, (n,) each."""
    return tuple(torch.bincount(batch.fact[kind], minlength=batch.n_facts).float() for kind in _kinds(batch))


def per_fact_mean(rows: torch.Tensor, batch: PromptBatch, share: torch.Tensor | None = None) -> torch.Tensor:
    """Average per-prompt rows (P, d) of the rewriting prompts into per-fact rows (n, d). A fact with a `share`
    that has both kinds of prompt gives its chat questions that share of the weight and its raw prompts the
    rest, so that many raw contexts do not pull the key away from the position a chat question reads."""
    raw, chat = _kinds(batch)
    n_raw, n_chat = _kind_counts(batch)
    if share is None:
        share = torch.full((batch.n_facts,), float("nan"))
    split = ~share.isnan() & (n_raw > 0) & (n_chat > 0)
    plain = 1 / (n_raw + n_chat).clamp(min=1)
    weight = torch.zeros(len(batch.fact))
    weight[raw] = torch.where(split, (1 - share) / n_raw.clamp(min=1), plain)[batch.fact[raw]]
    weight[chat] = torch.where(split, share / n_chat.clamp(min=1), plain)[batch.fact[chat]]
    total = torch.zeros(batch.n_facts, rows.shape[1], dtype=rows.dtype)
    return total.index_add_(0, batch.fact, rows * weight.to(rows.dtype).unsqueeze(1))


def key_columns(rows: torch.Tensor, batch: PromptBatch, share: torch.Tensor, cfg: EditConfig
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-fact key columns (d_in, c) and the fact each column belongs to (c,).

    One column per fact: the mean of `per_fact_mean`. With `cfg.split_keys`, a fact that has raw prompts and chat
    questions gets two, their separate means, each scaled by 1/√2 so that the fact weighs in the solve as one
    key does: raw completions and chat answers read the subject at positions whose keys differ (README, "Wake"),
    and one mean key serves neither fully."""
    n = batch.n_facts
    if not cfg.split_keys:
        return per_fact_mean(rows, batch, share).T, torch.arange(n)
    raw = per_fact_mean(rows, batch, torch.zeros(n))                  # facts with one kind: their plain mean
    chat = per_fact_mean(rows, batch, torch.ones(n))
    n_raw, n_chat = _kind_counts(batch)
    both = (n_raw > 0) & (n_chat > 0)
    scale = torch.where(both, 0.5 ** 0.5, 1.0).to(rows.dtype).unsqueeze(1)
    return torch.cat([raw * scale, chat[both] * scale[both]]).T, torch.cat([torch.arange(n), torch.arange(n)[both]])


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
