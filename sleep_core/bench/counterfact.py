"""`counterfact`: CounterFact and zsRE, the field's editing benchmarks: a long stream of sequential edits,
with or without sleep, measured at checkpoints over every record edited so far."""
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..assets.corpus import ensure_corpus
from ..editing.hparams import MODES
from ..editing.solve import general_text_change
from ..eval import RAW_CONTEXT, chat_recall, perplexity, score_answers
from ..eval.probes import _encode
from ..facade import Memory
from ..memory.facts import Fact
from ..paths import data_dir, write_text_atomic
from .common import (bench_config, edit_settings, emit, load_model, median, open_memory, parser, peak_rss_mb,
                     progress_bar, rss_mb, setup, sleep_showing)
from .wake import PPL_TOKENS

log = logging.getLogger(__name__)

# CounterFact prompts are sentence beginnings, so chat recall asks the model to finish one.
CHAT_QUESTION = "Complete this sentence: {}"


@dataclass(frozen=True)
class Record:
    fact: Fact           # the edit request; fact.prompt is `prompt` (up to the joiner, see split_prompt)
    prompt: str
    target: str          # target_new (CounterFact), alt (zsRE)
    truth: str           # ground_truth (CounterFact); empty for zsRE
    rephrase: str
    loc_prompt: str
    loc_answer: str


def split_prompt(subject: str, prompt: str) -> tuple[str, str]:
    """Fact subject and relation of a prompt: the subject runs to the end of the record subject's last
    occurrence, so the editor reads its key at the same token ("The official religion of Jahangir" + "is")."""
    at = prompt.lower().rfind(subject.strip().lower())
    if at < 0:
        return prompt, ""
    end = at + len(subject.strip())
    return prompt[:end], prompt[end:].strip()


def make_record(subject: str, prompt: str, target: str, truth: str, rephrase: str, loc_prompt: str,
                loc_answer: str, question: str) -> Record:
    head, relation = split_prompt(subject, prompt)
    return Record(Fact(head, relation, target, (question,)), prompt, target, truth, rephrase, loc_prompt,
                  loc_answer)


def counterfact_record(row: dict) -> Record:
    return make_record(row["subject"], row["prompt"], row["target_new"], row["ground_truth"],
                       row["rephrase_prompt"], row["locality_prompt"], row["locality_ground_truth"],
                       CHAT_QUESTION.format(row["prompt"]))


def zsre_record(row: dict) -> Record:
    """MEND / EasyEdit zsRE: the question `src` is both the raw prompt and the chat question."""
    return make_record(row["subject"], row["src"], row["alt"], "", row["rephrase"], row["loc"],
                       row["loc_ans"], row["src"])


def load_records(path: Path, fmt: str, n: int, seed: int = 0) -> list[Record]:
    """The first `n` records of the file (shuffled by `seed` unless 0); a second record with the same
    subject and relation is left out, since it would supersede the first rather than add an edit."""
    rows = json.loads(Path(path).read_text())
    if seed:
        random.Random(seed).shuffle(rows)
    make = counterfact_record if fmt == "counterfact" else zsre_record
    seen, records = set(), []
    for row in rows:
        record = make(row)
        if record.fact.key not in seen:
            seen.add(record.fact.key)
            records.append(record)
    return records[:n]


# metrics: functions of the model and the records only
def counterfact_margins(model, tokenizer, records: list[Record], context: str = RAW_CONTEXT) -> dict[str, list]:
    """Per record, log P(target_new) - log P(ground_truth) after prompt (es) and rephrase (ps),
    log P(locality truth) - log P(target_new) after the locality prompt (ns), and greedy exact match (em)."""
    pairs = []
    for r in records:
        pairs += [(context + r.prompt, " " + r.target), (context + r.prompt, " " + r.truth),
                  (context + r.rephrase, " " + r.target), (context + r.rephrase, " " + r.truth),
                  (context + r.loc_prompt, " " + r.loc_answer), (context + r.loc_prompt, " " + r.target)]
    s = score_answers(model, tokenizer, pairs)
    rows = [s[i: i + 6] for i in range(0, len(s), 6)]
    return {"es": [a.logprob - b.logprob for a, b, *_ in rows],
            "ps": [row[2].logprob - row[3].logprob for row in rows],
            "ns": [row[4].logprob - row[5].logprob for row in rows],
            "em": [row[0].greedy for row in rows]}


