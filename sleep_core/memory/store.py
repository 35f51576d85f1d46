"""The memory store of one model: facts, reports and each fact's edit columns, crash-safe.

SQLite (WAL, transactions) holds facts and reports; each fact's columns live in a safetensors file whose
sha256 is in the fact's row. A file is written (temp, fsync, rename) before the row that names it is
committed, so a kill at any point leaves either the old row or the new one, never a half-written edit.
"""
import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .facts import Fact, FactEdit
from .migrations import migrate

log = logging.getLogger(__name__)

STATUSES = ("pending", "healthy", "degraded", "superseded", "dropped")
MAX_FIELD_CHARS = 1_000      # subject, relation, object, each question
MAX_SOURCE_CHARS = 10_000    # the message a fact came from (extraction refuses longer ones too)
EXPORT_FORMAT, EXPORT_VERSION = "sleeping-llm-memory", 1
EXPORT_KEYS = ("format", "version", "model", "exported_at", "facts")
EXPORT_FIELDS = {"subject": str, "relation": str, "object": str, "questions": list, "source_text": str,
                 "created_at": str, "pinned": bool}


class StoreError(RuntimeError):
    """The store cannot be used as asked; the message says why."""


class WrongModelError(StoreError):
    """The store was made for another model; nothing from it is applied."""


@dataclass
class FactRecord:
    id: int
    subject: str
    relation: str
    object: str
    questions: tuple[str, ...]
    source_text: str
    source: str
    created_at: str
    status: str
    pinned: bool
    recall: float | None

    @property
    def fact(self) -> Fact:
        return Fact(self.subject, self.relation, self.object, self.questions)

    def to_dict(self) -> dict:
        return {**asdict(self), "questions": list(self.questions)}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_text(fact: Fact, source_text: str) -> None:
    """Refuse text the store cannot keep faithfully: over the size limits, NUL, unpaired surrogates."""
    fields = {"subject": fact.subject, "relation": fact.relation, "object": fact.object, "source_text": source_text,
              **{f"question {i + 1}": q for i, q in enumerate(fact.questions)}}
    for name, text in fields.items():
        if not isinstance(text, str):
            raise ValueError(f"the fact's {name} must be text, not {type(text).__name__}")
        limit = MAX_SOURCE_CHARS if name == "source_text" else MAX_FIELD_CHARS
        if len(text) > limit:
            raise ValueError(f"the fact's {name} has {len(text):,} characters; at most {limit:,} are kept")
        if "\0" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            raise ValueError(f"the fact's {name} contains a NUL character or an unpaired surrogate")


def export_document(records: list[FactRecord], fingerprint: str) -> dict:
    """Facts as text, not edits (another model needs its own), with the fingerprint of the model they came from."""
    facts = [{name: list(r.questions) if name == "questions" else getattr(r, name) for name in EXPORT_FIELDS}
             for r in records]
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": fingerprint, "exported_at": now(),
            "facts": facts}


