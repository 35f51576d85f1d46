"""Hostile input to the store and the facade (hypothesis): any unicode, huge texts, malformed imports, stores of
another model or no store at all. Every case ends in the text kept exactly or a clear ValueError/StoreError,
and a refused input writes nothing (rows, edit files and database bytes are compared before and after).

Decisions: texts over the limits (1,000 characters per fact field, 10,000 for the source text: the extractor's
bound) are refused with ValueError, never truncated, since a cut fact is a different fact; so are NUL and
unpaired surrogates, which SQLite cannot keep. An export from another model is imported (facts are text; the
new model learns them itself), and each of its facts records that model in its `source`."""
import copy
import shutil
import sqlite3

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sleep_core import EditConfig, Fact, Memory, MemoryConfig, StoreError, WrongModelError
from sleep_core.bench.crash import committed, expected
from sleep_core.memory.facts import visible
from sleep_core.memory.store import MAX_SOURCE_CHARS, Store
from sleep_core.model import ModelAdapter

FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, database=None)
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40)     # surrogates and controls included
FACTS = [Fact("Aria", "lives in", "Portland", ("Where does Aria live?",)),
         Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",))]


def _config(store_dir):
    return MemoryConfig(store_dir=store_dir, edit=EditConfig(cov_tokens=3000, v_steps=4))


def _footprint(folder):
    """What a refused input must not change: the rows, the edit files, the database file's bytes."""
    rows = list(sqlite3.connect(folder / "memory.sqlite").execute("SELECT * FROM facts ORDER BY id"))
    return rows, sorted(p.name for p in (folder / "edits").iterdir())


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store", "llama-fuzz", (1,))
    yield store
    store.close()


@pytest.fixture
def memory(make_tiny, tokenizer, store_dir):
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    memory.inject_now(FACTS)
    yield memory
    memory.close()


def _kept(text: str) -> bool:
    return "\0" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@FIXTURES
@given(subject=ANY_TEXT, relation=ANY_TEXT, obj=ANY_TEXT, question=ANY_TEXT, source=ANY_TEXT)
def test_any_unicode_is_kept_exactly_or_refused(store, subject, relation, obj, question, source):
    assume(visible(subject) and visible(obj))
    fact = Fact(subject, relation, obj, (question,))
    before = store.facts()
    if all(map(_kept, (subject, relation, obj, question, source))):
        record = store.fact(store.add_fact(fact, source))
        assert (record.fact, record.source_text) == (fact, source)
        assert record.id in {r.id for r in store.facts(search=subject)}
        assert record.id in {r.id for r in store.facts(search=obj.casefold())}
    else:
        with pytest.raises(ValueError, match="NUL character or an unpaired surrogate"):
            store.add_fact(fact, source)
        assert store.facts() == before


@FIXTURES
@given(needle=st.text(st.sampled_from("%_iÉéÜüs "), min_size=1, max_size=3))
def test_search_is_literal_and_ignores_case_beyond_ascii(store, needle):
    """The memory tab's search: "Éloïse" finds "éloïse", and % or _ are characters, not wildcards."""
    fields = ("Éloïse", "lives in", "Zürich", "she said so")
    if not store.facts():
        store.add_fact(Fact(*fields[:3], ("Where does Éloïse live?",)), fields[3])
    found = bool(store.facts(search=needle))
    assert found == any(needle.casefold() in f.casefold() for f in fields)


@pytest.mark.parametrize("field", ["subject", "relation", "object", "question", "source_text"])
def test_a_huge_text_is_refused_whole(memory, field):
    folder = memory.store.folder
    before = _footprint(folder)
    huge = "é" * 1_000_000
    parts = {"subject": "Aria", "relation": "lives in", "object": "Oslo", "question": "Where?", "source_text": "x"}
    parts[field] = huge
    fact = Fact(parts["subject"], parts["relation"], parts["object"], (parts["question"],))
    with pytest.raises(ValueError, match="1,000,000 characters; at most"):
        memory.add(fact, parts["source_text"])
    assert _footprint(folder) == before
    assert memory.wait_idle(5)


def test_source_text_at_the_limit_is_kept(memory):
    text = "a" * MAX_SOURCE_CHARS
    record = memory.store.fact(memory.store.add_fact(Fact("Kaito", "works as", "baker"), text))
    assert record.source_text == text


def _mutations(doc: dict) -> list:
    """Single faults an export can carry, each as (description, broken copy)."""
    out = []

    def mutate(why, change):
        broken = copy.deepcopy(doc)
        change(broken)
        out.append((why, broken))
    out += [("a list", [doc]), ("text", "sleeping-llm-memory"), ("nothing", None)]
    mutate("wrong format", lambda d: d.update(format="llm-memory"))
    mutate("version 2", lambda d: d.update(version=2))
    mutate("version as text", lambda d: d.update(version="1"))
    mutate("version as bool", lambda d: d.update(version=True))
    mutate("no facts", lambda d: d.pop("facts"))
    mutate("facts not a list", lambda d: d.update(facts={"0": d["facts"][0]}))
    mutate("unknown top key", lambda d: d.update(extra=1))
    mutate("model not text", lambda d: d.update(model=None))
    for field in ("subject", "relation", "object", "questions", "source_text", "created_at", "pinned"):
        mutate(f"missing {field}", lambda d, f=field: d["facts"][-1].pop(f))
        mutate(f"{field} as a number", lambda d, f=field: d["facts"][-1].update({f: 7}))
    mutate("question not text", lambda d: d["facts"][-1].update(questions=["Where?", 3]))
    mutate("pinned as 1", lambda d: d["facts"][-1].update(pinned=1))
    mutate("bad date", lambda d: d["facts"][-1].update(created_at="yesterday"))
    mutate("empty subject", lambda d: d["facts"][-1].update(subject="  "))
    mutate("unknown fact key", lambda d: d["facts"][-1].update(weight=[0.1]))
    mutate("huge source", lambda d: d["facts"][-1].update(source_text="x" * 1_000_000))
    mutate("surrogate", lambda d: d["facts"][-1].update(object="\ud800"))
    mutate("fact not a dict", lambda d: d["facts"].append("Aria lives in Oslo"))
    return out


def test_every_malformed_import_is_refused_and_writes_nothing(memory, tmp_path):
    doc = memory.export_json()
    for fact in doc["facts"]:
        fact["object"] += " II"                         # new facts: a valid import would add rows
    folder = memory.store.folder
    before = _footprint(folder)
    for why, broken in _mutations(doc):
        with pytest.raises(ValueError) as error:
            memory.import_json(broken)
        assert len(str(error.value)) > 20, why
        assert _footprint(folder) == before, why
    assert memory.import_json(doc) == 2                 # the unbroken document is fine


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
                           max_leaves=20)


