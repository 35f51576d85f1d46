"""Target residuals on an mlx-lm model: the optimisation of editing/values.py (MEMIT eq. 16), step for step.

As there, every prompt's prefix (the tokens before its subject token) runs once into a key/value cache, the
suffixes run once up to the target layer, and each Adam step runs only the blocks above it. mx.value_and_grad
differentiates with respect to the deltas alone, and MLX's laziness skips the backward pass of the last step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import torch
import torch.nn.functional as F
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import BatchKVCache

from ...editing.hparams import EditConfig
from ...editing.prompts import PromptBatch
from ...editing.values import (BY_TOKENS, Targets, jitter_source, rows_to_regroup, split_at_subject, suffix_groups,
                               target_scale, targets_reached)
from .capture import capture
from .convert import to_mx, to_torch

if TYPE_CHECKING:
    from .adapter import MlxAdapter


class _Prefix:
    """One block's cache during a step: the prefixes' keys and values, then the suffixes', which are not kept."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array):
        self.keys, self.values, self.offset = keys, values, offset    # offset: each row's subject position

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate([self.values, values], axis=2)


@dataclass
class _Group:
    rows: torch.Tensor          # batch rows in this group
    target: mx.array            # (B,) each row's target delta
    h: mx.array                 # (B, S, d) residual after the target layer, each row from its subject token on
    caches: list                # per block above the target layer: its _Prefix, or None where no row has a prefix
    mask: mx.array | str        # the suffixes' attention over the left-padded prefixes and themselves
    answer: mx.array            # (A, 2) local (row, suffix position) whose output predicts an object token
    tokens: mx.array            # (A,) the object token predicted there
    kl: mx.array                # (k, 2) local (row, suffix position) of the last token of KL prompts
    nll_weight: mx.array        # (n, A) a fact's NLL = this @ token NLLs: mean over a row's tokens, then its rows
    answer_fact: torch.Tensor   # (A,) the fact of each object token
    kl_fact: mx.array           # (n, k) 1 where a KL prompt belongs to the fact
    kl_rows: list[int]          # the batch rows of its KL prompts


def _prepare(adapter: MlxAdapter, batch: PromptBatch, rows: torch.Tensor, layer: int, weights: torch.Tensor
             ) -> _Group:
    """Run the prefixes (all blocks, for their caches) and the suffixes up to `layer` once; `weights`: each
    answer token's share of its fact's NLL, per batch row."""
    cut = split_at_subject(batch, rows)
    prefix, suffix, start = cut.prefix.numpy(), cut.suffix.numpy(), cut.start
    L, S = prefix.shape[1], suffix.shape[1]
    caches, upper = None, [None] * (len(adapter.blocks) - layer - 1)
    mask: mx.array | str = "causal"
    if L > 0:
        caches = [BatchKVCache((L - start).tolist()) for _ in adapter.blocks]
        adapter.model(mx.array(prefix), cache=caches)      # lazy: only the caches below are ever evaluated
        offset = caches[0].offset
        upper = [_Prefix(c.keys[..., :L, :], c.values[..., :L, :], offset) for c in caches[layer + 1:]]
        mask = create_causal_mask(S, offset=L, left_padding=to_mx(L - start))
    with capture(outputs={"h": adapter.block_spot(layer)}) as seen:
        adapter.model(mx.array(suffix), cache=caches)
    h = seen["h"]
    mx.eval(h, [(c.keys, c.values) for c in upper if c is not None])

    fact, answer_rows, kl_rows = batch.fact[rows], cut.answer[:, 0], cut.kl[:, 0]
    nll_weight = torch.zeros(batch.n_facts, len(answer_rows))
    nll_weight[fact[answer_rows], torch.arange(len(answer_rows))] = weights[rows[answer_rows]]
    kl_fact = torch.zeros(batch.n_facts, len(kl_rows))
    kl_fact[fact[kl_rows], torch.arange(len(kl_rows))] = 1.0
    return _Group(rows, to_mx(batch.target[rows]), h, upper, mask, to_mx(cut.answer), to_mx(cut.tokens),
                  to_mx(cut.kl), to_mx(nll_weight), fact[answer_rows], to_mx(kl_fact), rows[kl_rows].tolist())


def _run(adapter: MlxAdapter, g: _Group, layer: int, delta: mx.array) -> mx.array:
    """Normed final hidden states of the group's suffixes with `delta` (B, d) added after `layer` at the subject."""
    h = mx.concatenate([g.h[:, :1] + delta[:, None], g.h[:, 1:]], axis=1)
    for block, cache in zip(adapter.blocks[layer + 1:], g.caches):
        h = block(h, g.mask, cache=cache)
    return adapter.final_norm(h)


