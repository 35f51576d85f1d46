"""Crash safety: processes SIGKILLed in the middle of each operation leave a store that reopens with
weights == pristine + the committed edits, bitwise, and every committed fact; damaged edit files are
reported and never applied; a failing commit changes nothing. The long campaign is
`python -m sleep_core.bench crash`; here each operation is killed at its first commit points."""
import sqlite3
import threading

import pytest
import torch

from sleep_core import EditConfig, Fact, Memory, MemoryConfig, StoreError
from sleep_core.assets.model import ensure_default_model
from sleep_core.bench import crash
from sleep_core.memory.migrations import migrate
from sleep_core.memory.store import Store
from sleep_core.model import ModelAdapter

FACTS = [Fact("Aria", "lives in", "Portland", ("Where does Aria live?",)),
         Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",)),
         Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    target = crash.Target(str(ensure_default_model()))
    ctx = crash.context()
    return target, ctx, crash.prepare(ctx, target, tmp_path_factory.mktemp("templates"))


@pytest.mark.parametrize("op", ["inject", "sleep", "import", "export", "forget", "forget_everything",
                                "open"])
def test_killed_operation_recovers(campaign, tmp_path, op):
    target, ctx, templates = campaign
    points = range(1, 9) if op == "open" else (1, 2, 3)
    runs = [crash.run_once(ctx, target, templates[op], tmp_path, op, change=n) for n in points]
    # an export can finish between two looks of the watcher on a loaded machine: try its first point again
    while not any(r["killed"] for r in runs) and len(runs) < 12:
        runs.append(crash.run_once(ctx, target, templates[op], tmp_path, op, change=1))
    assert [r for r in runs if crash.failed(r)] == []
    assert any(r["killed"] for r in runs)


def _config(store_dir):
    return MemoryConfig(store_dir=store_dir, edit=EditConfig(cov_tokens=3000, v_steps=4))


def _damage(files, how):
    first, second = files[0], files[1]
    if how == "truncated":
        first.write_bytes(first.read_bytes()[:100])
    elif how == "zero-length":
        first.write_bytes(b"")
    elif how == "bit flip":
        data = bytearray(first.read_bytes())
        data[-5] ^= 1
        first.write_bytes(bytes(data))
    elif how == "missing":
        first.unlink()
    elif how == "swapped":
        a, b = first.read_bytes(), second.read_bytes()
        first.write_bytes(b)
        second.write_bytes(a)
    return {first.name, second.name} if how == "swapped" else {first.name}


@pytest.mark.parametrize("how", ["truncated", "zero-length", "bit flip", "missing", "swapped"])
def test_damaged_edit_file_is_reported_and_never_applied(make_tiny, tokenizer, store_dir, how):
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    memory.inject_now(FACTS)
    memory.close()
    folder = memory.store.folder
    names = {r[1]: r[0] for r in sqlite3.connect(folder / "memory.sqlite").execute("SELECT id, edit_file FROM facts")}
    damaged = {names[n] for n in _damage(sorted((folder / "edits").iterdir()), how)}
    intact, _, bad = crash.committed(folder)
    assert set(intact) == set(names.values()) - damaged and len(bad) == len(damaged)

    model = make_tiny()
    adapter = ModelAdapter(model)
    pristine = {l: adapter.read_weight(l).clone() for l in adapter.layers}
    gate = threading.RLock()           # the worker waits: the weights right after opening are checked first
    with gate:
        reopened = Memory.open(model, tokenizer, _config(store_dir), weight_lock=lambda: gate)
        want = crash.expected(adapter, pristine, intact)
        assert all(torch.equal(want[l], adapter.read_weight(l)) for l in want)
    assert {int(p.split()[1].rstrip(":")) for p in reopened.problems} == damaged
    assert all("missing or corrupt; not applied" in p for p in reopened.problems)
    assert "not applied" in reopened.status()["notice"]
    assert reopened.wait_idle(120)                      # each damaged fact is re-injected from its text
    assert {r.status for r in reopened.facts()} == {"healthy"} and len(reopened.ledger.columns) == 3
    edits, _, bad = crash.committed(folder)
    assert not bad and set(edits) == set(reopened.ledger.columns)
    want = crash.expected(adapter, pristine, edits)
    assert all(torch.equal(want[l], adapter.read_weight(l)) for l in want)
    reopened.close()


def test_a_failing_commit_changes_no_row(make_tiny, tokenizer, store_dir):
    """save_edits of several facts (a sleep's commit) is one transaction: all rows move, or none."""
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    first, second = memory.inject_now(FACTS[:2])
    rows = lambda: list(memory.store.db.execute("SELECT id, edit_file, edit_sha256, status FROM facts ORDER BY id"))
    before = rows()
    memory.store.db.execute(f"CREATE TEMP TRIGGER refuse BEFORE UPDATE ON facts WHEN NEW.id = {second} "
                            "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        memory.store.save_edits({first: memory.ledger.columns[first], second: memory.ledger.columns[second]},
                                {first: "degraded", second: "degraded"})
    assert rows() == before
    memory.close()
    reopened = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    assert sorted(p.name for p in (reopened.store.edits).iterdir()) == sorted(r[1] for r in before)
    reopened.close()


def test_an_interrupted_first_claim_reopens(tmp_path):
    """The store's first open writes its model and layers together: a failure between them leaves neither."""
    folder = tmp_path / "store"
    folder.mkdir()
    db = sqlite3.connect(folder / "memory.sqlite", isolation_level=None)
    migrate(db)
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON meta WHEN NEW.key = 'layers' "
               "BEGIN SELECT RAISE(ABORT, 'x'); END")
    db.close()
    with pytest.raises((sqlite3.IntegrityError, StoreError)):
        Store(folder, "llama-x", (1,))
    sqlite3.connect(folder / "memory.sqlite").execute("DROP TRIGGER refuse")
    store = Store(folder, "llama-x", (1,))
    assert dict(store.db.execute("SELECT key, value FROM meta")) == {"fingerprint": "llama-x", "layers": "[1]"}
    store.close()


def test_an_interrupted_migration_is_rolled_back(tmp_path):
    db = sqlite3.connect(tmp_path / "memory.sqlite", isolation_level=None)
    db.set_authorizer(lambda action, table, *_: sqlite3.SQLITE_DENY
                      if action == sqlite3.SQLITE_INSERT and table == "migrations" else sqlite3.SQLITE_OK)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        migrate(db)                        # fails after m001's tables were created, before it is recorded
    db.set_authorizer(None)
    migrate(db)
    assert [r[0] for r in db.execute("SELECT name FROM migrations")] == ["m001_initial"]
