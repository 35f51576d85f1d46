"""What the probes read from a model, torch or MLX: next-token scores and greedy continuations."""
from typing import Callable

import torch
import torch.nn.functional as F

from ..model.adapter import cache_of, with_cache
from ..model.backend import is_mlx


@torch.no_grad()
def next_token_scores(model, ids: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(next token) and the greedy prediction at every position but the last, (B, T-1) each, on the CPU.
    Rows are right-padded."""
    if is_mlx(model):
        from ..model.mlx.probes import next_token_scores as mlx_scores
        return mlx_scores(model, ids)
    device = model.get_input_embeddings().weight.device
    logits = model(input_ids=ids.to(device), attention_mask=None if mask is None else mask.to(device),
                   use_cache=False).logits[:, :-1].float()
    logp = F.log_softmax(logits, -1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
    return logp.cpu(), logits.argmax(-1).cpu()


Done = Callable[[torch.Tensor], torch.Tensor]    # new tokens so far (B, t) -> (B,) rows that may stop


def _shared_start(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts (B, T) as (their common first tokens (c,), the rest of each (B, S) left-padded with 0,
    its mask). Every row keeps at least one token of its own."""
    lengths = mask.sum(1)
    starts = ids.shape[1] - lengths                   # where each prompt begins
    aligned = ids.gather(1, starts.unsqueeze(1) + torch.arange(int(lengths.min()) - 1))
    c = int((aligned == aligned[:1]).all(0).cumprod(0).sum())
    rest_lengths = lengths - c
    S = int(rest_lengths.max())
    rest, rest_mask = torch.zeros(len(ids), S, dtype=ids.dtype), torch.zeros(len(ids), S, dtype=mask.dtype)
    for i, (s, n) in enumerate(zip(starts.tolist(), rest_lengths.tolist())):
        rest[i, S - n:], rest_mask[i, S - n:] = ids[i, s + c:], 1
    return aligned[0, :c], rest, rest_mask


@torch.no_grad()
def _greedy(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos: torch.Tensor, pad: int,
            done: Done | None) -> torch.Tensor:
    """Greedy new tokens (B, <= max_new_tokens) of left-padded prompts, what transformers' generate returns, at
    less cost: the prompts' common beginning (a chat template's system turn) runs once for the whole batch, and
    a row that has ended (end of sequence, or `done`) leaves the batch instead of decoding padding."""
    if max_new_tokens == 0:
        return torch.full((len(ids), 0), pad)
    device = model.get_input_embeddings().weight.device
    shared, rest, rest_mask = _shared_start(ids, mask)
    c, B = len(shared), len(ids)
    cache = None
    if c:
        cache = cache_of(model(input_ids=shared[None].to(device), use_cache=True, logits_to_keep=1))
        cache.batch_repeat_interleave(B)
    seen = torch.cat([torch.ones(B, c, dtype=mask.dtype), rest_mask], 1)
    position = (c + rest_mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=rest.to(device), attention_mask=seen.to(device), position_ids=position.to(device),
                use_cache=True, logits_to_keep=1, **with_cache(model, cache))
    cache = cache_of(out)
    new, live, following = torch.full((B, max_new_tokens), pad), torch.arange(B), position[:, -1] + 1
    for t in range(max_new_tokens):
        chosen = out.logits[:, -1].argmax(-1).cpu()
        new[live, t] = chosen
        ended = torch.isin(chosen, eos)
        if done is not None:
            ended |= done(new[:, : t + 1])[live].to(torch.bool)
        if bool(ended.all()) or t + 1 == max_new_tokens:
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep.to(device))
            live, chosen, seen, following = live[keep], chosen[keep], seen[keep], following[keep]
        seen = torch.cat([seen, torch.ones(len(live), 1, dtype=seen.dtype)], 1)
        out = model(input_ids=chosen[:, None].to(device), attention_mask=seen.to(device),
                    position_ids=following[:, None].to(device), use_cache=True, logits_to_keep=1,
                    **with_cache(model, cache))
        following = following + 1
    return new[:, : t + 1]


@torch.no_grad()
def continuations(model, tokenizer, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                  done: Done | None = None) -> torch.Tensor:
    """Greedy new tokens after left-padded prompts, the pad token after each row's end of sequence or once
    `done` says the row has said enough."""
    eos = _end_tokens(model, tokenizer)
    if is_mlx(model):
        from ..model.mlx.probes import greedy
        return greedy(model, ids, mask, max_new_tokens, eos, tokenizer.pad_token_id, done)
    return _greedy(model, ids, mask, max_new_tokens, eos, tokenizer.pad_token_id, done)


def _end_tokens(model, tokenizer) -> torch.Tensor:
    """The tokenizer's end of sequence and the model's (Llama 3 ends a chat turn with <|eot_id|>), as generate
    stops on either."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return torch.tensor([t for t in {tokenizer.eos_token_id, *configured} if t is not None])
