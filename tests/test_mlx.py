"""The MLX backend behind the same Memory. On tiny random mlx-lm models: an edit changes the output, forgetting
restores the weights bitwise, factors have the batch's rank, the worker thread injects, quantized layers are
refused; with torch's weights copied in, every measurement matches torch's. On the default model: the same facts
give the same answers in both backends, and a store written by either is read by the other."""
import json

import pytest
import torch

try:
    from sleep_core.model import mlx as backend      # first: MLX must load after OpenBLAS
except ImportError as error:
    if (error.name or "").split(".")[0] not in ("mlx", "mlx_lm"):
        raise
    pytest.skip(f"MLX cannot be imported here ({error}); on Linux: pip install 'mlx[cpu]' mlx-lm",
                allow_module_level=True)

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx_lm.models import llama  # noqa: E402

from sleep_core import EditConfig, Fact, Memory, MemoryConfig, UnsupportedModelError  # noqa: E402
from sleep_core.editing import build_batch, compute_edits  # noqa: E402
from sleep_core.eval import chat_answers, generate, greedy_tokens, perplexity, raw_recall, score_answers  # noqa: E402
from sleep_core.model import ModelAdapter, adapter_for, hf_tokenizer  # noqa: E402
from sleep_core.model.mlx.convert import to_torch  # noqa: E402
from sleep_core.model.mlx.load import rope_settings  # noqa: E402

FACTS = [Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",)),
         Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",)),
         Fact("Aria", "lives in", "Portland", ("Where does Aria live?",))]
PROBE = "Where does Aria live? Aria lives in"
# raw completion must start with the object: "Kaito works as" goes on "a cartographer" once learned
PARITY = [FACTS[0], FACTS[2]]


def _tiny_mlx(vocab: int, like: torch.nn.Module | None = None):
    """tests/conftest.py's tiny llama in mlx-lm: random weights, or those of the torch model `like`."""
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs(
        model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, rms_norm_eps=1e-6, vocab_size=vocab, max_position_embeddings=256,
        tie_word_embeddings=False))
    if like is not None:
        model.load_weights([(k, mx.array(v.numpy())) for k, v in like.state_dict().items()])
    mx.eval(model.parameters())
    return model


@pytest.fixture
def tiny_mlx(tokenizer):
    return _tiny_mlx(len(tokenizer))


def _config(store_dir, v_steps: int = 4, cov_tokens: int = 3000, **edit) -> MemoryConfig:
    """Float32 steps in both backends, so that their edits can be compared."""
    return MemoryConfig(store_dir=store_dir, auto_sleep=False,
                        edit=EditConfig(cov_tokens=cov_tokens, v_steps=v_steps, v_bf16=False, **edit))


def _weights(memory) -> dict:
    return {l: memory.adapter.read_weight(l) for l in memory.adapter.layers}


def _same(a: dict, b: dict) -> bool:
    return all(a[l].dtype == b[l].dtype and mx.array_equal(a[l], b[l]).item() for l in a)


def _logits(model, tokenizer) -> mx.array:
    out = model(mx.array([tokenizer(PROBE)["input_ids"]]))
    mx.eval(out)
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_inject_changes_the_output_and_forget_restores_it_bitwise(tokenizer, store_dir, dtype):
    model = _tiny_mlx(len(tokenizer))
    model.set_dtype(getattr(mx, dtype))
    memory = Memory.open(model, tokenizer, _config(store_dir))
    pristine, answer = _weights(memory), _logits(model, tokenizer)
    first, second = memory.inject_now(FACTS[:2])
    both = _weights(memory)
    assert all(w.dtype == getattr(mx, dtype) for w in both.values())
    assert not _same(pristine, both) and not mx.array_equal(answer, _logits(model, tokenizer)).item()
    memory.forget(first)
    assert not _same(pristine, _weights(memory)) and not _same(both, _weights(memory))
    memory.forget(second)
    assert _same(pristine, _weights(memory)) and mx.array_equal(answer, _logits(model, tokenizer)).item()
    memory.inject_now(FACTS[2:])
    memory.forget_everything()
    assert memory.ledger.is_pristine() and _same(pristine, _weights(memory)) and not memory.facts()
    memory.close()


