"""The sleep cycle: rollback is bitwise, supersession replaces a value, drowsiness rises and falls, and a
sleep repairs a damaged fact on the real model."""
import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from sleep_core import EditConfig, Fact, Memory, MemoryConfig
from sleep_core.cycle.sleep import SleepReport, regression
from sleep_core.eval import raw_recall
from sleep_core.memory.facts import subject_batches

DOG = Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",))
FACTS = [DOG, Fact("Aria", "lives in", "Portland", ("Where does Aria live?",))]


def _memory(model, tokenizer, store_dir, **overrides) -> Memory:
    settings = {"auto_sleep": False, "wake_capacity": 4, **overrides}
    config = MemoryConfig(store_dir=store_dir, ppl_tokens=512, edit=EditConfig(cov_tokens=3000, v_steps=4),
                          **settings)
    return Memory.open(model, tokenizer, config)


def _damage(memory: Memory, fact_id: int) -> None:
    """Zero a fact's columns, as interference from later edits would erode them."""
    edit = memory.ledger.columns[fact_id]
    memory.ledger.set(fact_id, dataclasses.replace(edit, a={l: torch.zeros_like(a) for l, a in edit.a.items()}))
    memory.ledger.rebuild()


def _weights(memory):
    return {l: memory.adapter.read_weight(l).clone() for l in memory.adapter.layers}


def test_a_sleep_that_makes_perplexity_worse_is_rolled_back_bitwise(tiny_llama, tokenizer, store_dir):
    memory = _memory(tiny_llama, tokenizer, store_dir, ppl_tolerance=-1.0)   # any perplexity counts as worse
    memory.inject_now(FACTS)
    for fact_id in memory.ledger.columns:
        _damage(memory, fact_id)
    before = _weights(memory)
    report = memory.sleep()
    assert report.refreshed and not report.committed and report.reason.startswith("rolled back")
    assert all(torch.equal(before[l], memory.adapter.read_weight(l)) for l in before)
    memory.close()


def test_a_sleep_whose_first_refresh_batch_is_refused_keeps_nothing_and_skips_validation(
        tiny_llama, tokenizer, store_dir, monkeypatch):
    import sleep_core.cycle.sleep as sleep
    monkeypatch.setattr(sleep, "MAX_BATCH", 1)
    memory = _memory(tiny_llama, tokenizer, store_dir, ppl_tolerance=-1.0, consolidate=False)
    memory.inject_now(FACTS)
    for fact_id in memory.ledger.columns:
        _damage(memory, fact_id)
    before, columns = _weights(memory), memory.ledger.snapshot()
    report = memory.sleep()
    assert report.reason.startswith("nothing kept: stopped at batch 1 of 2") and not report.committed
    assert report.refreshed == [] and "validate" not in report.timings
    assert all(torch.equal(before[l], memory.adapter.read_weight(l)) for l in before)
    assert memory.ledger.snapshot() == columns
    memory.close()


@pytest.mark.parametrize("after, verdict", [
    ({"ppl_after": 10.0}, ""),
    ({"ppl_after": 10.2}, "perplexity rose"),
    ({"recall_after": 0.7, "chat_recall_after": 0.9}, "recall fell"),
    ({"recall_after": 0.9, "chat_recall_after": 0.4}, "chat recall fell"),   # repaired completions, lost more answers
    ({"recall_after": 0.8, "chat_recall_after": 0.55}, "chat recall fell"),
    ({"recall_after": 0.9, "chat_recall_after": 0.55, "ppl_after": 10.05}, ""),  # repaired more than it lost
])
def test_a_sleep_is_rolled_back_when_perplexity_raw_or_chat_recall_got_worse(after, verdict):
    measured = {"recall_before": 0.8, "recall_after": 0.8, "chat_recall_before": 0.6, "chat_recall_after": 0.6,
                "ppl_before": 10.0, "ppl_after": 10.0, **after}
    assert regression(SleepReport("sleep", "now", **measured), ppl_tolerance=0.01) == verdict


