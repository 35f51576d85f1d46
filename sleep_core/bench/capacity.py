"""`capacity`: raw recall of every fact so far as facts are injected one at a time without sleep, per edit mode."""
import logging
from pathlib import Path

from ..editing.hparams import MODES, EditConfig
from ..eval import raw_recall
from .common import (bench_config, edit_settings, emit, line_plot, load_model, model_name, open_memory, parser,
                     peak_rss_mb, progress_bar, seed_pool, setup)

log = logging.getLogger(__name__)

GRID = (1, 2, 5, 10, 14, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500)
HOLDS = 0.9      # a mode "holds" n facts while their raw recall stays at or above this


def checkpoints(n: int) -> list[int]:
    """Where recall is measured: a rough log grid (with the reference's crash point, 14) and n itself."""
    return [c for c in GRID if c < n] + [n]


def run_mode(model, tokenizer, facts, mode: str, store: Path, edit: EditConfig | None) -> list[dict]:
    memory = open_memory(model, tokenizer, bench_config(store / mode, mode, edit))
    marks, curve = set(checkpoints(len(facts))), []
    try:
        for i, fact in enumerate(progress_bar(len(facts), mode, "fact", iterable=facts), 1):
            memory.inject_now([fact])
            if i in marks:
                curve.append({"facts": i, "recall_raw": sum(raw_recall(model, tokenizer, facts[:i])) / i})
                log.info("%s: %s", mode, curve[-1])
    finally:
        memory.close(restore_weights=True)
    return curve


def holds(curve: list[dict]) -> int:
    """The most facts a mode held (recall >= HOLDS at that checkpoint and every earlier one)."""
    held = 0
    for point in curve:
        if point["recall_raw"] < HOLDS:
            break
        held = point["facts"]
    return held


def capacity(model, tokenizer, facts, store: Path, modes=MODES, edit: EditConfig | None = None) -> dict:
    curve = {mode: run_mode(model, tokenizer, facts, mode, store, edit) for mode in modes}
    return {"benchmark": "capacity", "facts": len(facts), "curve": curve,
            "holds": {mode: holds(points) for mode, points in curve.items()}, "holds_threshold": HOLDS}


def plot(result: dict, target) -> None:
    series = {m: ([p["facts"] for p in c], [p["recall_raw"] for p in c]) for m, c in result["curve"].items()}
    line_plot(target, series, "facts injected (no sleep)", "raw recall of all facts so far",
              f"Capacity without sleep, {result['model']}")


def main(argv: list[str]) -> int:
    p = parser("capacity", __doc__)
    p.add_argument("--facts", type=int, default=100)
    p.add_argument("--modes", default="seed,unconstrained,constrained", help=f"comma-separated, of {MODES}")
    args = p.parse_args(argv)
    store = setup(args)
    model, tokenizer = load_model(args.model, device=args.device)
    result = capacity(model, tokenizer, seed_pool(args.facts, args.seed), store, args.modes.split(","),
                      edit_settings(args))
    emit({**result, "model": model_name(model), "seed": args.seed, "peak_rss_mb": peak_rss_mb()}, args, plot)
    return 0
