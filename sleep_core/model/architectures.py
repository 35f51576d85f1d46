"""Where each architecture keeps its decoder layers and MLP output projection: data, not code."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    layers: str                 # attribute path of the decoder layer list
    out_proj: str               # path of the MLP output projection inside one layer
    final_norm: str             # path of the norm before the LM head
    conv1d: bool = False        # GPT-2's Conv1D stores the weight as (in, out)
    # Fractions of depth: layers 3-8 of SmolLM2's 30 (MEMIT's 3-8 of GPT-J's 28; AlphaEdit's 4-8 of Llama3-8B's
    # 32). Measured here: a subject's key there is 2-5x more unusual to general text (kᵀC⁻¹k) than at 8-12,
    # and an update's disturbance of general text per unit written is 1/kᵀC⁻¹k (see editing/solve.py).
    default_span: tuple[float, float] = (0.10, 0.28)
    max_default_layers: int = 6

    def edited_layers(self, n_layers: int) -> tuple[int, ...]:
        """The default edited layers of a model with `n_layers` decoder layers: at most six, evenly spread."""
        first, last = (round(f * (n_layers - 1)) for f in self.default_span)
        count = min(self.max_default_layers, last - first + 1)
        return tuple(sorted({round(first + i * (last - first) / max(count - 1, 1)) for i in range(count)}))


_LLAMA_LIKE = Architecture("model.layers", "mlp.down_proj", "model.norm")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma3": Architecture("model.language_model.layers", "mlp.down_proj", "model.language_model.norm"),
    "gpt2": Architecture("transformer.h", "mlp.c_proj", "transformer.ln_f", conv1d=True),
}

# Mixtral and Qwen2-MoE are not aliases of their dense kin: their MLP is a set of experts behind a router, with no
# single output projection to edit
ALIASES = {"smollm": "llama", "smollm3": "llama"}


class UnsupportedModelError(ValueError):
    """The model cannot be edited; the message says why, in words a user can act on."""


def architecture_for(model_type: str) -> Architecture:
    name = ALIASES.get(model_type, model_type)
    if name not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"Sleeping LLM cannot edit architecture '{model_type}': supported are {supported}."
        )
    return ARCHITECTURES[name]
