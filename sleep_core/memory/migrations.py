"""Schema changes as ordered, named functions; each runs once and is recorded (like llm's migrations)."""
import sqlite3
from datetime import datetime, timezone
from typing import Callable

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("""CREATE TABLE facts (
        id INTEGER PRIMARY KEY, subject TEXT NOT NULL, relation TEXT NOT NULL, object TEXT NOT NULL,
        questions TEXT NOT NULL, source_text TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT 'chat',
        created_at TEXT NOT NULL, status TEXT NOT NULL, pinned INTEGER NOT NULL DEFAULT 0, recall REAL,
        edit_file TEXT, edit_sha256 TEXT)""")
    db.execute("CREATE INDEX facts_key ON facts (lower(subject), lower(relation), status)")
    db.execute("""CREATE TABLE reports (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started_at TEXT NOT NULL, body TEXT NOT NULL)""")


def migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM migrations")}
    for fn in MIGRATIONS:
        if fn.__name__ not in done:
            db.execute("BEGIN IMMEDIATE")       # SQLite's DDL is transactional: a migration lands whole or not at all
            try:
                fn(db)
                db.execute("INSERT INTO migrations VALUES (?, ?)",
                           (fn.__name__, datetime.now(timezone.utc).isoformat()))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