def read_document(data) -> tuple[str, list[tuple[Fact, str, str, bool]]]:
    """An exported memory, validated whole: (its model's fingerprint, [(fact, source_text, created_at, pinned)]).

    Raises ValueError naming the first problem; nothing is written, so a bad file changes nothing."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValueError("not a Sleeping LLM memory export (expected a JSON object with format "
                         f"{EXPORT_FORMAT!r})")
    if set(data) != set(EXPORT_KEYS):
        raise ValueError(f"an export has exactly the keys {sorted(EXPORT_KEYS)}, not {sorted(map(str, data))}")
    if type(data["version"]) is not int or data["version"] != EXPORT_VERSION:
        raise ValueError(f"export version {data['version']!r} is not supported; this version reads {EXPORT_VERSION}")
    if not isinstance(data["model"], str) or not 0 < len(data["model"]) <= 200 or not isinstance(data["facts"], list):
        raise ValueError("an export needs a model fingerprint (text) and a list of facts")
    return data["model"], [_read_fact(i, item) for i, item in enumerate(data["facts"], 1)]


def _read_fact(number: int, item) -> tuple[Fact, str, str, bool]:
    try:
        if not isinstance(item, dict) or set(item) != set(EXPORT_FIELDS):
            raise ValueError(f"needs exactly the fields {sorted(EXPORT_FIELDS)}")
        wrong = [k for k, kind in EXPORT_FIELDS.items() if type(item[k]) is not kind]
        if wrong or not all(isinstance(q, str) for q in item["questions"]):
            raise ValueError(f"wrong type for {', '.join(wrong) or 'questions'}")
        datetime.fromisoformat(item["created_at"])
        fact = Fact(item["subject"], item["relation"], item["object"], tuple(item["questions"]))
        check_text(fact, item["source_text"])
    except ValueError as error:
        raise ValueError(f"fact {number} of the export: {error}") from None
    return fact, item["source_text"], item["created_at"], item["pinned"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def _edit_tensors(edit: FactEdit) -> dict[str, torch.Tensor]:
    out = {"delta": edit.delta, "prob": torch.tensor([edit.prob])}
    for name in ("a", "b", "k"):
        out.update({f"{name}.{l}": t for l, t in getattr(edit, name).items()})
    return out


def _edit_from(tensors: dict[str, torch.Tensor]) -> FactEdit:
    parts = {"a": {}, "b": {}, "k": {}}
    for key, t in tensors.items():
        if "." in key:
            name, layer = key.split(".")
            parts[name][int(layer)] = t
    return FactEdit(parts["a"], parts["b"], parts["k"], tensors["delta"], float(tensors["prob"][0]))


class Store:
    """One folder per model fingerprint: memory.sqlite and edits/."""

    def __init__(self, folder: Path, fingerprint: str, layers: tuple[int, ...]):
        self.folder = Path(folder)
        self.edits = self.folder / "edits"
        self.edits.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()   # one connection shared by the worker and the caller's threads
        self.db = sqlite3.connect(self.folder / "memory.sqlite", check_same_thread=False, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA secure_delete=ON")   # forgotten text is overwritten, not left in free pages
            migrate(self.db)
            self._claim(fingerprint, layers)
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise StoreError(f"The memory store {self.folder / 'memory.sqlite'} cannot be read ({error}); nothing "
                             "was changed. If the file is damaged, move it away to start an empty memory.") from error
        except BaseException:
            self.db.close()
            raise
        self._remove_orphans()

    @contextmanager
    def transaction(self):
        """One atomic change (BEGIN ... COMMIT, rolled back on error); nested uses join the outer one."""
        with self._lock:
            if self.db.in_transaction:
                yield
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        """A read under the lock: one shared connection sees other threads' open transactions, and a cursor
        still being read while another thread writes fails with "table is locked"."""
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def _claim(self, fingerprint: str, layers: tuple[int, ...]) -> None:
        meta = dict(self._rows("SELECT key, value FROM meta"))
        if not meta:
            with self.transaction():
                self.db.executemany("INSERT INTO meta VALUES (?, ?)",
                                    [("fingerprint", fingerprint), ("layers", json.dumps(list(layers)))])
            return
        if meta["fingerprint"] != fingerprint:
            raise WrongModelError(
                f"This memory belongs to model {meta['fingerprint']}, not to the loaded model {fingerprint}; "
                "it was not applied. Load that model, or export the facts as JSON and import them here.")
        if json.loads(meta["layers"]) != list(layers):
            raise StoreError(f"This memory edits layers {meta['layers']}, but layers {list(layers)} were asked "
                             "for; use the same layers, or export and re-import the facts.")

    def _remove_orphans(self) -> None:
        """Factor files no committed row names: left by a kill between writing a file and its row."""
        named = {row[0] for row in self._rows("SELECT edit_file FROM facts WHERE edit_file IS NOT NULL")}
        for path in self.edits.iterdir():
            if path.name not in named:
                path.unlink()

    # facts
    def add_fact(self, fact: Fact, source_text: str = "", source: str = "chat", created_at: str | None = None,
                 pinned: bool = False) -> int:
        check_text(fact, source_text)
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO facts (subject, relation, object, questions, source_text, source, created_at, status,"
                " pinned) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (fact.subject, fact.relation, fact.object, json.dumps(fact.questions), source_text, source,
                 created_at or now(), int(pinned)))
        return cur.lastrowid

    def facts(self, status: str | None = None, search: str = "") -> list[FactRecord]:
        """In id order; `search` is literal text found in any field, case-folded (SQL LIKE folds ASCII only)."""
        sql, args = ("SELECT * FROM facts WHERE status = ?", [status]) if status else ("SELECT * FROM facts", [])
        needle = search.casefold()
        records = [self._record(row) for row in self._rows(sql + " ORDER BY id", args)]
        return [r for r in records
                if any(needle in text.casefold() for text in (r.subject, r.relation, r.object, r.source_text))]

    def fact(self, fact_id: int) -> FactRecord:
        rows = self._rows("SELECT * FROM facts WHERE id = ?", (fact_id,))
        if not rows:
            raise StoreError(f"no fact with id {fact_id}")
        return self._record(rows[0])

    def _record(self, row) -> FactRecord:
        (id_, subject, relation, obj, questions, source_text, source, created, status, pinned, recall) = row[:11]
        return FactRecord(id_, subject, relation, obj, tuple(json.loads(questions)), source_text, source,
                          created, status, bool(pinned), recall)

    def update(self, fact_id: int, **fields) -> None:
        allowed = {"status", "pinned", "recall", "object"}
        if not set(fields) <= allowed:
            raise StoreError(f"cannot update {set(fields) - allowed}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction():
            self.db.execute(f"UPDATE facts SET {sets} WHERE id = ?", (*fields.values(), fact_id))

    # edits
    def save_edits(self, edits: dict[int, FactEdit], status: dict[int, str] | None = None) -> None:
        """Write the columns of several facts and commit their rows in one transaction."""
        written, old = {}, []
        for fact_id, edit in edits.items():
            name = f"{fact_id}-{uuid.uuid4().hex[:8]}.safetensors"
            _write_atomic(self.edits / name, _edit_tensors(edit))
            written[fact_id] = (name, _sha256(self.edits / name))
        with self.transaction():
            for fact_id, (name, sha) in written.items():
                row = self.db.execute("SELECT edit_file FROM facts WHERE id = ?", (fact_id,)).fetchone()
                old += [row[0]] if row and row[0] else []
                self.db.execute("UPDATE facts SET edit_file = ?, edit_sha256 = ?, status = ? WHERE id = ?",
                                (name, sha, (status or {}).get(fact_id, "healthy"), fact_id))
        self._unlink(old)

    def drop_edits(self, fact_ids: list[int], status: str | None = None, delete: bool = False) -> None:
        """Detach (or delete) facts' edits in one transaction; their files go after the commit."""
        old = []
        with self.transaction():
            for fact_id in fact_ids:
                row = self.db.execute("SELECT edit_file FROM facts WHERE id = ?", (fact_id,)).fetchone()
                old += [row[0]] if row and row[0] else []
                if delete:
                    self.db.execute("DELETE FROM facts WHERE id = ?", (fact_id,))
                else:
                    self.db.execute("UPDATE facts SET edit_file = NULL, edit_sha256 = NULL, status = ? "
                                    "WHERE id = ?", (status, fact_id))
            if delete:
                self._scrub_reports(set(fact_ids))
        self._unlink(old)
        if delete:
            self.checkpoint()

    def _scrub_reports(self, fact_ids: set[int]) -> None:
        """Sleep reports quote each audited fact; a forgotten fact's text leaves them too."""
        for report_id, body in self._rows("SELECT id, body FROM reports"):
            body = json.loads(body)
            rows = [row for row in body.get("facts", []) if row.get("id") not in fact_ids]
            if len(rows) != len(body.get("facts", [])):
                self.db.execute("UPDATE reports SET body = ? WHERE id = ?",
                                (json.dumps({**body, "facts": rows}), report_id))

    def checkpoint(self) -> None:
        """Move the WAL into the database and truncate it, so deleted text survives in neither."""
        with self._lock:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            (self.edits / name).unlink(missing_ok=True)

    def load_edits(self) -> tuple[dict[int, FactEdit], list[str]]:
        """Every committed edit whose file matches its checksum, and a problem line for each that does not."""
        edits, problems = {}, []
        for fact_id, name, sha in self._rows(
                "SELECT id, edit_file, edit_sha256 FROM facts WHERE edit_file IS NOT NULL ORDER BY id"):
            path = self.edits / name
            if not path.exists() or _sha256(path) != sha:
                problems.append(f"fact {fact_id}: edit file {name} is missing or corrupt; not applied")
                continue
            edits[fact_id] = _edit_from(load_file(str(path)))
        return edits, problems

    # counters (drowsiness)
    def counter(self, name: str) -> int:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (f"counter.{name}",))
        return int(rows[0][0]) if rows else 0

    def bump(self, name: str, by: int = 1) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"counter.{name}", self.counter(name) + by))

    def set_counter(self, name: str, value: int = 0) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"counter.{name}", value))

    # reports
    def add_report(self, kind: str, started_at: str, body: dict) -> int:
        with self.transaction():
            return self.db.execute("INSERT INTO reports (kind, started_at, body) VALUES (?, ?, ?)",
                                   (kind, started_at, json.dumps(body))).lastrowid

    def reports(self, limit: int = 20) -> list[tuple[int, str, str, dict]]:
        rows = self._rows("SELECT id, kind, started_at, body FROM reports ORDER BY id DESC LIMIT ?", (limit,))
        return [(i, k, s, json.loads(b)) for i, k, s, b in rows]

    def clear(self) -> None:
        """Forget everything: rows, reports and files; the text is overwritten and the WAL truncated."""
        with self.transaction():
            self.db.execute("DELETE FROM facts")
            self.db.execute("DELETE FROM reports")
        with self._lock:
            self.checkpoint()
            self.db.execute("VACUUM")
        self._remove_orphans()

    def close(self) -> None:
        with self._lock:
            self.db.close()
