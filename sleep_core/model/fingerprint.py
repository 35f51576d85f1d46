"""A model's identity for its memory: shape-defining config and a sample of every MLP output weight, hashed the
same way whichever backend loaded the weights, so one store serves torch and MLX alike."""
import hashlib
import json
from typing import Callable, Iterable

SHAPE = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "n_embd")
SAMPLE = 4096


def fingerprint(model_type: str, config, weights: Iterable, to_bytes: Callable[[object], bytes]) -> str:
    """`weights`: each layer's MLP output weight as stored, flattened; `to_bytes`: a slice of one as raw bytes.

    The folder name is left out, so the same weights loaded from another folder (a copy, a moved download)
    find their memory and their cached statistics."""
    h = hashlib.sha256()
    h.update(json.dumps({k: getattr(config, k, None) for k in SHAPE}, sort_keys=True).encode())
    for w in weights:       # the first values, then an even stride over all of them
        h.update(to_bytes(w[:SAMPLE]))
        h.update(to_bytes(w[:: max(1, w.shape[0] // SAMPLE)]))
    return f"{model_type}-{h.hexdigest()[:16]}"
