"""`longevity`: many days of wake injections and one sleep each, with a cap on stored facts; no death spiral.

Over the cap (`MemoryConfig.max_facts`) each sleep drops the oldest unpinned facts from the weights and its report
lists them with the reason; nothing else ever leaves."""
import logging
from pathlib import Path

from ..editing.hparams import EditConfig
from ..eval import perplexity
from ..facade import Memory
from .common import (bench_config, edit_settings, emit, known_to, line_plot, load_model, model_name, open_memory,
                     parser, peak_rss_mb, progress_bar, seed_pool, setup, still_known)

log = logging.getLogger(__name__)


def live_day(memory: Memory, facts, day: int, known) -> tuple[dict, list[dict]]:
    """One day: inject the day's facts and sleep (which drops the oldest facts over the cap); the day's row and
    the facts dropped."""
    model, tokenizer = memory.adapter.model, memory.tokenizer
    memory.inject_now(facts)
    report = memory.sleep()
    recall = report.recall_after if report.committed else report.recall_before
    row = {"day": day, "stored": len(memory.active_records()), "recall_raw": recall,
           "recall_before_sleep": report.recall_before, "committed": report.committed, "sleep": report.reason,
           "ppl": report.ppl_after if report.committed else report.ppl_before,
           "specificity": still_known(model, tokenizer, known), "sleep_seconds": report.seconds}
    log.info("day %d: %s", day, row)
    return row, [{"day": day, **item} for item in report.dropped]


def longevity(model, tokenizer, facts, store: Path, days: int, per_day: int, cap: int,
              edit: EditConfig | None = None, **config) -> dict:
    """`per_day` of `facts` a day for `days` days; `config`: further MemoryConfig fields."""
    if len(facts) < days * per_day:
        raise ValueError(f"{days} days of {per_day} facts need {days * per_day} facts, got {len(facts)}")
    memory = open_memory(model, tokenizer, bench_config(store, "constrained", edit, max_facts=cap, **config))
    rows, dropped = [], []
    try:
        known = known_to(model, tokenizer)
        ppl_start = perplexity(model, tokenizer, memory.heldout_text(), memory.config.ppl_tokens)
        for day in progress_bar(days, "days", "day", iterable=range(1, days + 1)):
            row, gone = live_day(memory, facts[(day - 1) * per_day: day * per_day], day, known)
            rows.append(row)
            dropped += gone
    finally:
        memory.close(restore_weights=True)
    return {"benchmark": "longevity", "days": days, "facts_per_day": per_day, "cap": cap,
            "recall_per_day": [r["recall_raw"] for r in rows], "ppl_start": ppl_start,
            "ppl_drift_per_day": [r["ppl"] / ppl_start - 1 for r in rows],
            "specificity_per_day": [r["specificity"] for r in rows], "per_day": rows, "dropped": dropped}


def plot(result: dict, target) -> None:
    days = [r["day"] for r in result["per_day"]]
    line_plot(target, {"after sleep": (days, result["recall_per_day"]),
                       "before sleep": (days, [r["recall_before_sleep"] for r in result["per_day"]])},
              "day", "raw recall of stored facts",
              f"{result['facts_per_day']} facts a day, cap {result['cap']}, {result['model']}")


def main(argv: list[str]) -> int:
    p = parser("longevity", __doc__)
    p.add_argument("--facts", type=int, default=10, help="facts told per day")
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--cap", type=int, default=60, help="stored facts kept; the oldest beyond it are forgotten")
    args = p.parse_args(argv)
    store = setup(args)
    model, tokenizer = load_model(args.model, device=args.device)
    facts = seed_pool(args.days * args.facts, args.seed)
    result = longevity(model, tokenizer, facts, store, args.days, args.facts, args.cap, edit=edit_settings(args))
    emit({**result, "model": model_name(model), "seed": args.seed, "peak_rss_mb": peak_rss_mb()}, args, plot)
    return 0
