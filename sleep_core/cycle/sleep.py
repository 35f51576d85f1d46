"""Sleep: audit; consolidate (every fact's columns re-solved jointly, see editing/consolidate.py, or every fact learned
again from the pristine weights with `MemoryConfig.replay`); refresh the
facts still degraded in place under constraints; validate recall and perplexity; commit or roll back exactly.

A refresh reverts a degraded fact's columns and solves new ones with every healthy fact's keys protected;
nothing is copied, so the reference implementation's death spiral (pruning working edits faster than
refresh replaced them) cannot happen: a fact leaves the store only when the user forgets or supersedes it.
"""
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from ..editing.consolidate import consolidate
from ..editing.memit import MAX_BATCH, compute_edits
from ..eval.perplexity import perplexity
from ..eval.probes import raw_recall
from ..memory.facts import about, subject_batches
from .audit import Audit, audit

log = logging.getLogger(__name__)


@dataclass
class Progress:
    step: str
    fraction: float
    message: str = ""


@dataclass
class SleepReport:
    kind: str
    started_at: str
    seconds: float = 0.0
    committed: bool = False
    failed: bool = False            # an error stopped it (`reason` says which); its figures were never measured
    reason: str = ""
    recall_before: float = 0.0
    recall_after: float = 0.0
    chat_recall_before: float = 0.0
    chat_recall_after: float = 0.0
    ppl_before: float = 0.0
    ppl_after: float = 0.0
    refreshed: list[int] = field(default_factory=list)
    repaired: list[int] = field(default_factory=list)    # not recalled before, recalled after (raw completion)
    tipped: list[int] = field(default_factory=list)      # recalled before, not after: what the change cost
    consolidated: bool = False      # every fact's columns were re-solved jointly (or replayed, `MemoryConfig.replay`)
    dropped: list[dict] = field(default_factory=list)    # facts over the cap, each with the reason
    facts: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _fact_rows(records, before: Audit, after: Audit) -> list[dict]:
    return [{"id": r.id, "fact": f"{r.fact.prompt} {r.object}", "raw_before": before.raw[r.id],
             "raw_after": after.raw[r.id], "chat_before": before.chat[r.id], "chat_after": after.chat[r.id]}
            for r in records]


def _unchanged(report: SleepReport, records, before: Audit, reason: str) -> Audit:
    """Fill `report` for a sleep that leaves the weights as they were."""
    report.recall_after, report.chat_recall_after, report.ppl_after = (
        report.recall_before, report.chat_recall_before, report.ppl_before)
    report.facts = _fact_rows(records, before, before)
    report.reason = reason
    return before


def run_sleep(memory, report: SleepReport, progress: Callable[[Progress], None], nap: bool = False) -> Audit:
    """One sleep (or nap) over `memory`'s stored facts; fills `report`; returns the audit that stands."""
    model, tok = memory.adapter.model, memory.tokenizer
    records = memory.active_records()
    heldout = memory.heldout_text()
    clock = time.perf_counter()

    progress(Progress("audit", 0.05, f"auditing {len(records)} facts"))
    before = audit(model, tok, records)
    report.ppl_before = perplexity(model, tok, heldout, memory.config.ppl_tokens)
    report.recall_before, report.chat_recall_before = before.recall("raw"), before.recall("chat")
    report.timings["audit"] = time.perf_counter() - clock
    degraded = [r for r in records if not before.healthy(r.id)]
    if nap or not degraded:
        return _unchanged(report, records, before, "nap: audit only" if nap else
                          "every fact is healthy; nothing to change")

    with memory.weight_lock():   # the audit above only reads weights; chat may go on meanwhile
        snapshot = memory.ledger.snapshot()
        try:
            return _refresh_and_validate(memory, records, degraded, before, report, progress, snapshot)
        except BaseException:
            memory.ledger.restore(snapshot)     # a failed step (a solve, a probe) leaves the weights as they were
            raise