def counterfact_scores(margins: dict[str, list]) -> dict[str, list[bool]]:
    """ES, PS, NS: the margin is positive; EM as measured."""
    return {**{k: [m > 0 for m in margins[k]] for k in ("es", "ps", "ns")}, "em": list(margins["em"])}


@torch.no_grad()
def token_predictions(model, tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per (prompt, answer): the answer's token ids and the model's top-1 token at each, teacher-forced."""
    device = model.get_input_embeddings().weight.device
    out = []
    for prompt, answer in pairs:
        ids, first = _encode(tokenizer, prompt, answer, templated=False)
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].cpu()
        out.append((torch.tensor(ids[first:]), logits[first - 1: len(ids) - 1].argmax(-1)))
    return out


def zsre_scores(model, tokenizer, records: list[Record], base_loc: list[torch.Tensor],
                context: str = RAW_CONTEXT) -> dict[str, list[float]]:
    """Per record: top-1 token accuracy of the new answer after src (es) and rephrase (ps), agreement with
    the unedited model's top-1 tokens on loc (ns), and greedy exact match (em)."""
    def accuracy(prompts: list[str]) -> list[float]:
        preds = token_predictions(model, tokenizer, [(context + p, " " + r.target) for p, r in zip(prompts, records)])
        return [(top == target).float().mean().item() for target, top in preds]
    loc = token_predictions(model, tokenizer, [(context + r.loc_prompt, " " + r.loc_answer) for r in records])
    es = accuracy([r.prompt for r in records])
    return {"es": es, "ps": accuracy([r.rephrase for r in records]),
            "ns": [(top == base).float().mean().item() for (_, top), base in zip(loc, base_loc)],
            "em": [a == 1.0 for a in es]}


def record_scores(model, tokenizer, records: list[Record], fmt: str, base_loc, context: str) -> dict[str, list]:
    """Every per-record figure of the format, with chat recall."""
    if fmt == "zsre":
        scores = zsre_scores(model, tokenizer, records, base_loc, context)
    else:
        scores = counterfact_scores(counterfact_margins(model, tokenizer, records, context))
    return {**scores, "chat": chat_recall(model, tokenizer, [r.fact for r in records])}


def mean(values: list) -> float:
    return sum(float(v) for v in values) / max(len(values), 1)


def occupancy(memory: Memory) -> list[float]:
    """Per edited layer, how much the stored edits change its output on general text, relative to the output
    itself: ‖ΔW‖²_C / ‖W₀‖²_C, C the second moment of the layer's keys over the corpus. The capacity the edits
    use up, which perplexity pays for. Plain (unquantized) weights only."""
    def share(layer: int) -> float:
        if (factors := memory.ledger.factors(layer)) is None:
            return 0.0
        prior, pristine = memory.priors()[layer], memory.adapter.as_matrix(memory.ledger.pristine[layer])
        identity = torch.eye(pristine.shape[1])
        return general_text_change(*factors, prior) / general_text_change(pristine, identity, prior)
    return [share(layer) for layer in memory.adapter.layers]


# the runner
def evaluate(model, tokenizer, records, args, base_loc, heldout: str) -> tuple[dict, dict]:
    """Means over `records` and the per-record lists they came from."""
    scores = record_scores(model, tokenizer, records, args.format, base_loc, "" if args.bare else RAW_CONTEXT)
    figures = {k: mean(v) for k, v in scores.items()}
    figures["ppl"] = perplexity(model, tokenizer, heldout, PPL_TOKENS)
    return figures, scores


def base_loc_predictions(model, tokenizer, records: list[Record], fmt: str, context: str) -> list:
    """zsRE specificity compares with the unedited model's top-1 tokens on `loc`; CounterFact needs none."""
    if fmt != "zsre":
        return [None] * len(records)
    pairs = [(context + r.loc_prompt, " " + r.loc_answer) for r in records]
    return [top for _, top in token_predictions(model, tokenizer, pairs)]


def stream(args) -> dict:
    """The settings that fix the records' order and how they are probed: a resumed run must keep them."""
    return {"model": args.model, "records": str(args.records), "format": args.format, "seed": args.seed,
            "bare": args.bare}


def unedited(model, tokenizer, records: list[Record], args, heldout: str, store: Path) -> tuple[dict, dict, list]:
    """The unedited model's figures (means, per record, zsRE's locality predictions), kept in `store` for a
    resumed run: it is the long evaluation of a run's start."""
    path, key = store / "base.json", {**stream(args), "n": len(records)}
    if path.exists() and (saved := json.loads(path.read_text()))["key"] == key:
        return saved["figures"], saved["scores"], [None if t is None else torch.tensor(t) for t in saved["loc"]]
    base_loc = base_loc_predictions(model, tokenizer, records, args.format, "" if args.bare else RAW_CONTEXT)
    figures, scores = evaluate(model, tokenizer, records, args, base_loc, heldout)
    write_text_atomic(path, json.dumps({"key": key, "figures": figures, "scores": scores,
                                        "loc": [None if t is None else t.tolist() for t in base_loc]}))
    return figures, scores, base_loc


@dataclass
class RunLog:
    """What a run has measured so far, saved beside its store after every step, so that a stopped run (killed,
    out of time) continues where it ended: the store holds the edits, this file the figures."""
    settings: dict
    edit_seconds: list[float] = field(default_factory=list)
    sleep_seconds: list[float] = field(default_factory=list)
    slept_at: int = 0          # edits stored at the last sleep
    checkpoints: list[dict] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, settings: dict) -> "RunLog":
        if not path.exists():
            return cls(settings)
        saved = cls(**json.loads(path.read_text()))
        if saved.settings != settings:
            changed = sorted(k for k in settings.keys() | saved.settings.keys()
                             if settings.get(k) != saved.settings.get(k))
            raise SystemExit(f"{path.parent} holds a run with other settings ({', '.join(changed)}: "
                             f"{[saved.settings.get(k) for k in changed]}); use another --store to start afresh")
        return saved

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self)))


