"""The user's settings: their defaults, how they become a MemoryConfig, and who may teach the model."""

from pathlib import Path

DEFAULTS = {
    "learn": True,
    "learn_from_api": False,
    "model_extraction": False,
    "auto_sleep": True,
    "replay": False,
    "drowsiness_threshold": 1.0,
    "max_facts": 0,
    "layers": "",
    "mode": "constrained",
    "allow_multi_user": False,
}
MODES = ("constrained", "unconstrained")


def parse_layers(text: str) -> tuple[int, ...] | None:
    """'' -> None (the architecture's default); '8,9,10' or '8-10' -> (8, 9, 10)."""
    layers: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        first, _, last = part.partition("-")
        layers.extend(range(int(first), int(last or first) + 1))
    if any(layer < 0 for layer in layers):
        raise ValueError(f"layer numbers must not be negative: {text!r}")
    return tuple(sorted(set(layers))) or None


def memory_config(settings: dict, store_dir: Path):
    """The core's MemoryConfig for these settings (raises ValueError on a bad layer list or mode)."""
    from sleep_core import MemoryConfig

    if settings["mode"] not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {settings['mode']!r}")
    return MemoryConfig(
        store_dir=Path(store_dir),
        layers=parse_layers(settings["layers"]),
        mode=settings["mode"],
        auto_sleep=bool(settings["auto_sleep"]),
        replay=bool(settings["replay"]),
        drowsiness_threshold=float(settings["drowsiness_threshold"]),
        learn=bool(settings["learn"]),
        model_extraction=bool(settings["model_extraction"]),
        max_facts=fact_cap(settings),
    )


def fact_cap(settings: dict) -> int | None:
    """The 'keep at most' setting: 0 (or less) means no cap."""
    return int(settings["max_facts"]) if int(settings["max_facts"]) > 0 else None


def learning_refusal(settings: dict, source: str, multi_user: bool) -> str | None:
    """Why a message from source ('chat' or 'api') must not teach the model, or None when it may."""
    if not settings["learn"]:
        return "Learning from chat is turned off."
    if multi_user and not settings["allow_multi_user"]:
        return ("Multi-user mode: every user shares this model's weights, so learning is off "
                "unless the operator allows it in this tab.")
    if source == "api" and not settings["learn_from_api"]:
        return "API requests teach nothing unless 'learn from API requests' is on."
    return None
