"""The extension's hooks, called exactly as text-generation-webui calls them (see HOST_CONTRACT.md).

extension/ is copied to user_data/extensions/sleeping_llm/ and script.py is loaded by file path as
the top-level module `user_ext_sleeping_llm`, the way the host loads user extensions. The host is a
module standing in for `modules.shared` (the host's attribute names, a real threading.Lock); the
model is a tiny random-weight Llama with the default model's tokenizer.
"""

import argparse
import gc
import html
import importlib.util
import inspect
import shutil
import sys
import threading
import time
import types
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sleep_core.assets import ensure_default_model
from sleep_core import EditConfig, Fact, Memory, MemoryConfig

EXTENSION = Path(__file__).resolve().parents[1] / "extension"
NAME = "sleeping_llm"
MODULE = f"user_ext_{NAME}"
PACKAGE = "sleeping_llm_extension"
FACT = "I live in Portland, Oregon."
UI_STATE = {"unique_id": "20261125-10-00-00", "character_menu": "Assistant"}
HOOK_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 4-layer random Llama saved with the default model's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_model(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture
def shared(tmp_path, model_dir, monkeypatch) -> types.ModuleType:
    """`modules.shared` as the host leaves it after loading a model with the Transformers loader."""
    shared = types.ModuleType("modules.shared")
    shared.model, shared.tokenizer = load_model(model_dir), AutoTokenizer.from_pretrained(model_dir)
    shared.model_name = "tiny-llama"
    shared.args = argparse.Namespace(loader="Transformers", cpu=True, multi_user=False, load_in_4bit=False,
                                     load_in_8bit=False, extensions=[NAME])
    shared.generation_lock = threading.Lock()
    shared.stop_everything = False
    shared.user_data_dir = tmp_path / "user_data"
    shared.gradio = {}
    shared.settings = {f"{NAME}-layers": "1-2"}  # as read from user_data/settings.yaml
    modules = types.ModuleType("modules")
    modules.shared = shared
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    (shared.user_data_dir / "extensions").mkdir(parents=True)
    shutil.copytree(EXTENSION, shared.user_data_dir / "extensions" / NAME,
                    ignore=shutil.ignore_patterns("__pycache__"))
    yield shared
    unload_extension()


def load_extension(shared) -> types.ModuleType:
    """Import script.py as the host does for a user extension, apply settings.yaml values, run setup()."""
    path = shared.user_data_dir / "extensions" / NAME / "script.py"
    spec = importlib.util.spec_from_file_location(MODULE, str(path))
    extension = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = extension
    spec.loader.exec_module(extension)
    for key in extension.params:
        extension.params[key] = shared.settings.get(f"{NAME}-{key}", extension.params[key])
    extension.setup()
    return extension


def unload_extension() -> None:
    """What a server restart does to the extension: its modules and its open memory are gone."""
    host = sys.modules.get(f"{PACKAGE}.host")
    if host is not None and host._holder is not None:
        host._holder.close()
    for name in [n for n in sys.modules if n == MODULE or n.split(".")[0] == PACKAGE]:
        del sys.modules[name]


@pytest.fixture
def extension(shared) -> types.ModuleType:
    return load_extension(shared)


def memory_of(extension):
    return extension.host.holder(extension.params).current()


def string_hook(function, text: str, state: dict, is_chat: bool) -> str:
    """Call input/output/bot_prefix modifiers by the host's rule: two parameters besides is_chat
    mean f(text, state), otherwise f(text); is_chat is passed only to functions that take it."""
    names = list(inspect.signature(function).parameters)
    positional = [n for n in names if n != "is_chat"]
    args = (text, state) if len(positional) == 2 else (text,)
    return function(*args, **({"is_chat": is_chat} if "is_chat" in names else {}))