def test_a_new_value_supersedes_the_old_one(tiny_llama, tokenizer, store_dir):
    memory = _memory(tiny_llama, tokenizer, store_dir)
    old, = memory.inject_now([DOG])
    new, = memory.inject_now([dataclasses.replace(DOG, object="Rex")])
    duplicate, = memory.inject_now([dataclasses.replace(DOG, object="Rex")])
    assert set(memory.ledger.columns) == {new}
    assert {r.id: r.status for r in memory.facts()} == {old: "superseded", new: "healthy"}
    assert duplicate not in {r.id for r in memory.facts()}, "a duplicate is not stored twice"
    memory.close()


def test_the_hosts_tokenizer_is_left_as_it_was(tiny_llama, tokenizer, store_dir):
    """Probes pad on the left with a pad token: on the host's own tokenizer that would change how it encodes, and
    the worker's encoding would race the host's."""
    host_tokenizer = copy.deepcopy(tokenizer)
    host_tokenizer.pad_token, host_tokenizer.padding_side = None, "right"
    memory = _memory(tiny_llama, host_tokenizer, store_dir)
    memory.inject_now(FACTS)
    memory.sleep()
    assert host_tokenizer.pad_token is None and host_tokenizer.padding_side == "right"
    memory.close()


def test_the_model_is_asked_for_facts_only_when_model_extraction_is_on(tiny_llama, tokenizer, store_dir,
                                                                        monkeypatch):
    memory = _memory(tiny_llama, tokenizer, store_dir, model_extraction=True)
    replies, ask = [], memory.ask_model
    monkeypatch.setattr(memory, "ask_model", lambda messages: replies.append(ask(messages)) or replies[-1])
    before = _weights(memory)
    learned = memory.learn("My dog's name is Biscuit.")
    assert len(replies) == 1 and isinstance(replies[0], str)
    assert "Biscuit" in [c.object for c in learned.accepted], "the patterns still run"
    assert memory.wait_idle(120) and any(not torch.equal(before[l], w) for l, w in _weights(memory).items())
    memory.config.model_extraction = False
    memory.learn("My cat's name is Tom.")
    assert len(replies) == 1
    memory.close()


def test_a_correction_of_the_case_alone_is_written(tiny_llama, tokenizer, store_dir):
    memory = _memory(tiny_llama, tokenizer, store_dir)
    old, = memory.inject_now([dataclasses.replace(DOG, object="rex")])
    new = memory.correct(old, "Rex")
    assert new.object == "Rex" and set(memory.ledger.columns) == {new.id}
    assert {r.id: r.status for r in memory.facts()} == {old: "superseded", new.id: "healthy"}
    memory.close()


def test_a_correction_of_a_fact_never_written_outlives_a_restart(make_tiny, tokenizer, store_dir):
    """A fact still pending (its injection failed, or a kill came first) is queued again on every open: corrected,
    it must not come back over its correction."""
    memory = _memory(make_tiny(), tokenizer, store_dir)
    pending = memory.store.add_fact(DOG, "", "chat")
    new = memory.correct(pending, "Rex")
    memory.close()
    reopened = _memory(make_tiny(), tokenizer, store_dir)
    assert reopened.wait_idle(120)
    assert [r.object for r in reopened.active_records()] == ["Rex"]
    assert {r.id: r.status for r in reopened.facts()} == {pending: "superseded", new.id: "healthy"}
    reopened.close()


def test_facts_injected_together_are_one_solve_and_the_batch_supersedes_within_itself(
        tiny_llama, tokenizer, store_dir, monkeypatch):
    import sleep_core.facade as facade
    memory = _memory(tiny_llama, tokenizer, store_dir)
    aria, = memory.inject_now([FACTS[1]])
    solves, compute = [], facade.compute_edits
    monkeypatch.setattr(facade, "compute_edits", lambda *a, **k: solves.append(len(a[2])) or compute(*a, **k))
    rex = dataclasses.replace(DOG, object="Rex")
    kaito = Fact("Kaito", "works as", "cartographer", ("What does Kaito do?",))
    biscuit, again, rex_id, kaito_id = memory.inject_now([DOG, FACTS[1], rex, kaito], together=True)
    assert solves == [2], "Rex and Kaito in one solve; Biscuit outvoted in the batch, Aria already stored"
    status = {r.id: r.status for r in memory.facts()}
    assert status == {aria: "healthy", biscuit: "superseded", rex_id: "healthy", kaito_id: "healthy"}
    assert again not in status and set(memory.ledger.columns) == {aria, rex_id, kaito_id}
    assert memory.store.counter("wake_edits") == 3     # drowsiness counts the facts written (Aria, Rex, Kaito)
    memory.close()


