"""The memory tab: what the model learned, sleep and nap, drowsiness, plots, import and export.

Uses only gradio features that behave alike on the host's gradio 4.37 and on current gradio:
Dataframe(type="array") with .select, gr.update, generator handlers with gr.Progress, gr.Plot of a
matplotlib Figure, gr.File for download and upload.
"""

import json
import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr

from sleep_core.memory.store import STATUSES as CORE_STATUSES

from .holder import MemoryHolder
from .settings import DEFAULTS, MODES

COLUMNS = ["id", "subject", "relation", "object", "message", "when", "status", "pinned", "recall"]
STATUSES = ["all", *CORE_STATUSES]

log = logging.getLogger(__name__)


@dataclass
class TabView:
    """What a host wires to its own events: refresh() returns the values of outputs."""

    refresh: Callable[[], tuple]
    outputs: list


def build(holder: MemoryHolder, show_multi_user: bool = False) -> TabView:
    """Lay out the tab inside the caller's Blocks and wire its events."""
    tab = MemoryTab(holder)
    tab.layout(show_multi_user)
    tab.wire()
    return TabView(tab.refresh, tab.snapshot_outputs)


class MemoryTab:
    """The tab's components and handlers over one holder."""

    def __init__(self, holder: MemoryHolder):
        self.holder = holder

    def layout(self, show_multi_user: bool) -> None:
        self.notice = gr.Markdown(elem_id="sllm-notice")
        self._sleep_row()
        self._facts_table()
        self._fact_actions()
        with gr.Row():
            self.plot = gr.Plot(label="Recall and perplexity across sleep cycles", elem_id="sllm-plot")
            with gr.Column():
                self.summary = gr.Markdown(elem_id="sllm-report-summary")
                self.report = gr.JSON(label="Last sleep report", elem_id="sllm-report")
        self._settings(show_multi_user)
        self._transfer()
        self.snapshot_outputs = [self.notice, self.gauge, self.table, self.plot, self.report, self.summary]

    def _sleep_row(self) -> None:
        with gr.Row():
            self.gauge = gr.HTML(_gauge(None, 1.0), elem_id="sllm-drowsiness")
            self.sleep_button = gr.Button("Sleep", variant="primary", elem_id="sllm-sleep")
            self.nap_button = gr.Button("Nap (audit only)", elem_id="sllm-nap")
            self.refresh_button = gr.Button("Refresh", elem_id="sllm-refresh")
        self.log = gr.Textbox(label="Sleep log", lines=6, max_lines=12, interactive=False, elem_id="sllm-log")

    def _facts_table(self) -> None:
        with gr.Row():
            self.search = gr.Textbox(label="Search facts", scale=3, elem_id="sllm-search")
            self.status = gr.Dropdown(STATUSES, value="all", label="Status", scale=1, elem_id="sllm-status-filter")
        self.table = gr.Dataframe(headers=COLUMNS, type="array", interactive=False, wrap=True, elem_id="sllm-facts")

    def _fact_actions(self) -> None:
        with gr.Row():
            self.fact_id = gr.Number(None, label="Selected fact (click a row)", precision=0, elem_id="sllm-fact-id")
            self.new_object = gr.Textbox(label="Correct its object to", elem_id="sllm-new-object")
        with gr.Row():
            self.forget_button = gr.Button("Forget", variant="stop", elem_id="sllm-forget")
            self.pin_button = gr.Button("Pin", elem_id="sllm-pin")
            self.unpin_button = gr.Button("Unpin", elem_id="sllm-unpin")
            self.correct_button = gr.Button("Correct", elem_id="sllm-correct")

    def _settings(self, show_multi_user: bool) -> None:
        values = self.holder.settings
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                self.setting_widgets = {
                    "learn": gr.Checkbox(values["learn"], label="Learn from chat messages"),
                    "learn_from_api": gr.Checkbox(values["learn_from_api"], label="Learn from API requests"),
                    "model_extraction": gr.Checkbox(values["model_extraction"], label="Also ask the model for facts "
                                                    "(JSON triples; slow on a CPU: the next turn waits)"),
                    "auto_sleep": gr.Checkbox(values["auto_sleep"], label="Sleep automatically when drowsy"),
                    "replay": gr.Checkbox(values["replay"], label="Sleep learns every fact again from the pristine "
                                          "weights (less perplexity drift; as slow as learning them all)"),
                    "allow_multi_user": gr.Checkbox(values["allow_multi_user"], visible=show_multi_user,
                                                    label="Learn in multi-user mode (all users share the weights)"),
                }
            with gr.Row():
                self.setting_widgets["drowsiness_threshold"] = gr.Slider(
                    0.1, 5.0, value=values["drowsiness_threshold"], step=0.1, label="Drowsiness threshold")
                self.setting_widgets["max_facts"] = gr.Number(
                    values["max_facts"], precision=0, minimum=0, label="Keep at most this many facts (0: no cap); "
                    "a sleep drops the oldest unpinned ones beyond it and its report lists them")
                self.setting_widgets["mode"] = gr.Radio(
                    list(MODES), value=values["mode"], label="Wake edit mode (applies when a model is loaded)")
                self.setting_widgets["layers"] = gr.Textbox(
                    values["layers"], label="Edited layers, e.g. 8-12; empty: the model's default "
                                            "(applies when a model is loaded)")

    def _transfer(self) -> None:
        with gr.Accordion("Export, import, forget everything", open=False):
            with gr.Row():
                self.export_button = gr.Button("Export memory (JSON)", elem_id="sllm-export")
                self.export_file = gr.File(label="Download", interactive=False, elem_id="sllm-export-file")
                self.import_file = gr.File(label="Import memory (JSON)", file_types=[".json"], type="filepath",
                                           elem_id="sllm-import")
            self.forget_all_button = gr.Button("Forget everything…", variant="stop", elem_id="sllm-forget-all")
            with gr.Row(visible=False) as self.confirm_row:
                gr.Markdown("**Every fact is erased and the weights return to the original model. Sure?**")
                self.confirm_button = gr.Button("Yes, forget everything", variant="stop", elem_id="sllm-confirm")
                self.cancel_button = gr.Button("Cancel", elem_id="sllm-cancel")

    def wire(self) -> None:
        filters, out = [self.search, self.status], self.snapshot_outputs
        self.refresh_button.click(self.snapshot, filters, out)
        self.search.submit(self.snapshot, filters, out)
        self.status.change(self.snapshot, filters, out)
        self.table.select(_selected_fact, [self.table], [self.fact_id, self.new_object])
        for button, action in ((self.forget_button, self.forget), (self.pin_button, self.pin),
                               (self.unpin_button, self.unpin)):
            button.click(action, [self.fact_id, *filters], out)
        self.correct_button.click(self.correct, [self.fact_id, self.new_object, *filters], out)
        self.sleep_button.click(self.sleep, filters, [self.log, *out])
        self.nap_button.click(self.nap, filters, [self.log, *out])
        self._wire_transfer(filters, out)
        self._wire_settings()

    def _wire_transfer(self, filters: list, out: list) -> None:
        self.export_button.click(self.export, None, [self.export_file, self.notice])
        self.import_file.upload(self.import_, [self.import_file, *filters], out)
        self.forget_all_button.click(lambda: gr.update(visible=True), None, self.confirm_row)
        self.cancel_button.click(lambda: gr.update(visible=False), None, self.confirm_row)
        self.confirm_button.click(self.forget_everything, filters, [self.confirm_row, *out])

    def _wire_settings(self) -> None:
        for key, widget in self.setting_widgets.items():
            event = widget.blur if isinstance(widget, gr.Textbox) else widget.change
            event(self._setter(key), widget, self.notice)

    def _setter(self, key: str) -> Callable:
        """A handler storing the widget's value in the settings (the host's params) and applying it."""
        def store(value) -> str:
            self.holder.settings[key] = type(DEFAULTS[key])(value)
            _, error = _attempt(self.holder.memory)
            return _join(error, self.holder.notice())
        return store

    # Handlers: each returns the values of snapshot_outputs (after its own outputs, if any).

    def refresh(self) -> tuple:
        return self.snapshot("", "all")

    def snapshot(self, search: str, status: str, message: str = "") -> tuple:
        memory, error = _attempt(self.holder.memory)
        view, view_error = _attempt(lambda: _view(memory, search, status)) if memory else (None, "")
        notice = _join(message, error, view_error, self.holder.notice())
        threshold = float(self.holder.settings["drowsiness_threshold"])
        if view is None:
            return notice, _gauge(None, threshold), [], None, None, ""
        drowsiness, facts, reports = view
        last = reports[0] if reports else None
        return (notice, _gauge(drowsiness, threshold), [_row(f) for f in facts], _figure(reports), last,
                _summary(last))

    def act(self, action: Callable, done: str, search: str, status: str) -> tuple:
        """Run action(memory); show done ('{result}' replaced) or why it failed, then refresh."""
        memory, message = _attempt(self.holder.memory)
        if memory is not None:
            result, error = _attempt(lambda: action(memory))
            message = error or done.replace("{result}", str(result))
        return self.snapshot(search, status, message)

    def forget(self, fact_id, search, status) -> tuple:
        return self.act(lambda m: m.forget(_id(fact_id)), f"Forgot fact #{fact_id}.", search, status)

    def pin(self, fact_id, search, status) -> tuple:
        return self.act(lambda m: m.pin(_id(fact_id), True), f"Pinned fact #{fact_id}.", search, status)

    def unpin(self, fact_id, search, status) -> tuple:
        return self.act(lambda m: m.pin(_id(fact_id), False), f"Unpinned fact #{fact_id}.", search, status)

    def correct(self, fact_id, new_object, search, status) -> tuple:
        done = f"Fact #{fact_id} now says: {new_object}."
        return self.act(lambda m: m.correct(_id(fact_id), _text(new_object)), done, search, status)

    def forget_everything(self, search, status) -> tuple:
        done = "Forgot everything: the weights are the original model's again."
        return (gr.update(visible=False), *self.act(lambda m: m.forget_everything(), done, search, status))

    def import_(self, path, search, status) -> tuple:
        def load(memory) -> int:
            return memory.import_json(json.loads(Path(path).read_text(encoding="utf-8")))
        return self.act(load, "Imported {result} facts.", search, status)

    def export(self) -> tuple:
        memory, error = _attempt(self.holder.memory)
        if memory is None:
            return None, _join(error, self.holder.notice())
        path, error = _attempt(lambda: _export(memory))
        return path, error or f"Exported the memory to {Path(path).name}."

    def sleep(self, search, status, progress=gr.Progress()) -> Iterator[tuple]:
        yield from self._cycle("sleep", search, status, progress)

    def nap(self, search, status, progress=gr.Progress()) -> Iterator[tuple]:
        yield from self._cycle("nap", search, status, progress)

    def _cycle(self, kind: str, search: str, status: str, progress) -> Iterator[tuple]:
        """Run a sleep or a nap in a worker thread, streaming its steps into the log."""
        memory, error = _attempt(self.holder.memory)
        if memory is None:
            yield ("", *self.snapshot(search, status, error))
            return
        lines: list[str] = []
        for event in _stream(getattr(memory, kind)):
            if isinstance(event, tuple):  # the end: (summary of the report, why it failed)
                summary, error = event
                lines.append(f"[failed] {error}" if error else f"[done] {summary.replace('**', '')}")
                yield ("\n".join(lines), *self.snapshot(search, status, error))
                return
            lines.append(f"[{event.fraction:4.0%}] {event.step}: {event.message}")
            progress(event.fraction, desc=event.message)
            yield ("\n".join(lines), *[gr.update()] * len(self.snapshot_outputs))


