"""Memory: the one object the extension, the app and the benchmarks use."""
import contextlib
import copy
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

from .assets.corpus import ensure_corpus
from .config import MemoryConfig
from .cycle.audit import Audit
from .cycle.sleep import Progress, SleepReport, run_sleep
from .cycle.wake import InjectionWorker
from .editing.covariance import cached_moments
from .editing.memit import MAX_BATCH, compute_edits
from .editing.solve import LayerPrior, make_prior
from .eval import generate
from .extract import Candidate, LLMExtractor, Rejection, extract, names_from, relatives
from .memory.facts import Fact, FactEdit, about, subject_batches
from .memory.ledger import WeightLedger
from .memory.store import FactRecord, Store, StoreError, export_document, now, read_document
from .model.backend import adapter_for, hf_tokenizer
from .paths import covariance_dir

log = logging.getLogger(__name__)
BUSY_RETRY_SECONDS = 1.0     # a queued fact waits this long before asking a busy model's weight lock again


@dataclass
class LearnResult:
    accepted: list[Candidate]     # facts queued for injection (or that would be, with learning off)
    rejected: list[Rejection]     # sentences not learned, each with the reason the UI shows
    learning: bool


def _no_lock() -> ContextManager:
    return contextlib.nullcontext()


class Memory:
    """Facts in the weights of one loaded model, persisted in a store keyed by the model's fingerprint."""

    def __init__(self, model, tokenizer, config: MemoryConfig, weight_lock: Callable[[], ContextManager] = _no_lock):
        # a copy: edits and probes set padding on it from the worker thread, while the host encodes with its own
        self.config, self.tokenizer, self.weight_lock = config, copy.deepcopy(hf_tokenizer(tokenizer)), weight_lock
        self.adapter = adapter_for(model, config.layers, config.quantized_edits)
        self.fingerprint = self.adapter.fingerprint()
        self.store = Store(config.store_dir / self.fingerprint, self.fingerprint, self.adapter.layers)
        self.ledger = WeightLedger(self.adapter)
        self._priors: dict[int, LayerPrior] | None = None
        self._busy = threading.RLock()
        self.problems: list[str] = []
        self._mentioned: list[str] = []     # relatives of the chat's earlier messages, for "she" in the next one
        self._reload()
        self.worker = InjectionWorker(self._inject_queued)
        for record in self.store.facts(status="pending"):
            self.worker.put(record.id)

    @classmethod
    def open(cls, model, tokenizer, config: MemoryConfig | None = None,
             weight_lock: Callable[[], ContextManager] = _no_lock) -> "Memory":
        """The model's memory, re-applied from its store; one Memory per model object. `model` is a transformers
        model or an mlx-lm one (with the tokenizer mlx_lm.load returned)."""
        existing = getattr(model, "_sleeping_llm_memory", None)
        if existing is not None:
            if config is not None and existing.config.store_dir != config.store_dir:
                raise StoreError(f"This model object already has a memory open at {existing.config.store_dir}; "
                                 f"close it before opening {config.store_dir} (its edits are in the weights).")
            return existing
        memory = cls(model, tokenizer, config or MemoryConfig(), weight_lock)
        model._sleeping_llm_memory = memory
        return memory

    def _reload(self) -> None:
        edits, self.problems = self.store.load_edits()
        for problem in self.problems:
            log.error(problem)
            fact_id = int(problem.split()[1].rstrip(":"))
            self.store.drop_edits([fact_id], status="pending")
        for fact_id, edit in edits.items():
            self.ledger.set(fact_id, edit)
        with self.weight_lock():
            self.ledger.rebuild()

    # the statistics an edit needs
    def priors(self, progress: Callable[[int, int], None] | None = None) -> dict[int, LayerPrior]:
        """Covariance and null space of each edited layer, measured once on the pristine model and cached."""
        # the worker may be writing a fact queued before a restart: the pristine swap must not interleave with it
        with self._busy:
            if self._priors is None:
                corpus = ensure_corpus()
                with self.weight_lock(), self.ledger.pristine_weights():
                    moments = cached_moments(self.adapter, self.tokenizer, corpus.covariance_articles,
                                             self.config.edit.cov_tokens, covariance_dir() / self.fingerprint, progress)
                self._priors = {l: make_prior(m) for l, m in moments.items()}
        return self._priors

    def heldout_text(self) -> str:
        return "\n\n".join(ensure_corpus().heldout_articles())

    # wake
    def learn(self, text: str, source: str = "chat", new_chat: bool = False) -> LearnResult:
        """Extract facts from one user message and queue the accepted ones for injection; a message that opens a
        chat (`new_chat`) has no earlier relatives for its pronouns."""
        if new_chat:
            self._mentioned = []
        llm = LLMExtractor(self.ask_model) if self.config.model_extraction else None
        candidates, rejected = extract(text, source, llm, names=names_from(r.fact for r in self.active_records()),
                                       mentioned=self._mentioned)
        self._mentioned = relatives((c.subject for c in candidates), self._mentioned)
        if self.config.learn:
            for c in candidates:
                self.add(c.fact, c.source_text, source)
        return LearnResult(candidates, rejected, self.config.learn)

    def ask_model(self, messages: list[dict], max_new_tokens: int = 256) -> str:
        """The model's greedy reply to a chat, with the weights as they are (the model extractor's `generate`)."""
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        with self.weight_lock():
            return generate(self.adapter.model, self.tokenizer, [prompt], max_new_tokens)[0]

    def add(self, fact: Fact, source_text: str = "", source: str = "chat") -> int:
        """Store `fact` as pending and queue it; it is injected by the worker."""
        fact_id = self.store.add_fact(fact, source_text, source)
        self.worker.put(fact_id)
        return fact_id

    def inject(self, fact_id: int) -> FactEdit | None:
        """Write one stored fact into the weights, superseding older values of the same subject and relation.

        The other facts about its subject are re-solved with it: they share its key, so their values are written
        together (see editing/prompts.py, shared_targets)."""
        return self.inject_together([fact_id]).get(fact_id)

    def inject_together(self, fact_ids: list[int]) -> dict[int, FactEdit]:
        """Write several stored facts in one solve (MEMIT's batch edit); `inject` is the batch of one.

        A duplicate of an active fact or of an earlier one in the batch is dropped; a later value for the same
        subject and relation supersedes an earlier one, in the batch as in the store. More than MAX_BATCH facts are
        written in turn, at most MAX_BATCH a solve with a subject's facts together, each solve protecting the facts
        of the ones before. Returns the new edits."""
        if len(fact_ids) > MAX_BATCH:
            edits = {}
            for batch in subject_batches([self.store.fact(i) for i in fact_ids], MAX_BATCH):
                edits |= self.inject_together([r.id for r in batch])
            return edits
        with self._busy:
            records = [r for r in (self.store.fact(i) for i in fact_ids) if r.status == "pending"]
            batch = {}
            for record in records:
                batch.pop(record.fact.key, None)      # the later value wins and keeps its place in the order
                batch[record.fact.key] = record
            def says_the_same(r: FactRecord) -> bool:     # r's object is the one the batch writes for its key
                new = batch[r.fact.key]      # a correction may change the case alone, which chat would not
                return r.object == new.object if new.source == "correction" else r.object.lower() == new.object.lower()
            active = self.active_records()
            same = [r for r in active if r.fact.key in batch]
            duplicates = [batch[r.fact.key] for r in same if says_the_same(r)]
            new = [r for r in batch.values() if r not in duplicates]
            superseded = [r for r in same if r.fact.key in {n.fact.key for n in new}]
            outvoted = [r for r in records if r is not batch[r.fact.key]]
            repeated = [r for r in outvoted if says_the_same(r)]
            if duplicates + repeated:      # a duplicate is not injected twice
                self.store.drop_edits([r.id for r in duplicates + repeated], delete=True)
            if stale := [r.id for r in outvoted if r not in repeated]:
                self.store.drop_edits(stale, status="superseded")
            if not new:
                return {}
            # seed mode gives every fact its own target (shared_targets), so nothing is re-solved with it
            kin = [] if self.config.edit.seed else [r for r in about(active, {n.fact.subject_key for n in new})
                                                      if r not in superseded]
            priors = self.priors()
            with self.weight_lock():
                snapshot = self.ledger.snapshot()
                for old in superseded + kin:
                    self.ledger.remove(old.id)
                try:
                    self.ledger.rebuild()     # the targets are measured without the values being replaced
                    stored = {l: self.ledger.keys(l) for l in self.adapter.layers}
                    edits = dict(zip([r.id for r in kin + new], compute_edits(
                        self.adapter, self.tokenizer, [r.fact for r in kin + new], self.config.edit, priors, stored)))
                except BaseException:
                    self.ledger.restore(snapshot)     # nothing written: the old facts stay as they were
                    raise
                for i, edit in edits.items():
                    self.ledger.set(i, edit)
                self.ledger.rebuild()
            self.store.drop_edits([old.id for old in superseded], status="superseded")
            self.store.save_edits(edits)
            self.store.bump("wake_edits", len(new))     # drowsiness counts facts, as the wake capacity does
            return {r.id: edits[r.id] for r in new}

    def _inject_queued(self, fact_id: int) -> None:
        """The worker's step: while the host's lock times out (the model is busy), the fact stays queued."""
        try:
            self._wake_step(fact_id)
        except TimeoutError as error:
            log.info("fact %s waits for the model: %s", fact_id, error)
            time.sleep(BUSY_RETRY_SECONDS)
            self.worker.put(fact_id)

    def _wake_step(self, fact_id: int) -> None:
        """The worker's unit of work: inject, then sleep if the model has become drowsy."""
        self.inject(fact_id)
        pressure = self.drowsiness()
        if self.config.auto_sleep and pressure >= self.config.drowsiness_threshold:
            log.info("drowsiness %.2f reached %.2f: sleeping", pressure, self.config.drowsiness_threshold)
            try:
                self.sleep()
            except TimeoutError:
                raise                       # the model is busy: the fact is queued again, and the sleep with it
            except Exception:               # its report says why; the next try comes after as many new facts
                self.store.set_counter("wake_edits")

    def inject_now(self, facts: list[Fact], source: str = "api", together: bool = False) -> list[int]:
        """Store and inject facts synchronously (benchmarks and tests): one edit each, or one for all."""
        ids = [self.store.add_fact(f, "", source) for f in facts]
        if together:
            self.inject_together(ids)
        else:
            for fact_id in ids:
                self.inject(fact_id)
        return ids

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.worker.wait_idle(timeout)

    # the user's controls
    def active_records(self) -> list[FactRecord]:
        return [r for r in self.store.facts() if r.id in self.ledger.columns]

    def facts(self, search: str = "", status: str | None = None) -> list[FactRecord]:
        return self.store.facts(status, search)

    def forget(self, fact_id: int) -> None:
        """Revert the fact's edit exactly and delete its text."""
        with self._busy, self.weight_lock():
            self.ledger.remove(fact_id)
            self.ledger.rebuild()
        self.store.drop_edits([fact_id], delete=True)

    def forget_everything(self) -> None:
        with self._busy, self.weight_lock():
            self.ledger.clear()
            self.ledger.rebuild()
        self.store.clear()
        self._mentioned = []

    def export_json(self) -> dict:
        """Every current fact as text, with this model's fingerprint; superseded values are left out."""
        return export_document([r for r in self.store.facts() if r.status != "superseded"], self.fingerprint)

    def import_json(self, data: dict) -> int:
        """Queue the facts of an export for injection, all or none; returns how many were new.

        Facts are text, so another model's export is accepted; its facts' source names that model."""
        model, facts = read_document(data)
        source = "import" if model == self.fingerprint else f"import from {model}"
        if model != self.fingerprint:
            log.warning("importing facts exported from another model (%s); they are re-learned here", model)
        known = {(r.fact.key, r.object.lower()) for r in self.store.facts() if r.status != "superseded"}
        ids = []
        with self.store.transaction():
            for fact, source_text, created_at, pinned in facts:
                if (fact.key, fact.object.lower()) not in known:
                    known.add((fact.key, fact.object.lower()))
                    ids.append(self.store.add_fact(fact, source_text, source, created_at, pinned))
        for fact_id in ids:
            self.worker.put(fact_id)
        return len(ids)

    def pin(self, fact_id: int, pinned: bool = True) -> None:
        self.store.update(fact_id, pinned=int(pinned))

    def correct(self, fact_id: int, new_object: str) -> FactRecord:
        """A new value for the fact's subject and relation; the old one is superseded."""
        old = self.store.fact(fact_id)
        if new_object == old.object:
            return old
        with self._busy:
            if fact_id not in self.ledger.columns and old.status != "superseded":
                # never written (pending, or dropped): queued again on the next open, it would supersede the fix
                self.store.drop_edits([fact_id], status="superseded")
            new_id = self.store.add_fact(Fact(old.subject, old.relation, new_object, old.questions),
                                         old.source_text, "correction")
        try:
            self.inject(new_id)
        except TimeoutError:
            self.worker.put(new_id)      # the model is busy: the correction is applied when it is free
            raise
        return self.store.fact(new_id)

    def commit_edits(self, edits: dict[int, FactEdit], audit: Audit) -> None:
        """Persist a sleep's refreshed columns and every fact's audited status and recall."""
        self.store.save_edits(edits, {i: "healthy" if audit.healthy(i) else "degraded" for i in edits})
        for fact_id in audit.raw:
            self.store.update(fact_id, status="healthy" if audit.healthy(fact_id) else "degraded",
                              recall=audit.score(fact_id))

    # sleep
    def drowsiness(self) -> float:
        """Pressure: wake edits since the last sleep and degraded facts against the measured wake capacity.

        Facts the last sleep could not repair do not count again, or every message would start a new sleep."""
        degraded = len(self.store.facts(status="degraded")) - self.store.counter("unrepaired")
        return (self.store.counter("wake_edits") + max(degraded, 0)) / self.config.wake_capacity

    def sleep(self, progress: Callable[[Progress], None] | None = None, nap: bool = False) -> SleepReport:
        report = SleepReport("nap" if nap else "sleep", now())
        clock = time.perf_counter()
        try:
            with self._busy:     # up to the last status write: an injection waiting for the sleep comes after it
                self.priors()
                outcome = run_sleep(self, report, progress or (lambda p: None), nap)
                self.commit_edits({}, outcome)
                if not nap:
                    report.dropped = self._enforce_cap()
                    self.store.set_counter("wake_edits")
                    self.store.set_counter("unrepaired", len(self.store.facts(status="degraded")))
        except TimeoutError:
            raise                # the model was busy: nothing was tried
        except Exception as error:
            report.failed, report.reason = True, f"{type(error).__name__}: {error}"
            log.exception("%s failed", report.kind)
            self._file(report, clock)
            raise
        self._file(report, clock)
        log.info("%s #%d: %s (raw recall %.2f -> %.2f, perplexity %.2f -> %.2f, %.1f s)", report.kind, report.id,
                 report.reason, report.recall_before, report.recall_after, report.ppl_before, report.ppl_after,
                 report.seconds)
        return report

    def _file(self, report: SleepReport, clock: float) -> None:
        report.seconds = time.perf_counter() - clock
        report.id = self.store.add_report(report.kind, report.started_at, report.to_dict())

    def _enforce_cap(self) -> list[dict]:
        """Over `max_facts`, the oldest unpinned facts leave the weights (their text stays, status "dropped")."""
        cap = self.config.max_facts
        active = sorted((r for r in self.active_records() if not r.pinned), key=lambda r: r.id)
        excess = len(self.ledger.columns) - cap if cap is not None else 0
        dropped = active[: max(excess, 0)]
        if not dropped:
            return []
        with self.weight_lock():
            for r in dropped:
                self.ledger.remove(r.id)
            self.ledger.rebuild()
        self.store.drop_edits([r.id for r in dropped], status="dropped")
        reason = f"over the cap of {cap} facts: the oldest that are not pinned leave first"
        log.warning("dropped %d facts %s", len(dropped), reason)
        return [{"id": r.id, "fact": f"{r.fact.prompt} {r.object}", "reason": reason} for r in dropped]

    def nap(self, progress: Callable[[Progress], None] | None = None) -> SleepReport:
        return self.sleep(progress, nap=True)

    def sleep_reports(self, limit: int = 20) -> list[dict]:
        return [{**body, "id": i} for i, _, _, body in self.store.reports(limit)]

    def status(self) -> dict:
        name = str(getattr(self.adapter.config, "_name_or_path", "")).rstrip("/").split("/")[-1]
        return {"model": name, "fingerprint": self.fingerprint, "facts": len(self.ledger.columns),
                "drowsiness": self.drowsiness(), "busy": self.worker.busy, "notice": "; ".join(self.problems)}

    def close(self, restore_weights: bool = False) -> None:
        """Stop the worker and close the store; `restore_weights` returns the model to pristine first
        (so a new Memory with other layers or mode can be opened on the same model object)."""
        self.worker.stop()
        if restore_weights:
            with self._busy, self.weight_lock():
                self.ledger.clear()
                self.ledger.rebuild()
        self.store.close()
        if getattr(self.adapter.model, "_sleeping_llm_memory", None) is self:
            del self.adapter.model._sleeping_llm_memory
