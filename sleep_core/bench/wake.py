"""`wake`: inject N facts one at a time without sleep; recall, specificity, perplexity, latency."""
import logging
import time

from ..editing.hparams import MODES, EditConfig
from ..eval import HELDOUT_CONTEXTS, chat_recall, greedy_tokens, perplexity, raw_recall, specificity
from ..assets.corpus import ensure_corpus
from ..model.weights import QUANTIZED_EDITS
from .common import (bench_config, check_backend, edit_settings, emit, known_to, load_model, median, model_folder,
                     model_options, open_memory, parser, peak_rss_mb, progress_bar, seed_pool, setup, still_known)

log = logging.getLogger(__name__)

PPL_TOKENS = 8192


def run_mode(model, tokenizer, facts, mode: str, store, heldout: str, others,
             quantized_edits: str = "side_branch", edit: EditConfig | None = None) -> dict:
    memory = open_memory(model, tokenizer, bench_config(store / mode, mode, edit, quantized_edits=quantized_edits))
    known = known_to(model, tokenizer)
    controls = [p for p, _ in known] + [f.prompt for f in others]
    before = greedy_tokens(model, tokenizer, controls)
    ppl_before = perplexity(model, tokenizer, heldout, PPL_TOKENS)
    seconds, curve = [], []
    for i, fact in enumerate(progress_bar(len(facts), mode, "fact", iterable=facts), 1):
        clock = time.perf_counter()
        memory.inject_now([fact])
        seconds.append(time.perf_counter() - clock)
        curve.append({"facts": i, "recall_raw": sum(raw_recall(model, tokenizer, facts[:i])) / i})
    result = {
        "mode": mode, "facts": len(facts),
        "recall_raw": curve[-1]["recall_raw"],
        "recall_chat": sum(chat_recall(model, tokenizer, facts)) / len(facts),
        "recall_raw_bare": sum(raw_recall(model, tokenizer, facts, context="")) / len(facts),
        "recall_raw_contexts": {c: sum(raw_recall(model, tokenizer, facts, context=c)) / len(facts)
                                for c in HELDOUT_CONTEXTS},
        "specificity": still_known(model, tokenizer, known), "known_facts": len(known),
        "specificity_lenient": still_known(model, tokenizer, known, lenient=True),
        # stricter and noisier: the first three greedy tokens after known-fact prompts and other people's facts
        "continuations_unchanged": specificity(before, greedy_tokens(model, tokenizer, controls)),
        "ppl_before": ppl_before, "ppl_after": perplexity(model, tokenizer, heldout, PPL_TOKENS),
        "inject_seconds_median": median(seconds), "inject_seconds": seconds, "curve": curve,
    }
    result["ppl_drift"] = result["ppl_after"] / result["ppl_before"] - 1
    log.info("%s: %s", mode, {k: v for k, v in result.items() if k not in ("curve", "inject_seconds")})
    memory.forget_everything()
    memory.close()
    return result


def plot(result: dict, target) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in result["runs"]:
        ax.plot([p["facts"] for p in run["curve"]], [p["recall_raw"] for p in run["curve"]], label=run["mode"])
    ax.set(xlabel="facts injected (no sleep)", ylabel="raw recall of all facts so far", ylim=(0, 1.05),
           title=f"Wake capacity, {result['model']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=120)


def main(argv: list[str]) -> int:
    p = parser("wake", __doc__)
    p.add_argument("--facts", type=int, default=50)
    p.add_argument("--mode", default="constrained", help=f"one or several of {MODES}, comma-separated")
    model_options(p)
    p.add_argument("--quantized-edits", choices=QUANTIZED_EDITS, default="side_branch",
                   help="how an edit reaches a quantized layer (with --quantize)")
    args = p.parse_args(argv)
    check_backend(p, args)
    store = setup(args)
    model, tokenizer = load_model(args.model, args.dtype, args.quantize, args.backend, args.device)
    pool = seed_pool(args.facts * 2, args.seed)
    facts, others = pool[: args.facts], pool[args.facts:]
    heldout = "\n\n".join(ensure_corpus().heldout_articles())
    runs = [run_mode(model, tokenizer, facts, mode, store, heldout, others, args.quantized_edits,
                     edit_settings(args))
            for mode in args.mode.split(",")]
    result = {"benchmark": "wake", "model": model_folder(args.model).name,
              "seed": args.seed, "backend": args.backend, "dtype": args.dtype, "quantize": args.quantize,
              "step_precision": args.step_precision, "jitter": args.jitter,
              "quantized_edits": args.quantized_edits if args.quantize != "none" else None,
              **{k: v for k, v in runs[0].items() if k != "inject_seconds"},
              "runs": runs, "peak_rss_mb": peak_rss_mb()}
    emit(result, args, plot)
    return 0
