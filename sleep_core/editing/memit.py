"""MEMIT's batch algorithm (Meng et al. 2023, Alg. 1): optimise targets at the last edited layer, then spread
the residual over the edited layers from the first to the last, re-measuring keys after each layer."""
import torch

from ..memory.facts import Fact, FactEdit
from ..model.backend import Adapter
from .hparams import EditConfig
from .keys import chat_shares, key_columns, per_fact_mean
from .prompts import build_batch
from .solve import LayerPrior, solve_facts

# facts per solve: the target optimisation's memory grows with them (200 CounterFact facts in one solve needed more
# than the 23 GB of the project's CPU machine; 100 ran), so larger batches are written this many at a time
MAX_BATCH = 100


def compute_edits(adapter: Adapter, tokenizer, facts: list[Fact], cfg: EditConfig,
                  priors: dict[int, LayerPrior], stored: dict[int, torch.Tensor]) -> list[FactEdit]:
    """Edit the live weights for `facts` and return each fact's columns.

    The live weights are left as pristine + old edits + this update; the caller's ledger rebuilds them
    canonically (or rolls them back) afterwards."""
    layers = adapter.layers
    batch = build_batch(tokenizer, facts, cfg)
    targets = adapter.optimize_targets(batch, layers[-1], cfg)
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
