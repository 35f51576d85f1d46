"""Generation and weight changes never overlap. Chat turns run forward passes under a real non-reentrant lock
(the host's generation lock) while other threads learn, correct, sleep and forget; every turn sees one set of
weights from start to end, nothing is lost, and the weights equal a rebuild from the store. A sleep waits for
a reply in progress before it changes a weight; a weight lock that times out is a clear "busy" error that
changes nothing."""
import hashlib
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from sleep_core import EditConfig, Fact, Memory, MemoryConfig, facade
from sleep_core.bench.crash import committed, expected
from sleep_core.memory.store import Store
from sleep_core.model import ModelAdapter

PEOPLE = [("Aria", "Portland"), ("Bruno", "Lisbon"), ("Chidi", "Lagos"), ("Dana", "Quito"), ("Emeka", "Accra"),
          ("Farah", "Amman"), ("Goran", "Split"), ("Hana", "Kyoto"), ("Ilse", "Graz"), ("Jonas", "Bergen"),
          ("Kofi", "Kumasi"), ("Lena", "Tartu")]
FACTS = [Fact(name, "lives in", city, (f"Where does {name} live?",)) for name, city in PEOPLE]


def _config(store_dir):
    return MemoryConfig(store_dir=store_dir, edit=EditConfig(cov_tokens=3000, v_steps=4))


def _digest(memory) -> str:
    h = hashlib.sha256()
    for layer in memory.adapter.layers:
        h.update(memory.adapter.read_weight(layer).numpy().tobytes())
    return h.hexdigest()


def _state(memory) -> tuple:
    rows = [(r.id, r.status, r.object) for r in memory.facts()]
    return _digest(memory), rows, len(memory.sleep_reports()), memory.drowsiness()


def _assert_consistent(memory, make_tiny) -> None:
    """Store and weights agree: live == pristine + Σ committed files, and a status is active iff it has a file."""
    edits, _, bad = committed(memory.store.folder)
    assert not bad and set(edits) == set(memory.ledger.columns)
    assert all((r.status in ("healthy", "degraded")) == (r.id in edits) for r in memory.facts())
    adapter = ModelAdapter(make_tiny())
    want = expected(adapter, {l: adapter.read_weight(l) for l in adapter.layers}, edits)
    assert all(torch.equal(want[l], memory.adapter.read_weight(l)) for l in want)


def _thread(fn, errors: list) -> threading.Thread:
    """A worker thread whose exception fails the test instead of vanishing."""
    def run() -> None:
        try:
            fn()
        except Exception as error:
            errors.append(f"{fn.__name__}: {type(error).__name__}: {error}")
    return threading.Thread(target=run)


def _until_free(action, busy: list):
    """What the user does when told the model is busy: try again."""
    while True:
        try:
            return action()
        except TimeoutError:
            busy.append(action)


