"""What a user sets: where memories live, which layers are edited, how wake and sleep behave."""
from dataclasses import dataclass, field
from pathlib import Path

from .editing.hparams import EditConfig
from .model.weights import QUANTIZED_EDITS
from .paths import default_store_dir


@dataclass
class MemoryConfig:
    store_dir: Path = field(default_factory=default_store_dir)
    layers: tuple[int, ...] | None = None        # None: the architecture's default
    mode: str = "constrained"                    # wake edits: constrained (AlphaEdit) or unconstrained (MEMIT)
    quantized_edits: str = "side_branch"         # bitsandbytes layers: a side branch x B Aᵀ, or requantize
    learn: bool = True
    # the loaded model is also asked for JSON triples (LLMExtractor) beside the patterns: slow on a CPU and, with
    # a model as small as the default, mostly refused by the grounding checks (README, "The model as extractor")
    model_extraction: bool = False
    auto_sleep: bool = True
    drowsiness_threshold: float = 1.0
    wake_capacity: int = 50                      # wake edits the model holds well without sleep (measured)
    ppl_tokens: int = 4096                       # held-out tokens for sleep's perplexity check
    ppl_tolerance: float = 0.01                  # a sleep may cost at most this relative perplexity
    consolidate: bool = True                     # sleep re-solves all facts jointly before refreshing
    # instead, sleep learns every fact again from the pristine weights (targets optimised anew, 100 a solve): on 100
    # CounterFact edits, perplexity drift +3.9 % against +6.1 % for the stream, but a wake edit's time per fact
    replay: bool = False
    # sleep runs off the chat path, so a degraded fact's new target is pushed further than a wake edit's:
    # a target that barely reaches p = 0.9 on the editing prompts often misses in other contexts
    refresh_stop_prob: float = 0.98
    refresh_step_factor: float = 1.6             # and may take this many times the wake's Adam steps
    refresh_clamp: float = 1.0                   # |delta| <= this * |h| (wake: EditConfig.clamp_norm)
    refresh_rounds: int = 2                      # facts a refresh tipped over are refreshed once more
    max_facts: int | None = None                 # after a sleep, the oldest unpinned facts beyond this are dropped
    edit: EditConfig = field(default_factory=EditConfig)

    def __post_init__(self):
        self.store_dir = Path(self.store_dir)
        self.edit.mode = self.mode
        if self.quantized_edits not in QUANTIZED_EDITS:
            raise ValueError(f"quantized_edits must be one of {QUANTIZED_EDITS}, not {self.quantized_edits!r}")
        if self.max_facts is not None and self.max_facts < 0:
            raise ValueError("max_facts must be at least 0 (or None for no cap)")
        if not 0 < self.refresh_stop_prob < 1 or self.refresh_rounds < 1 or self.refresh_step_factor <= 0:
            raise ValueError("refresh_stop_prob must lie in (0, 1), refresh_rounds be at least 1 and "
                             "refresh_step_factor be positive")
        if self.drowsiness_threshold <= 0 or self.wake_capacity <= 0:
            raise ValueError("drowsiness_threshold and wake_capacity must be positive")