def test_batches_keep_a_subjects_facts_together_and_in_order():
    dog = [DOG, Fact("my dog", "is", "a beagle", ("What breed is my dog?",))]
    people = [Fact(f"Person{i}", "lives in", f"Town{i}", (f"Where does Person{i} live?",)) for i in range(3)]
    records = [SimpleNamespace(fact=f) for f in [people[0], dog[0], people[1], dog[1], people[2]]]
    batches = [[r.fact for r in batch] for batch in subject_batches(records, 2)]
    assert batches == [[people[0]], dog, [people[1], people[2]]]
    assert [len(b) for b in subject_batches(records, 1)] == [1, 2, 1, 1]    # a subject over the limit stays whole
    assert subject_batches(records, 5) == [records]                         # one batch keeps the given order


def test_a_batch_over_the_solve_limit_is_written_in_turn_each_protecting_the_last(
        tiny_llama, tokenizer, store_dir, monkeypatch):
    import sleep_core.facade as facade
    memory = _memory(tiny_llama, tokenizer, store_dir)
    monkeypatch.setattr(facade, "MAX_BATCH", 2)
    solves, compute = [], facade.compute_edits
    def spy(adapter, tokenizer, facts, cfg, priors, stored):
        solves.append((len(facts), stored[adapter.layers[0]].shape[1]))
        return compute(adapter, tokenizer, facts, cfg, priors, stored)
    monkeypatch.setattr(facade, "compute_edits", spy)
    five = [Fact(f"Person{i}", "lives in", f"Town{i}", (f"Where does Person{i} live?",)) for i in range(5)]
    ids = memory.inject_now(five, together=True)
    assert solves == [(2, 0), (2, 4), (1, 8)]     # (facts solved, stored keys protected: two a fact, raw and chat)
    assert set(memory.ledger.columns) == set(ids) and memory.store.counter("wake_edits") == 5
    memory.close()


@pytest.mark.model
def test_sleep_repairs_a_damaged_fact_and_relieves_drowsiness(real_model, tokenizer, store_dir):
    memory = Memory.open(real_model, tokenizer, MemoryConfig(store_dir=store_dir, auto_sleep=False))
    awake = memory.drowsiness()
    fact_id, = memory.inject_now([DOG])
    assert raw_recall(real_model, tokenizer, [DOG]) == [True]
    assert memory.drowsiness() > awake
    _damage(memory, fact_id)
    assert raw_recall(real_model, tokenizer, [DOG]) == [False]
    report = memory.sleep()
    assert report.committed and report.refreshed == [fact_id]
    assert report.repaired == [fact_id] and report.tipped == []
    assert raw_recall(real_model, tokenizer, [DOG]) == [True]
    assert memory.drowsiness() == awake
    memory.forget_everything()
    memory.close()


def test_the_worker_sleeps_by_itself_once_drowsy(tiny_llama, tokenizer, store_dir):
    memory = _memory(tiny_llama, tokenizer, store_dir, auto_sleep=True, wake_capacity=2)
    for fact in FACTS:
        memory.add(fact)
    assert memory.wait_idle(120)
    assert [r["kind"] for r in memory.sleep_reports()] == ["sleep"], "two wake edits of a capacity of two"
    assert memory.drowsiness() < 1.0
    memory.close()


def test_no_sleep_without_auto_sleep(tiny_llama, tokenizer, store_dir):
    memory = _memory(tiny_llama, tokenizer, store_dir, wake_capacity=2)
    for fact in FACTS:
        memory.add(fact)
    assert memory.wait_idle(120)
    assert memory.sleep_reports() == [] and memory.drowsiness() >= 1.0
    memory.close()


