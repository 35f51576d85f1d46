"""Perplexity on held-out text: the measure that an edit left the model as smart as before."""
import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model, tokenizer, text: str, max_tokens: int = 4096, width: int = 512) -> float:
    """exp(mean NLL) over the first `max_tokens` tokens, in independent windows of `width`."""
    device = model.get_input_embeddings().weight.device
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, width):
        window = torch.tensor([ids[start: start + width]], device=device)
        if window.shape[1] < 2:
            break
        logits = model(input_ids=window, use_cache=False).logits.float()
        nll += F.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return math.exp(nll / max(count, 1))