def test_chat_turns_learning_sleep_and_forget_at_once(make_tiny, tokenizer, store_dir, strict_lock):
    model = make_tiny()
    memory = Memory.open(model, tokenizer, _config(store_dir), weight_lock=strict_lock)
    memory.priors()
    stop, turns, busy, errors = threading.Event(), [], [], []
    added, forgotten, corrected = [], [], []

    def chat(seed: int) -> None:
        ids = torch.randint(0, 2000, (1, 16), generator=torch.Generator().manual_seed(seed))
        while not stop.is_set():
            try:
                with strict_lock(), torch.no_grad():
                    start = _digest(memory)
                    model(ids)
                    turns.append((start, _digest(memory)))
            except TimeoutError:
                busy.append(seed)
            time.sleep(0.005)

    def learn() -> None:
        for fact in FACTS:
            added.append(memory.add(fact, f"{fact.subject} {fact.relation} {fact.object}."))
            time.sleep(0.05)
        memory.learn("My sister Alice lives in Lisbon. I'm allergic to peanuts.")
        memory.wait_idle(120)
        _until_free(lambda: memory.correct(added[0], "Eugene"), busy)
        corrected.append(added[0])

    def sleep() -> None:
        for _ in range(2):
            time.sleep(0.3)
            _until_free(memory.sleep, busy)

    def forget() -> None:
        while len(added) < 9:
            time.sleep(0.05)
        for fact_id in added[2:9:3]:
            while fact_id not in memory.ledger.columns:
                time.sleep(0.05)
            _until_free(lambda: memory.forget(fact_id), busy)
            forgotten.append(fact_id)

    chats = [threading.Thread(target=chat, args=(i,)) for i in range(2)]
    workers = [_thread(fn, errors) for fn in (learn, sleep, forget)]
    for t in chats + workers:
        t.start()
    for t in workers:
        t.join(300)
    assert memory.wait_idle(120)
    stop.set()
    for t in chats:
        t.join(30)

    assert errors == []
    assert len(turns) >= 20 and all(start == end for start, end in turns)
    assert len({start for start, _ in turns}) > 3          # the turns did see the weights change between them
    old, = corrected
    status = {r.id: r.status for r in memory.facts()}
    aria = [r.object for r in memory.active_records() if r.subject == "Aria"]
    assert status[old] == "superseded" and aria == ["Eugene"]
    kept = set(added) - set(forgotten) - {old}
    assert kept <= set(memory.ledger.columns) and not set(forgotten) & set(status)
    assert "pending" not in status.values()
    _assert_consistent(memory, make_tiny)
    final = {l: memory.adapter.read_weight(l).clone() for l in memory.adapter.layers}
    memory.close()
    rebuilt = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    assert all(torch.equal(final[l], rebuilt.adapter.read_weight(l)) for l in final)
    rebuilt.close()
    print(f"{len(turns)} chat turns ({len(busy)} told busy), {len(added)} facts, 2 sleeps, 3 forgets: nothing lost")


def test_sleep_waits_for_a_reply_in_progress(make_tiny, tokenizer, store_dir, strict_lock):
    model = make_tiny()
    memory = Memory.open(model, tokenizer, _config(store_dir), weight_lock=strict_lock)
    memory.inject_now(FACTS[:3])
    memory.priors()
    replying, seen, released, steps = threading.Event(), [], [], []

    def reply() -> None:
        ids = torch.randint(0, 2000, (1, 16))
        with strict_lock(), torch.no_grad():
            replying.set()
            start = _digest(memory)
            for _ in range(10):                  # a streamed reply: one token at a time for about a second
                model(ids)
                time.sleep(0.1)
            seen.append(start == _digest(memory))
            released.append(time.perf_counter())

    streaming = threading.Thread(target=reply)
    streaming.start()
    replying.wait()
    report = memory.sleep(progress=lambda p: steps.append((p.step, time.perf_counter())))
    streaming.join()
    assert seen == [True] and report.refreshed
    changing = [at for step, at in steps if step != "audit"]     # the audit only reads: it may run beside a reply
    assert changing and min(changing) > released[0]


def test_a_busy_weight_lock_is_a_clear_error_that_changes_nothing(make_tiny, tokenizer, store_dir):
    busy = threading.Event()

    @contextmanager
    def lock():
        if busy.is_set():
            raise TimeoutError("the model is busy generating (waited 0 s)")
        yield

    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir), weight_lock=lock)
    ids = memory.inject_now(FACTS[:3])
    memory.sleep()
    before = _state(memory)
    busy.set()
    for action in (memory.sleep, lambda: memory.forget(ids[0]), memory.forget_everything):
        with pytest.raises(TimeoutError, match="busy"):
            action()
        assert _state(memory) == before
    _assert_consistent(memory, make_tiny)

    with pytest.raises(TimeoutError, match="busy"):
        memory.correct(ids[1], "Oslo")
    queued = memory.add(FACTS[5])
    assert not memory.wait_idle(1.5)                    # learned while busy: it waits, it is not dropped
    assert _digest(memory) == before[0]
    busy.clear()
    assert memory.wait_idle(60)
    status = {r.id: r.status for r in memory.facts()}
    assert status[queued] == "healthy" and status[ids[1]] == "superseded"
    assert [r.object for r in memory.facts(status="healthy") if r.subject == FACTS[1].subject] == ["Oslo"]
    _assert_consistent(memory, make_tiny)
    memory.close()