def finishes(function, *args, timeout: float = HOOK_TIMEOUT_S):
    """function(*args) in a thread: its result, failing the test if it blocks (a deadlock)."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(value=function(*args)), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"{getattr(function, '__name__', function)} blocked for {timeout} s"
    return result["value"]


def generate(shared, text: str) -> str:
    """The reply as the Transformers loader produces it (only ever called with the lock held)."""
    assert shared.generation_lock.locked()
    messages = [{"role": "user", "content": text}]
    inputs = shared.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)
    output = shared.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    return shared.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def chat_turn(extension, shared, text: str, state: dict | None = None, stop: bool = False) -> tuple[str, str]:
    """One chat turn (UI Send or /v1/chat/completions) in the host's order; (escaped reply, shown reply)."""
    state = {"history": {"internal": [], "visible": [], "metadata": {}}, "mode": "instruct",
             **(UI_STATE if state is None else state)}
    assert not shared.generation_lock.locked()
    text, _ = finishes(extension.chat_input_modifier, text, html.escape(text), state)
    shared.generation_lock.acquire()
    try:
        reply = html.escape(generate(shared, text) or "…")
        if stop:  # the user pressed Stop: output_modifier runs while generate_reply still holds the lock
            shared.stop_everything = True
            return reply, finishes(string_hook, extension.output_modifier, reply, state, True)
    finally:
        shared.generation_lock.release()
    return reply, finishes(string_hook, extension.output_modifier, reply, state, True)


def facts_after(extension) -> list:
    memory = memory_of(extension)
    assert memory.wait_idle(timeout=300)
    return memory.facts()


def edited_weights(model) -> dict:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


# Loading

def test_loads_as_a_top_level_module_and_setup_is_idempotent(shared):
    extension = load_extension(shared)
    assert extension.__name__ == MODULE and not extension.__package__
    assert extension.params["display_name"] == "Sleeping LLM" and extension.params["is_tab"] is True
    assert {k: extension.params[k] for k in ("learn", "learn_from_api", "auto_sleep", "drowsiness_threshold",
                                             "mode", "allow_multi_user")} == {
        "learn": True, "learn_from_api": False, "auto_sleep": True, "drowsiness_threshold": 1.0,
        "mode": "constrained", "allow_multi_user": False}
    assert extension.params["layers"] == "1-2"  # from settings.yaml
    yaml.safe_dump(extension.params)  # the host writes params back to settings.yaml
    memory = memory_of(extension)
    assert memory is not None
    extension.setup()
    assert memory_of(extension) is memory
    again = load_extension(shared)  # the Session tab re-executes script.py as a fresh module
    assert again is not extension and memory_of(again) is memory


def test_hook_signatures_follow_the_hosts_arity_rule(extension):
    output_params = [n for n in inspect.signature(extension.output_modifier).parameters if n != "is_chat"]
    assert output_params == ["string", "state"]
    assert list(inspect.signature(extension.chat_input_modifier).parameters) == ["text", "visible_text", "state"]
    assert not inspect.signature(extension.setup).parameters and not inspect.signature(extension.ui).parameters


def test_missing_core_leaves_the_host_running(shared, monkeypatch):
    monkeypatch.setitem(sys.modules, "sleep_core", None)  # `import sleep_core` raises ModuleNotFoundError
    extension = load_extension(shared)
    assert extension.host is None and "install.py --webui" in extension.MISSING
    state = dict(UI_STATE)
    assert extension.chat_input_modifier(FACT, html.escape(FACT), state) == (FACT, html.escape(FACT))
    assert string_hook(extension.output_modifier, "Noted &amp; done.", state, True) == "Noted &amp; done."


# A chat turn

def test_a_chat_turn_learns_the_users_message_and_never_the_reply(extension, shared):
    reply, shown = chat_turn(extension, shared, FACT)
    assert shown == reply  # the visible reply is passed through, still HTML-escaped
    facts = facts_after(extension)
    assert facts and all(fact.source_text == FACT for fact in facts)
    assert any("Portland" in fact.object for fact in facts)


def test_he_in_a_later_turn_is_the_relative_of_an_earlier_one_and_nobody_in_a_new_chat(extension, shared):
    first = "My brother is named Tomas."
    reply, _ = chat_turn(extension, shared, first)
    facts_after(extension)     # the user reads the reply while the worker writes the fact
    earlier = {**UI_STATE, "history": {"internal": [[first, reply]], "visible": [[first, reply]], "metadata": {}}}
    chat_turn(extension, shared, "He is a pilot.", state=earlier)
    facts_after(extension)
    chat_turn(extension, shared, "He lives in Madrid.")     # the first turn of a new chat: nobody to refer to
    facts = {(f.subject, f.relation, f.object) for f in facts_after(extension)}
    assert facts == {("my brother", "'s name is", "Tomas"), ("my brother", "works as", "a pilot")}


