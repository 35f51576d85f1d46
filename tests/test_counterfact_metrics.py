"""The CounterFact and zsRE metrics against probabilities computed by hand from a tiny model's logits."""
import json
from types import SimpleNamespace

import pytest
import torch

from sleep_core import EditConfig, Memory, MemoryConfig
from sleep_core.bench import counterfact
from sleep_core.bench.counterfact import (counterfact_margins, counterfact_scores, evaluate, load_records, occupancy,
                                          run_mode, split_prompt, zsre_scores)
from sleep_core.eval import RAW_CONTEXT
from sleep_core.paths import data_dir

ZSRE = [
    {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "Trinity College",
     "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
     "answers": ["Illinois Institute of Technology"],
     "loc": "nq question: who played desmond doss father in hacksaw ridge",
     "loc_ans": "Hugo Weaving", "cond": ""},
    {"subject": "Ramalinaceae", "src": "Which family does Ramalinaceae belong to?", "pred": "Lecanorales",
     "rephrase": "What family are Ramalinaceae?", "alt": "Lamiinae", "answers": ["Lecanorales"],
     "loc": "nq question: types of skiing in the winter olympics 2018", "loc_ans": "Downhill", "cond": ""},
]


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompt: str, answer: str) -> torch.Tensor:
    """log P of each answer token after the prompt, from one unpadded forward pass."""
    full = tokenizer(prompt + answer)["input_ids"]
    head = tokenizer(prompt)["input_ids"]
    assert full[: len(head)] == head
    logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
    return torch.stack([logp[t - 1, full[t]] for t in range(len(head), len(full))])