def _view(memory, search: str, status: str) -> tuple:
    status = None if status in (None, "all") else status
    return memory.drowsiness(), memory.facts(search=search or "", status=status), memory.sleep_reports()


def _export(memory) -> str:
    """Write the memory as JSON into a fresh temporary folder (which gradio serves for download)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.mkdtemp(prefix="sleeping-llm-")) / f"sleeping-llm-memory-{stamp}.json"
    path.write_text(json.dumps(memory.export_json(), indent=1, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _stream(operation: Callable) -> Iterator:
    """Run operation(progress=callback) in a thread; yield its Progress events, then
    (summary of its report, '') or ('', why it failed)."""
    events: queue.Queue = queue.Queue()

    def work() -> None:
        report, error = _attempt(lambda: operation(progress=events.put))
        events.put(("", error) if error else (_summary(report.to_dict()), ""))

    threading.Thread(target=work, name="sleeping-llm-cycle", daemon=True).start()
    while not isinstance(event := events.get(), tuple):
        yield event
    yield event


def _attempt(fn: Callable) -> tuple:
    """(fn(), '') or (None, a message for the user): a failing action must not break the tab."""
    try:
        return fn(), ""
    except TimeoutError as error:
        return None, f"Busy: {error}. Try again when the reply is finished."
    except (LookupError, ValueError, OSError) as error:
        return None, f"Could not do that: {error}"
    except Exception as error:
        log.exception("Sleeping LLM: the memory tab failed")
        return None, f"Failed: {type(error).__name__}: {error}"


def _selected_fact(rows: list, event: gr.SelectData) -> tuple:
    row = rows[event.index[0]]
    return int(row[0]), row[3]


def _text(value) -> str:
    if not str(value or "").strip():
        raise ValueError("type the new object first")
    return str(value).strip()


def _id(value) -> int:
    if not value or int(value) < 1:
        raise ValueError("select a fact first (click its row)")
    return int(value)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _row(fact) -> list:
    recall = "" if fact.recall is None else f"{fact.recall:.2f}"
    return [fact.id, fact.subject, fact.relation, fact.object, fact.source_text,
            fact.created_at[:16].replace("T", " "), fact.status, "yes" if fact.pinned else "", recall]


def _gauge(value: float | None, threshold: float) -> str:
    """Drowsiness as a number and a bar that fills up to the threshold."""
    if value is None:
        return "<div>Drowsiness: –</div>"
    drowsy = value >= threshold
    fill = 100 * min(value / threshold, 1.0) if threshold > 0 else 100
    color = "#e8832a" if drowsy else "#3b82f6"
    label = "drowsy: time to sleep" if drowsy else "awake"
    return (f'<div title="drowsiness">Drowsiness <b>{value:.2f}</b> / {threshold:.2f} ({label})'
            f'<div style="background:#8883;border-radius:4px;height:10px;margin-top:4px">'
            f'<div style="width:{fill:.0f}%;background:{color};height:10px;border-radius:4px"></div></div></div>')


def _summary(report: dict | None) -> str:
    """One line about a sleep or nap report (as the store keeps it)."""
    if report is None:
        return ""
    if report.get("failed"):        # older reports lack the key
        return f"**{report['kind'].capitalize()} #{report.get('id', '')}** failed: {report['reason']}."
    verdict = "committed" if report["committed"] else f"weights kept as they were ({report['reason']})"
    when = report["started_at"][:16].replace("T", " ")
    return (f"**{report['kind'].capitalize()} #{report.get('id', '')}**, {when}: {verdict} in "
            f"{report['seconds']:.1f} s. Recall {_num(report['recall_before'])} → {_num(report['recall_after'])}, "
            f"perplexity {_num(report['ppl_before'])} → {_num(report['ppl_after'])}, {len(report['facts'])} facts"
            f"{_changes(report)}.")


def _changes(report: dict) -> str:
    """The summary's ", 7 repaired, 2 tipped over" where a sleep changed what is recalled (older reports lack it)."""
    if "repaired" not in report or not (report["repaired"] or report["tipped"]):
        return ""
    return f", {len(report['repaired'])} repaired, {len(report['tipped'])} tipped over"


def _num(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _figure(reports: list[dict]):
    """Recall and perplexity before and after each sleep, oldest first; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    sleeps = [r for r in reversed(reports) if r["kind"] == "sleep" and not r.get("failed")]
    if not sleeps:
        return None
    figure = Figure(figsize=(8, 3), tight_layout=True)
    cycles = list(range(1, len(sleeps) + 1))
    for column, name, key in ((1, "recall", "recall"), (2, "perplexity", "ppl")):
        axis = figure.add_subplot(1, 2, column)
        axis.plot(cycles, [r[f"{key}_before"] for r in sleeps], "o--", label="before")
        axis.plot(cycles, [r[f"{key}_after"] for r in sleeps], "o-", label="after")
        axis.set(ylabel=name, xlabel="sleep cycle", xticks=cycles)
        axis.legend()
    return figure