def _log_softmax(logits: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _losses(adapter: MlxAdapter, groups: list[_Group], layer: int, delta: mx.array, log_p0: list, off: list):
    """Per-fact object NLL and KL from the unedited next-token distribution of the KL prompts (`log_p0`, None at
    the first step, where the delta is zero), each group's KL log-probabilities, and every object token's NLL;
    `off`: each group's jitter to add to its rows' deltas, or None."""
    nll = kl = mx.zeros(groups[0].nll_weight.shape[0])
    log_ps, token_nll = [], []
    for g, p0, e in zip(groups, log_p0, off):
        out = _run(adapter, g, layer, delta[g.target] if e is None else delta[g.target] + e)
        logp = _log_softmax(adapter.head(out[g.answer[:, 0], g.answer[:, 1]]))
        token_nll.append(-mx.take_along_axis(logp, g.tokens[:, None], axis=1)[:, 0])
        nll = nll + g.nll_weight @ token_nll[-1]
        log_p = mx.zeros((0,))
        if g.kl.shape[0]:
            log_p = _log_softmax(adapter.head(out[g.kl[:, 0], g.kl[:, 1]]))
            p0 = mx.stop_gradient(log_p) if p0 is None else p0
            kl = kl + g.kl_fact @ (mx.exp(p0) * (p0 - log_p)).sum(-1)
        log_ps.append(log_p)
    return nll, kl, log_ps, mx.concatenate(token_nll)


def optimize_targets(adapter: MlxAdapter, batch: PromptBatch, layer: int, cfg: EditConfig) -> Targets:
    """Adam on one delta per target (see `shared_targets`), added at its subject token in every prompt after
    `layer`; `Targets.delta` has one row per target, `Targets.prob` one per fact."""
    n, t, P, d = batch.n_facts, batch.n_targets, len(batch.fact), adapter.d_model
    answers_per_row = batch.answer_mask[:, 1:].sum(1).clamp(min=1)
    rewrites_per_fact = torch.bincount(batch.fact[batch.rewrite], minlength=n).clamp(min=1)
    weights = batch.rewrite / (answers_per_row * rewrites_per_fact[batch.fact])
    ratio, share = BY_TOKENS     # unmeasured on Apple GPUs: the CPU's grouping, as before
    groups = [_prepare(adapter, batch, rows, layer, weights) for rows in suffix_groups(batch, ratio)]
    running = P
    h0 = torch.zeros(P, d)
    for g in groups:
        h0[g.rows] = to_torch(g.h[:, 0])
    # the step size and the clamp scale with the residual norm of the model at hand
    h_norm = target_scale(h0, batch.target, t)
    opt = optim.Adam(cfg.v_step * h_norm.mean().item() / math.sqrt(d), bias_correction=True)  # torch's Adam
    h_norm = to_mx(h_norm)
    member = to_mx(F.one_hot(batch.fact_target, t).T.float())     # (t, n): which facts share each target

    def objective(delta: mx.array, log_p0: list, off: list):
        nll, kl, log_ps, token_nll = _losses(adapter, groups, layer, delta, log_p0, off)
        loss = member @ (nll + cfg.kl_factor * kl) + cfg.v_weight_decay * (delta * delta).sum(1) / h_norm ** 2
        return loss.sum(), nll, log_ps, token_nll

    loss_and_grad = mx.value_and_grad(objective)
    delta, reference = mx.zeros((t, d)), {}      # reference: unedited log-probabilities at each KL prompt's end
    done, prob = np.zeros(t, dtype=bool), np.zeros(n, dtype=np.float32)
    noise = jitter_source(cfg)
    for step in range(1, cfg.v_steps + 1):
        if (live := rows_to_regroup(batch, torch.from_numpy(done), running, share)) is not None:
            groups = [_prepare(adapter, batch, rows, layer, weights) for rows in suffix_groups(batch, ratio, live)]
            running = len(live)
        log_p0 = [mx.stack([reference[r] for r in g.kl_rows]) if reference and g.kl_rows else None for g in groups]
        off = [None if noise is None else to_mx(noise(to_torch(delta[g.target]))) for g in groups]
        (_, nll, log_ps, token_nll), grad = loss_and_grad(delta, log_p0, off)
        prob = np.where(~done[batch.fact_target.numpy()], np.array(mx.exp(-nll)), prob)  # the forward pass only
        if step == 1:
            for g, log_p in zip(groups, log_ps):
                reference.update(zip(g.kl_rows, log_p))
        done |= targets_reached(torch.from_numpy(prob), to_torch(token_nll),
                                torch.cat([g.answer_fact for g in groups]), batch, cfg).numpy()
        if done.all() or step == cfg.v_steps:
            break
        # each target's loss depends on its own delta only, so masking its gradient drops it from the sum
        still = mx.array(~done)[:, None]
        moved = opt.apply_gradients({"delta": grad * still}, {"delta": delta})["delta"]
        moved = mx.where(still, moved, delta)
        scale = mx.minimum(cfg.clamp_norm * h_norm / mx.maximum(mx.linalg.norm(moved, axis=1), 1e-12), 1.0)
        delta = moved * scale[:, None]
        mx.eval(delta, opt.state, list(reference.values()))
    return Targets(to_torch(delta), h0, torch.from_numpy(prob), step)