def test_factors_have_the_rank_of_the_batch(tiny_mlx, tokenizer, store_dir):
    memory = Memory.open(tiny_mlx, tokenizer, _config(store_dir))
    edits = compute_edits(memory.adapter, tokenizer, FACTS, memory.config.edit, memory.priors(), {})
    for layer in memory.adapter.layers:
        update = sum(torch.outer(e.a[layer], e.b[layer]) for e in edits)
        assert torch.linalg.matrix_rank(update).item() == len(FACTS)
    memory.ledger.rebuild()
    assert memory.ledger.is_pristine()
    memory.close()


def test_jittered_targets_are_the_same_in_every_run(tiny_mlx, tokenizer):
    adapter = adapter_for(tiny_mlx)
    jittered = EditConfig(v_steps=6, v_jitter=0.3)
    batch, layer = build_batch(tokenizer, FACTS, jittered), adapter.layers[-1]
    first, again = (adapter.optimize_targets(batch, layer, jittered).delta for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, adapter.optimize_targets(batch, layer, EditConfig(v_steps=6, v_jitter=0.0)).delta)


def test_the_worker_thread_injects_and_a_new_memory_reapplies_the_store(tokenizer, store_dir):
    memory = Memory.open(_tiny_mlx(len(tokenizer)), tokenizer, _config(store_dir))
    memory.add(FACTS[0])                         # MLX evaluates on the worker thread
    assert memory.wait_idle(120)
    record, = memory.facts()
    assert record.status == "healthy" and set(memory.ledger.columns) == {record.id}
    edited = _weights(memory)
    memory.close()
    again = Memory.open(_tiny_mlx(len(tokenizer)), tokenizer, _config(store_dir))
    assert again.fingerprint == memory.fingerprint and _same(edited, _weights(again))
    again.close()


def test_quantized_layers_are_refused_by_name(tiny_mlx, tokenizer, store_dir):
    nn.quantize(tiny_mlx, group_size=32, bits=4)
    with pytest.raises(UnsupportedModelError, match="QuantizedLinear"):
        adapter_for(tiny_mlx)


