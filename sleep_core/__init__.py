"""Sleeping LLM: facts from conversation written into a model's MLP weights, consolidated in sleep."""
from .config import MemoryConfig
from .cycle.sleep import Progress, SleepReport
from .editing.hparams import EditConfig
from .facade import LearnResult, Memory
from .memory.facts import Fact
from .memory.store import FactRecord, StoreError, WrongModelError
from .model.architectures import UnsupportedModelError

__all__ = ["Memory", "LearnResult", "MemoryConfig", "EditConfig", "Fact", "FactRecord", "Progress", "SleepReport",
           "StoreError", "WrongModelError", "UnsupportedModelError"]