def stored_edits(memory: Memory, records: list[Record]) -> int:
    """How many of `records` the store already holds, checked to be the stream's first ones."""
    memory.wait_idle()      # a fact stored but not yet injected when the run stopped is injected on opening
    held = {r.fact.key for r in memory.active_records()}
    if len(held) > len(records) or held != {r.fact.key for r in records[:len(held)]}:
        raise SystemExit(f"the store at {memory.config.store_dir} holds {len(held)} edits that are not this run's "
                         f"first {len(held)} of {len(records)} records; use another --store")
    return len(held)


def run_mode(model, tokenizer, records, mode: str, args, store: Path, base: tuple) -> dict:
    """Edit `records` in order, sleeping every `args.sleep_every` edits, evaluating at each checkpoint; resumes a
    stopped run kept in the same `store`."""
    base_scores, base_loc, heldout = base
    path = store / mode / "run.json"
    run = RunLog.open(path, {**stream(args), "batch": args.batch, "sleep_every": args.sleep_every,
                             "replay": args.replay, **({"layers": list(args.layers)} if args.layers else {}),
                             **({"jitter": args.jitter} if args.jitter else {})})
    config = bench_config(store / mode, mode, edit_settings(args), replay=args.replay, layers=args.layers)
    memory = open_memory(model, tokenizer, config)
    done = stored_edits(memory, records)
    if done:
        run.resumed_at.append(done)
        log.info("%s: resuming after %d stored edits", mode, done)
    marks = sorted({c for c in args.checkpoints if c <= len(records)} | {len(records)})
    bar = progress_bar(len(records), mode, "edit", initial=done)
    while True:
        if args.sleep_every and done // args.sleep_every > run.slept_at // args.sleep_every:
            clock = time.perf_counter()
            sleep_showing(memory, bar)
            run.sleep_seconds.append(time.perf_counter() - clock)
            run.slept_at = done
            run.save(path)
        last = run.checkpoints[-1]["edits"] if run.checkpoints else 0
        if any(last < m <= done for m in marks):
            held = rss_mb()     # what the edits hold, before the evaluation's own allocations
            figures, _ = evaluate(model, tokenizer, records[:done], args, base_loc[:done], heldout)
            run.checkpoints.append({"edits": done, **figures, "occupancy": occupancy(memory),
                                    "seconds_per_edit_median": median(run.edit_seconds),
                                    "seconds_per_sleep_median": median(run.sleep_seconds),
                                    "rss_mb": held, "peak_rss_mb": peak_rss_mb(),
                                    "base": {k: mean(v[:done]) for k, v in base_scores.items()}})
            run.save(path)
            log.info("%s: %s", mode, run.checkpoints[-1])
            bar.set_postfix_str(", ".join(f"{k} {figures[k]:.2f}" for k in ("es", "ps", "ns", "chat", "ppl")))
        if done >= len(records):
            break
        batch = records[done: done + args.batch]
        clock = time.perf_counter()
        memory.inject_now([r.fact for r in batch], source="benchmark", together=True)
        run.edit_seconds += [(time.perf_counter() - clock) / len(batch)] * len(batch)
        done += len(batch)
        bar.update(len(batch))
        run.save(path)
    bar.close()
    memory.close(restore_weights=True)      # the next mode starts from the pristine weights
    return {"mode": mode, "sleep_every": args.sleep_every, "checkpoints": run.checkpoints,
            "sleeps": len(run.sleep_seconds), "resumed_at": run.resumed_at}


