"""The least-squares solve of one layer's update, as low-rank factors ΔW = A Bᵀ (one column per fact).

MEMIT (Meng et al. 2023, eq. 14):      ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹
AlphaEdit (Fang et al. 2025, eq. 12):  ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹ with P = U Uᵀ projecting onto
                                       the null space of C. Writing the solution as U y reduces it to an m×m
                                       symmetric system: ΔW = R (U (Uᵀ(K_p K_pᵀ + K Kᵀ)U + α I)⁻¹ Uᵀ K)ᵀ.
Seed (the reference implementation):   diagonal C, earlier keys as zero-target rows: B = (λ diag C + K Kᵀ + K_p K_pᵀ)⁻¹ K.
"""
from dataclasses import dataclass

import torch

from .hparams import EditConfig


@dataclass
class LayerPrior:
    """What an update of one layer must preserve."""
    moment: torch.Tensor            # (d_in, d_in) C, second moment of general-text keys
    null_basis: torch.Tensor        # (d_in, m) U, eigenvectors of C with near-zero eigenvalues
    key_scale: float                # mean squared key norm, the unit of α


def null_space(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """Eigenvectors of C that together hold at most `energy` of its trace (AlphaEdit section 3.2).

    Small models have no exactly-zero eigenvalues (the spectrum spans two decades), so the null space is
    the set of directions that general text barely uses, chosen by energy rather than a fixed threshold."""
    values, vectors = torch.linalg.eigh(moment.double())   # ascending
    keep = torch.cumsum(values.clamp(min=0), 0) <= energy * values.clamp(min=0).sum()
    return vectors[:, keep].float()


def make_prior(moment: torch.Tensor, cfg: EditConfig) -> LayerPrior:
    return LayerPrior(moment, null_space(moment, cfg.null_energy), moment.trace().item())


def solve(K: torch.Tensor, R: torch.Tensor, prior: LayerPrior, stored: torch.Tensor, cfg: EditConfig
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A, B) with ΔW = A Bᵀ. K: (d_in, n) keys, R: (d_out, n) residuals, stored: (d_in, N) kept keys."""
    K64, S = K.double(), stored.double()
    if cfg.mode == "constrained":
        U = prior.null_basis.double()
        Kn, Sn = U.T @ K64, U.T @ S
        M = Sn @ Sn.T + Kn @ Kn.T + cfg.alpha_rel * prior.key_scale * torch.eye(U.shape[1], dtype=torch.float64)
        B = U @ torch.linalg.solve(M, Kn)
    else:
        C = prior.moment.double()
        C = torch.diag(torch.diagonal(C)) if cfg.seed else C
        G = cfg.lambda_rel * K.shape[0] * C + K64 @ K64.T
        if cfg.seed:
            G = G + S @ S.T
        B = torch.linalg.solve(G, K64)
    if not torch.isfinite(B).all():
        raise FloatingPointError("the solve produced non-finite factors; nothing was written")
    return R.float(), B.float()