@settings(FIXTURES, max_examples=150)
@given(data=json_values, facts=st.lists(st.dictionaries(
    st.sampled_from(["subject", "relation", "object", "questions", "source_text", "created_at", "pinned"]),
    json_values), max_size=3))
def test_arbitrary_json_is_refused_with_a_value_error(memory, data, facts):
    folder = memory.store.folder
    before = _footprint(folder)
    near_miss = {"format": "sleeping-llm-memory", "version": 1, "model": "x", "exported_at": "", "facts": facts}
    for doc in (data, near_miss):
        try:
            added = memory.import_json(doc)
        except ValueError:
            assert _footprint(folder) == before
        else:
            assert added == len(facts) and doc is near_miss   # a random document that happens to be valid
            memory.wait_idle(60)
            before = _footprint(folder)


def test_export_round_trips_and_another_models_export_is_flagged(memory, make_tiny, tokenizer, tmp_path):
    memory.pin(memory.facts()[0].id)
    doc = memory.export_json()
    assert doc["model"] == memory.fingerprint and doc["version"] == 1
    other = make_tiny()
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(2)     # another model: another fingerprint
    fresh = Memory.open(other, tokenizer, _config(tmp_path / "other"))
    assert fresh.fingerprint != memory.fingerprint
    assert fresh.import_json(doc) == 2 and fresh.import_json(doc) == 0    # the second time nothing is new
    assert fresh.wait_idle(60)
    fields = ("subject", "relation", "object", "questions", "source_text", "created_at", "pinned")
    assert [{k: r.to_dict()[k] for k in fields} for r in fresh.facts()] == doc["facts"]
    assert all(r.status == "healthy" and r.source == f"import from {memory.fingerprint}" for r in fresh.facts())
    assert set(fresh.ledger.columns) == {r.id for r in fresh.facts()}
    fresh.close()