@torch.no_grad()
def answer_top1(model, tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    full = tokenizer(prompt + answer)["input_ids"]
    n = len(tokenizer(prompt)["input_ids"])
    logits = model(input_ids=torch.tensor([full])).logits[0]
    return full[n:], [int(logits[t - 1].argmax()) for t in range(n, len(full))]


def run_args(**settings) -> SimpleNamespace:
    """`counterfact`'s command line as run_mode reads it."""
    return SimpleNamespace(**{"model": None, "records": None, "format": "counterfact", "seed": 0, "bare": False,
                              "batch": 1, "sleep_every": 0, "replay": False, "layers": None, "jitter": 0.0,
                              "checkpoints": [2, 5],
                              **settings})


@pytest.fixture
def records():
    return load_records(data_dir() / "counterfact_dev_3000.json", "counterfact", 5)


def test_counterfact_margins_match_hand_computation(make_tiny, tokenizer, records):
    model = make_tiny()
    margins = counterfact_margins(model, tokenizer, records)
    lp = lambda prompt, answer: answer_logprobs(model, tokenizer, RAW_CONTEXT + prompt, " " + answer)
    for i, r in enumerate(records):
        new, true = lp(r.prompt, r.target), lp(r.prompt, r.truth)
        assert margins["es"][i] == pytest.approx((new.sum() - true.sum()).item(), abs=1e-3)
        assert margins["ps"][i] == pytest.approx((lp(r.rephrase, r.target).sum()
                                                  - lp(r.rephrase, r.truth).sum()).item(), abs=1e-3)
        assert margins["ns"][i] == pytest.approx((lp(r.loc_prompt, r.loc_answer).sum()
                                                  - lp(r.loc_prompt, r.target).sum()).item(), abs=1e-3)
        target, top = answer_top1(model, tokenizer, RAW_CONTEXT + r.prompt, " " + r.target)
        assert margins["em"][i] == (target == top)
    scores = counterfact_scores(margins)
    assert scores["es"] == [m > 0 for m in margins["es"]] and scores["ns"] == [m > 0 for m in margins["ns"]]


def test_records_edit_the_prompt_at_the_subject():
    rows = json.loads((data_dir() / "counterfact_dev_3000.json").read_text())
    jahangir = next(r for r in rows if r["prompt"] == "The official religion of Jahangir is")
    assert split_prompt(jahangir["subject"], jahangir["prompt"]) == ("The official religion of Jahangir", "is")
    assert split_prompt("Anaxagoras", "Anaxagoras's expertise is") == ("Anaxagoras", "'s expertise is")
    for row, r in zip(rows[:50], load_records(data_dir() / "counterfact_dev_3000.json", "counterfact", 50)):
        # Fact.prompt puts a space before "," and "?" (see the report on Fact.prompt's joiner)
        assert r.fact.prompt.replace(" ,", ",").replace(" ?", "?") == r.prompt
        assert r.fact.subject.endswith(row["subject"]) and r.fact.questions[0].endswith(r.prompt)


def test_zsre_records_parse(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(ZSRE))
    first, second = load_records(path, "zsre", 10)
    assert (first.fact.subject, first.fact.relation, first.fact.object) == \
        ("What university did Watts Humphrey", "attend?", "University of Michigan")
    assert first.fact.prompt == first.prompt == ZSRE[0]["src"] and first.fact.questions == (ZSRE[0]["src"],)
    assert (first.rephrase, first.loc_prompt, first.loc_answer) == (ZSRE[0]["rephrase"], ZSRE[0]["loc"], "Hugo Weaving")
    assert second.fact.prompt == "Which family does Ramalinaceae belong to?" and second.truth == ""


def test_zsre_token_accuracy_matches_hand_computation(make_tiny, tokenizer, tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(ZSRE))
    recs = load_records(path, "zsre", 10)
    model = make_tiny()
    base = [torch.tensor(answer_top1(model, tokenizer, RAW_CONTEXT + r.loc_prompt, " " + r.loc_answer)[1])
            for r in recs]
    base[0][0] = -1     # the unedited model "disagreed" on the first locality token
    scores = zsre_scores(model, tokenizer, recs, base)
    for i, r in enumerate(recs):
        target, top = answer_top1(model, tokenizer, RAW_CONTEXT + r.prompt, " " + r.target)
        assert scores["es"][i] == pytest.approx(sum(a == b for a, b in zip(target, top)) / len(target))
        target, top = answer_top1(model, tokenizer, RAW_CONTEXT + r.rephrase, " " + r.target)
        assert scores["ps"][i] == pytest.approx(sum(a == b for a, b in zip(target, top)) / len(target))
    assert scores["ns"][1] == 1.0 and scores["ns"][0] == pytest.approx(1 - 1 / len(base[0]))


def test_occupancy_is_the_edits_share_of_each_layers_output_on_general_text(make_tiny, tokenizer, store_dir, records):
    memory = Memory.open(make_tiny(), tokenizer, MemoryConfig(store_dir=store_dir, auto_sleep=False,
                                                                edit=EditConfig(cov_tokens=3000, v_steps=4)))
    assert occupancy(memory) == [0.0] * len(memory.adapter.layers)
    memory.inject_now([r.fact for r in records[:2]])
    one = occupancy(memory)
    memory.inject_now([r.fact for r in records[2:4]])
    for layer, (first, now) in zip(memory.adapter.layers, zip(one, occupancy(memory))):
        pristine = memory.ledger.pristine[layer].float()      # plain weights: the snapshot is the matrix
        A, B = memory.ledger.factors(layer)
        C = memory.priors()[layer].moment.double()
        change, whole = (A @ B.T).double(), pristine.double()
        assert now == pytest.approx(float(torch.trace(change @ C @ change.T) / torch.trace(whole @ C @ whole.T)),
                                    rel=1e-4)
        assert 0 < first < now < 1
    memory.close()


def test_a_run_reports_each_checkpoint_over_the_records_so_far_and_restores_the_weights(
        make_tiny, tokenizer, tmp_path, records, monkeypatch):
    monkeypatch.setattr(counterfact, "edit_settings", lambda args: EditConfig(cov_tokens=3000, v_steps=4))
    model = make_tiny()
    pristine = {name: t.clone() for name, t in model.state_dict().items()}
    args = run_args(checkpoints=[2, 5])
    heldout = "The river runs through the old town and into the sea. " * 40
    base_loc = [None] * len(records)
    base, base_scores = evaluate(model, tokenizer, records, args, base_loc, heldout)
    run = run_mode(model, tokenizer, records, "constrained", args, tmp_path, (base_scores, base_loc, heldout))
    first, last = run["checkpoints"]
    assert (first["edits"], last["edits"]) == (2, 5)
    assert first["base"]["es"] == pytest.approx(sum(base_scores["es"][:2]) / 2)
    assert last["base"]["es"] == pytest.approx(base["es"])
    assert 0 < sum(first["occupancy"]) < sum(last["occupancy"])
    for c in run["checkpoints"]:
        assert 0 < c["rss_mb"] <= c["peak_rss_mb"] and c["seconds_per_edit_median"] > 0
    assert all(torch.equal(pristine[name], t) for name, t in model.state_dict().items())


def test_a_stopped_run_continues_where_it_ended_without_editing_a_record_twice(
        make_tiny, tokenizer, tmp_path, records, monkeypatch):
    monkeypatch.setattr(counterfact, "edit_settings", lambda args: EditConfig(cov_tokens=3000, v_steps=4))
    args = run_args(sleep_every=2, checkpoints=[1, 3, 5])
    heldout = "The river runs through the old town and into the sea. " * 40
    base = ({"es": [True] * len(records)}, [None] * len(records), heldout)
    injected, sleeps = [], []
    inject, sleep = Memory.inject_now, Memory.sleep

    def inject_until_the_fourth(memory, facts, source="api", together=False):
        if len(injected) == 3:
            raise KeyboardInterrupt     # the process is stopped after storing three edits and its first sleep
        injected.extend(f.key for f in facts)
        return inject(memory, facts, source, together)
    monkeypatch.setattr(Memory, "inject_now", inject_until_the_fourth)
    monkeypatch.setattr(Memory, "sleep", lambda memory, *a, **k: sleeps.append(len(injected)) or sleep(memory, *a, **k))
    with pytest.raises(KeyboardInterrupt):
        run_mode(make_tiny(), tokenizer, records, "constrained", args, tmp_path, base)
    assert (injected, sleeps) == ([r.fact.key for r in records[:3]], [2])

    monkeypatch.setattr(Memory, "inject_now", lambda memory, facts, source="api", together=False: (
        injected.extend(f.key for f in facts), inject(memory, facts, source, together))[1])
    model = make_tiny()      # a new process: the same pristine weights, the edits only in the store
    run = run_mode(model, tokenizer, records, "constrained", args, tmp_path, base)
    assert injected == [r.fact.key for r in records]      # the first three were not edited again
    assert sleeps == [2, 4]
    assert [c["edits"] for c in run["checkpoints"]] == [1, 3, 5] and run["resumed_at"] == [3]
    assert len(json.loads((tmp_path / "constrained" / "run.json").read_text())["edit_seconds"]) == 5

    with pytest.raises(SystemExit, match="sleep_every"):
        run_mode(make_tiny(), tokenizer, records, "constrained", run_args(sleep_every=3), tmp_path, base)
    with pytest.raises(SystemExit, match="layers"):         # other edited layers are another run
        run_mode(make_tiny(), tokenizer, records, "constrained", run_args(sleep_every=2, layers=(0,)), tmp_path, base)
