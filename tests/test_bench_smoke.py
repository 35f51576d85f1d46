"""The sleep benchmarks on a tiny random-weight model: the JSON each prints has its keys, ranges and arithmetic,
and each draws its plot; the wake benchmark's loading options (backend, dtype, quantization)."""
import pytest
import torch

from sleep_core import EditConfig
from sleep_core.bench import capacity, convergence, conversation, longevity, wake
from sleep_core.bench.common import seed_pool
from sleep_core.eval import HELDOUT_CONTEXTS, RAW_CONTEXT

EDIT = EditConfig(cov_tokens=3000, v_steps=4)
PPL = 256      # held-out tokens per perplexity check: the tiny model's 49k-word output layer dominates


def fraction(x) -> bool:
    return 0.0 <= x <= 1.0


def drawn(module, result: dict, tmp_path) -> bool:
    target = tmp_path / f"{result['benchmark']}.png"
    module.plot({**result, "model": "tiny"}, target)
    return target.stat().st_size > 0


def test_capacity(make_tiny, tokenizer, tmp_path):
    result = capacity.capacity(make_tiny(), tokenizer, seed_pool(3, 0), tmp_path, edit=EDIT)
    assert set(result["curve"]) == {"seed", "unconstrained", "constrained"}
    for mode, curve in result["curve"].items():
        assert [p["facts"] for p in curve] == [1, 2, 3]
        assert all(fraction(p["recall_raw"]) for p in curve)
        assert result["holds"][mode] in (0, 1, 2, 3)
    assert drawn(capacity, result, tmp_path)


def test_wake_reports_recall_under_each_held_out_lead_in(make_tiny, tokenizer, tmp_path):
    facts = seed_pool(4, 0)
    text = " ".join(f"{f.prompt} {f.object}." for f in facts) * 20
    result = wake.run_mode(make_tiny(), tokenizer, facts[:2], "constrained", tmp_path, text, facts[2:], edit=EDIT)
    contexts = result["recall_raw_contexts"]
    assert list(contexts) == list(HELDOUT_CONTEXTS) and all(map(fraction, contexts.values()))
    assert contexts[RAW_CONTEXT] == result["recall_raw"] == result["curve"][-1]["recall_raw"]
    assert [p["facts"] for p in result["curve"]] == [1, 2] and len(result["inject_seconds"]) == 2
    assert result["ppl_drift"] == pytest.approx(result["ppl_after"] / result["ppl_before"] - 1)


def test_convergence(make_tiny, tokenizer, tmp_path):
    result = convergence.convergence(make_tiny(), tokenizer, seed_pool(3, 1), tmp_path, cycles=1, edit=EDIT,
                                     ppl_tokens=PPL)
    recall, when = result["recall_per_cycle"], result["cycles_to_converge"]
    assert all(fraction(r) for r in recall) and 1 <= len(recall) <= 2
    assert len(result["sleep_seconds"]) == len(recall) - 1 and all(s > 0 for s in result["sleep_seconds"])
    assert len(result["specificity_per_cycle"]) == len(recall) and all(map(fraction, result["specificity_per_cycle"]))
    drift = result["ppl_drift_per_cycle"]
    assert len(drift) == len(recall) and result["ppl_base"] > 1 and all(-1 < d < 10 for d in drift)
    assert drift[0] != 0.0                       # the wake edits moved the perplexity the sleep starts from
    if when is None:
        assert max(recall) < 1.0 and len(recall) == 2
    else:
        assert recall[when] == 1.0 and max(recall[:when], default=0.0) < 1.0 and when == len(recall) - 1
    assert drawn(convergence, result, tmp_path)


