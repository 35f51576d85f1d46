"""What the probes read from a model, torch or MLX: next-token scores and greedy continuations."""
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria, StoppingCriteriaList

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


class _StopWhen(StoppingCriteria):
    def __init__(self, done: Done, prompt_length: int):
        self.done, self.prompt_length = done, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return self.done(input_ids[:, self.prompt_length:].cpu()).to(input_ids.device)


@torch.no_grad()
def continuations(model, tokenizer, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                  done: Done | None = None) -> torch.Tensor:
    """Greedy new tokens after left-padded prompts, the pad token after each row's end of sequence or once
    `done` says the row has said enough."""
    if is_mlx(model):
        from ..model.mlx.probes import greedy
        return greedy(model, ids, mask, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, done)
    device = model.get_input_embeddings().weight.device
    stop = StoppingCriteriaList([_StopWhen(done, ids.shape[1])] if done else [])
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, stopping_criteria=stop)
    return out[:, ids.shape[1]:]
