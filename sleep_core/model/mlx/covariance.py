"""Second moment of each edited layer's keys over general text, on an mlx-lm model (editing/covariance.py).

The same token windows as the torch backend, so either may read the statistics the other cached."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import mlx.core as mx
import torch

from ...editing.covariance import SecondMoment, token_windows
from .capture import capture
from .convert import to_mx, to_torch

if TYPE_CHECKING:
    from .adapter import MlxAdapter


def compute_moments(adapter: MlxAdapter, tokenizer, texts: Iterable[str], max_tokens: int,
                    progress: Callable[[int, int], None] | None = None, width: int = 256) -> dict[int, torch.Tensor]:
    """One pass over the text collecting every edited layer's keys at every token but the attention sink."""
    stats = {l: SecondMoment(adapter.d_in) for l in adapter.layers}
    seen_tokens = 0
    for ids in token_windows(tokenizer, texts, max_tokens, width):
        with capture(inputs={l: adapter.out_proj_spot(l) for l in adapter.layers}) as seen:
            adapter.model(to_mx(ids))
        mx.eval(seen)       # together: one at a time would run the lower layers again for each
        for l in adapter.layers:
            stats[l].add(to_torch(seen[l][0, 1:]))
        seen_tokens += ids.shape[1]
        if progress:
            progress(seen_tokens, max_tokens)
    return {l: s.moment() for l, s in stats.items()}
