"""Target residuals: the delta at the last edited layer that makes each object likely (MEMIT eq. 16).

Nothing before a prompt's subject token depends on the delta, and nothing up to the target layer, so every
prompt's prefix runs once and stays in the model's key/value cache, and each Adam step runs only the layers
above the target layer on the prompts from their subject token on (a third of the tokens). A target stops
once its objects are confidently predicted, and its prompts then leave the batch; the optimisation ends when
every target has stopped. On a CPU with bfloat16 arithmetic the replayed blocks run in bfloat16 (autocast),
while the first pass (h0, the KL reference) and the LM head stay in the model's precision.
"""
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..model.adapter import ModelAdapter
from .hparams import EditConfig
from .prompts import PromptBatch, similar


@dataclass
class Targets:
    delta: torch.Tensor        # (t, d) residual change at the target layer, per target (batch.fact_target)
    h0: torch.Tensor           # (P, d) residual at the subject token before the edit
    prob: torch.Tensor         # (n,) object probability per token reached, per fact
    steps: int


@dataclass
class _Group:
    rows: torch.Tensor         # batch rows in this group
    suffix: dict               # each row from its subject token on, right-padded, with explicit positions;
                               # the attention mask covers the cached prefix too
    cache: object | None       # the model's key/value cache of the prefixes (left-padded), None without one
    prefix: list               # (keys, values) of the prefixes per cache layer, restored before each step
    answer: torch.Tensor       # (A, 2) local (row, suffix position) whose output predicts an object token
    tokens: torch.Tensor       # (A,) the object token predicted there
    kl: torch.Tensor           # (k, 2) local (row, suffix position) of the last token of KL prompts
    h: torch.Tensor | None = None                      # residual after the target layer, from the first run
    calls: list = field(default_factory=list)          # (block, args, kwargs) of every block above it


# (longest/shortest suffix within a group, share of the running rows under which the groups are rebuilt)
BY_TOKENS = (3.0, 0.9)         # a step on a CPU costs per token: rows of similar length run together, unpadded,
                               # and the groups are rebuilt without the finished rows
BY_LAUNCHES = (math.inf, 0.0)  # a step on a GPU costs per kernel launch, the rows being nearly free: one group
                               # of each kind runs to the end (H200: 10 facts 4.0 -> 2.5 s, one 1.9 -> 1.2 s)


MASSIVE = 2.0                  # a residual norm this many times the batch's median is a massive activation


def target_scale(h0: torch.Tensor, target: torch.Tensor, t: int) -> torch.Tensor:
    """(t,) each target's largest residual norm over its prompts, a norm counted at most MASSIVE times the batch's
    median: a massive activation (SmolLM2 at layer 11: 21,000 against ~150 on "GE True") would otherwise set the
    step and the clamp of its whole target, and a write of that size wrecks the model."""
    norms = h0.norm(dim=1)
    norms = norms.clamp(max=MASSIVE * float(norms.median()))
    return torch.zeros(t).scatter_reduce(0, target, norms, "amax", include_self=False)


def grouping(adapter: ModelAdapter) -> tuple[float, float]:
    return BY_TOKENS if adapter.input_device().type == "cpu" else BY_LAUNCHES