def test_over_the_cap_a_sleep_drops_the_oldest_unpinned_facts_and_says_so(tiny_llama, tokenizer, store_dir):
    memory = _memory(tiny_llama, tokenizer, store_dir, max_facts=2)
    cat = Fact("my cat", "'s name is", "Tom", ("What is my cat's name?",))
    pinned, oldest, newest = memory.inject_now([DOG, FACTS[1], cat])
    memory.pin(pinned)
    report = memory.sleep()
    assert [d["id"] for d in report.dropped] == [oldest] and "cap of 2" in report.dropped[0]["reason"]
    assert set(memory.ledger.columns) == {pinned, newest}, "a pinned fact is never dropped"
    assert memory.store.fact(oldest).status == "dropped" and memory.store.fact(oldest).object == "Portland"
    memory.close()


@pytest.mark.model
def test_a_refresh_in_batches_keeps_each_that_gains_recall_and_stops_at_the_first_that_does_not(
        real_model, tokenizer, store_dir, monkeypatch):
    import sleep_core.cycle.sleep as sleep
    memory = Memory.open(real_model, tokenizer, MemoryConfig(store_dir=store_dir, auto_sleep=False))
    kaito = Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))
    three = [DOG, FACTS[1], kaito]
    ids = memory.inject_now(three)
    for fact_id in ids:
        _damage(memory, fact_id)
    damaged = memory.ledger.snapshot()
    recalled = raw_recall(real_model, tokenizer, three)
    solves, compute = [], sleep.compute_edits

    def solve(adapter, tok, facts, cfg, priors, stored):
        solves.append((facts[0].object, stored[adapter.layers[0]].shape[1]))
        edits = compute(adapter, tok, facts, cfg, priors, stored)
        if facts[0].object == "cartographer":     # a solve that repairs nothing, as one in a full key space does
            return [dataclasses.replace(e, a={l: torch.zeros_like(a) for l, a in e.a.items()}) for e in edits]
        return edits
    monkeypatch.setattr(sleep, "compute_edits", solve)
    monkeypatch.setattr(sleep, "MAX_BATCH", 1)
    records = memory.active_records()
    before = dict(zip(ids, recalled))
    solved, stopped = sleep._refresh(memory, records, records, before, float("inf"), lambda step: None)
    keys = solves[1][1]
    assert recalled == [False] * 3 and solves == [("Biscuit", 0), ("Portland", keys), ("cartographer", 2 * keys)]
    assert keys > 0, "each batch is solved with the ones before it protected"
    assert [r.id for r in solved] == ids[:2]
    assert stopped.startswith("stopped at batch 3 of 3: it repaired 0 facts and tipped over 0")
    assert raw_recall(real_model, tokenizer, three) == [True, True, False]
    assert all(torch.equal(memory.ledger.columns[ids[2]].a[l], damaged[ids[2]].a[l]) for l in memory.adapter.layers)
    assert memory.ledger.columns[ids[0]] is not damaged[ids[0]]
    memory.forget_everything()
    memory.close()


def test_a_replay_learns_every_fact_again_from_the_pristine_weights(tiny_llama, tokenizer, store_dir, monkeypatch):
    import sleep_core.cycle.sleep as sleep
    memory = _memory(tiny_llama, tokenizer, store_dir)
    kaito = Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))
    dog, aria, kaito_id = memory.inject_now([DOG, FACTS[1], kaito])
    layer = memory.adapter.layers[0]
    solves, compute = [], sleep.compute_edits
    monkeypatch.setattr(sleep, "compute_edits", lambda adapter, tok, facts, cfg, priors, stored: solves.append(
        ([f.object for f in facts], stored[layer].shape[1])) or compute(adapter, tok, facts, cfg, priors, stored))
    monkeypatch.setattr(sleep, "MAX_BATCH", 2)
    steps = []
    sleep._replay(memory, memory.active_records(), steps.append)
    assert solves == [(["Biscuit", "Portland"], 0), (["cartographer"], 4)], "chunks of two, the first's keys protected"
    assert [step.message for step in steps] == ["learning batch 1 of 2 again (2 facts)",
                                                "learning batch 2 of 2 again (1 facts)"]
    replayed = memory.ledger.snapshot()
    memory.forget_everything()          # the first chunk is what the two facts learned together from pristine give
    again = memory.inject_now([DOG, FACTS[1]], together=True)
    for old, new in zip((dog, aria), again):
        assert torch.allclose(replayed[old].a[layer], memory.ledger.columns[new].a[layer])
        assert torch.allclose(replayed[old].b[layer], memory.ledger.columns[new].b[layer])
    memory.close()


