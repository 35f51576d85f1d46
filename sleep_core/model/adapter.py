"""A loaded Hugging Face causal LM seen as what editing needs: layers, MLP output projections, the head."""
import hashlib
import json
import torch

from .architectures import Architecture, UnsupportedModelError, architecture_for


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def unwrap(model):
    """The plain transformers model under a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ModelAdapter:
    """Reads and writes the MLP output projection of each layer as a float32 (d_out, d_in) matrix."""

    def __init__(self, model, layers: tuple[int, ...] | None = None):
        self.model = unwrap(model)
        self.config = self.model.config
        model_type = getattr(self.config, "model_type", type(self.model).__name__)
        self.arch: Architecture = architecture_for(model_type)
        self.model_type = model_type
        self.blocks = _get(self.model, self.arch.layers)
        self.layers = tuple(layers) if layers else self.default_layers()
        for l in self.layers:
            if not 0 <= l < len(self.blocks):
                raise UnsupportedModelError(f"Layer {l} does not exist: the model has {len(self.blocks)} layers.")
            if self.out_proj(l).weight.device.type == "meta":
                raise UnsupportedModelError(
                    f"Layer {l} is offloaded to disk ('meta' device) by accelerate; load the model with "
                    "enough GPU/CPU memory for the edited layers, or choose other layers.")

    def default_layers(self) -> tuple[int, ...]:
        last = len(self.blocks) - 1
        return tuple(sorted({round(f * last) for f in self.arch.default_layers}))

    def out_proj(self, layer: int) -> torch.nn.Module:
        return _get(self.blocks[layer], self.arch.out_proj)

    def device(self, layer: int) -> torch.device:
        return self.out_proj(layer).weight.device

    @property
    def d_model(self) -> int:
        return self.config.hidden_size if hasattr(self.config, "hidden_size") else self.config.n_embd

    @property
    def d_in(self) -> int:
        w = self.out_proj(self.layers[0]).weight
        return w.shape[0] if self.arch.conv1d else w.shape[1]

    def read_weight(self, layer: int) -> torch.Tensor:
        """The live weight as stored (dtype and orientation of the model), detached."""
        return self.out_proj(layer).weight.detach()

    def write_weight(self, layer: int, weight: torch.Tensor) -> None:
        """Copy `weight` (the stored orientation and dtype) into the live parameter."""
        with torch.no_grad():
            self.out_proj(layer).weight.copy_(weight)

    def as_matrix(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored weight -> float32 (d_out, d_in)."""
        w = stored.float()
        return w.T if self.arch.conv1d else w

    def to_stored(self, matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """float32 (d_out, d_in) -> the stored orientation, dtype and device of `like`."""
        w = matrix.T if self.arch.conv1d else matrix
        return w.to(dtype=like.dtype, device=like.device)

    @property
    def final_norm(self) -> torch.nn.Module:
        return _get(self.model, self.arch.final_norm)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head and (Gemma 2) logit soft-capping applied to residual states."""
        logits = self.model.get_output_embeddings()(self.final_norm(hidden))
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def fingerprint(self) -> str:
        """Shape-defining config and a sample of every MLP output weight: memories never cross models.

        The folder name is left out so the same weights share one memory in the app and in the host."""
        h = hashlib.sha256()
        shape = {k: getattr(self.config, k, None) for k in
                 ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "n_embd")}
        h.update(json.dumps(shape, sort_keys=True).encode())
        for block in self.blocks:
            w = _get(block, self.arch.out_proj).weight.detach().reshape(-1)
            sample = torch.cat([w[:4096], w[:: max(1, w.numel() // 4096)]]).to("cpu")
            h.update(sample.contiguous().view(torch.uint8).numpy().tobytes())
        return f"{self.model_type}-{h.hexdigest()[:16]}"
