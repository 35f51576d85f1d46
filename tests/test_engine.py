"""The engine on tiny random models: revert is bitwise, factors have the right rank, the store round-trips,
another model's store is refused, unknown architectures get a clear error."""
from dataclasses import replace

import pytest
import torch

from sleep_core import (EditConfig, Fact, Memory, MemoryConfig, StoreError, UnsupportedModelError,
                        WrongModelError)
from sleep_core.editing import make_prior, solve
from sleep_core.editing.solve import general_text_change
from sleep_core.model import ModelAdapter

FACTS = [Fact("Aria", "lives in", "Portland", ("Where does Aria live?",)),
         Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",)),
         Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))]


def _open(model, tokenizer, store_dir, lock, mode="constrained"):
    return Memory.open(model, tokenizer, _config(store_dir, mode), weight_lock=lock)


def _config(store_dir, mode="constrained"):
    return MemoryConfig(store_dir=store_dir, mode=mode, edit=EditConfig(cov_tokens=3000, v_steps=4))


def _weights(memory):
    return {l: memory.adapter.read_weight(l).clone() for l in memory.adapter.layers}


@pytest.mark.parametrize("mode", ["constrained", "unconstrained", "seed"])
def test_revert_is_bitwise(tiny_model, tokenizer, store_dir, strict_lock, mode):
    memory = _open(tiny_model, tokenizer, store_dir, strict_lock, mode)
    pristine = _weights(memory)
    first, second = memory.inject_now(FACTS[:2])
    after_both = _weights(memory)
    assert any(not torch.equal(pristine[l], after_both[l]) for l in pristine), "the edit changed nothing"
    memory.forget(first)
    only_second = _weights(memory)
    memory.forget(second)
    assert all(torch.equal(pristine[l], memory.adapter.read_weight(l)) for l in pristine)
    again = memory.inject_now([FACTS[1]])
    memory.forget_everything()
    assert memory.ledger.is_pristine() and not memory.facts()
    assert any(not torch.equal(only_second[l], pristine[l]) for l in pristine) and again
    memory.close()


def test_factors_have_rank_of_batch(tiny_llama, tokenizer, store_dir):
    from sleep_core.editing import compute_edits
    memory = Memory.open(tiny_llama, tokenizer, _config(store_dir))
    edits = compute_edits(memory.adapter, tokenizer, FACTS, memory.config.edit, memory.priors(), {})
    for layer in memory.adapter.layers:
        update = sum(torch.outer(e.a[layer], e.b[layer]) for e in edits)
        assert torch.linalg.matrix_rank(update).item() == len(FACTS)
    memory.ledger.rebuild()
    memory.close()


SON = [Fact("my son", "'s name is", "Andre", ("What is my son's name?",)),
       Fact("My  Son", "is aged", "6", ("How old is my son?",))]


def test_facts_about_one_subject_share_one_target(tokenizer):
    from sleep_core.editing.prompts import build_batch
    batch = build_batch(tokenizer, [SON[0], FACTS[0], SON[1]], EditConfig())
    assert batch.fact_target.tolist() == [0, 1, 0] and batch.n_targets == 2
    assert int((~batch.rewrite).sum()) == 2                 # one KL prompt per subject
    seed = build_batch(tokenizer, [SON[0], FACTS[0], SON[1]], EditConfig(mode="seed"))
    assert seed.fact_target.tolist() == [0, 1, 2]           # the reference gave every fact its own


def test_no_subject_is_read_on_the_first_token(tokenizer):
    """A model's first position is its attention sink, so a one-token subject that opens a raw prompt or the KL
    prompt ("Italy is a") is read after a line break; other prompts are left as they are."""
    from sleep_core.editing.prompts import build_batch
    italy = Fact("Italy", "is located in", "Asia", ("Where is Italy located?",))
    batch = build_batch(tokenizer, [italy, FACTS[1]], EditConfig())
    read = [tokenizer.decode(batch.input_ids[row, batch.subject_pos[row]]).strip() for row in range(len(batch.fact))]
    assert set(read) == {"Italy", "dog"} and int(batch.subject_pos.min()) == 1
    rows = [row for row in range(len(batch.fact)) if batch.fact[row] == 0 and batch.subject_pos[row] == 1]
    assert [tokenizer.decode(batch.input_ids[row, :2]) for row in rows] == ["\nItaly", "\nItaly"]   # bare and KL
    assert tokenizer.decode(batch.input_ids[batch.fact == 1][0, :2]) == "my dog"     # "dog" is not on the sink