def test_a_sleep_with_replay_replays_before_it_refreshes(tiny_llama, tokenizer, store_dir, monkeypatch):
    import sleep_core.cycle.sleep as sleep
    memory = _memory(tiny_llama, tokenizer, store_dir, replay=True)
    ids = memory.inject_now(FACTS)
    _damage(memory, ids[0])
    replays = []
    monkeypatch.setattr(sleep, "_replay", lambda memory, records, progress: replays.append([r.id for r in records]))
    report = memory.sleep()
    assert replays == [ids] and "consolidate" in report.timings
    memory.close()


def test_a_sleep_that_fails_midway_leaves_the_weights_and_the_store_as_they_were(
        tiny_llama, tokenizer, store_dir, monkeypatch):
    import sleep_core.cycle.sleep as sleep
    memory = _memory(tiny_llama, tokenizer, store_dir, replay=True)
    kaito = Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))
    ids = memory.inject_now(FACTS + [kaito])
    _damage(memory, ids[0])
    before, columns = _weights(memory), memory.ledger.snapshot()
    solves, compute = [], sleep.compute_edits

    def failing(*args, **kwargs):        # the replay has cleared the ledger and written its first chunk
        solves.append(len(args[2]))
        if len(solves) == 2:
            raise FloatingPointError("the solve produced non-finite factors; nothing was written")
        return compute(*args, **kwargs)
    monkeypatch.setattr(sleep, "compute_edits", failing)
    monkeypatch.setattr(sleep, "MAX_BATCH", 2)
    with pytest.raises(FloatingPointError):
        memory.sleep()
    assert solves == [2, 1]
    assert memory.ledger.snapshot() == columns
    assert all(torch.equal(before[l], memory.adapter.read_weight(l)) for l in before)
    assert {r.id for r in memory.active_records()} == set(ids)
    report, = memory.sleep_reports()
    assert report["failed"] and not report["committed"] and report["reason"].startswith("FloatingPointError")
    memory.close()


def test_a_failed_automatic_sleep_is_tried_again_only_after_as_many_new_facts(
        tiny_llama, tokenizer, store_dir, monkeypatch):
    import sleep_core.facade as facade

    def failing(*args):
        raise MemoryError("out of memory in the audit")
    monkeypatch.setattr(facade, "run_sleep", failing)
    memory = _memory(tiny_llama, tokenizer, store_dir, auto_sleep=True, wake_capacity=2)
    more = [Fact(name, "lives in", city, (f"Where does {name} live?",)) for name, city in (("Bruno", "Lisbon"),
                                                                                          ("Chidi", "Lagos"))]
    ids = [memory.add(fact) for fact in FACTS + more]
    assert memory.wait_idle(120)
    assert {r.id: r.status for r in memory.facts()} == {i: "healthy" for i in ids}
    assert [(r["failed"], r["reason"]) for r in memory.sleep_reports()] == [
        (True, "MemoryError: out of memory in the audit")] * 2, "after the second and the fourth fact"
    memory.close()


def test_consolidation_writes_each_facts_share_exactly_at_its_own_key(tiny_llama, tokenizer, store_dir):
    from sleep_core.editing.consolidate import consolidate
    memory = _memory(tiny_llama, tokenizer, store_dir)
    memory.inject_now(FACTS + [Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))])
    joint = consolidate(memory.ledger.snapshot(), memory.priors(), memory.config.edit)
    for layer in memory.adapter.layers:
        update = sum(torch.outer(e.a[layer], e.b[layer]) for e in joint.values())
        for edit in joint.values():      # no crosstalk left: each key gets its own fact's share and nothing else
            keys = edit.keys(layer)      # split keys: two per fact, each kept at 1/√2
            assert keys.shape[1] == 2
            share = edit.a[layer].unsqueeze(1).expand(-1, 2) * 0.5 ** 0.5
            assert torch.allclose(update @ keys, share, rtol=1e-3, atol=1e-4)
    memory.close()
