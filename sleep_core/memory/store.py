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
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .facts import Fact, FactEdit
from .migrations import migrate

log = logging.getLogger(__name__)

STATUSES = ("pending", "healthy", "degraded", "superseded")


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
        self.db = sqlite3.connect(self.folder / "memory.sqlite", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA secure_delete=ON")   # forgotten text is overwritten, not left in free pages
        migrate(self.db)
        self._claim(fingerprint, layers)
        self._remove_orphans()

    def _claim(self, fingerprint: str, layers: tuple[int, ...]) -> None:
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if not meta:
            with self.db:
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
        named = {row[0] for row in self.db.execute("SELECT edit_file FROM facts WHERE edit_file IS NOT NULL")}
        for path in self.edits.iterdir():
            if path.name not in named:
                path.unlink()

    # facts
    def add_fact(self, fact: Fact, source_text: str = "", source: str = "chat") -> int:
        with self.db:
            cur = self.db.execute(
                "INSERT INTO facts (subject, relation, object, questions, source_text, source, created_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                (fact.subject, fact.relation, fact.object, json.dumps(fact.questions), source_text, source, now()))
        return cur.lastrowid

    def facts(self, status: str | None = None, search: str = "") -> list[FactRecord]:
        sql, args = "SELECT * FROM facts WHERE 1=1", []
        if status:
            sql, args = sql + " AND status = ?", args + [status]
        if search:
            like = f"%{search.lower()}%"
            sql += " AND (lower(subject) LIKE ? OR lower(relation) LIKE ? OR lower(object) LIKE ?" \
                   " OR lower(source_text) LIKE ?)"
            args += [like] * 4
        return [self._record(row) for row in self.db.execute(sql + " ORDER BY id", args)]

    def fact(self, fact_id: int) -> FactRecord:
        row = self.db.execute("SELECT * FROM facts WHERE id = ?", (fact_id,)).fetchone()
        if row is None:
            raise StoreError(f"no fact with id {fact_id}")
        return self._record(row)

    def _record(self, row) -> FactRecord:
        (id_, subject, relation, obj, questions, source_text, source, created, status, pinned, recall) = row[:11]
        return FactRecord(id_, subject, relation, obj, tuple(json.loads(questions)), source_text, source,
                          created, status, bool(pinned), recall)

    def update(self, fact_id: int, **fields) -> None:
        allowed = {"status", "pinned", "recall", "object"}
        if not set(fields) <= allowed:
            raise StoreError(f"cannot update {set(fields) - allowed}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute(f"UPDATE facts SET {sets} WHERE id = ?", (*fields.values(), fact_id))

    # edits
    def save_edits(self, edits: dict[int, FactEdit], status: dict[int, str] | None = None) -> None:
        """Write the columns of several facts and commit their rows in one transaction."""
        written, old = {}, []
        for fact_id, edit in edits.items():
            name = f"{fact_id}-{uuid.uuid4().hex[:8]}.safetensors"
            _write_atomic(self.edits / name, _edit_tensors(edit))
            written[fact_id] = (name, _sha256(self.edits / name))
        with self.db:
            for fact_id, (name, sha) in written.items():
                row = self.db.execute("SELECT edit_file FROM facts WHERE id = ?", (fact_id,)).fetchone()
                old += [row[0]] if row and row[0] else []
                self.db.execute("UPDATE facts SET edit_file = ?, edit_sha256 = ?, status = ? WHERE id = ?",
                                (name, sha, (status or {}).get(fact_id, "healthy"), fact_id))
        self._unlink(old)

    def drop_edits(self, fact_ids: list[int], status: str | None = None, delete: bool = False) -> None:
        """Detach (or delete) facts' edits in one transaction; their files go after the commit."""
        old = []
        with self.db:
            for fact_id in fact_ids:
                row = self.db.execute("SELECT edit_file FROM facts WHERE id = ?", (fact_id,)).fetchone()
                old += [row[0]] if row and row[0] else []
                if delete:
                    self.db.execute("DELETE FROM facts WHERE id = ?", (fact_id,))
                else:
                    self.db.execute("UPDATE facts SET edit_file = NULL, edit_sha256 = NULL, status = ? "
                                    "WHERE id = ?", (status, fact_id))
        self._unlink(old)
        if delete:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            (self.edits / name).unlink(missing_ok=True)

    def load_edits(self) -> tuple[dict[int, FactEdit], list[str]]:
        """Every committed edit whose file matches its checksum, and a problem line for each that does not."""
        edits, problems = {}, []
        for fact_id, name, sha in self.db.execute(
                "SELECT id, edit_file, edit_sha256 FROM facts WHERE edit_file IS NOT NULL ORDER BY id"):
            path = self.edits / name
            if not path.exists() or _sha256(path) != sha:
                problems.append(f"fact {fact_id}: edit file {name} is missing or corrupt; not applied")
                continue
            edits[fact_id] = _edit_from(load_file(str(path)))
        return edits, problems

    # counters (drowsiness)
    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (f"counter.{name}",)).fetchone()
        return int(row[0]) if row else 0

    def bump(self, name: str, by: int = 1) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"counter.{name}", self.counter(name) + by))

    def reset(self, name: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"counter.{name}", 0))

    # reports
    def add_report(self, kind: str, started_at: str, body: dict) -> int:
        with self.db:
            return self.db.execute("INSERT INTO reports (kind, started_at, body) VALUES (?, ?, ?)",
                                   (kind, started_at, json.dumps(body))).lastrowid

    def reports(self, limit: int = 20) -> list[tuple[int, str, str, dict]]:
        rows = self.db.execute("SELECT id, kind, started_at, body FROM reports ORDER BY id DESC LIMIT ?", (limit,))
        return [(i, k, s, json.loads(b)) for i, k, s, b in rows]

    def clear(self) -> None:
        """Forget everything: rows, reports and files; the text is overwritten and the WAL truncated."""
        with self.db:
            self.db.execute("DELETE FROM facts")
            self.db.execute("DELETE FROM reports")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")
        self._remove_orphans()

    def close(self) -> None:
        self.db.close()