def test_a_massive_activation_does_not_set_its_targets_scale():
    from sleep_core.editing.values import MASSIVE, target_scale
    h0 = torch.zeros(5, 4)
    h0[:, 0] = torch.tensor([150.0, 160.0, 21_000.0, 140.0, 155.0])
    scale = target_scale(h0, torch.tensor([0, 0, 0, 1, 1]), 2)
    assert scale.tolist() == [MASSIVE * 155.0, 155.0]      # capped at twice the median; the other target's own max


def test_a_fact_about_a_known_subject_re_solves_its_kin(tiny_llama, tokenizer, store_dir, monkeypatch):
    memory = Memory.open(tiny_llama, tokenizer, _config(store_dir))
    name, other = memory.inject_now([SON[0], FACTS[0]])
    columns = {i: memory.ledger.columns[i] for i in (name, other)}
    age = memory.inject_now([SON[1]])[0]
    assert memory.ledger.columns[other] is columns[other]                 # another subject: untouched
    assert memory.ledger.columns[name] is not columns[name]               # same subject: solved again with it
    assert torch.equal(memory.ledger.columns[name].delta, memory.ledger.columns[age].delta)
    assert {r.id for r in memory.active_records()} == {name, other, age}

    def broken(*args, **kwargs):
        raise FloatingPointError("the solve produced non-finite factors; nothing was written")
    weights, before = _weights(memory), memory.ledger.snapshot()
    monkeypatch.setattr("sleep_core.facade.compute_edits", broken)
    with pytest.raises(FloatingPointError):
        memory.inject_now([Fact("my son", "loves", "drawing", ("What does my son love?",))])
    assert memory.ledger.snapshot() == before                           # its kin were not lost
    assert all(torch.equal(weights[l], memory.adapter.read_weight(l)) for l in weights)
    memory.close()


def test_a_target_that_is_reached_stops_costing_steps(tiny_llama, tokenizer, monkeypatch):
    import sleep_core.editing.values as values
    from sleep_core.editing.prompts import build_batch
    adapter = ModelAdapter(tiny_llama)
    layer = adapter.layers[-1] + 1
    # float32 steps and no jitter (whose draws follow the groups' shapes): regrouping changes nothing but the batches
    exact = EditConfig(v_steps=1, v_bf16=False, v_jitter=0.0)
    start = adapter.optimize_targets(build_batch(tokenizer, FACTS, exact), layer, exact).prob
    cfg = EditConfig(v_steps=8, v_bf16=False, v_jitter=0.0, v_stop_prob=float(start.sort().values[-2:].mean()),
                     v_stop_token_prob=0.0)                                                        # one done at once
    batch = build_batch(tokenizer, FACTS, cfg)
    prepared, prepare = [], values._prepare
    monkeypatch.setattr(values, "_prepare", lambda a, b, rows: prepared.append(len(rows)) or prepare(a, b, rows))
    pruned = adapter.optimize_targets(batch, layer, cfg)
    running = int((batch.target != start.argmax()).sum())
    assert sum(prepared) == len(batch.fact) + running      # regrouped once, without the finished target's rows
    prepared.clear()
    monkeypatch.setattr(values, "grouping", lambda adapter: (values.BY_TOKENS[0], 0.0))
    kept = adapter.optimize_targets(batch, layer, cfg)
    assert sum(prepared) == len(batch.fact)
    assert int(start.argmax()) == int(pruned.delta.norm(dim=1).argmin()) and pruned.delta.norm(dim=1).min() == 0
    assert torch.allclose(pruned.delta, kept.delta, atol=1e-6) and torch.equal(pruned.h0, kept.h0)
    assert torch.allclose(pruned.prob, kept.prob)


