"""A loaded Hugging Face causal LM seen as what editing needs: layers, MLP output projections, the head."""
import inspect

import torch

from .architectures import Architecture, UnsupportedModelError, architecture_for
from .dense import as_matrix, to_stored
from .fingerprint import fingerprint
from .weights import LayerWeight, check_supported, in_features, is_bitsandbytes, layer_weight


def _get(obj, path: str) -> torch.nn.Module:
    for part in path.split("."):
        owner, obj = obj, getattr(obj, part, None)
        if not isinstance(obj, torch.nn.Module):
            raise UnsupportedModelError(f"{type(owner).__name__} has no module '{part}' (looked for '{path}'): this "
                                        "variant of the architecture keeps its layers elsewhere and cannot be edited.")
    return obj


def unwrap(model):
    """The plain transformers model under a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def with_cache(module, cache) -> dict:
    """The keyword argument that hands `module.forward` a key/value cache: transformers renamed past_key_values
    to cache, and the forward's own signature says which it takes."""
    forward = inspect.unwrap(module.forward)
    return {"cache" if "cache" in inspect.signature(forward).parameters else "past_key_values": cache}


def cache_of(out):
    """The key/value cache a forward returned, under either name."""
    return out["cache"] if "cache" in out else out.get("past_key_values")    # no deprecated lookup when both exist


def quant_method(config) -> str | None:
    """The loader's quantization ('bitsandbytes', 'gptq', 'awq', ...), None for plain weights."""
    q = getattr(config, "quantization_config", None)
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return str(getattr(method, "value", method)) if method else None


def _offloaded(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "meta"


def _stored(module: torch.nn.Module) -> torch.Tensor:
    """The module's weight, read from accelerate's offload map when the parameter itself is on 'meta'."""
    weight = module.weight
    hook = getattr(module, "_hf_hook", None)
    if _offloaded(weight) and getattr(hook, "weights_map", None) is not None:
        return hook.weights_map["weight"]
    return weight


class ModelAdapter:
    """The MLP output projection of each edited layer, read and written through one writer per layer; every
    tensor an edit computes lives on that layer's own device."""

    def __init__(self, model, layers: tuple[int, ...] | None = None, quantized_edits: str = "side_branch"):
        self.model = unwrap(model)
        self.config = self.model.config
        model_type = getattr(self.config, "model_type", type(self.model).__name__)
        self.arch: Architecture = architecture_for(model_type)
        self.model_type = model_type
        self.blocks = _get(self.model, self.arch.layers)
        self.layers = tuple(layers) if layers else self.arch.edited_layers(len(self.blocks))
        for l in self.layers:
            self._check_layer(l)
        if _offloaded(self.model.get_input_embeddings().weight):
            raise UnsupportedModelError("The input embeddings are offloaded by accelerate ('meta' device); "
                                        "load the model with room for them on a GPU or the CPU.")
        if any(is_bitsandbytes(m) for m in self.model.modules()):
            from .quantized import disable_cpu_repacking
            disable_cpu_repacking(self.model)
        self.weights: dict[int, LayerWeight] = {l: layer_weight(self.out_proj(l), quantized_edits)
                                                for l in self.layers}

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < len(self.blocks):
            raise UnsupportedModelError(f"Layer {layer} does not exist: the model has {len(self.blocks)} layers.")
        module = self.out_proj(layer)
        check_supported(module, layer, quant_method(self.config))
        if _offloaded(module.weight):
            raise UnsupportedModelError(
                f"Layer {layer}'s MLP weights are offloaded by accelerate (to the CPU or disk, 'meta' device "
                "in the model), where they cannot be edited; load the model with room for the edited layers "
                "on a GPU or the CPU, or choose other layers.")

    def out_proj(self, layer: int) -> torch.nn.Module:
        return _get(self.blocks[layer], self.arch.out_proj)

    def device(self, layer: int) -> torch.device:
        return self.out_proj(layer).weight.device

    @property
    def d_model(self) -> int:
        return self.config.hidden_size if hasattr(self.config, "hidden_size") else self.config.n_embd

    @property
    def d_in(self) -> int:
        return in_features(self.out_proj(self.layers[0]))

    def read_weight(self, layer: int) -> torch.Tensor:
        """The live weight as stored (dtype and orientation of the model; packed codes when quantized), detached."""
        return self.out_proj(layer).weight.detach()

    def add_update(self, layer: int, A: torch.Tensor, B: torch.Tensor) -> None:
        """live += A Bᵀ, on the layer's device and in its dtype or quantization."""
        self.weights[layer].add(A, B)

    # the measurements editing makes, one implementation per backend (editing imports this module, hence the
    # imports inside)
    def measure(self, batch, layer: int, target_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..editing.keys import measure
        return measure(self, batch, layer, target_layer)

    def optimize_targets(self, batch, layer: int, cfg):
        from ..editing.values import optimize_targets
        return optimize_targets(self, batch, layer, cfg)

    def compute_moments(self, tokenizer, texts, max_tokens: int, progress=None) -> dict[int, torch.Tensor]:
        from ..editing.covariance import compute_moments
        return compute_moments(self, tokenizer, texts, max_tokens, progress)

    def as_matrix(self, stored: torch.Tensor) -> torch.Tensor:
        """A plain stored weight -> float32 (d_out, d_in)."""
        return as_matrix(stored, self.arch.conv1d)

    def to_stored(self, matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """float32 (d_out, d_in) -> the stored orientation, dtype and device of the plain weight `like`."""
        return to_stored(matrix, like, self.arch.conv1d)

    @property
    def final_norm(self) -> torch.nn.Module:
        return _get(self.model, self.arch.final_norm)

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """LM head and (Gemma 2) logit soft-capping applied to final-normed hidden states, on the input device."""
        logits = self.model.get_output_embeddings()(normed)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return (torch.tanh(logits / cap) * cap if cap else logits).to(self.input_device())

    def base_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     cache=None, use_cache: bool = True):
        """The decoder without its LM head: (final-normed hidden states, key/value cache or None). With a
        `cache`, `input_ids` continue it and `attention_mask` covers the cached positions too."""
        base = self.model.base_model
        out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=use_cache, **with_cache(base, cache))
        return out.last_hidden_state, cache_of(out)

    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def fingerprint(self) -> str:
        """Shape-defining config and a sample of every MLP output weight: memories never cross models."""
        weights = (_stored(_get(block, self.arch.out_proj)).detach().reshape(-1) for block in self.blocks)
        return fingerprint(self.model_type, self.config, weights,
                           lambda w: w.to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
