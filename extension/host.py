"""The adapter to text-generation-webui's `modules.shared`: its model, its lock, its modes and folders."""

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from modules import shared

from .holder import LoadedModel, MemoryHolder

EDITABLE_LOADER = "Transformers"
LOCK_TIMEOUT_S = 300.0
STORE_FOLDER = "sleeping_llm"
HOST_LOGGER = "textgen"  # modules.logging_colors configures it


def editable_model() -> LoadedModel:
    """The host's model as a plain HF model, or None with a notice when its weights cannot be edited."""
    name, loader = shared.model_name, getattr(shared.args, "loader", None)
    if shared.model is None or name == "None":
        return LoadedModel(None, None, name, "No model is loaded.")
    if loader != EDITABLE_LOADER:
        return LoadedModel(None, None, name, (
            f"{name} runs on the {loader} loader, whose weights cannot be edited: the chat works, "
            f"but nothing is learned. Load the model with the {EDITABLE_LOADER} loader to use the memory."))
    model = shared.model
    if hasattr(model, "get_base_model"):  # a PEFT model while a LoRA is applied
        model = model.get_base_model()
    return LoadedModel(model, shared.tokenizer, name)


@contextmanager
def weight_lock(timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the host's generation lock and outlive any streaming thread; TimeoutError means busy.

    Never enter this inside a hook that runs under the lock: the lock is not reentrant.
    """
    if not shared.generation_lock.acquire(timeout=timeout):
        raise TimeoutError(f"the model is busy generating (waited {timeout:.0f} s)")
    try:
        _join_streaming_threads(time.monotonic() + timeout)
        yield
    finally:
        shared.generation_lock.release()


def _join_streaming_threads(deadline: float) -> None:
    # A stopped stream releases the lock before its thread's last forward step ends.
    for thread in threading.enumerate():
        if thread.name.endswith("(gentask)") and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise TimeoutError("a streaming reply is still running")


def multi_user() -> bool:
    return bool(getattr(shared.args, "multi_user", False))


_holder: MemoryHolder | None = None


def holder(settings: dict) -> MemoryHolder:
    """The process-wide holder over the host's model, with the calling script's settings.

    The host may re-execute script.py as a fresh module; this module is imported once, so the
    open memory survives that.
    """
    global _holder
    if _holder is None:
        _holder = MemoryHolder(editable_model, settings, shared.user_data_dir / STORE_FOLDER, weight_lock, multi_user)
        _holder.watch()
    _holder.settings = settings
    return _holder


def show_logs() -> None:
    """Print the core's and the extension's log lines in the host's console, as the host's own."""
    handlers = logging.getLogger(HOST_LOGGER).handlers
    for name in ("sleep_core", __name__.rpartition(".")[0]) if handlers else ():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = list(handlers), False
        logger.setLevel(logging.INFO)


def stop_requested(state: dict) -> bool:
    """True when the user pressed Stop or the API client went away during this turn."""
    stop_event = state.get("stop_event")
    return bool(shared.stop_everything or (stop_event is not None and stop_event.is_set()))


def on_page_load(fn, outputs: list) -> None:
    """Run fn when the host's web page loads (to show the current memory)."""
    interface = shared.gradio.get("interface")
    if interface is not None:
        interface.load(fn, None, outputs)
