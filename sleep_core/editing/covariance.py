"""Second moment C = E[k kᵀ] of keys over general text, per edited layer (MEMIT eq. 14's C0)."""
import logging
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file

from ..model.adapter import ModelAdapter
from ..model.backend import Adapter
from ..model.trace import capture, run_until_stop

log = logging.getLogger(__name__)


class SecondMoment:
    """Running uncentred second moment of keys."""

    def __init__(self, dim: int):
        self.sum = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def add(self, keys: torch.Tensor) -> None:
        k = keys.float()
        self.sum += (k.T @ k).double()      # a window's sum in float32 (fast); the running total in float64
        self.count += k.shape[0]

    def moment(self) -> torch.Tensor:
        return (self.sum / max(self.count, 1)).float()


def token_windows(tokenizer, texts: Iterable[str], max_tokens: int, width: int) -> Iterable[torch.Tensor]:
    """Token windows of `width` from the texts, up to `max_tokens` in all."""
    taken = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), width):
            window = ids[start: start + width]
            if len(window) < 16 or taken >= max_tokens:
                continue
            window = window[: max_tokens - taken]
            taken += len(window)
            yield torch.tensor([window])
        if taken >= max_tokens:
            return


@torch.no_grad()
def compute_moments(adapter: ModelAdapter, tokenizer, texts: Iterable[str], max_tokens: int,
                    progress: Callable[[int, int], None] | None = None, width: int = 256
                    ) -> dict[int, torch.Tensor]:
    """One pass over the text collecting every edited layer's keys at every token."""
    stats = {l: SecondMoment(adapter.d_in) for l in adapter.layers}
    seen_tokens = 0
    for ids in token_windows(tokenizer, texts, max_tokens, width):
        with capture(inputs={l: adapter.out_proj(l) for l in adapter.layers},
                     stop_after=adapter.out_proj(max(adapter.layers))) as seen:
            run_until_stop(adapter.model, input_ids=ids.to(adapter.input_device()))
        for l in adapter.layers:  # position 0 is the attention sink: huge, never edited, it would swamp C
            stats[l].add(seen[l][0, 1:].float().cpu())
        seen_tokens += ids.shape[1]
        if progress:
            progress(seen_tokens, max_tokens)
    return {l: s.moment() for l, s in stats.items()}


def cached_moments(adapter: Adapter, tokenizer, texts: Callable[[], Iterable[str]], max_tokens: int,
                   folder: Path, progress: Callable[[int, int], None] | None = None) -> dict[int, torch.Tensor]:
    """Moments cached in `folder` (one per model fingerprint) by layer and token count, computed when missing."""
    paths = {l: folder / f"layer{l}-{max_tokens}.safetensors" for l in adapter.layers}
    if all(p.exists() for p in paths.values()):
        return {l: load_file(p)["moment"] for l, p in paths.items()}
    log.info("computing key covariance over %d tokens for layers %s", max_tokens, adapter.layers)
    moments = adapter.compute_moments(tokenizer, texts(), max_tokens, progress)
    folder.mkdir(parents=True, exist_ok=True)
    for l, moment in moments.items():
        tmp = paths[l].with_suffix(".tmp")
        save_file({"moment": moment.contiguous()}, str(tmp))
        tmp.replace(paths[l])
    return moments