def plot(result: dict, target) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, key in zip(axes, ("es", "ps", "ns", "ppl")):
        for run in result["runs"]:
            label = run["mode"] + (f", sleep every {run['sleep_every']}" if run["sleep_every"] else "")
            ax.plot([c["edits"] for c in run["checkpoints"]], [c[key] for c in run["checkpoints"]], "o-", label=label)
        ax.axhline(result["base"][key], color="gray", linestyle="--", label="unedited")
        ax.set(xscale="log", xlabel="sequential edits", title=key.upper())
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['benchmark']} on {result['model']}")
    fig.tight_layout()
    fig.savefig(target, dpi=120)


def main(argv: list[str]) -> int:
    p = parser("counterfact", __doc__)
    p.add_argument("--records", type=Path, help="default: sleep_core/data/counterfact_dev_3000.json")
    p.add_argument("--format", choices=("counterfact", "zsre"), default="counterfact")
    p.add_argument("--n", type=int, default=100, help="records to edit")
    p.add_argument("--batch", type=int, default=1, help="records injected together")
    p.add_argument("--mode", default="constrained", help=f"one or several of {MODES}, comma-separated")
    p.add_argument("--sleep-every", type=int, default=0, help="sleep after every K edits (0: never)")
    p.add_argument("--checkpoints", default="10,100,1000", type=lambda s: [int(c) for c in s.split(",")])
    p.add_argument("--replay", action="store_true", help="sleep learns every fact again from the pristine weights "
                                                          "(MemoryConfig.replay) instead of consolidating its columns")
    p.add_argument("--bare", action="store_true", help="raw probes without the neutral lead-in (RAW_CONTEXT)")
    p.add_argument("--layers", type=lambda s: tuple(int(x) for x in s.split(",")),
                   help="edited layers, comma-separated (default: the architecture's, 3-8 on SmolLM2)")
    p.add_argument("--store", type=Path, help="keep the memory store and the figures so far here; a stopped run "
                                              "continues when given the same folder and settings (default: a new "
                                              "temporary folder)")
    args = p.parse_args(argv)
    store = setup(args)
    model, tokenizer = load_model(args.model, device=args.device)
    records = load_records(args.records or data_dir() / "counterfact_dev_3000.json", args.format, args.n, args.seed)
    heldout = "\n\n".join(ensure_corpus().heldout_articles())
    base_figures, base_scores, base_loc = unedited(model, tokenizer, records, args, heldout, store)
    runs = [run_mode(model, tokenizer, records, mode, args, store, (base_scores, base_loc, heldout))
            for mode in args.mode.split(",")]
    result = {"benchmark": "zsre" if args.format == "zsre" else "counterfact",
              "model": model.config._name_or_path.rstrip("/").split("/")[-1], "records": len(records),
              "batch": args.batch, "seed": args.seed, "mode": runs[0]["mode"], "sleep_every": args.sleep_every,
              "replay": args.replay, "layers": list(args.layers) if args.layers else None, "base": base_figures,
              "checkpoints": runs[0]["checkpoints"], "runs": runs, "peak_rss_mb": peak_rss_mb()}
    emit(result, args, plot)
    return 0
