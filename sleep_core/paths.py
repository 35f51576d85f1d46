"""Where Sleeping LLM keeps its files.

Derived data that can be rebuilt (the converted default model, the text corpus, covariance
statistics) lives in the cache directory; what the model learned (the memory store) lives in the
data directory, which nothing ever deletes on its own.

| function | default | override |
|---|---|---|
| `cache_dir()` | `$XDG_CACHE_HOME/sleeping-llm`, else `~/.cache/sleeping-llm` | `$SLEEPING_LLM_CACHE` |
| `default_model_dir()` | `cache_dir()/models/SmolLM2-135M-Instruct` | `$SLEEPING_LLM_MODEL` |
| `corpus_dir()` | `cache_dir()/corpus` | |
| `covariance_dir()` | `cache_dir()/covariance` | |
| `default_store_dir()` | `$XDG_DATA_HOME/sleeping-llm`, else `~/.local/share/sleeping-llm` | `$SLEEPING_LLM_HOME` |
| `data_dir()` | the fact sets shipped in the package (read-only; see its ATTRIBUTION.md) | |
"""

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _xdg(name: str, fallback: str) -> Path:
    return _env_path(name) or Path.home() / fallback


def cache_dir() -> Path:
    return _env_path("SLEEPING_LLM_CACHE") or _xdg("XDG_CACHE_HOME", ".cache") / "sleeping-llm"


def default_model_dir() -> Path:
    """The default model's Hugging Face folder (converted once from the bundled GGUF)."""
    return _env_path("SLEEPING_LLM_MODEL") or cache_dir() / "models" / DEFAULT_MODEL_NAME


def corpus_dir() -> Path:
    return cache_dir() / "corpus"


def covariance_dir() -> Path:
    return cache_dir() / "covariance"


def default_store_dir() -> Path:
    """The memory store: facts, edits and sleep reports of every model."""
    return _env_path("SLEEPING_LLM_HOME") or _xdg("XDG_DATA_HOME", ".local/share") / "sleeping-llm"


def data_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a kill leaves the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