def test_a_large_batchs_targets_are_optimised_in_chunks_each_subject_in_one(tiny_llama, tokenizer, monkeypatch):
    """The target optimisation's memory grows with its prompts, so a batch over TARGET_CHUNK facts is optimised a
    chunk at a time; each fact's target and h0 are the ones its chunk gives alone, and facts about one subject
    share a chunk (and a target)."""
    import sleep_core.editing.memit as memit
    from sleep_core.editing.prompts import build_batch
    monkeypatch.setattr(memit, "TARGET_CHUNK", 2)
    adapter = ModelAdapter(tiny_llama)
    cfg = EditConfig(v_steps=4, v_bf16=False)
    facts = [FACTS[0], FACTS[1], replace(FACTS[0], relation="works as", object="baker"), FACTS[2],
             Fact("Noor", "plays", "chess", ("What does Noor play?",))]
    batch = build_batch(tokenizer, facts, cfg)
    chunks, optimize = [], adapter.optimize_targets
    monkeypatch.setattr(adapter, "optimize_targets",
                        lambda sub, layer, c: chunks.append(sub.n_facts) or optimize(sub, layer, c))
    targets = memit._optimize_in_chunks(adapter, tokenizer, facts, batch, cfg)
    assert chunks == [2, 2, 1]      # Aria's two facts, then "my dog" and Kaito, then Noor
    assert torch.equal(targets.delta[batch.fact_target[0]], targets.delta[batch.fact_target[2]])
    alone = optimize(build_batch(tokenizer, [facts[1], facts[3]], cfg), adapter.layers[-1], cfg)
    rows = torch.cat([(batch.fact == i).nonzero().squeeze(1) for i in (1, 3)])
    assert torch.equal(targets.delta[batch.fact_target[[1, 3]]], alone.delta)
    assert torch.equal(targets.h0[rows], alone.h0) and torch.equal(targets.prob[[1, 3]], alone.prob)
    assert targets.h0.abs().sum(1).gt(0).all(), "every prompt's h0 is filled in"


def test_on_a_gpu_every_row_runs_in_one_group_to_the_end(tiny_llama, tokenizer, monkeypatch):
    """A GPU step costs per kernel launch: rows of any length run padded in one group per kind (with and without
    a prefix to cache), never regrouped, and the padding changes nothing."""
    import sleep_core.editing.values as values
    from sleep_core.editing.prompts import build_batch
    adapter = ModelAdapter(tiny_llama)
    cfg = EditConfig(v_steps=6, v_bf16=False)
    batch = build_batch(tokenizer, FACTS, cfg)
    ratio, _ = values.BY_TOKENS
    kinds = len({bool(p > 0) for p in batch.subject_pos.tolist()})
    assert len(values.suffix_groups(batch, ratio)) > kinds      # on a CPU the lengths split the rows further
    prepared, prepare = [], values._prepare
    monkeypatch.setattr(values, "_prepare", lambda a, b, rows: prepared.append(len(rows)) or prepare(a, b, rows))
    by_tokens = adapter.optimize_targets(batch, adapter.layers[-1], cfg)
    prepared.clear()
    monkeypatch.setattr(values, "grouping", lambda adapter: values.BY_LAUNCHES)
    by_launches = adapter.optimize_targets(batch, adapter.layers[-1], cfg)
    assert len(prepared) == kinds and sum(prepared) == len(batch.fact)
    assert by_launches.steps == by_tokens.steps
    assert torch.allclose(by_launches.delta, by_tokens.delta, atol=1e-5)
    assert torch.allclose(by_launches.h0, by_tokens.h0)


def test_a_key_gives_chat_questions_their_share(tokenizer):
    from sleep_core.editing.keys import chat_shares, per_fact_mean
    from sleep_core.editing.prompts import build_batch
    facts = [FACTS[0], Fact("Kaito", "works as", "cartographer", ())]        # Kaito has no chat question
    cfg = EditConfig(prefixes=("", "Note: ", "I heard that "), chat_questions=1, key_chat_share=0.5)
    batch = build_batch(tokenizer, facts, cfg)
    assert batch.chat.tolist() == [False] * 3 + [True] + [False] + [False] * 3 + [False]     # KL rows last per fact
    rows = torch.stack([batch.chat.float(), torch.arange(len(batch.fact)).float()], 1)
    half = per_fact_mean(rows, batch, chat_shares(batch, cfg))
    assert half[:, 0].tolist() == [0.5, 0.0]        # three raw prompts hold half of Aria's key, one question half
    assert half[0, 1].item() == pytest.approx((0 + 1 + 2) / 6 + 3 / 2)
    assert half[1, 1].item() == pytest.approx((5 + 6 + 7) / 3)      # raw prompts only: their plain mean
    plain = per_fact_mean(rows, batch, chat_shares(batch, EditConfig()))
    assert plain[:, 0].tolist() == [0.25, 0.0] and plain[0, 1].item() == pytest.approx((0 + 1 + 2 + 3) / 4)
    assert torch.equal(plain, per_fact_mean(rows, batch))
    assert per_fact_mean(rows, batch, torch.tensor([0.2, 0.2]))[0, 0].item() == pytest.approx(0.2)


