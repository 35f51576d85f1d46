"""An mlx-lm model seen as editing needs it: the decoder blocks, the MLP output projections, the final norm and
the head. mlx-lm names these modules as transformers does for the Llama-layout families."""
from typing import Callable, Iterable

import mlx.core as mx
import numpy as np
import torch

from ...editing.hparams import EditConfig
from ...editing.prompts import PromptBatch
from ...editing.values import Targets
from ..architectures import ALIASES, UnsupportedModelError, architecture_for
from ..fingerprint import fingerprint
from . import covariance, keys, values
from .capture import Spot
from .weights import MlxDenseWeight, layer_weight

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")     # model.layers[i].mlp.down_proj, model.norm, tied or lm_head


class MlxAdapter:
    """The MLX counterpart of ModelAdapter: the same measurements and writes, the same fingerprint for the same
    weights; keys, residuals and targets cross to torch (float32, CPU) for the solve, the ledger and the store."""

    def __init__(self, model, layers: tuple[int, ...] | None = None):
        self.model = model
        self.config = model.args
        self.model_type = model.args.model_type
        if ALIASES.get(self.model_type, self.model_type) not in FAMILIES:
            raise UnsupportedModelError(f"Sleeping LLM's MLX backend edits {', '.join(FAMILIES)} models, not "
                                        f"'{self.model_type}'; load it with transformers (torch) instead.")
        self.blocks = model.layers
        self.layers = tuple(layers) if layers else architecture_for(self.model_type).edited_layers(len(self.blocks))
        for l in self.layers:
            if not 0 <= l < len(self.blocks):
                raise UnsupportedModelError(f"Layer {l} does not exist: the model has {len(self.blocks)} layers.")
        mx.eval(model.parameters())    # a lazily built model could not be evaluated from the injection thread
        self.weights: dict[int, MlxDenseWeight] = {l: layer_weight(self.out_proj(l), l) for l in self.layers}

    def out_proj(self, layer: int):
        return self.blocks[layer].mlp.down_proj

    def out_proj_spot(self, layer: int) -> Spot:
        return self.blocks[layer].mlp, "down_proj"

    def block_spot(self, layer: int) -> Spot:
        return self.blocks, layer

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    @property
    def d_in(self) -> int:
        return self.out_proj(self.layers[0]).weight.shape[1]

    def read_weight(self, layer: int) -> mx.array:
        """The live weight as stored (d_out, d_in), in the model's dtype."""
        return self.out_proj(layer).weight

    def add_update(self, layer: int, A: torch.Tensor, B: torch.Tensor) -> None:
        """live += A Bᵀ, in the layer's dtype."""
        self.weights[layer].add(A, B)

    @property
    def final_norm(self):
        return self.model.model.norm

    def head(self, normed: mx.array) -> mx.array:
        if "lm_head" in self.model:
            return self.model.lm_head(normed)
        return self.model.model.embed_tokens.as_linear(normed)

    def measure(self, batch: PromptBatch, layer: int, target_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return keys.measure(self, batch, layer, target_layer)

    def optimize_targets(self, batch: PromptBatch, layer: int, cfg: EditConfig) -> Targets:
        return values.optimize_targets(self, batch, layer, cfg)

    def compute_moments(self, tokenizer, texts: Iterable[str], max_tokens: int,
                        progress: Callable[[int, int], None] | None = None) -> dict[int, torch.Tensor]:
        return covariance.compute_moments(self, tokenizer, texts, max_tokens, progress)

    def fingerprint(self) -> str:
        """ModelAdapter's fingerprint, from the same bytes: one store serves both backends."""
        weights = (block.mlp.down_proj.weight.reshape(-1) for block in self.blocks)
        return fingerprint(self.model_type, self.config, weights, lambda w: np.array(w.view(mx.uint8)).tobytes())
