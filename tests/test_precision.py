"""bfloat16 and float16 models: keys and targets computed on the half-precision model, the update summed in
float32 and written back in the model's dtype from the pristine copy, so no edit or revert ever drifts."""
import pytest
import torch

from sleep_core import EditConfig, Fact, Memory, MemoryConfig

FACTS = [Fact("Aria", "lives in", "Portland", ("Where does Aria live?",)),
         Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",)),
         Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))]
PROBE = "Where does Aria live? Aria lives in"


def _weights(memory) -> dict:
    return {l: memory.adapter.read_weight(l).clone() for l in memory.adapter.layers}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[l], b[l]) for l in a)


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    return model(**tokenizer(PROBE, return_tensors="pt")).logits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_half_precision_edits_revert_bitwise_without_drift(make_tiny, tokenizer, store_dir, kind, dtype):
    model = make_tiny(kind).to(dtype)
    memory = Memory.open(model, tokenizer, MemoryConfig(store_dir=store_dir, auto_sleep=False,
                                                        edit=EditConfig(cov_tokens=3000, v_steps=4)))
    pristine, answer = _weights(memory), _logits(model, tokenizer)
    kept, = memory.inject_now(FACTS[:1])
    with_kept = _weights(memory)
    assert all(w.dtype == dtype and torch.isfinite(w).all() for w in with_kept.values())
    assert not _same(pristine, with_kept) and not torch.equal(answer, _logits(model, tokenizer))
    for fact in FACTS[1:]:                       # inject and forget others: the kept fact's weights never move
        fact_id, = memory.inject_now([fact])
        assert not _same(with_kept, _weights(memory))
        memory.forget(fact_id)
        assert _same(with_kept, _weights(memory))
    memory.forget(kept)
    assert _same(pristine, _weights(memory)) and torch.equal(answer, _logits(model, tokenizer))
    memory.inject_now(FACTS[1:])
    memory.forget_everything()
    assert memory.ledger.is_pristine() and _same(pristine, _weights(memory))
    memory.close()
