"""The sleep cycle: rollback is bitwise, supersession replaces a value, drowsiness rises and falls, and a
sleep repairs a damaged fact on the real model."""
import dataclasses

import pytest
import torch

from sleep_core import EditConfig, Fact, Memory, MemoryConfig
from sleep_core.eval import raw_recall

DOG = Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",))
FACTS = [DOG, Fact("Aria", "lives in", "Portland", ("Where does Aria live?",))]


def _memory(model, tokenizer, store_dir, **overrides) -> Memory:
    config = MemoryConfig(store_dir=store_dir, auto_sleep=False, wake_capacity=4, ppl_tokens=512,
                          edit=EditConfig(cov_tokens=3000, v_steps=4), **overrides)
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


def test_a_new_value_supersedes_the_old_one(tiny_llama, tokenizer, store_dir):
    memory = _memory(tiny_llama, tokenizer, store_dir)
    old, = memory.inject_now([DOG])
    new, = memory.inject_now([dataclasses.replace(DOG, object="Rex")])
    duplicate, = memory.inject_now([dataclasses.replace(DOG, object="Rex")])
    assert set(memory.ledger.columns) == {new}
    assert {r.id: r.status for r in memory.facts()} == {old: "superseded", new: "healthy"}
    assert duplicate not in {r.id for r in memory.facts()}, "a duplicate is not stored twice"
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
    assert raw_recall(real_model, tokenizer, [DOG]) == [True]
    assert memory.drowsiness() == awake
    memory.forget_everything()
    memory.close()