def test_rope_parameters_are_passed_where_mlx_lm_reads_them():
    nested = {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
    assert rope_settings(nested) == {"rope_theta": 100000.0}
    assert rope_settings({**nested, "rope_theta": 100000.0}) == {}
    llama3 = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    assert rope_settings(llama3) == {"rope_theta": 5e5, "rope_scaling": llama3["rope_parameters"]}


def test_same_weights_give_the_same_measurements_in_both_backends(make_tiny, tokenizer):
    torch_model = make_tiny()
    mlx_model = _tiny_mlx(len(tokenizer), like=torch_model)
    t, m = ModelAdapter(torch_model), adapter_for(mlx_model)
    assert t.fingerprint() == m.fingerprint() and t.layers == m.layers
    cfg = EditConfig(v_steps=6, v_bf16=False)        # MLX steps in float32: compare like with like
    kin = Fact("my dog", "loves", "swimming", ("What does my dog love?",))       # shares a target with FACTS[0]
    batch = build_batch(tokenizer, FACTS + [kin], cfg)
    layer, target = t.layers[0], t.layers[-1] + 1
    for a, b in zip(t.measure(batch, layer, target), m.measure(batch, layer, target)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    text = [" ".join(f"{f.prompt} {f.object}." for f in FACTS) * 10]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in
               zip(t.compute_moments(tokenizer, text, 200).values(), m.compute_moments(tokenizer, text, 200).values()))
    expected, got = t.optimize_targets(batch, target, cfg), m.optimize_targets(batch, target, cfg)
    assert got.steps == expected.steps and torch.allclose(got.prob, expected.prob, rtol=1e-4)
    assert torch.allclose(got.delta, expected.delta, rtol=1e-3, atol=1e-6)
    assert torch.allclose(got.h0, expected.h0, rtol=1e-4, atol=1e-6)
    start = t.optimize_targets(batch, target, EditConfig(v_steps=1, v_bf16=False)).prob
    start = torch.ones(batch.n_targets).scatter_reduce(0, batch.fact_target, start, "amin")     # per target
    early = EditConfig(v_steps=6, v_bf16=False,
                       v_stop_prob=float(start.sort().values[-2:].mean()),   # one target stops at once
                       v_stop_token_prob=0.0)
    expected, got = t.optimize_targets(batch, target, early), m.optimize_targets(batch, target, early)
    assert (expected.delta.norm(dim=1) == 0).sum() == 1 and torch.allclose(got.delta, expected.delta, atol=1e-6)
    assert torch.allclose(got.prob, expected.prob, rtol=1e-4)
    pairs = [(f.prompt, " " + f.object) for f in FACTS]
    assert [s.greedy for s in score_answers(torch_model, tokenizer, pairs)] == \
        [s.greedy for s in score_answers(mlx_model, tokenizer, pairs)]
    assert generate(torch_model, tokenizer, [PROBE, "Hi"], 5, templated=False) == \
        generate(mlx_model, tokenizer, [PROBE, "Hi"], 5, templated=False)
    full = generate(torch_model, tokenizer, [PROBE], 12, templated=False)[0]
    said = tokenizer.decode(tokenizer(full, add_special_tokens=False)["input_ids"][:3])
    for model in (torch_model, mlx_model):       # a probe that waits for `said` stops where it is said
        cut = generate(model, tokenizer, [PROBE], 12, templated=False, until=[said])[0]
        assert said in cut and full.startswith(cut) and len(cut) < len(full)
    ppl = [perplexity(model, tokenizer, text[0], 100) for model in (torch_model, mlx_model)]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-4)


# --- the default model ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlx_model(default_model_dir):
    return backend.load(default_model_dir)


