"""bitsandbytes 4-bit (NF4, FP4) and 8-bit layers on CPU, both ways of carrying an edit: the edit changes the
answer, forgetting returns the model's output and its quantized tensors bitwise, and the AVX512-BF16 repacking
is switched off (and undone where a forward already ran)."""
import pytest
import torch

from sleep_core import EditConfig, Fact, Memory, MemoryConfig
from sleep_core.model import ModelAdapter

bnb = pytest.importorskip("bitsandbytes")
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402


FACTS = [Fact("Aria", "lives in", "Portland", ("Where does Aria live?",)),
         Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",))]
PROBE = "Where does Aria live? Aria lives in"
QUANT = {"nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.float32),
         "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32),
         "int8": BitsAndBytesConfig(load_in_8bit=True)}


@pytest.fixture(scope="module")
def saved(make_tiny, tmp_path_factory):
    """Tiny random models saved once, to be loaded quantized the way a user loads one."""
    folders = {}
    for kind in ("llama", "gpt2"):
        folders[kind] = tmp_path_factory.mktemp(kind)
        make_tiny(kind).save_pretrained(folders[kind])
    return folders


def _load(folder, quant: str):
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=QUANT[quant], device_map="cpu").eval()


def _state(memory) -> list[torch.Tensor]:
    """Every tensor that defines the edited layers, read independently of the writers under test."""
    out = []
    for layer in memory.adapter.layers:
        module = memory.adapter.out_proj(layer)
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            out += [module.weight.data, qs.absmax] + ([qs.offset, qs.state2.absmax] if qs.nested else [])
        else:
            out += [module.weight.data, module.state.SCB if module.state.SCB is not None else module.weight.SCB]
    return [t.clone() for t in out]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    return model(**tokenizer(PROBE, return_tensors="pt")).logits


@pytest.mark.parametrize("strategy", ["side_branch", "requantize"])
@pytest.mark.parametrize("kind,quant", [("llama", "nf4"), ("llama", "fp4"), ("llama", "int8"), ("gpt2", "nf4")])
def test_quantized_edit_changes_the_answer_and_forgets_bitwise(saved, tokenizer, store_dir, kind, quant, strategy):
    model = _load(saved[kind], quant)
    config = MemoryConfig(store_dir=store_dir, auto_sleep=False, quantized_edits=strategy,
                          edit=EditConfig(cov_tokens=3000, v_steps=4))
    memory = Memory.open(model, tokenizer, config)
    pristine, answer = _state(memory), _logits(model, tokenizer)
    first, _ = memory.inject_now(FACTS)
    assert not torch.equal(answer, _logits(model, tokenizer)), "the edit changed nothing"
    assert _same(pristine, _state(memory)) == (strategy == "side_branch")   # a side branch never writes
    memory.forget(first)
    assert not torch.equal(answer, _logits(model, tokenizer))
    memory.forget_everything()
    assert memory.ledger.is_pristine() and _same(pristine, _state(memory))
    assert torch.equal(answer, _logits(model, tokenizer))
    memory.close()


def test_a_second_memory_on_the_same_model_does_not_add_the_branch_twice(saved, tokenizer, store_dir):
    model = _load(saved["llama"], "nf4")
    config = MemoryConfig(store_dir=store_dir, auto_sleep=False, edit=EditConfig(cov_tokens=3000, v_steps=4))
    memory = Memory.open(model, tokenizer, config)
    memory.inject_now(FACTS[:1])
    edited = _logits(model, tokenizer)
    memory.close()                                        # the edit stays in the model, as in the host
    again = Memory.open(model, tokenizer, config)
    assert torch.equal(edited, _logits(model, tokenizer))
    again.forget_everything()
    again.close()


def test_cpu_repacking_is_switched_off_before_any_forward(saved):
    model = _load(saved["llama"], "nf4")
    ModelAdapter(model)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="this CPU has no AVX512-BF16: nothing is repacked")
def test_weights_repacked_by_an_earlier_forward_are_unpacked(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)                                  # bitsandbytes repacks only shapes of 64 and more
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = _load(tmp_path, "nf4")
    down = model.model.layers[1].mlp.down_proj
    weight = bnb.functional.dequantize_4bit(down.weight.data, down.weight.quant_state).clone()
    with torch.no_grad():
        packed = model(torch.tensor([[1, 2, 3]])).logits
    assert down.weight.quant_state.packing_format_for_cpu
    ModelAdapter(model, layers=(1,))
    assert not getattr(down.weight.quant_state, "packing_format_for_cpu", False)
    unpacked = bnb.functional.dequantize_4bit(down.weight.data, down.weight.quant_state)
    assert torch.allclose(unpacked, weight, rtol=1e-2, atol=0)      # scales were rounded to bfloat16 by the repack
    with torch.no_grad():
        assert torch.allclose(model(torch.tensor([[1, 2, 3]])).logits, packed, atol=1e-2)   # packed ran in bf16


@pytest.mark.model
def test_default_model_in_nf4_learns_a_fact_and_forgets_it_bitwise(default_model_dir, tokenizer, store_dir):
    from sleep_core.eval import chat_answers, raw_recall
    fact = Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",))
    model = _load(default_model_dir, "nf4")
    # the 4-bit model's own covariance, measured once and cached; 10k tokens were too few to hold the fact
    config = MemoryConfig(store_dir=store_dir, auto_sleep=False, edit=EditConfig(cov_tokens=30_000))
    memory = Memory.open(model, tokenizer, config)
    answer = _logits(model, tokenizer)
    assert raw_recall(model, tokenizer, [fact]) == [False]
    memory.inject_now([fact])
    assert raw_recall(model, tokenizer, [fact]) == [True]
    assert "biscuit" in chat_answers(model, tokenizer, [fact.questions[0]])[0].lower()
    memory.forget_everything()
    assert torch.equal(answer, _logits(model, tokenizer))
    memory.close()
