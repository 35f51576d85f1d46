"""Consolidation: every stored fact's columns re-solved jointly from the pristine weights.

Wake edits are solved one at a time, each against the weights the earlier ones left, so every fact's
columns also write a little at the other facts' keys. Sleep replays them as one MEMIT batch (Meng et al. 2023,
eq. 14, with every fact in K): per layer, the update that writes each fact's own share exactly at its own key
(EMMET's equality-constrained form, Gupta et al. 2024) and disturbs general text least. No forward pass is
needed: the keys and shares were kept when each fact was learned.
"""
from dataclasses import replace

import torch

from ..memory.facts import FactEdit
from .hparams import EditConfig
from .solve import LayerPrior, solve_facts


def consolidate(edits: dict[int, FactEdit], priors: dict[int, LayerPrior], cfg: EditConfig) -> dict[int, FactEdit]:
    """New columns for every fact of `edits`, solved together: ΔW_l K_l = A_l, least C-weighted norm."""
    ids = sorted(edits)
    joint = replace(cfg, mode="constrained", exact=True, preserve_rel=0.0)
    b: dict[int, torch.Tensor] = {}
    for layer, prior in priors.items():
        keys = [edits[i].keys(layer) for i in ids]
        owner = torch.repeat_interleave(torch.arange(len(ids)), torch.tensor([k.shape[1] for k in keys]))
        K, A = torch.cat(keys, 1), torch.stack([edits[i].a[layer] for i in ids], 1)
        b[layer] = solve_facts(K, owner, A, prior, K[:, :0], joint)[1]
    return {i: FactEdit(edits[i].a, {l: b[l][:, j] for l in b}, edits[i].k, edits[i].delta, edits[i].prob)
            for j, i in enumerate(ids)}