def test_api_requests_teach_nothing_unless_enabled(extension, shared):
    chat_turn(extension, shared, FACT, state={})  # an API request: no unique_id, no character_menu
    assert facts_after(extension) == []
    unload_extension()
    shared.settings[f"{NAME}-learn_from_api"] = True
    extension = load_extension(shared)
    chat_turn(extension, shared, FACT, state={})
    assert any("Portland" in fact.object for fact in facts_after(extension))


def test_a_stopped_turn_is_not_learned_and_nothing_deadlocks(extension, shared):
    chat_turn(extension, shared, FACT, stop=True)
    shared.stop_everything = False
    assert facts_after(extension) == []


def test_the_non_chat_path_runs_under_the_lock_and_learns_nothing(extension, shared):
    prompt = "Notebook: I live in Portland, Oregon."
    with shared.generation_lock:
        reply = generate(shared, prompt)
        assert finishes(string_hook, extension.output_modifier, reply, {}, False) == reply
    assert facts_after(extension) == []


def test_weights_never_change_while_a_reply_holds_the_lock(extension, shared):
    before = edited_weights(shared.model)
    with shared.generation_lock:  # a reply is being generated
        extension.host.holder(extension.params).learn(FACT, "chat")
        time.sleep(2.0)
        for name, tensor in shared.model.state_dict().items():
            assert torch.equal(tensor, before[name]), name
    assert any("Portland" in fact.object for fact in facts_after(extension))
    assert any(not torch.equal(t, before[n]) for n, t in shared.model.state_dict().items())


# Modes where learning is off

def test_multi_user_mode_turns_learning_off_unless_allowed(extension, shared):
    shared.args.multi_user = True
    chat_turn(extension, shared, FACT)
    assert facts_after(extension) == []
    assert "Multi-user" in extension.host.holder(extension.params).notice()
    extension.params["allow_multi_user"] = True  # the tab's checkbox
    chat_turn(extension, shared, FACT)
    assert any("Portland" in fact.object for fact in facts_after(extension))


@pytest.mark.parametrize("loader", ["llama.cpp", "ExLlamav3", "ExLlamav3_HF", "TensorRT-LLM"])
def test_a_loader_without_editable_weights_gets_a_notice_and_the_chat_works(shared, loader):
    shared.args.loader = loader
    extension = load_extension(shared)
    reply, shown = chat_turn(extension, shared, FACT)
    assert shown == reply and memory_of(extension) is None
    assert loader in extension.host.holder(extension.params).notice()


def test_a_store_folder_that_cannot_be_made_turns_the_memory_off_with_a_notice_and_the_chat_works(shared):
    (shared.user_data_dir / "sleeping_llm").write_text("a file where the store folder should be")
    extension = load_extension(shared)
    reply, shown = chat_turn(extension, shared, FACT)
    assert shown == reply and memory_of(extension) is None
    assert "memory is off" in extension.host.holder(extension.params).notice()


def test_no_model_loaded_keeps_hooks_quiet(shared):
    shared.model, shared.model_name = None, "None"
    extension = load_extension(shared)
    state = dict(UI_STATE)
    assert extension.chat_input_modifier(FACT, html.escape(FACT), state) == (FACT, html.escape(FACT))
    assert string_hook(extension.output_modifier, "Hi.", state, True) == "Hi."
    assert "No model" in extension.host.holder(extension.params).notice()


# The model changes under the extension

def test_a_new_model_object_gets_the_stored_memory_before_it_answers(extension, shared, model_dir):
    chat_turn(extension, shared, FACT)
    learned = facts_after(extension)
    expected = edited_weights(shared.model)
    shared.model = load_model(model_dir)  # the Model tab or the load API replaced it, without an event
    assert any(not torch.equal(expected[n], t) for n, t in shared.model.state_dict().items())
    chat_turn(extension, shared, "What a day.", state={})  # an API turn: nothing new to learn
    assert [f.id for f in facts_after(extension)] == [f.id for f in learned]
    for name, tensor in shared.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_an_unloaded_model_is_freed_before_the_next_one_loads(extension, shared, model_dir):
    """The Model tab unloads (shared.model = None, then gc) before it loads the next model: a memory still holding
    the old one would keep both in GPU memory."""
    chat_turn(extension, shared, FACT)
    learned = facts_after(extension)
    old = weakref.ref(shared.model)
    shared.model, shared.model_name = None, "None"
    deadline = time.monotonic() + HOOK_TIMEOUT_S
    while memory_of(extension) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    gc.collect()
    assert old() is None, "the unloaded model is still referenced"
    shared.model, shared.model_name = load_model(model_dir), "tiny-llama"
    chat_turn(extension, shared, "What a day.", state={})
    assert [f.id for f in facts_after(extension)] == [f.id for f in learned]