def test_only_a_subject_that_carries_several_facts_gets_the_shared_share(tokenizer):
    from sleep_core.editing.keys import chat_shares
    from sleep_core.editing.prompts import build_batch
    batch = build_batch(tokenizer, [SON[0], FACTS[0], SON[1]], EditConfig())
    shares = chat_shares(batch, EditConfig(shared_key_chat_share=0.5))
    assert shares[[0, 2]].tolist() == [0.5, 0.5] and shares[1].isnan()      # Aria stands alone: a plain mean
    both = chat_shares(batch, EditConfig(key_chat_share=0.3, shared_key_chat_share=0.5))
    assert both.tolist() == pytest.approx([0.5, 0.3, 0.5])
    assert chat_shares(batch, EditConfig(key_chat_share=0.3)).tolist() == pytest.approx([0.3] * 3)


def test_split_keys_give_raw_prompts_and_chat_questions_a_key_each(tokenizer):
    from sleep_core.editing.keys import chat_shares, key_columns
    from sleep_core.editing.prompts import build_batch
    facts = [FACTS[0], Fact("Kaito", "works as", "cartographer", ())]        # Kaito has no chat question
    cfg = EditConfig(prefixes=("", "Note: ", "I heard that "), chat_questions=1, split_keys=True)
    batch = build_batch(tokenizer, facts, cfg)
    rows = torch.stack([batch.chat.float(), torch.arange(len(batch.fact)).float()], 1)
    K, owner = key_columns(rows, batch, chat_shares(batch, cfg), cfg)
    assert owner.tolist() == [0, 1, 0]
    s = 0.5 ** 0.5                                                            # Aria's two columns weigh as one
    assert K[:, 0].tolist() == pytest.approx([0.0, s * (0 + 1 + 2) / 3])
    assert K[:, 2].tolist() == pytest.approx([s, s * 3])
    assert K[:, 1].tolist() == pytest.approx([0.0, (5 + 6 + 7) / 3])        # one kind of prompt: one plain column
    mean = EditConfig(prefixes=cfg.prefixes, split_keys=False)
    single, one_each = key_columns(rows, batch, chat_shares(batch, mean), mean)
    assert one_each.tolist() == [0, 1] and single[1, 0].item() == pytest.approx((0 + 1 + 2 + 3) / 4)


def test_a_fact_with_two_key_columns_is_written_at_both_with_one_column_of_dw():
    from sleep_core.editing.solve import solve_facts
    _, prior = _spectrum()
    cfg = EditConfig(mode="constrained", null_energy=1.0, exact=True)
    keys, R, owner = torch.randn(16, 3), torch.randn(8, 2), torch.tensor([0, 1, 0])
    scale = torch.tensor([0.5 ** 0.5, 1.0, 0.5 ** 0.5])
    A, B = solve_facts(keys * scale, owner, R, prior, torch.randn(16, 4), cfg)
    assert A.shape == (8, 2) and B.shape == (16, 2)                           # rank one per fact
    assert torch.allclose(A @ B.T @ keys, R[:, owner], atol=1e-4)            # fact 0's residual at both its keys
    mean = torch.stack([(keys[:, 0] + keys[:, 2]) / 2, keys[:, 1]], 1)     # one mean key cannot write both
    A1, B1 = solve(mean, R, prior, torch.randn(16, 4), cfg)
    assert not torch.allclose(A1 @ B1.T @ keys[:, [0, 2]], R[:, [0, 0]], atol=1e-2)
    one = solve_facts(keys[:, :2], torch.arange(2), R, prior, torch.zeros(16, 0), cfg)
    assert all(torch.equal(x, y) for x, y in zip(one, solve(keys[:, :2], R, prior, torch.zeros(16, 0), cfg)))