def test_a_correction_during_a_sleeps_last_writes_stays_superseded(make_tiny, tokenizer, store_dir, monkeypatch):
    """A loaded machine stretches the sleep's status writes; a correction waiting for the sleep must survive them."""
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    ids = memory.inject_now(FACTS[:6])
    update = Store.update

    def descheduled(store, fact_id, **fields):
        if threading.current_thread().name == "sleeper":
            time.sleep(0.1)
        update(store, fact_id, **fields)
    monkeypatch.setattr(Store, "update", descheduled)
    sleeping = threading.Event()
    sleeper = threading.Thread(target=memory.sleep, kwargs={"progress": lambda p: sleeping.set()}, name="sleeper")
    sleeper.start()
    sleeping.wait()
    memory.correct(ids[-1], "Elsewhere")                # waits for the sleep, then supersedes
    sleeper.join()
    assert {r.id: r.status for r in memory.facts()}[ids[-1]] == "superseded"
    assert memory.store.counter("wake_edits") == 1      # the correction's edit counts toward drowsiness
    _assert_consistent(memory, make_tiny)
    memory.close()


def test_facts_a_kill_left_queued_are_written_on_opening_beside_the_others(make_tiny, tokenizer, store_dir,
                                                                           monkeypatch):
    """A kill between storing a message's facts and writing them leaves them pending; the next Memory writes them in
    its worker while the opener measures the priors on the pristine weights, and keeps every other fact (a 250-fact
    CounterFact store once reopened with 10 of them: both threads had swapped in the pristine weights)."""
    measure = facade.cached_moments
    monkeypatch.setattr(facade, "cached_moments", lambda *a: (time.sleep(0.3), measure(*a))[1])  # a slower disk
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    written = memory.inject_now(FACTS[:6])
    queued = [memory.store.add_fact(fact, "", "chat") for fact in FACTS[6:]]     # stored, never written: the kill
    memory.close()
    for attempt in range(3):        # each opening races its worker against the priors
        reopened = Memory.open(make_tiny(), tokenizer, _config(store_dir))
        reopened.priors()
        assert set(written) <= set(reopened.ledger.columns), f"opening {attempt}: the written facts left the weights"
        assert reopened.wait_idle(120)
        assert set(reopened.ledger.columns) == set(written + queued), f"opening {attempt}"
        _assert_consistent(reopened, make_tiny)
        reopened.close()


def test_closing_finishes_the_fact_in_hand_and_leaves_the_queued_ones_for_the_next_opening(make_tiny, tokenizer,
                                                                                           store_dir):
    """The host swaps models without warning: closing must not write the queue into the model that is going, nor
    close the store under an injection; the facts it did not reach stay pending and are written on reopening."""
    entered, release = threading.Event(), threading.Event()

    @contextmanager
    def gate():
        if threading.current_thread().name == "sleeping-llm-inject" and not release.is_set():
            entered.set()
            release.wait(60)
        yield

    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir), weight_lock=gate)
    memory.priors()
    ids = [memory.add(fact) for fact in FACTS[:4]]
    assert entered.wait(60)
    closer = threading.Thread(target=memory.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive(), "close returned while a fact was being written"
    release.set()
    closer.join(60)
    assert not closer.is_alive()
    edits, _, bad = committed(memory.store.folder)
    assert not bad and set(edits) == {ids[0]}, "only the fact in hand was written"
    reopened = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    assert reopened.wait_idle(120)
    assert set(reopened.ledger.columns) == set(ids)
    _assert_consistent(reopened, make_tiny)
    reopened.close()
