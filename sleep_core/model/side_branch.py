"""The update as an additive side branch: the module's own (quantized) weight is never written; a forward hook
adds x B Aᵀ, i.e. x ΔWᵀ with ΔW = A Bᵀ kept as its low-rank factors (LoRA's shape, fixed values)."""
import torch

from .dense import Factors


class SideBranch:
    """Factors carried beside `base`, whose weight stays as loaded; one branch per module, shared by every
    Memory opened on that model object, so a second one never adds the update twice."""

    def __init__(self, module: torch.nn.Module, base):
        self.module, self.base = module, base
        self.factors: Factors | None = None
        self._hook = None

    @classmethod
    def attach(cls, module: torch.nn.Module, base) -> "SideBranch":
        branch = getattr(module, "_sleeping_llm_branch", None)
        if branch is None:
            branch = module._sleeping_llm_branch = cls(module, base)
        return branch

    def _forward(self, module, args, out: torch.Tensor) -> torch.Tensor:
        A, B = self.factors
        x = args[0].to(B.device, B.dtype)
        return out + ((x @ B) @ A.T).to(out.device, out.dtype)

    def _set(self, factors: Factors | None) -> None:
        if factors is None:
            self.factors = None
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            return
        device = self.module.weight.device
        self.factors = (factors[0].float().to(device), factors[1].float().to(device))
        if self._hook is None:
            self._hook = self.module.register_forward_hook(self._forward)

    def snapshot(self):
        return self.base.snapshot()

    def restore(self, snapshot, factors: Factors | None) -> None:
        self._set(factors)

    def add(self, A: torch.Tensor, B: torch.Tensor) -> None:
        if self.factors is None:
            self._set((A, B))
        else:
            self._set((torch.cat([self.factors[0], A.to(self.factors[0].device)], 1),
                       torch.cat([self.factors[1], B.to(self.factors[1].device)], 1)))

    def matches(self, snapshot) -> bool:
        return self.factors is None and self.base.matches(snapshot)