def test_a_target_is_reached_only_when_every_object_token_is_likely(tokenizer):
    from sleep_core.editing.prompts import build_batch
    from sleep_core.editing.values import targets_reached
    cfg = EditConfig(v_stop_prob=0.9, v_stop_token_prob=0.8)
    batch = build_batch(tokenizer, FACTS, cfg)
    token_fact = torch.tensor([0, 0, 1, 1, 2, 2])
    token_nll = -torch.log(torch.tensor([0.99, 0.85, 0.99, 0.6, 0.95, 0.95]))
    mean = torch.tensor([0.92, 0.95, 0.95])       # fact 1 averages well above 0.9 with one token at 0.6
    assert targets_reached(mean, token_nll, token_fact, batch, cfg).tolist() == [True, False, True]
    assert targets_reached(mean, token_nll, token_fact, batch, EditConfig(v_stop_token_prob=0.5)).all()
    assert targets_reached(torch.tensor([0.85, 0.95, 0.95]), token_nll, token_fact, batch, cfg).tolist() == \
        [False, False, True]
    with pytest.raises(ValueError):
        EditConfig(v_stop_token_prob=1.0)


def test_bfloat16_steps_keep_h0_and_leave_the_model_as_they_found_it(tiny_llama, tokenizer):
    from sleep_core.editing.prompts import build_batch
    adapter = ModelAdapter(tiny_llama)
    layer, batch = adapter.layers[-1], build_batch(tokenizer, FACTS, EditConfig())
    params = list(tiny_llama.parameters())
    params[0].requires_grad_(False)                   # as a host may load it; the rest as from_pretrained does
    before = [p.requires_grad for p in params], tiny_llama.config._attn_implementation
    full = adapter.optimize_targets(batch, layer, EditConfig(v_steps=8, v_bf16=False))
    half = adapter.optimize_targets(batch, layer, EditConfig(v_steps=8, v_bf16=True))
    # the first pass runs in float32 (eager attention: equal to rounding), bfloat16 would differ by 1e-3
    assert torch.allclose(full.h0, half.h0, rtol=1e-5, atol=1e-7)
    assert not torch.equal(full.delta, half.delta)    # the steps did not
    assert torch.nn.functional.cosine_similarity(full.delta, half.delta).min() > 0.9
    assert torch.allclose(full.prob, half.prob, atol=0.05)
    assert ([p.requires_grad for p in params], tiny_llama.config._attn_implementation) == before
    assert all(p.grad is None for p in params)        # no weight gradient was computed
    params[0].requires_grad_(True)


def test_jitter_is_orthogonal_to_each_target_and_a_share_of_its_length():
    from sleep_core.editing.values import jitter
    delta = torch.randn(5, 32)
    eps = jitter(delta, 0.3, torch.Generator().manual_seed(0))
    assert torch.allclose((eps * delta).sum(1), torch.zeros(5), atol=1e-4)
    assert torch.allclose(eps.norm(dim=1), 0.3 * delta.norm(dim=1), rtol=1e-5)
    assert not torch.any(jitter(delta, 0.0, torch.Generator()))


def test_jittered_targets_are_the_same_in_every_run_and_seed_mode_has_none(tiny_llama, tokenizer):
    from sleep_core.editing.prompts import build_batch
    adapter = ModelAdapter(tiny_llama)
    layer, batch = adapter.layers[-1], build_batch(tokenizer, FACTS, EditConfig())
    torch.manual_seed(1)
    first = adapter.optimize_targets(batch, layer, EditConfig(v_steps=6, v_jitter=0.3))
    torch.manual_seed(2)                                # the jitter draws from its own generator
    again = adapter.optimize_targets(batch, layer, EditConfig(v_steps=6, v_jitter=0.3))
    plain = adapter.optimize_targets(batch, layer, EditConfig(v_steps=6, v_jitter=0.0))
    assert torch.equal(first.delta, again.delta)
    assert not torch.equal(first.delta, plain.delta)
    seed = EditConfig(mode="seed", v_steps=6)
    seed_batch = build_batch(tokenizer, FACTS, seed)
    assert torch.equal(adapter.optimize_targets(seed_batch, layer, seed).delta,
                       adapter.optimize_targets(seed_batch, layer, replace(seed, v_jitter=0.3)).delta)


