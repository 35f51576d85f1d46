"""Load a local Hugging Face folder with mlx-lm, with the RoPE settings it would otherwise miss."""
import json
from pathlib import Path

import mlx.core as mx
from mlx_lm import load as mlx_lm_load

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def rope_settings(config: dict) -> dict:
    """What transformers 5 nests in `rope_parameters`, at the top level where mlx-lm reads it.

    Without a top-level `rope_theta` mlx-lm silently uses 10,000, and SmolLM2 (100,000) answers wrongly."""
    nested = config.get("rope_parameters") or {}
    fixed = {}
    if "rope_theta" not in config and "rope_theta" in nested:
        fixed["rope_theta"] = nested["rope_theta"]
    if "rope_scaling" not in config and nested.get("rope_type", "default") != "default":
        fixed["rope_scaling"] = nested
    return fixed


def load(folder: str | Path, dtype: str | None = None):
    """(model, tokenizer) as `mlx_lm.load` returns them, from a local folder only (never the hub); `dtype`
    ('float32', 'bfloat16', 'float16') converts the weights, None keeps the folder's."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config = json.loads((folder / "config.json").read_text())
    model, tokenizer = mlx_lm_load(str(folder), model_config=rope_settings(config))
    if dtype is not None:
        model.set_dtype(DTYPES[dtype])
        mx.eval(model.parameters())
    return model, tokenizer
