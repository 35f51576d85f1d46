"""One open Memory for whatever model the host has loaded, re-opened when the model changes."""

import logging
import threading
import weakref
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sleep_core import LearnResult, Memory, StoreError, UnsupportedModelError

from .settings import fact_cap, learning_refusal, memory_config, parse_layers

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class LoadedModel:
    """What is loaded now; model is None when nothing editable is (notice says why)."""

    model: object | None
    tokenizer: object | None
    name: str
    notice: str = ""


class MemoryHolder:
    """The Memory of the loaded model, opened lazily: hosts replace their model without any event."""

    def __init__(self, loaded: Callable[[], LoadedModel], settings: dict, store_dir: Path,
                 weight_lock: Callable[[], AbstractContextManager],
                 multi_user: Callable[[], bool] = lambda: False):
        self._loaded = loaded
        self.settings = settings
        self.store_dir = Path(store_dir)
        self.weight_lock = weight_lock
        self._multi_user = multi_user
        self._memory: Memory | None = None
        self._opened_for: Callable[[], object] | None = None  # a weak reference to the model last seen
        self._notice = ""
        self._opening = threading.Lock()
        self._closed = threading.Event()

    def memory(self) -> Memory | None:
        """The Memory of the current model, opened first if the model changed.

        Opening re-applies the stored memory (a weight change), so never call this while holding
        the generation lock; use `current()` there. Edited layers and edit mode are read when a
        model's memory opens; the other settings apply at once.
        """
        loaded = self._loaded()
        with self._opening:
            if self._opened_for is None or self._opened_for() is not loaded.model:
                self._reopen(loaded)
            if self._memory is not None:
                _apply_live_settings(self._memory.config, self.settings)
            return self._memory

    def open_in_background(self) -> None:
        """If the model changed, open its memory from a worker thread: for callers that hold the
        generation lock, where opening (a weight change) would deadlock."""
        if self._opened_for is None or self._opened_for() is not self._loaded().model:
            threading.Thread(target=self.memory, name="sleeping-llm-open", daemon=True).start()

    def current(self) -> Memory | None:
        """The Memory opened last, without looking for a new model: safe under the generation lock."""
        return self._memory

    def notice(self) -> str:
        """Why learning or editing is off right now, or ''."""
        refusal = learning_refusal(self.settings, "chat", self._multi_user())
        return "\n\n".join(filter(None, (self._notice, refusal, self._pending_structure())))

    def _pending_structure(self) -> str:
        config = self._memory.config if self._memory is not None else None
        if config is None or (config.mode, config.layers) == (self.settings["mode"], _layers(self.settings)):
            return ""
        return "The edited layers and the edit mode you chose apply when a model is next loaded."

    def refusal(self, source: str) -> str | None:
        return learning_refusal(self.settings, source, self._multi_user())

    def learn(self, text: str, source: str, new_chat: bool = False) -> LearnResult | None:
        """Teach the model one user message if policy allows; None when it may not."""
        if self.refusal(source) is not None:
            return None
        memory = self.memory()
        return memory.learn(text, source=source, new_chat=new_chat) if memory is not None else None

    def watch(self, interval: float = 1.0) -> None:
        """Close the memory within `interval` seconds of the host dropping its model: the memory holds the model
        and the edited layers' pristine copies, which would otherwise sit in GPU memory while the next model
        loads. The next turn opens the new model's memory as usual."""
        def run() -> None:
            while not self._closed.wait(interval):
                with self._opening:
                    if self._memory is not None and self._opened_for() is not self._loaded().model:
                        log.info("Sleeping LLM: the model was unloaded; its memory is closed")
                        self._close()
                        self._opened_for = None
        threading.Thread(target=run, name="sleeping-llm-watch", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with self._opening:
            self._close()

    def _reopen(self, loaded: LoadedModel) -> None:
        self._close()
        self._notice = loaded.notice
        if loaded.model is None:
            self._opened_for = lambda: None
            return
        self._opened_for = weakref.ref(loaded.model)
        try:
            config = memory_config(self.settings, self.store_dir)
            self._memory = Memory.open(loaded.model, loaded.tokenizer, config, weight_lock=self.weight_lock)
            log.info("Sleeping LLM: memory open for %s (%s)", loaded.name, self.store_dir)
        except TimeoutError as error:
            self._opened_for, self._notice = None, f"Busy, the memory will open after the current reply: {error}"
        except (UnsupportedModelError, StoreError, ValueError) as error:
            self._notice = f"The memory is off for {loaded.name}: {error}"
        except Exception as error:      # the chat goes on without a memory, and the tab says why
            log.exception("Sleeping LLM: opening the memory for %s failed", loaded.name)
            self._notice = f"The memory is off for {loaded.name}: {type(error).__name__}: {error}"

    def _close(self) -> None:
        # Only when the model goes: the weights keep its edits, and a Memory opened again on the same
        # model object would take them for pristine.
        if self._memory is not None:
            self._memory.close()
        self._memory = None


def _apply_live_settings(config, settings: dict) -> None:
    config.learn, config.auto_sleep = bool(settings["learn"]), bool(settings["auto_sleep"])
    config.replay, config.model_extraction = bool(settings["replay"]), bool(settings["model_extraction"])
    if float(settings["drowsiness_threshold"]) > 0:
        config.drowsiness_threshold = float(settings["drowsiness_threshold"])
    config.max_facts = fact_cap(settings)


def _layers(settings: dict) -> tuple[int, ...] | None:
    try:
        return parse_layers(settings["layers"])
    except ValueError:
        return None