def _spectrum(d: int = 16, used: int = 12):
    """A second moment whose general text uses `used` directions; the rest is a near-null space."""
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, d))[0]
    spectrum = torch.cat([torch.full((used,), 1.0), torch.full((d - used,), 1e-4)])
    return basis, make_prior(basis @ torch.diag(spectrum) @ basis.T)


def test_constrained_update_leaves_general_text_keys_alone():
    basis, prior = _spectrum()
    cfg = EditConfig(mode="constrained", null_energy=0.01, lambda_rel=0.0)
    assert prior.null_basis(cfg.null_energy)[0].shape[1] == 4
    A, B = solve(torch.randn(16, 2), torch.randn(8, 2), prior, torch.zeros(16, 0), cfg)
    used = basis[:, :12]                                   # directions general text uses
    assert (A @ B.T @ used).abs().max() < 1e-5             # AlphaEdit: ΔW P K0 = 0
    assert torch.linalg.matrix_rank(A @ B.T).item() == 2


def test_unconstrained_solve_is_memits_closed_form():
    _, prior = _spectrum()
    K, R = torch.randn(16, 3), torch.randn(8, 3)
    A, B = solve(K, R, prior, torch.randn(16, 5), EditConfig(mode="unconstrained", lambda_rel=0.5))
    C, K64 = prior.moment.double(), K.double()
    expected = R.double() @ K64.T @ torch.linalg.inv(0.5 * 16 * C + K64 @ K64.T)     # MEMIT eq. 14
    assert torch.allclose((A @ B.T).double(), expected, atol=1e-5)


def test_stored_keys_are_preserved_in_proportion_to_their_weight():
    _, prior = _spectrum()
    K, R, stored = torch.randn(16, 1), torch.randn(8, 1), torch.randn(16, 3)
    moved = [(lambda A, B: (A @ B.T @ stored).norm().item())(*solve(
        K, R, prior, stored, EditConfig(mode="constrained", null_energy=1.0, preserve_rel=mu)))
        for mu in (0.0, 1.0, 100.0)]
    assert moved[0] > moved[1] > moved[2] and moved[2] < 0.05 * moved[0]


def test_exact_solve_writes_the_residual_at_the_new_keys():
    _, prior = _spectrum()
    K, R = torch.randn(16, 2), torch.randn(8, 2)
    A, B = solve(K, R, prior, torch.randn(16, 5), EditConfig(mode="constrained", null_energy=1.0, exact=True))
    assert torch.allclose(A @ B.T @ K, R, atol=1e-4)


def test_general_text_change_is_the_mean_squared_change_of_the_output():
    keys = torch.randn(500, 16) * torch.linspace(0.1, 2.0, 16)
    prior = make_prior(keys.T @ keys / len(keys))
    A, B = torch.randn(8, 3), torch.randn(16, 3)
    measured = ((keys @ B @ A.T) ** 2).sum(1).mean().item()
    assert general_text_change(A, B, prior) == pytest.approx(measured, rel=1e-5)


def test_store_round_trips_in_a_new_memory(make_tiny, tokenizer, store_dir, strict_lock):
    memory = _open(make_tiny(), tokenizer, store_dir, strict_lock)
    memory.inject_now(FACTS)
    edited = _weights(memory)
    memory.close()
    again = _open(make_tiny(), tokenizer, store_dir, strict_lock)
    assert all(torch.equal(edited[l], again.adapter.read_weight(l)) for l in edited)
    assert [r.object for r in again.facts()] == [f.object for f in FACTS]
    again.close()


def test_split_keys_are_stored_and_protected(make_tiny, tokenizer, store_dir, strict_lock):
    config = MemoryConfig(store_dir=store_dir, edit=EditConfig(cov_tokens=3000, v_steps=4, split_keys=True))
    memory = Memory.open(make_tiny(), tokenizer, config, weight_lock=strict_lock)
    memory.inject_now(FACTS)
    layers, edited = memory.adapter.layers, _weights(memory)
    kept = {l: memory.ledger.keys(l) for l in layers}      # what the next constrained update preserves
    assert all(k.shape[1] == 2 * len(FACTS) for k in kept.values())      # every fact has raw and chat prompts
    memory.close()
    again = Memory.open(make_tiny(), tokenizer, config, weight_lock=strict_lock)
    assert all(torch.equal(edited[l], again.adapter.read_weight(l)) for l in layers)
    assert all(torch.equal(kept[l], again.ledger.keys(l)) for l in layers)
    again.close()


