"""What the recall probes and perplexity read from an mlx-lm model: next-token scores, greedy continuations."""
import mlx.core as mx
import numpy as np
import torch
from mlx_lm.models.cache import BatchKVCache

from .convert import to_mx, to_torch


def next_token_scores(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(next token) and the greedy prediction at each position but the last, (B, T-1) each. Rows are
    right-padded, which causal attention needs no mask for."""
    x = to_mx(ids)
    logits = model(x)[:, :-1].astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, x[:, 1:, None], axis=-1)[..., 0]
    best = mx.argmax(logits, axis=-1)
    mx.eval(picked, best)
    return to_torch(picked), torch.from_numpy(np.array(best).astype(np.int64))


def greedy(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos: torch.Tensor, pad: int,
           done=None) -> torch.Tensor:
    """Greedy continuations (B, ≤ max_new_tokens) of left-padded prompts, `pad` after each row's end (any of
    `eos`, or once `done`, see eval/forward.py, says it may stop), stopping once every row has ended: what
    transformers' generate returns."""
    cache = [BatchKVCache((mask == 0).sum(1).tolist()) for _ in model.layers]
    tokens, ended, out = to_mx(ids), np.zeros(len(ids), dtype=bool), []
    for _ in range(max_new_tokens):
        chosen = np.where(ended, pad, np.array(mx.argmax(model(tokens, cache=cache)[:, -1], axis=-1)))
        out.append(chosen)
        ended |= np.isin(chosen, eos.numpy())
        if done is not None:
            ended |= done(torch.from_numpy(np.stack(out, 1).astype(np.int64))).numpy()
        if ended.all():
            break
        tokens = mx.array(chosen)[:, None]
    return torch.from_numpy(np.stack(out, 1).astype(np.int64))