def test_a_new_model_used_only_by_the_notebook_gets_its_memory_after_the_reply(extension, shared, model_dir):
    chat_turn(extension, shared, FACT)
    facts_after(extension)
    expected = edited_weights(shared.model)
    shared.model = load_model(model_dir)
    with shared.generation_lock:  # the non-chat path: output_modifier under the lock must not open it there
        generate(shared, "Notebook text")
        finishes(string_hook, extension.output_modifier, "reply", {}, False)
    deadline = time.monotonic() + HOOK_TIMEOUT_S
    while any(not torch.equal(tensor, expected[name]) for name, tensor in shared.model.state_dict().items()):
        assert time.monotonic() < deadline, "the new model never got its stored memory"
        time.sleep(0.2)


def test_a_restarted_server_reapplies_the_memory_in_setup(extension, shared, model_dir):
    chat_turn(extension, shared, FACT)
    facts_after(extension)
    expected = edited_weights(shared.model)
    unload_extension()
    shared.model = load_model(model_dir)
    extension = load_extension(shared)
    assert any("Portland" in fact.object for fact in memory_of(extension).facts())
    for name, tensor in shared.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


# The weight lock

def test_weight_lock_reports_busy_instead_of_hanging(extension, shared):
    with shared.generation_lock:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with extension.host.weight_lock(timeout=0.2):
                pass
        assert time.monotonic() - started < 5
    assert not shared.generation_lock.locked()


def test_weight_lock_waits_for_a_streaming_thread(extension):
    finished = threading.Event()
    stream = threading.Thread(target=lambda: (time.sleep(0.5), finished.set()), name="Thread-9 (gentask)")
    stream.start()
    with extension.host.weight_lock(timeout=10):
        assert finished.is_set()


# The tab

def test_ui_builds_inside_the_hosts_tab(extension, shared):
    gr = pytest.importorskip("gradio")
    with gr.Blocks() as shared.gradio["interface"]:
        with gr.Tab(extension.params["display_name"]):
            extension.ui()
    assert "sllm-facts" in {getattr(block, "elem_id", None) for block in shared.gradio["interface"].blocks.values()}


def test_the_sleep_settings_reach_the_memory_config_and_change_live(tmp_path):
    from extension.holder import _apply_live_settings
    from extension.settings import DEFAULTS, memory_config
    config = memory_config({**DEFAULTS, "replay": True, "max_facts": 5}, tmp_path)
    assert config.replay and config.max_facts == 5
    _apply_live_settings(config, dict(DEFAULTS))
    assert not config.replay and config.max_facts is None


def test_a_failed_sleep_is_shown_as_failed_and_left_out_of_the_plots(make_tiny, tokenizer, store_dir, monkeypatch):
    import sleep_core.facade as facade
    from extension.tab import _figure, _summary
    memory = Memory.open(make_tiny(), tokenizer, MemoryConfig(store_dir=store_dir, ppl_tokens=256,
                                                              edit=EditConfig(cov_tokens=3000, v_steps=4)))
    memory.inject_now([Fact("Aria", "lives in", "Portland", ("Where does Aria live?",))])
    memory.sleep()
    def failing(*args):
        raise MemoryError("out of memory")
    with monkeypatch.context() as patch:
        patch.setattr(facade, "run_sleep", failing)
        with pytest.raises(MemoryError):
            memory.sleep()
    failed, slept = memory.sleep_reports()
    assert _summary(failed).endswith("failed: MemoryError: out of memory.") and "Recall" in _summary(slept)
    recall, _ = _figure([failed, slept]).axes
    assert all(len(line.get_xdata()) == 1 for line in recall.get_lines()), "one sleep in the plot"
    memory.close()