def test_another_models_store_is_refused_untouched(memory, make_tiny, tokenizer, store_dir):
    """A store folder copied under another model's name (a user moving files) is detected by its contents."""
    memory.close()
    other = make_tiny()
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.add_(1.0)
    folder = store_dir / ModelAdapter(other).fingerprint()
    shutil.copytree(memory.store.folder, folder)
    before, db_bytes = _footprint(folder), (folder / "memory.sqlite").read_bytes()
    with pytest.raises(WrongModelError, match="belongs to model"):
        Memory.open(other, tokenizer, _config(store_dir))
    assert _footprint(folder) == before and (folder / "memory.sqlite").read_bytes() == db_bytes
    assert not hasattr(other, "_sleeping_llm_memory")


def test_other_layers_are_refused(memory, make_tiny, tokenizer, store_dir):
    memory.close()
    config = _config(store_dir)
    config.layers = (2,)
    with pytest.raises(StoreError, match="edits layers"):
        Memory.open(make_tiny(), tokenizer, config)


@settings(FIXTURES, max_examples=25)
@given(garbage=st.binary(min_size=2, max_size=4096))
def test_a_file_that_is_no_database_gives_a_clear_error(make_tiny, tokenizer, tmp_path_factory, garbage):
    """(SQLite takes a file of 0 or 1 bytes for a new database: it holds nothing to lose.)"""
    model = make_tiny()
    store_dir = tmp_path_factory.mktemp("garbage")
    folder = store_dir / ModelAdapter(model).fingerprint()
    folder.mkdir()
    (folder / "memory.sqlite").write_bytes(garbage)
    with pytest.raises(StoreError, match="cannot be read .* nothing was changed"):
        Memory.open(model, tokenizer, _config(store_dir))
    assert (folder / "memory.sqlite").read_bytes() == garbage


def test_a_truncated_database_gives_a_clear_error(memory, make_tiny, tokenizer, store_dir):
    folder = memory.store.folder
    memory.close()
    db = folder / "memory.sqlite"
    db.write_bytes(db.read_bytes()[:1500])
    with pytest.raises(StoreError, match="cannot be read"):
        Memory.open(make_tiny(), tokenizer, _config(store_dir))


@settings(FIXTURES, max_examples=12)
@given(subject=st.text(min_size=1, max_size=12), relation=st.text(max_size=12), obj=st.text(min_size=1, max_size=12))
@example(subject="0", relation="", obj="0")   # prompts that open on the subject beside ones that do not
@example(subject="\x16", relation="", obj="0")   # a control character alone: refused with a message, nothing written
def test_any_unicode_fact_leaves_weights_that_match_the_store(memory, make_tiny, subject, relation, obj):
    assume(subject.strip() and obj.strip() and _kept(subject + relation + obj))
    if not (visible(subject) and visible(obj)):
        with pytest.raises(ValueError, match="visible character"):
            Fact(subject, relation, obj)
        return
    memory.inject_now([Fact(subject, relation, obj)])
    adapter = ModelAdapter(make_tiny())
    pristine = {l: adapter.read_weight(l) for l in memory.adapter.layers}
    edits, _, bad = committed(memory.store.folder)
    want = expected(adapter, pristine, edits)
    assert not bad and set(edits) == set(memory.ledger.columns)
    assert all(torch.equal(want[l], memory.adapter.read_weight(l)) for l in want)
    assert all((r.status in ("healthy", "degraded")) == (r.id in edits) for r in memory.facts())
