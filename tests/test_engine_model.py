"""The engine on the real default model: an injected fact is recalled in raw completion and in chat, a
fact the model already knew is unchanged, and a fresh process reloads the store with the same answers."""
import hashlib
import json
import subprocess
import sys

import pytest
import torch

from sleep_core import Fact, Memory, MemoryConfig
from sleep_core.eval import chat_answers, greedy_tokens, raw_recall

pytestmark = pytest.mark.model

FACT = Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",))

RELOAD = """
import hashlib, json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from sleep_core import Memory, MemoryConfig
from sleep_core.eval import chat_answers
folder, store = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
memory = Memory.open(model, tok, MemoryConfig(store_dir=store, auto_sleep=False))
digest = hashlib.sha256(b"".join(memory.adapter.read_weight(l).numpy().tobytes() for l in memory.adapter.layers))
print(json.dumps({"digest": digest.hexdigest(), "answer": chat_answers(model, tok, [sys.argv[3]])[0]}))
"""


def _digest(memory) -> str:
    return hashlib.sha256(b"".join(memory.adapter.read_weight(l).numpy().tobytes()
                                   for l in memory.adapter.layers)).hexdigest()


@pytest.fixture(scope="module")
def taught(real_model, tokenizer, tmp_path_factory):
    """The default model with one fact injected, and the control completions from before."""
    store = tmp_path_factory.mktemp("memory")
    before = greedy_tokens(real_model, tokenizer, ["The capital of France is", "The chemical symbol for gold is"])
    assert raw_recall(real_model, tokenizer, [FACT]) == [False]       # the model did not know it
    assert "biscuit" not in chat_answers(real_model, tokenizer, [FACT.questions[0]])[0].lower()
    memory = Memory.open(real_model, tokenizer, MemoryConfig(store_dir=store, auto_sleep=False))
    memory.inject_now([FACT])
    yield memory, store, before
    memory.forget_everything()
    memory.close()


def test_injected_fact_is_recalled_in_raw_completion_and_chat(taught, real_model, tokenizer):
    assert raw_recall(real_model, tokenizer, [FACT]) == [True]
    assert "biscuit" in chat_answers(real_model, tokenizer, [FACT.questions[0]])[0].lower()


def test_known_facts_are_unchanged(taught, real_model, tokenizer):
    memory, store, before = taught
    assert greedy_tokens(real_model, tokenizer, ["The capital of France is",
                                                 "The chemical symbol for gold is"]) == before


def test_fresh_process_reloads_the_same_weights_and_answer(taught, real_model, tokenizer, default_model_dir):
    memory, store, _ = taught
    answer = chat_answers(real_model, tokenizer, [FACT.questions[0]])[0]
    out = subprocess.run([sys.executable, "-c", RELOAD, str(default_model_dir), str(store), FACT.questions[0]],
                         capture_output=True, text=True, timeout=600, check=True)
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert reloaded == {"digest": _digest(memory), "answer": answer}


def test_forget_restores_the_weights_bitwise(taught):
    memory = taught[0]
    before = {l: memory.adapter.read_weight(l).clone() for l in memory.adapter.layers}
    fact_id, = memory.inject_now([Fact("my sister", "lives in", "Lisbon", ("Where does my sister live?",))])
    assert not all(torch.equal(memory.adapter.read_weight(l), before[l]) for l in before)
    memory.forget(fact_id)
    assert all(torch.equal(memory.adapter.read_weight(l), before[l]) for l in before)
