"""Hyper-parameters of an edit, scaled to the model at hand rather than copied from 8B settings."""
from dataclasses import dataclass

MODES = ("constrained", "unconstrained", "seed")


@dataclass
class EditConfig:
    mode: str = "constrained"          # constrained = AlphaEdit null space; unconstrained = MEMIT; seed = reference
    # target values (MEMIT section 4.2, eq. 16)
    v_steps: int = 25
    v_step: float = 0.4                # Adam step as a fraction of the residual norm (lr = v_step*|h|/sqrt(d))
    v_stop_prob: float = 0.9           # stop once the object's per-token probability reaches this
    v_stop_token_prob: float = 0.8     # and each of its tokens this, on every rewriting prompt (see values.py)
    kl_factor: float = 0.0625
    v_weight_decay: float = 0.5
    clamp_norm: float = 0.75           # |delta| <= clamp_norm * |h|
    # each step adds to each prompt's delta a random orthogonal direction this share of |delta| long: the write
    # lands delta plus ~0.28 |delta| off it, which tips facts under unseen lead-ins; 0.3 raised 50-fact raw recall
    # 0.86 -> 0.91 and conversational chat recall, for 1.26x the time per fact (README, "Wake"); 0 turns it off
    v_jitter: float = 0.3
    # contexts before each raw prompt (ROME eq. 3 averages keys over contexts); five instead of three raise raw
    # recall under unseen lead-ins but cost 1.25x the time and chat answers (README, "Wake")
    prefixes: tuple[str, ...] = ("", "Here is what I know. ", "Remember this: ")
    key_chat_share: float | None = None  # the chat questions' share of a key's mean (None: each prompt alike)
    shared_key_chat_share: float | None = None  # the same for facts whose subject carries others (None: as above)
    # a fact with raw prompts and chat questions gets a key for each; conversational set 0.67 -> 0.87 (README)
    split_keys: bool = True
    v_bf16: bool | None = None         # Adam steps in bfloat16; None: where the CPU has bfloat16 instructions
    chat_questions: int = 2            # chat-template questions per fact used as rewriting prompts
    # the solve (MEMIT eq. 14; AlphaEdit eq. 12)
    lambda_rel: float = 1.0            # covariance weight, times d_in: about half the layer's share per layer
    null_energy: float = 1.0           # the null space: least-used directions holding this share of C's trace
    alpha_rel: float = 1e-2            # AlphaEdit's ridge term, times the mean squared key norm
    preserve_rel: float = 1.0          # μ, the weight of the stored facts' keys against the new ones
    exact: bool = False                # write R exactly at the new keys (EMMET), least disturbance elsewhere
    cov_tokens: int = 100_000

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not 0 < self.v_stop_prob < 1 or not 0 <= self.v_stop_token_prob < 1:
            raise ValueError("v_stop_prob must lie in (0, 1) and v_stop_token_prob in [0, 1)")

    @property
    def seed(self) -> bool:
        return self.mode == "seed"