def _refresh_and_validate(memory, records, degraded, before: Audit, report: SleepReport,
                          progress: Callable[[Progress], None], snapshot: dict) -> Audit:
    """Consolidate, refresh the facts still degraded in place, re-measure, then commit or roll back to `snapshot`."""
    model, tok, ledger = memory.adapter.model, memory.tokenizer, memory.ledger
    clock = time.perf_counter()
    if (memory.config.replay or memory.config.consolidate) and len(records) > 1:
        progress(Progress("consolidate", 0.2, f"re-solving {len(records)} facts jointly"))
        if memory.config.replay:
            _replay(memory, records, progress)
        else:
            ledger.restore(consolidate(snapshot, memory.priors(), memory.config.edit))
        recall = _raw_recall(memory, records)
        if sum(recall.values()) >= sum(before.raw.values()):
            report.consolidated = True
            degraded = [r for r in records if not recall[r.id]]      # those it tipped over too
        else:
            ledger.restore(snapshot)
    report.timings["consolidate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    refreshed: set[int] = set()
    recalled = recall if report.consolidated else before.raw
    ppl_limit = report.ppl_before * (1 + memory.config.ppl_tolerance)
    stopped = ""
    for round_ in range(memory.config.refresh_rounds):
        if not degraded or stopped:
            break
        progress(Progress("refresh", 0.4 + 0.1 * round_, f"refreshing {len(degraded)} degraded facts in place"))
        solved, stopped = _refresh(memory, records, degraded, recalled, ppl_limit, progress)
        refreshed |= {r.id for r in solved}
        if round_ + 1 < memory.config.refresh_rounds and not stopped:
            # a refresh may tip a barely healthy fact over; the next round repairs it under the same protection
            recalled = _raw_recall(memory, records)
            degraded = [r for r in records if not recalled[r.id]]
    report.refreshed = sorted(refreshed)
    report.timings["refresh"] = time.perf_counter() - clock
    if not refreshed and not report.consolidated:       # the weights are the snapshot's: nothing to validate
        return _unchanged(report, records, before, f"nothing kept: {stopped}")

    progress(Progress("validate", 0.7, "checking recall and perplexity"))
    clock = time.perf_counter()
    after = audit(model, tok, records)
    report.ppl_after = perplexity(model, tok, memory.heldout_text(), memory.config.ppl_tokens)
    report.recall_after, report.chat_recall_after = after.recall("raw"), after.recall("chat")
    report.timings["validate"] = time.perf_counter() - clock
    report.facts = _fact_rows(records, before, after)
    report.repaired = [r.id for r in records if after.raw[r.id] and not before.raw[r.id]]
    report.tipped = [r.id for r in records if before.raw[r.id] and not after.raw[r.id]]
    if worse := regression(report, memory.config.ppl_tolerance):
        ledger.restore(snapshot)
        report.consolidated = False
        report.reason = f"rolled back: {worse}"
        return before
    progress(Progress("commit", 0.9, "saving the new edits"))
    changed = ledger.snapshot() if report.consolidated else {i: ledger.columns[i] for i in refreshed}
    memory.commit_edits(changed, after)
    report.committed = True
    report.reason = ", ".join(part for part in (
        f"consolidated {len(records)} facts" if report.consolidated else "",
        f"refreshed {len(refreshed)} facts" if refreshed else "", stopped) if part) or "nothing to change"
    return after


def regression(report: SleepReport, ppl_tolerance: float) -> str:
    """Why the measured sleep must be rolled back, or "" to commit. Chat recall counts too, as it is what the user
    meets and a refresh can repair completions at its cost; but a sleep that repairs more completions than it
    costs chat answers is kept, or a store whose chat answers waver would never be repaired at all."""
    if report.ppl_after > report.ppl_before * (1 + ppl_tolerance):
        return "perplexity rose"
    if report.recall_after < report.recall_before:
        return "recall fell"
    gained = report.recall_after - report.recall_before
    return "chat recall fell" if report.chat_recall_after + gained < report.chat_recall_before else ""


def _replay(memory, records, progress: Callable[[Progress], None]) -> None:
    """Every stored fact learned again from the pristine weights, targets optimised anew, MAX_BATCH facts a MEMIT
    batch (Meng et al. 2023, Alg. 1) with the earlier batches' keys protected; a subject's facts stay in one batch
    (they share a target). Unlike a stream of wake edits, no target is found against the edits of unrelated facts."""
    memory.ledger.clear()
    memory.ledger.rebuild()
    batches = subject_batches(records, MAX_BATCH)
    for i, batch in enumerate(batches):
        progress(Progress("consolidate", 0.2, f"learning batch {i + 1} of {len(batches)} again ({len(batch)} facts)"))
        _solve(memory, batch, memory.config.edit)


def _refresh(memory, records, degraded, recalled: dict[int, bool], ppl_limit: float,
             progress: Callable[[Progress], None]) -> tuple[list, str]:
    """Revert each degraded fact, with the facts that share its subject (and so its key), and solve new columns
    for all of them with every other fact's keys protected; off the chat path, so each new target is pushed
    further than a wake edit's (MemoryConfig.refresh_*); more than MAX_BATCH are solved in turn, as wake batches
    are (editing/memit.py). Returns the facts re-solved, and why the refresh stopped short ("" if it did not).

    Past a few hundred facts a batch tips over about as many healthy facts as it repairs (README, "where it
    bends"), and each batch of 100 costs minutes on a CPU; so when there are several, the weights each batch
    would leave (the facts still to come on their old columns) are measured, raw recall of all `records` against
    `recalled` and perplexity against `ppl_limit`, and the first batch that repairs no more facts than it tips
    over, or breaks the budget, is undone and ends the refresh."""
    model, tok, ledger, config = memory.adapter.model, memory.tokenizer, memory.ledger, memory.config
    degraded = about(records, {r.fact.subject_key for r in degraded})
    start = ledger.snapshot()
    for r in degraded:
        ledger.remove(r.id)
    ledger.rebuild()
    cfg = replace(config.edit, mode="constrained", v_stop_prob=max(config.edit.v_stop_prob, config.refresh_stop_prob),
                  v_steps=round(config.edit.v_steps * config.refresh_step_factor),
                  clamp_norm=max(config.edit.clamp_norm, config.refresh_clamp))
    batches = subject_batches(degraded, MAX_BATCH)
    if len(batches) == 1:
        _solve(memory, degraded, cfg)
        return degraded, ""
    solved: list = []
    left = start                    # the weights the refresh leaves if it stops here
    for i, batch in enumerate(batches):
        progress(Progress("refresh", 0.4, f"refreshing batch {i + 1} of {len(batches)} ({len(batch)} facts)"))
        _solve(memory, batch, cfg)
        solving = ledger.snapshot()
        ledger.restore({**solving, **{r.id: start[r.id] for b in batches[i + 1:] for r in b}})
        now = _raw_recall(memory, records)
        ppl = perplexity(model, tok, memory.heldout_text(), config.ppl_tokens)
        repaired = sum(now[k] and not recalled[k] for k in now)
        tipped = sum(recalled[k] and not now[k] for k in now)
        if repaired <= tipped or ppl > ppl_limit:
            ledger.restore(left)
            why = (f"stopped at batch {i + 1} of {len(batches)}: it repaired {repaired} facts and tipped over "
                   f"{tipped}, perplexity {ppl:.2f} against a limit of {ppl_limit:.2f}")
            log.info("refresh %s", why)
            return solved, why
        left, recalled = ledger.snapshot(), now
        solved += batch
        ledger.restore(solving)     # the batches still to come are solved with their facts' old columns removed
    return solved, ""


def _raw_recall(memory, records) -> dict[int, bool]:
    """Whether each record's raw completion recalls its object, by id."""
    facts = [r.fact for r in records]
    return dict(zip([r.id for r in records], raw_recall(memory.adapter.model, memory.tokenizer, facts)))


def _solve(memory, records, cfg) -> None:
    """New columns for `records`, solved together with every fact already in the ledger protected."""
    ledger = memory.ledger
    stored = {l: ledger.keys(l) for l in memory.adapter.layers}
    edits = compute_edits(memory.adapter, memory.tokenizer, [r.fact for r in records], cfg, memory.priors(), stored)
    for r, edit in zip(records, edits):
        ledger.set(r.id, edit)
    ledger.rebuild()
