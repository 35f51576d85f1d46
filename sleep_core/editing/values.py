"""Target residuals: the delta at the last edited layer that makes each object likely (MEMIT eq. 16).

The layers up to the target layer do not change while the delta is optimised, so they run once; each Adam
step runs only the layers above it, on rows grouped by length, and stops once every object is confidently
predicted.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ..model.adapter import ModelAdapter
from .hparams import EditConfig
from .prompts import PromptBatch


@dataclass
class Targets:
    delta: torch.Tensor        # (n, d) residual change at the target layer, per fact
    h0: torch.Tensor           # (P, d) residual at the subject token before the edit
    prob: torch.Tensor         # (n,) object probability per token reached
    steps: int


@dataclass
class _Group:
    rows: torch.Tensor         # batch rows in this group
    h: torch.Tensor            # (g, T, d) residual after the target layer
    calls: list                # (block, args, kwargs) of every layer above it
    answer: torch.Tensor       # (A, 2) local (row, position) whose logits predict an object token
    tokens: torch.Tensor       # (A,) the object token predicted there
    kl: torch.Tensor           # (k, 2) local (row, last prompt position) of KL prompts
    log_p0: torch.Tensor       # (k, V) unedited next-token log-probabilities of the KL prompts


def _capture(adapter: ModelAdapter, batch: PromptBatch, layer: int, rows: torch.Tensor, inputs: dict) -> _Group:
    """Run once; keep the residual after `layer` and the call arguments of every layer above it."""
    calls, seen = [], {}

    def keep_call(block):
        return lambda module, args, kwargs: calls.append((block, args[1:], dict(kwargs)))

    def keep_h(module, args, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out).detach()

    handles = [adapter.blocks[layer].register_forward_hook(keep_h)]
    handles += [b.register_forward_pre_hook(keep_call(b), with_kwargs=True) for b in adapter.blocks[layer + 1:]]
    device = adapter.input_device()
    try:
        with torch.no_grad():
            logits = adapter.model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    width = inputs["input_ids"].shape[1]
    answer = batch.answer_mask[rows, :width][:, 1:].nonzero()
    tokens = inputs["input_ids"][answer[:, 0], answer[:, 1] + 1]
    kl_local = (~batch.rewrite[rows]).nonzero().squeeze(1)
    kl = torch.stack([kl_local, batch.last_pos[rows][kl_local]], 1)
    log_p0 = F.log_softmax(logits[kl[:, 0], kl[:, 1]].float(), dim=-1)
    return _Group(rows, seen["h"], calls, answer, tokens, kl, log_p0)


def _run_top(h: torch.Tensor, calls) -> torch.Tensor:
    for block, args, kwargs in calls:
        out = block(h, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    return h


@contextmanager
def frozen(model) -> Iterator[None]:
    """Only the delta needs gradients: weight gradients would cost more than the forward pass itself."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def optimize_targets(adapter: ModelAdapter, batch: PromptBatch, layer: int, cfg: EditConfig) -> Targets:
    """Adam on one delta per fact, added at its subject token in every prompt after `layer`."""
    with frozen(adapter.model):
        return _optimize(adapter, batch, layer, cfg)


def _optimize(adapter: ModelAdapter, batch: PromptBatch, layer: int, cfg: EditConfig) -> Targets:
    groups = [_capture(adapter, batch, layer, rows, inputs) for rows, inputs in batch.groups()]
    n, P = batch.n_facts, len(batch.fact)
    h0 = torch.zeros(P, adapter.d_model)
    for g in groups:
        h0[g.rows] = g.h[torch.arange(len(g.rows)), batch.subject_pos[g.rows].to(g.h.device)].float().cpu()
    h_norm = torch.zeros(n).scatter_reduce(0, batch.fact, h0.norm(dim=1), "amax", include_self=False)
    answers_per_row = torch.bincount(torch.cat([g.rows[g.answer[:, 0]] for g in groups]), minlength=P).clamp(min=1)
    rewrites_per_fact = torch.bincount(batch.fact[batch.rewrite], minlength=n).clamp(min=1)

    delta = torch.zeros(n, adapter.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.v_step * h_norm.mean().item() / math.sqrt(adapter.d_model))
    done = torch.zeros(n, dtype=torch.bool)
    for step in range(1, cfg.v_steps + 1):
        nll_row, kl = torch.zeros(P), torch.zeros(n)
        for g in groups:
            h = g.h.clone()
            local = torch.arange(len(g.rows))
            pos = batch.subject_pos[g.rows].to(h.device)
            h[local, pos] = h[local, pos] + delta[batch.fact[g.rows]].to(h.device, h.dtype)
            out = _run_top(h, g.calls)
            logp = F.log_softmax(adapter.logits(out[g.answer[:, 0], g.answer[:, 1]]).float(), -1).cpu()
            nll_tok = -logp.gather(1, g.tokens.unsqueeze(1).cpu()).squeeze(1)
            nll_row = nll_row.index_add(0, g.rows[g.answer[:, 0]], nll_tok)
            if len(g.kl):
                log_p = F.log_softmax(adapter.logits(out[g.kl[:, 0], g.kl[:, 1]]).float(), -1)
                div = F.kl_div(log_p, g.log_p0, log_target=True, reduction="none").sum(-1).cpu()
                kl = kl.index_add(0, batch.fact[g.rows[g.kl[:, 0]]], div)
        nll = torch.zeros(n).index_add(0, batch.fact, (nll_row / answers_per_row) * batch.rewrite) / rewrites_per_fact
        prob = torch.exp(-nll.detach())
        done |= prob >= cfg.v_stop_prob
        if done.all() or step == cfg.v_steps:
            break
        loss = nll + cfg.kl_factor * kl + cfg.v_weight_decay * delta.norm(dim=1) ** 2 / h_norm ** 2
        opt.zero_grad()
        (loss * ~done).sum().backward()
        before = delta.detach().clone()
        opt.step()
        with torch.no_grad():
            delta[done] = before[done]
            scale = (cfg.clamp_norm * h_norm / delta.norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
            delta.mul_(scale.unsqueeze(1))
    return Targets(delta.detach(), h0, prob, step)
