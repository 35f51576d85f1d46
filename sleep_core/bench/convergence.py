"""`convergence`: from heavy interference (N facts injected unconstrained, no sleep, unless --wake-mode says
otherwise), recall per sleep cycle."""
import logging
from pathlib import Path

from ..cycle.audit import audit
from ..editing.hparams import EditConfig
from ..eval.perplexity import perplexity
from .common import (bench_config, edit_settings, emit, known_to, line_plot, load_model, model_name, open_memory,
                     parser, peak_rss_mb, progress_bar, seed_pool, setup, sleep_showing, still_known)

log = logging.getLogger(__name__)


def first_at(values: list[float], target: float) -> int | None:
    """Index of the first value at or above `target` (0 is before any sleep), None if never."""
    return next((i for i, v in enumerate(values) if v >= target), None)


def convergence(model, tokenizer, facts, store: Path, cycles: int, target: float = 1.0,
                edit: EditConfig | None = None, wake_mode: str = "unconstrained", **config) -> dict:
    """Sleep until raw recall reaches `target` or `cycles` sleeps ran; `config`: further MemoryConfig fields."""
    known = known_to(model, tokenizer)
    memory = open_memory(model, tokenizer, bench_config(store, wake_mode, edit, **config))
    try:
        text, tokens = memory.heldout_text(), memory.config.ppl_tokens     # what sleep measures perplexity on
        ppl_base = perplexity(model, tokenizer, text, tokens)
        memory.inject_now(facts)
        recall, seconds, sleeps = [audit(model, tokenizer, memory.active_records()).recall("raw")], [], []
        kept = [still_known(model, tokenizer, known)]
        drift = [perplexity(model, tokenizer, text, tokens) / ppl_base - 1]
        log.info("after %d wake edits: raw recall %.3f", len(facts), recall[0])
        bar = progress_bar(cycles, "sleep cycles", "sleep")
        while len(seconds) < cycles and recall[-1] < target:
            report = sleep_showing(memory, bar)
            bar.update()
            recall.append(report.recall_after if report.committed else report.recall_before)
            seconds.append(report.seconds)
            sleeps.append({k: getattr(report, k) for k in ("committed", "reason", "chat_recall_after",
                                                          "ppl_before", "ppl_after", "refreshed", "repaired", "tipped",
                                                          "timings")})
            kept.append(still_known(model, tokenizer, known))
            drift.append((report.ppl_after if report.committed else report.ppl_before) / ppl_base - 1)
        bar.close()
    finally:
        memory.close(restore_weights=True)
    return {"benchmark": "convergence", "facts": len(facts), "wake_mode": wake_mode, "target": target,
            "recall_per_cycle": recall, "cycles_to_converge": first_at(recall, target), "sleep_seconds": seconds,
            "known_facts": len(known), "specificity_per_cycle": kept, "ppl_base": ppl_base,
            "ppl_drift_per_cycle": drift, "sleeps": sleeps}


def plot(result: dict, target) -> None:
    recall = result["recall_per_cycle"]
    line_plot(target, {"raw recall": (list(range(len(recall))), recall)}, "sleep cycles", "raw recall",
              f"Convergence from {result['facts']} {result['wake_mode']} wake edits, {result['model']}")


def main(argv: list[str]) -> int:
    p = parser("convergence", __doc__)
    p.add_argument("--facts", type=int, default=30)
    p.add_argument("--cycles", type=int, default=6, help="at most this many sleeps (fewer once --target is reached)")
    p.add_argument("--target", type=float, default=1.0, help="raw recall that counts as converged")
    p.add_argument("--wake-mode", default="unconstrained", choices=("unconstrained", "constrained", "seed"),
                   help="how the facts are injected before the first sleep")
    args = p.parse_args(argv)
    store = setup(args)
    model, tokenizer = load_model(args.model, device=args.device)
    result = convergence(model, tokenizer, seed_pool(args.facts, args.seed), store, args.cycles, args.target,
                         edit=edit_settings(args), wake_mode=args.wake_mode)
    emit({**result, "model": model_name(model), "seed": args.seed, "peak_rss_mb": peak_rss_mb()}, args, plot)
    return 0