def test_longevity_cap_drops_oldest_and_says_so(make_tiny, tokenizer, tmp_path):
    facts = seed_pool(2, 2)
    result = longevity.longevity(make_tiny(), tokenizer, facts, tmp_path, days=2, per_day=1, cap=1, edit=EDIT,
                                 ppl_tokens=PPL)
    assert len(result["recall_per_day"]) == 2 and all(fraction(r) for r in result["recall_per_day"])
    assert [r["stored"] for r in result["per_day"]] == [1, 1]
    assert [(d["day"], d["fact"]) for d in result["dropped"]] == [(2, f"{facts[0].prompt} {facts[0].object}")]
    assert "over the cap of 1 facts" in result["dropped"][0]["reason"]
    assert drawn(longevity, result, tmp_path)
    with pytest.raises(ValueError):
        longevity.longevity(make_tiny(), tokenizer, facts, tmp_path, days=3, per_day=1, cap=1, edit=EDIT)


def test_conversation_survives_a_restart(make_tiny, tokenizer, tmp_path):
    result = conversation.conversation(make_tiny(), tokenizer, tmp_path, make_tiny, groups=2, edit=EDIT,
                                       ppl_tokens=PPL)
    assert result["groups"] == 2 and result["questions"] == len(result["answers"]) == 7
    assert result["facts_learned"] > 0
    assert all(not t["facts"] for t in result["turns"][-5:])      # distractor turns teach nothing
    for key in ("chat_recall_before", "chat_recall", "chat_recall_after_restart"):
        assert fraction(result[key])
    assert result["forbidden_hits"] == sum(bool(a["forbidden"]) for a in result["answers"])
    assert 0 <= result["forbidden_hits_after_restart"] <= 7
    assert drawn(conversation, result, tmp_path)


def test_a_seed_tells_the_groups_in_another_order_and_each_groups_statements_in_theirs():
    in_order, distractors = conversation.conversation_set(name="more")
    shuffled, same_distractors = conversation.conversation_set(name="more", seed=1)
    assert shuffled != in_order and sorted(map(str, shuffled)) == sorted(map(str, in_order))
    assert shuffled == conversation.conversation_set(name="more", seed=1)[0] and same_distractors == distractors
    assert conversation.conversation_set(name="more", seed=0)[0] == in_order


def test_answers_are_scored_by_word_starts():
    assert conversation.mentions("I love drawing.", "draw")
    assert not conversation.mentions("You live in Portland.", "LA")
    assert not conversation.mentions("He is 15.", "5")
    assert not conversation.mentions("He is 63, or 6.6 inches.", "6")
    assert conversation.mentions("He is 6 years old, 6.", "6")
    assert conversation.mentions("You moved from chicago", "Chicago")


def test_every_benchmark_takes_the_jitter_and_the_step_precision_into_its_edits():
    from sleep_core.bench.common import edit_settings, parser
    args = parser("wake", "").parse_args(["--jitter", "0", "--step-precision", "float32"])
    assert edit_settings(args) == EditConfig(v_jitter=0.0, v_bf16=False)
    assert edit_settings(parser("wake", "").parse_args([])) == EditConfig()


def test_wake_refuses_bitsandbytes_with_the_mlx_backend(capsys):
    from sleep_core.bench import wake
    with pytest.raises(SystemExit) as exit:
        wake.main(["--backend", "mlx", "--quantize", "nf4"])
    assert exit.value.code == 2 and "needs --backend torch" in capsys.readouterr().err


@pytest.mark.parametrize("dtype,quantize,layer", [("bfloat16", "none", "Linear"), ("float32", "nf4", "Linear4bit"),
                                                  ("float32", "int8", "Linear8bitLt")])
def test_load_model_in_each_precision(make_tiny, tokenizer, tmp_path, dtype, quantize, layer):
    from sleep_core.bench.common import load_model
    if quantize != "none":
        pytest.importorskip("bitsandbytes")
    make_tiny().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), dtype, quantize, device="cpu")
    assert type(model.model.layers[1].mlp.down_proj).__name__ == layer
    assert model.model.embed_tokens.weight.dtype == getattr(torch, dtype)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_gpu_asked_for_on_a_machine_without_one_is_named():
    from sleep_core.bench.common import load_model
    with pytest.raises(SystemExit, match="--device cuda: .* sees no CUDA device"):
        load_model(None, device="cuda")
