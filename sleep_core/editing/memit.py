"""MEMIT's batch algorithm (Meng et al. 2023, Alg. 1): optimise targets at the last edited layer, then spread
the residual over the edited layers from the first to the last, re-measuring keys after each layer."""
import torch

from ..memory.facts import Fact, FactEdit
from ..model.backend import Adapter
from .hparams import EditConfig
from .keys import chat_shares, key_columns, per_fact_mean
from .prompts import PromptBatch, build_batch
from .solve import LayerPrior, solve_facts
from .values import Targets

# facts per solve: larger batches are written this many at a time, each solve protecting the ones before it
MAX_BATCH = 100
# facts whose targets are optimised at once: the optimisation keeps every prompt's activations for its backward
# pass, so its memory grows with them (a refresh of 100 CounterFact facts in one go held 13-15 GB), while the
# solve takes the whole batch
TARGET_CHUNK = 20


def compute_edits(adapter: Adapter, tokenizer, facts: list[Fact], cfg: EditConfig,
                  priors: dict[int, LayerPrior], stored: dict[int, torch.Tensor]) -> list[FactEdit]:
    """Edit the live weights for `facts` and return each fact's columns.

    The live weights are left as pristine + old edits + this update; the caller's ledger rebuilds them
    canonically (or rolls them back) afterwards."""
    layers = adapter.layers
    batch = build_batch(tokenizer, facts, cfg)
    targets = _optimize_in_chunks(adapter, tokenizer, facts, batch, cfg)
    goal = targets.h0 + targets.delta[batch.target]                # (P, d) z per prompt
    share = chat_shares(batch, cfg)
    a, b, k = {}, {}, {}
    for i, layer in enumerate(layers):
        keys, h = adapter.measure(batch, layer, layers[-1])
        K, owner = key_columns(keys, batch, share, cfg)                     # (d_in, c), c >= n
        R = per_fact_mean(goal - h, batch, share).T / (len(layers) - i)     # (d_out, n), MEMIT's spread over layers
        A, B = solve_facts(K, owner, R, priors[layer], stored.get(layer, K[:, :0]), cfg)
        adapter.add_update(layer, A, B)
        a[layer], b[layer], k[layer] = A, B, K
    return [FactEdit({l: a[l][:, j] for l in layers}, {l: b[l][:, j] for l in layers},
                     {l: k[l][:, owner == j].squeeze(1) for l in layers}, targets.delta[t], float(targets.prob[j]))
            for j, t in enumerate(batch.fact_target.tolist())]


def _optimize_in_chunks(adapter: Adapter, tokenizer, facts: list[Fact], batch: PromptBatch, cfg: EditConfig
                        ) -> Targets:
    """The batch's targets, optimised at most TARGET_CHUNK facts at a time, a subject's facts together (they share
    a target). Each fact's loss reads its own target only, so a chunk's optimisation is the batch's restricted to
    it, but for Adam's step size, which scales with the mean residual norm of the targets optimised together."""
    layer = adapter.layers[-1]
    if len(facts) <= TARGET_CHUNK:
        return adapter.optimize_targets(batch, layer, cfg)
    delta = torch.zeros(batch.n_targets, adapter.d_model)
    h0 = torch.zeros(len(batch.fact), adapter.d_model)
    prob = torch.zeros(batch.n_facts)
    steps = 0
    for chunk in _chunks(batch.fact_target.tolist(), TARGET_CHUNK):
        sub = build_batch(tokenizer, [facts[i] for i in chunk], cfg)
        part = adapter.optimize_targets(sub, layer, cfg)
        # a fact's prompts come in the same order in both batches (build_batch writes them fact by fact)
        rows = torch.cat([(batch.fact == i).nonzero().squeeze(1) for i in chunk])
        sub_rows = torch.cat([(sub.fact == j).nonzero().squeeze(1) for j in range(len(chunk))])
        h0[rows] = part.h0[sub_rows]
        delta[batch.fact_target[chunk]] = part.delta[sub.fact_target]
        prob[chunk] = part.prob
        steps = max(steps, part.steps)
    return Targets(delta, h0, prob, steps)


def _chunks(fact_target: list[int], limit: int) -> list[list[int]]:
    """Fact indices in chunks of at most `limit` (a subject with more facts is one chunk), each target's facts in
    one chunk, ascending within it."""
    by_target: dict[int, list[int]] = {}
    for i, t in enumerate(fact_target):
        by_target.setdefault(t, []).append(i)
    chunks: list[list[int]] = [[]]
    for group in by_target.values():
        if chunks[-1] and len(chunks[-1]) + len(group) > limit:
            chunks.append([])
        chunks[-1].extend(group)
    return [sorted(c) for c in chunks]
