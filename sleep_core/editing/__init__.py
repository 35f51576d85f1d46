"""The editing math: keys, target values, covariance, null space, the solve, MEMIT's layer loop."""
from .covariance import SecondMoment, cached_moments, compute_moments
from .hparams import MODES, EditConfig
from .memit import compute_edits
from .prompts import build_batch, chat_prompt
from .solve import LayerPrior, make_prior, solve

__all__ = ["EditConfig", "MODES", "compute_edits", "LayerPrior", "make_prior", "solve",
           "SecondMoment", "compute_moments", "cached_moments", "build_batch", "chat_prompt"]