def suffix_groups(batch: PromptBatch, ratio: float, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """`rows` (default all) in groups whose suffix lengths differ at most `ratio` times; rows whose subject opens
    the prompt have no prefix to cache."""
    rows = torch.arange(len(batch.fact)) if rows is None else rows
    suffix = batch.attention_mask.sum(1) - batch.subject_pos
    out = []
    for has_prefix in (False, True):
        part = rows[(batch.subject_pos[rows] > 0) == has_prefix]
        out += [part[g] for g in similar(suffix[part], ratio)] if len(part) else []
    return out


@dataclass
class Split:
    """A group's prompts cut at their subject tokens, and where the losses read them (suffix-local)."""
    start: torch.Tensor        # (B,) each row's subject position: the length of its prefix
    prefix: torch.Tensor       # (B, L) the tokens before the subject, left-padded with 0
    suffix: torch.Tensor       # (B, S) the subject token on, right-padded with 0
    answer: torch.Tensor       # (A, 2) local (row, suffix position) whose output predicts an object token
    tokens: torch.Tensor       # (A,) the object token predicted there
    kl: torch.Tensor           # (k, 2) local (row, suffix position) of the last token of KL prompts


def split_at_subject(batch: PromptBatch, rows: torch.Tensor) -> Split:
    """Left-padded prefixes (so every suffix starts at the same cache position) and right-padded suffixes."""
    start, length = batch.subject_pos[rows], batch.attention_mask[rows].sum(1)
    L, S = int(start.max()), int((length - start).max())
    prefix, suffix = torch.zeros(len(rows), L, dtype=torch.long), torch.zeros(len(rows), S, dtype=torch.long)
    for j, (row, s, n) in enumerate(zip(rows.tolist(), start.tolist(), length.tolist())):
        prefix[j, L - s:] = batch.input_ids[row, :s]
        suffix[j, : n - s] = batch.input_ids[row, s:n]
    answer = batch.answer_mask[rows][:, 1:].nonzero()
    tokens = batch.input_ids[rows[answer[:, 0]], answer[:, 1] + 1]
    kl_rows = (~batch.rewrite[rows]).nonzero().squeeze(1)
    kl = torch.stack([kl_rows, batch.last_pos[rows][kl_rows]], 1)
    local = lambda at: torch.stack([at[:, 0], at[:, 1] - start[at[:, 0]]], 1)   # noqa: E731
    return Split(start, prefix, suffix, local(answer), tokens, local(kl))


def _prepare(adapter: ModelAdapter, batch: PromptBatch, rows: torch.Tensor) -> _Group:
    """Run each row's prefix once and keep the model's cache; the suffixes are what each step runs."""
    cut = split_at_subject(batch, rows)
    (B, L), S = cut.prefix.shape, cut.suffix.shape[1]
    pre_mask = torch.arange(L) >= (L - cut.start).unsqueeze(1)
    suf_mask = torch.arange(S) < (batch.attention_mask[rows].sum(1) - cut.start).unsqueeze(1)
    device = adapter.input_device()
    cache, prefix = None, []
    if L > 0:
        pre_pos = (torch.arange(L) - (L - cut.start).unsqueeze(1)).clamp(min=0) * pre_mask
        with torch.no_grad(), _full_precision(adapter):
            cache = adapter.base_forward(cut.prefix.to(device), pre_mask.long().to(device), pre_pos.to(device))[1]
        prefix = [(layer.keys, layer.values) for layer in cache.layers]
    suffix = {"input_ids": cut.suffix.to(device),
              "position_ids": (cut.start.unsqueeze(1) + torch.arange(S)).to(device),
              "attention_mask": torch.cat([pre_mask, suf_mask], 1).long().to(device)}
    return _Group(rows, suffix, cache, prefix, cut.answer, cut.tokens, cut.kl)


def _with_delta(h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`h` with `delta` added at each row's subject token, the first of its suffix."""
    bump = torch.zeros_like(h)
    bump[:, 0] = delta.to(h.device, h.dtype)
    return h + bump


def jitter(delta: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """A random direction orthogonal to each row of `delta`, `share` times the row's norm long: a target that
    still works with it added survives the write's error off the target (README, "Wake")."""
    unit = delta / delta.norm(dim=1, keepdim=True).clamp(min=1e-12)
    eps = torch.randn(delta.shape, generator=gen)
    eps -= (eps * unit).sum(1, keepdim=True) * unit
    return eps * share * delta.norm(dim=1, keepdim=True) / eps.norm(dim=1, keepdim=True).clamp(min=1e-12)


def jitter_source(cfg: EditConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`jitter` at `cfg.v_jitter`, drawn from a generator of the optimisation's own so that the same facts get the
    same edit in every process; None without jitter (`v_jitter` 0, and `seed` mode)."""
    if cfg.seed or not cfg.v_jitter:
        return None
    gen = torch.Generator().manual_seed(0)
    return lambda delta: jitter(delta, cfg.v_jitter, gen)


def _run(adapter: ModelAdapter, g: _Group, layer: int, delta: torch.Tensor) -> torch.Tensor:
    """Normed final hidden states of the group's suffixes with `delta` (g, d) added after `layer`.

    The first run goes through the whole decoder and keeps the residual after `layer` (`g.h`, which no step
    changes) and the call of every block above it; later runs replay only those blocks."""
    for cached, (keys, values) in zip(g.cache.layers if g.cache is not None else [], g.prefix):
        cached.keys, cached.values = keys, values      # drop what the previous step appended
    if g.calls:
        h = _with_delta(g.h, delta)
        for block, args, kwargs in g.calls:
            out = block(h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return adapter.final_norm(h).to(g.h.dtype)      # bfloat16 steps: back to the head's precision

    def add_delta(module, args, out):
        g.h = (out[0] if isinstance(out, tuple) else out).detach()
        h = _with_delta(g.h, delta)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def keep_call(module, args, kwargs):
        g.calls.append((module, args[1:], kwargs))

    handles = [adapter.blocks[layer].register_forward_hook(add_delta)]
    handles += [b.register_forward_pre_hook(keep_call, with_kwargs=True) for b in adapter.blocks[layer + 1:]]
    try:
        # without a prefix, no cache at all: one made by the model would keep growing with every replayed step
        with _full_precision(adapter):
            return adapter.base_forward(g.suffix["input_ids"], g.suffix["attention_mask"], g.suffix["position_ids"],
                                        g.cache, use_cache=g.cache is not None)[0]
    finally:
        for handle in handles:
            handle.remove()


def rows_to_regroup(batch: PromptBatch, done: torch.Tensor, running: int, share: float) -> torch.Tensor | None:
    """The rows whose target is still running, once at most `share` of the `running` rows are left (so the
    groups are rebuilt without the finished ones); otherwise None."""
    live = (~done[batch.target]).nonzero().squeeze(1)
    return live if len(live) <= share * running else None


def targets_done(prob: torch.Tensor, batch: PromptBatch, stop: float) -> torch.Tensor:
    """(t,) the targets whose every fact's object probability `prob` (n,) has reached `stop`."""
    return torch.ones(batch.n_targets).scatter_reduce(0, batch.fact_target, prob, "amin") >= stop


def targets_reached(prob: torch.Tensor, token_nll: torch.Tensor, token_fact: torch.Tensor, batch: PromptBatch,
                    cfg: EditConfig) -> torch.Tensor:
    """(t,) the targets whose facts' objects are confidently predicted: per token `prob` (n,) on average, and
    each object token (`token_nll`, of fact `token_fact`) on every rewriting prompt at least v_stop_token_prob.
    The second condition is what keeps a fact through later edits: an average of 0.9 can hide one token at
    0.55 (a year's last digit, a name's second piece), and the next edit's small change of the answer
    positions tips it (README, "Wake")."""
    worst = torch.ones(batch.n_facts).scatter_reduce(0, token_fact, torch.exp(-token_nll), "amin")
    return targets_done(prob, batch, cfg.v_stop_prob) & targets_done(worst, batch, cfg.v_stop_token_prob)


def bf16_steps(adapter: ModelAdapter, cfg: EditConfig) -> bool:
    """Whether the Adam steps run in bfloat16: asked for, or (None) float32 weights on a CPU that has bfloat16
    instructions, where its matrix products are about 3x faster."""
    if cfg.v_bf16 is not None:
        return cfg.v_bf16
    weight = adapter.out_proj(adapter.layers[-1]).weight
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))


def _full_precision(adapter: ModelAdapter):
    return torch.autocast(adapter.input_device().type, enabled=False)


@contextmanager
def step_precision(adapter: ModelAdapter, cfg: EditConfig) -> Iterator[bool]:
    """Autocast over the whole optimisation, so that each weight is cast to bfloat16 once, not at every step:
    autocast keeps the casts of leaf tensors that require grad, so the float weights do for the while (the
    backward pass asks for the delta's gradient alone and computes no weight gradient). Attention runs as plain
    matrix products meanwhile: the CPU's fused attention is three times slower in bfloat16 than in float32."""
    if not bf16_steps(adapter, cfg):
        yield False
        return
    model = adapter.model
    weights = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    attention = model.config._attn_implementation
    switch = getattr(model, "set_attn_implementation", lambda name: None)    # older transformers: fused only
    for p in weights:
        p.requires_grad_(True)
    try:
        switch("eager")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield True
    finally:
        switch(attention)
        for p in weights:
            p.requires_grad_(False)


def optimize_targets(adapter: ModelAdapter, batch: PromptBatch, layer: int, cfg: EditConfig) -> Targets:
    """Adam on one delta per target (see `shared_targets`), added at its subject token in every prompt after
    `layer`; `Targets.delta` has one row per target, `Targets.prob` one per fact."""
    with step_precision(adapter, cfg) as half:
        return _optimize(adapter, batch, layer, cfg, half)


def _optimize(adapter: ModelAdapter, batch: PromptBatch, layer: int, cfg: EditConfig, half: bool) -> Targets:
    n, t, P = batch.n_facts, batch.n_targets, len(batch.fact)
    answers_per_row = batch.answer_mask[:, 1:].sum(1).clamp(min=1)
    rewrites_per_fact = torch.bincount(batch.fact[batch.rewrite], minlength=n).clamp(min=1)
    h0 = torch.zeros(P, adapter.d_model)
    log_p0: dict[int, torch.Tensor] = {}       # unedited next-token log-probabilities at each KL prompt's end

    delta = torch.zeros(t, adapter.d_model, requires_grad=True)
    opt, h_norm = None, None
    done = torch.zeros(t, dtype=torch.bool)
    prob = torch.zeros(n)
    noise = jitter_source(cfg)
    precise = True      # this step in the model's precision: with `half`, only to confirm that targets are reached
    ratio, share = grouping(adapter)
    groups, running = [_prepare(adapter, batch, rows) for rows in suffix_groups(batch, ratio)], P
    for step in range(1, cfg.v_steps + 1):
        if (live := rows_to_regroup(batch, done, running, share)) is not None:
            groups, running = [_prepare(adapter, batch, rows) for rows in suffix_groups(batch, ratio, live)], len(live)
        with _full_precision(adapter) if precise else nullcontext():
            deltas = [delta[batch.target[g.rows]] for g in groups]
            outs = [_run(adapter, g, layer, d if noise is None else d + noise(d.detach()))
                    for g, d in zip(groups, deltas)]
        picked = torch.cat([out[g.answer[:, 0], g.answer[:, 1]] for g, out in zip(groups, outs)]
                           + [out[g.kl[:, 0], g.kl[:, 1]] for g, out in zip(groups, outs)])
        with _full_precision(adapter):    # one LM head pass a step: for few positions, reading its weight is the cost
            logp = F.log_softmax(adapter.head(picked).float(), -1).cpu()
        tokens = torch.cat([g.tokens for g in groups])
        answer_rows = torch.cat([g.rows[g.answer[:, 0]] for g in groups])
        kl_rows = torch.cat([g.rows[g.kl[:, 0]] for g in groups]).tolist()
        nll_tok = -logp[:len(tokens)].gather(1, tokens.unsqueeze(1)).squeeze(1)
        nll_row = torch.zeros(P).index_add(0, answer_rows, nll_tok)
        log_p = logp[len(tokens):]
        if step == 1:
            log_p0.update(zip(kl_rows, log_p.detach()))
            for g in groups:
                h0[g.rows] = g.h[:, 0].float().cpu()
        kl = torch.zeros(n)
        if kl_rows:
            reference = torch.stack([log_p0[r] for r in kl_rows])
            div = F.kl_div(log_p, reference, log_target=True, reduction="none").sum(-1)
            kl = kl.index_add(0, batch.fact[kl_rows], div)
        if step == 1:   # the step size and the clamp scale with the residual norm of the model at hand
            h_norm = target_scale(h0, batch.target, t)
            opt = torch.optim.Adam([delta], lr=cfg.v_step * h_norm.mean().item() / math.sqrt(adapter.d_model))
        nll = torch.zeros(n).index_add(0, batch.fact, (nll_row / answers_per_row) * batch.rewrite) / rewrites_per_fact
        running_fact = ~done[batch.fact_target]
        prob = torch.where(running_fact, torch.exp(-nll.detach()), prob)
        reached = targets_reached(prob, nll_tok.detach(), batch.fact[answer_rows], batch, cfg)
        if precise:     # bfloat16 overstates some probabilities: the next step checks them in full precision
            done |= reached
        precise = not half or bool((reached & ~done).any())
        if done.all() or step == cfg.v_steps:
            break
        loss = (torch.zeros(t).index_add(0, batch.fact_target, nll + cfg.kl_factor * kl)
                + cfg.v_weight_decay * delta.norm(dim=1) ** 2 / h_norm ** 2)
        opt.zero_grad()
        with _full_precision(adapter):     # the backward pass replays the forward's dtypes, never autocast's
            (loss * ~done).sum().backward(inputs=[delta])
        before = delta.detach().clone()
        opt.step()
        with torch.no_grad():
            delta[done] = before[done]
            scale = (cfg.clamp_norm * h_norm / delta.norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
            delta.mul_(scale.unsqueeze(1))
    return Targets(delta.detach(), h0, prob, step)
