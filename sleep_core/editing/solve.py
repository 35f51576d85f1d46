"""The least-squares solve of one layer's update, as low-rank factors ΔW = A Bᵀ (one column per fact).

MEMIT (Meng et al. 2023, eq. 14):      ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, C the second moment of general-text keys
AlphaEdit (Fang et al. 2025, eq. 12):  ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹, P = U Uᵀ projecting onto the
                                       null space of C, K_p the keys of the stored facts.

Both are one solve here. With C = Q Λ Qᵀ and U the columns of Q that span the null space (Λ_U their
eigenvalues), writing ΔW = Y Uᵀ and minimising ‖ΔW K - R‖² + λ tr(ΔW C ΔWᵀ) + μ ‖ΔW K_p‖² + α ‖ΔW‖² gives

    ΔW = R (U (Uᵀ(K Kᵀ + μ K_p K_pᵀ)U + λ Λ_U + α I)⁻¹ Uᵀ K)ᵀ,

an m×m symmetric system. With U all of Q, μ = α = 0 it is MEMIT exactly; with λ = 0, μ = 1 it is AlphaEdit.
On a small model C has no exactly-zero eigenvalues (SmolLM2's span two decades), so the null space is chosen
by energy and λ Λ_U keeps weighing the little general text that still uses it (MEMIT's C₀, restricted to U).
The stored facts are MEMIT's "previously memorised associations" (its K₀K₀ᵀ, section 4.2) taken literally.

Seed (the reference implementation):   diagonal C, earlier keys as zero-target rows:
                                       B = (λ diag C + K Kᵀ + K_p K_pᵀ)⁻¹ K.
"""
from dataclasses import dataclass

import torch

from .hparams import EditConfig


@dataclass
class LayerPrior:
    """What an update of one layer must preserve: general text's keys, as C's eigen-decomposition."""
    moment: torch.Tensor            # (d_in, d_in) C, second moment of general-text keys
    values: torch.Tensor            # (d_in,) its eigenvalues, ascending, float64
    vectors: torch.Tensor           # (d_in, d_in) its eigenvectors, float64

    @property
    def key_scale(self) -> float:
        """Mean squared key norm (tr C), the unit of α and μ."""
        return float(self.values.clamp(min=0).sum())

    def null_basis(self, energy: float) -> tuple[torch.Tensor, torch.Tensor]:
        """U, Λ_U: the least-used directions that together hold at most `energy` of C's trace (AlphaEdit
        section 3.2, with an energy threshold instead of a fixed one)."""
        values = self.values.clamp(min=0)
        keep = torch.cumsum(values, 0) <= energy * values.sum() * (1 + 1e-9)
        return self.vectors[:, keep], values[keep]


def make_prior(moment: torch.Tensor) -> LayerPrior:
    values, vectors = torch.linalg.eigh(moment.double())
    return LayerPrior(moment, values, vectors)


def general_text_change(A: torch.Tensor, B: torch.Tensor, prior: LayerPrior) -> float:
    """tr(ΔW C ΔWᵀ) for ΔW = A Bᵀ: the mean squared change of the layer's output on general text, the term λ
    weighs in MEMIT's eq. 14 (with B = I, the mean squared output of a weight A itself)."""
    A, B = A.double(), B.double()
    return float(torch.trace((A.T @ A) @ (B.T @ prior.moment.double() @ B)))


def _inverse_times(D: torch.Tensor, V: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(diag(D) + V Vᵀ)⁻¹ X by Woodbury's identity: O(m r²) for r = V's columns instead of O(m³)."""
    if V.shape[1] >= V.shape[0] // 2:
        return torch.linalg.solve(torch.diag(D) + V @ V.T, X)
    DV, DX = V / D.unsqueeze(1), X / D.unsqueeze(1)
    inner = torch.eye(V.shape[1], dtype=V.dtype) + V.T @ DV
    return DX - DV @ torch.linalg.solve(inner, V.T @ DX)


def solve(K: torch.Tensor, R: torch.Tensor, prior: LayerPrior, stored: torch.Tensor, cfg: EditConfig
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A, B) with ΔW = A Bᵀ. K: (d_in, n) keys, R: (d_out, n) residuals, stored: (d_in, N) kept keys."""
    K64, S = K.double(), stored.double()
    lam = cfg.lambda_rel * K.shape[0]         # λ in units of C, scaled to the key dimension (see hparams)
    if cfg.seed:
        G = lam * torch.diag(torch.diagonal(prior.moment.double())) + K64 @ K64.T + S @ S.T
        B = torch.linalg.solve(G, K64)
    else:
        constrained = cfg.mode == "constrained"
        U, values = prior.null_basis(cfg.null_energy if constrained else 1.0)
        Kn = U.T @ K64
        mu, alpha = (cfg.preserve_rel, cfg.alpha_rel) if constrained else (0.0, 0.0)
        D = lam * values + (alpha + 1e-9) * prior.key_scale
        kept = (mu ** 0.5) * (U.T @ S) if mu else Kn[:, :0]
        if cfg.exact:
            X = _inverse_times(D, kept, Kn)
            G = Kn.T @ X        # a whisker of ridge: many near-parallel keys make it ill-conditioned
            B = U @ X @ torch.linalg.inv(G + 1e-6 * G.diagonal().mean() * torch.eye(len(G), dtype=G.dtype))
        else:
            B = U @ _inverse_times(D, torch.cat([kept, Kn], 1), Kn)
    if not torch.isfinite(B).all():
        raise FloatingPointError("the solve produced non-finite factors; nothing was written")
    return R.float(), B.float()


def solve_facts(K: torch.Tensor, owner: torch.Tensor, R: torch.Tensor, prior: LayerPrior, stored: torch.Tensor,
                cfg: EditConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`solve` for facts with one or more key columns: K (d_in, c) columns scaled by 1/√(their fact's count),
    owner (c,) their facts, R (d_out, n) one residual per fact. Every column of a fact asks for its residual,
    and the columns' factors fold into one, so ΔW stays one column per fact: ΔW = Σ_j r_j (Σ_c s_c b_c)ᵀ."""
    scale = torch.bincount(owner, minlength=R.shape[1])[owner].double().rsqrt().float()
    _, B = solve(K, R[:, owner] * scale, prior, stored, cfg)
    return R.float(), torch.zeros(K.shape[0], R.shape[1]).index_add_(1, owner, B * scale)