def test_store_of_another_model_is_refused(make_tiny, tokenizer, store_dir):
    first = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    first.inject_now(FACTS[:1])
    first.close()
    other = make_tiny()
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.add_(1.0)   # same shapes, different weights
    folder = store_dir / first.fingerprint
    from sleep_core.memory.store import Store
    adapter = ModelAdapter(other)
    with pytest.raises(WrongModelError, match="belongs to model"):
        Store(folder, adapter.fingerprint(), adapter.layers)


def test_a_second_store_for_an_edited_model_object_is_refused(tiny_llama, tokenizer, tmp_path):
    """One Memory per model object: its edits are in the weights, so another store must not take them as pristine."""
    first = Memory.open(tiny_llama, tokenizer, MemoryConfig(store_dir=tmp_path / "a"))
    assert Memory.open(tiny_llama, tokenizer, MemoryConfig(store_dir=tmp_path / "a")) is first
    with pytest.raises(StoreError, match="already has a memory open"):
        Memory.open(tiny_llama, tokenizer, MemoryConfig(store_dir=tmp_path / "b"))
    first.close()
    second = Memory.open(tiny_llama, tokenizer, MemoryConfig(store_dir=tmp_path / "b"))
    assert second is not first and second.store.folder.parent == tmp_path / "b"
    second.close()


def test_corrupt_edit_file_is_never_applied(make_tiny, tokenizer, store_dir):
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    memory.inject_now(FACTS[:1])
    memory.close()
    for path in (store_dir / memory.fingerprint / "edits").iterdir():
        path.write_bytes(path.read_bytes()[:100])
    reopened = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    assert reopened.problems and "corrupt" in reopened.problems[0]
    assert reopened.wait_idle(120)                          # the fact is re-injected from its text
    record, = reopened.facts()
    assert record.status == "healthy"
    assert set(reopened.ledger.columns) == {record.id}
    assert all(torch.isfinite(reopened.adapter.read_weight(l)).all() for l in reopened.adapter.layers)
    reopened.close()


def test_unsupported_architecture_is_named():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        ModelAdapter(model)


def test_a_mixture_of_experts_is_refused_by_name():
    from transformers import MixtralConfig, MixtralForCausalLM
    model = MixtralForCausalLM(MixtralConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, intermediate_size=32,
                                             num_attention_heads=2, num_key_value_heads=1, num_local_experts=2))
    with pytest.raises(UnsupportedModelError, match="mixtral"):
        ModelAdapter(model)


def test_a_model_whose_layers_are_not_where_its_type_says_is_refused(make_tiny):
    model = make_tiny()
    model.config.model_type = "gemma3"       # the multimodal Gemma 3 keeps its layers under model.language_model
    with pytest.raises(UnsupportedModelError, match="language_model"):
        ModelAdapter(model)


def test_conv1d_orientation_round_trips(make_tiny):
    adapter = ModelAdapter(make_tiny("gpt2"))
    layer = adapter.layers[0]
    stored = adapter.read_weight(layer)
    matrix = adapter.as_matrix(stored)
    assert matrix.shape == (adapter.d_model, adapter.d_in)
    assert torch.equal(adapter.to_stored(matrix, like=stored), stored)


def test_a_pronoun_in_the_next_message_is_about_the_relative_of_the_last(tiny_llama, tokenizer, store_dir):
    """`Memory.learn` carries the relatives of a chat's messages to the next one; a new chat or forgetting
    everything ends that."""
    memory = Memory.open(tiny_llama, tokenizer, replace(_config(store_dir), learn=False))
    try:
        memory.learn("My brother is named Tomas.")
        memory.learn("I live in Leeds.")
        said = memory.learn("He is a pilot.").accepted
        assert [(c.subject, c.relation, c.object) for c in said] == [("my brother", "works as", "a pilot")]
        assert memory.learn("He is a pilot.", new_chat=True).accepted == []
        memory.learn("My brother is named Tomas.")
        memory.forget_everything()
        assert memory.learn("He is a pilot.").accepted == []
    finally:
        memory.close()