def _folder_without_top_level_rope_theta(source, target):
    """The default model's folder as transformers 5 writes it: RoPE settings only under rope_parameters."""
    target.mkdir()
    for path in source.iterdir():
        if path.name != "config.json":
            (target / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    config.pop("rope_theta", None)
    (target / "config.json").write_text(json.dumps(config))


@pytest.mark.model
def test_the_default_model_answers_paris_in_mlx_with_the_rope_fix(mlx_model, default_model_dir, tmp_path):
    from mlx_lm import load as mlx_lm_load
    model, tokenizer = mlx_model
    answer, = generate(model, hf_tokenizer(tokenizer), ["The capital of France is"], 3, templated=False)
    assert answer.startswith(" Paris")
    folder = tmp_path / "transformers5"
    _folder_without_top_level_rope_theta(default_model_dir, folder)
    fixed, unfixed = backend.load(folder)[0], mlx_lm_load(str(folder))[0]
    assert fixed.args.rope_theta == 100000.0 and unfixed.args.rope_theta == 10000    # mlx-lm's silent default
    ids = mx.array([tokenizer.encode("The capital of France is")])
    assert mx.array_equal(fixed(ids), model(ids)).item() and not mx.allclose(unfixed(ids), model(ids)).item()


def _answers(model, tokenizer, facts) -> tuple[list[str], list[str]]:
    """Greedy raw completions (after the probes' lead-in) and chat answers."""
    return (greedy_tokens(model, tokenizer, [f.prompt for f in facts], n=4),
            chat_answers(model, tokenizer, [f.questions[0] for f in facts], max_new_tokens=12))


def _dense(memory) -> dict[int, torch.Tensor]:
    """The edited weights as float32 torch tensors (a copy: torch's live weights change in place)."""
    w = _weights(memory)
    return {l: w[l].clone() if isinstance(w[l], torch.Tensor) else to_torch(w[l]) for l in w}


def _reopen(model, tokenizer, store) -> tuple[dict, tuple]:
    """The edited weights and the answers of a new Memory on `model` reading `store`; the model is left pristine."""
    memory = Memory.open(model, tokenizer, MemoryConfig(store_dir=store, auto_sleep=False))
    assert not memory.problems and [r.status for r in memory.facts()] == ["healthy", "healthy"]
    out = _dense(memory), _answers(model, memory.tokenizer, PARITY)
    memory.close(restore_weights=True)
    return out


@pytest.mark.model
def test_torch_and_mlx_give_the_same_answers_and_read_each_others_stores(real_model, tokenizer, mlx_model,
                                                                         tmp_path):
    model, mlx_tokenizer = mlx_model
    t, m = ModelAdapter(real_model), adapter_for(model)
    assert t.fingerprint() == m.fingerprint()
    text = ["The capital of France is Paris, and the capital of Japan is Tokyo. " * 12]
    for a, b in zip(t.compute_moments(tokenizer, text, 256).values(), m.compute_moments(tokenizer, text, 256).values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)

    backends = {"torch": (real_model, tokenizer), "mlx": (model, mlx_tokenizer)}
    edited, answers = {}, {}
    for name, (net, tok) in backends.items():
        # the default covariance (shared through its cache with the other model tests): 3,000 tokens are
        # too few for the 1,536-wide keys of the early layers edited by default. Without the jitter, whose draws
        # the two backends need not make alike: it is tested on its own above (with it, torch's edit of this pair
        # missed "Aria lives in -> Portland" under the raw probe, stop 35)
        memory = Memory.open(net, tok, _config(tmp_path / name, v_steps=25, cov_tokens=EditConfig().cov_tokens,
                                               v_jitter=0.0))
        try:
            memory.inject_now(PARITY)
            edited[name], answers[name] = _dense(memory), _answers(net, memory.tokenizer, PARITY)
            assert raw_recall(net, memory.tokenizer, PARITY) == [True, True]
        finally:
            memory.close(restore_weights=True)
    assert answers["torch"] == answers["mlx"]
    assert all(f.object in chat for f, chat in zip(PARITY, answers["mlx"][1]))
    for l in edited["torch"]:        # the edits themselves agree to rounding (below 1e-3 on weights up to 6)
        difference = (edited["torch"][l] - edited["mlx"][l]).abs().max().item()
        print(f"layer {l}: largest difference between the torch and the MLX edit {difference:.1e}")
        assert difference < 1e-2

    for reader, writer in (("mlx", "torch"), ("torch", "mlx")):
        weights, reread = _reopen(*backends[reader], tmp_path / writer)
        assert all(torch.allclose(weights[l], edited[writer][l], atol=1e-6) for l in weights), (reader, writer)
        assert reread == answers[writer]


def test_the_benchmarks_load_mlx_models(make_tiny, tokenizer, tmp_path):
    from sleep_core.bench.common import load_model
    make_tiny().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, hf = load_model(str(tmp_path), "bfloat16", backend="mlx")
    assert type(model) is llama.Model and model.layers[1].mlp.down_proj.weight.dtype == mx.bfloat16
    assert hf("a")["input_ids"] == tokenizer("a")["input_ids"]


def test_the_standalone_app_chats_with_an_mlx_model_and_opens_its_memory(make_tiny, tokenizer, tmp_path):
    from extension.app import BACKENDS, parse_args
    from extension.holder import MemoryHolder
    from extension.settings import DEFAULTS
    make_tiny().save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    chat = BACKENDS[parse_args(["--backend", "mlx"]).backend].load(tmp_path / "model", max_new_tokens=4)
    holder = MemoryHolder(lambda: chat.loaded, dict(DEFAULTS), tmp_path / "memory", chat.weight_lock)
    memory = holder.memory()
    assert isinstance(memory.adapter, backend.MlxAdapter)
    assert memory.fingerprint == ModelAdapter(make_tiny()).fingerprint()
    replies = list(chat.reply([{"role": "user", "content": "Hi"}]))
    assert replies and all(isinstance(r, str) for r in replies)
    memory.close()
