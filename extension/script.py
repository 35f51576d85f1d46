"""Sleeping LLM: text-generation-webui hooks that teach the model what you tell it, in its weights.

The user's message is read in `chat_input_modifier` and learned in `output_modifier` once the reply
is complete; the core injects it off the critical path. The host imports this file alone (as
`user_ext_sleeping_llm`, with no parent package) and may re-execute it, so the rest of this folder
is imported once as a package, where the open memory lives.
"""

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

PACKAGE_NAME = "sleeping_llm_extension"
PENDING = "sleeping_llm_pending"  # state key carrying this turn's user message to output_modifier
HOST_LOGGER = "textgen"  # the host's console logger, to reach the user before the core is found


def _package() -> str:
    """The name under which this folder is importable as a package, importing it if needed."""
    if __package__:
        return __package__
    if PACKAGE_NAME not in sys.modules:
        here = Path(__file__).resolve().parent
        spec = importlib.util.spec_from_file_location(
            PACKAGE_NAME, here / "__init__.py", submodule_search_locations=[str(here)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE_NAME] = package
        spec.loader.exec_module(package)
    return PACKAGE_NAME


_PKG = _package()
log = logging.getLogger(f"{_PKG}.script")
settings = importlib.import_module(f"{_PKG}.settings")

params = {"display_name": "Sleeping LLM", "is_tab": True, **settings.DEFAULTS}

try:
    host = importlib.import_module(f"{_PKG}.host")
    MISSING = ""
except ImportError as error:  # a ModuleNotFoundError escaping here would stop the whole server
    host = None
    MISSING = (f"Sleeping LLM is off: {error}. Install the core into this Python environment "
               "with `python install.py --webui PATH_TO_TEXTGEN` from the Sleeping LLM folder.")
    logging.getLogger(HOST_LOGGER).error(MISSING)


def setup() -> None:
    """Open the memory of the model loaded at start, so its first reply already knows what it learned."""
    if host is not None:
        host.show_logs()
        _safely(host.holder(params).memory)


def chat_input_modifier(text, visible_text, state):
    """Keep the user's message for output_modifier, if this source may teach the model."""
    if host is not None:
        source = "chat" if state.get("unique_id") else "api"  # API requests carry no unique_id
        holder = host.holder(params)
        _safely(holder.memory)  # a newly loaded model gets its stored memory before it answers
        if holder.refusal(source) is None:
            new_chat = not state.get("history", {}).get("internal")    # no earlier turn: "he" is nobody yet
            state[PENDING] = (text, source, new_chat)
    return text, visible_text


def output_modifier(string, state, is_chat=False):
    """Learn the kept user message once the reply is complete; the reply (string, HTML-escaped) is
    returned as it came and never learned as fact."""
    if host is not None and not is_chat:  # Notebook and /v1/completions: here the lock is held
        _safely(host.holder(params).open_in_background)
    pending = state.pop(PENDING, None) if is_chat else None
    if pending and not host.stop_requested(state):
        _safely(host.holder(params).learn, *pending)
    return string


def ui() -> None:
    """The memory tab: stored facts, sleep and nap, drowsiness, plots, import and export."""
    import gradio as gr

    if host is None:
        gr.Markdown(MISSING)
        return
    tab = importlib.import_module(f"{_PKG}.tab")
    view = tab.build(host.holder(params), show_multi_user=host.multi_user())
    host.on_page_load(view.refresh, view.outputs)


def _safely(fn, *args) -> None:
    """Call fn, logging instead of raising: a memory problem must never break the user's chat."""
    try:
        fn(*args)
    except Exception:
        log.exception("Sleeping LLM: %s failed", getattr(fn, "__name__", fn))
