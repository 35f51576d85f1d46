"""Perplexity on held-out text: the measure that an edit left the model as smart as before."""
import math

import torch

from .forward import next_token_scores


def perplexity(model, tokenizer, text: str, max_tokens: int = 4096, width: int = 512) -> float:
    """exp(mean NLL) over the first `max_tokens` tokens, in independent windows of `width`."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, width):
        window = torch.tensor([ids[start: start + width]])
        if window.shape[1] < 2:
            break
        nll -= next_token_scores(model, window)[0].sum().item()
        count += window.shape[1] - 1
    return math.exp(nll / max(count, 1))
