"""Models as loaders leave them: layers placed by accelerate's device map (with hooks that move tensors between
placements, and layers offloaded to disk), and quantizations that cannot be written into, refused by name."""
import pytest
import torch
from accelerate import dispatch_model
from transformers import AutoModelForCausalLM

from sleep_core import EditConfig, Fact, Memory, MemoryConfig, UnsupportedModelError
from sleep_core.model import ModelAdapter


FACTS = [Fact("Aria", "lives in", "Portland", ("Where does Aria live?",)),
         Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",))]
PROBE = "Where does Aria live? Aria lives in"
EDITED = 1                                 # the tiny models' default edited layer


def _config(store_dir) -> MemoryConfig:
    return MemoryConfig(store_dir=store_dir, auto_sleep=False, edit=EditConfig(cov_tokens=3000, v_steps=4))


def _device_map(**placed) -> dict:
    """Every top-level part of the tiny Llama on the CPU unless `placed` says otherwise (layer_N=...)."""
    parts = ["model.embed_tokens", "model.norm", "model.rotary_emb", "lm_head"]
    parts += [f"model.layers.{i}" for i in range(4)]
    return {p: placed.get(p.replace("model.", "").replace(".", "_"), "cpu") for p in parts}


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    return model(**tokenizer(PROBE, return_tensors="pt")).logits


def _edit_and_forget(model, tokenizer, store_dir) -> None:
    memory = Memory.open(model, tokenizer, _config(store_dir))
    answer = _logits(model, tokenizer)
    memory.inject_now(FACTS)
    assert not torch.equal(answer, _logits(model, tokenizer)), "the edit changed nothing"
    memory.forget_everything()
    assert memory.ledger.is_pristine() and torch.equal(answer, _logits(model, tokenizer))
    memory.close()


@pytest.fixture(scope="module")
def saved(make_tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    make_tiny("llama").save_pretrained(folder)
    return folder


def test_layers_dispatched_with_device_hooks_are_edited_in_place(make_tiny, tokenizer, store_dir):
    model = dispatch_model(make_tiny(), _device_map(), main_device="cpu", force_hooks=True)
    assert all(hasattr(model.model.layers[i], "_hf_hook") for i in range(4))
    assert ModelAdapter(model).fingerprint() == ModelAdapter(make_tiny()).fingerprint()
    _edit_and_forget(model, tokenizer, store_dir)


def test_a_layer_offloaded_to_disk_is_read_from_there_and_not_edited(saved, make_tiny, tokenizer, store_dir,
                                                                    tmp_path):
    model = AutoModelForCausalLM.from_pretrained(saved, device_map=_device_map(layers_3="disk"),
                                                 offload_folder=tmp_path / "offload").eval()
    assert model.model.layers[3].mlp.down_proj.weight.device.type == "meta"
    assert ModelAdapter(model).fingerprint() == ModelAdapter(make_tiny()).fingerprint()
    _edit_and_forget(model, tokenizer, store_dir)


@pytest.mark.parametrize("offloaded", [{"layers_1": "disk"}, {"embed_tokens": "disk"}])
def test_offloaded_edited_layer_or_embeddings_are_refused(saved, tmp_path, offloaded):
    model = AutoModelForCausalLM.from_pretrained(saved, device_map=_device_map(**offloaded),
                                                 offload_folder=tmp_path / "offload")
    with pytest.raises(UnsupportedModelError, match="offloaded"):
        ModelAdapter(model, layers=(EDITED,))


class QuantLinear(torch.nn.Module):
    """The shape of a GPTQ/AWQ layer as their loaders install it: packed integer codes, no `weight`."""

    def __init__(self, inner: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = inner.in_features, inner.out_features
        self.register_buffer("qweight", torch.zeros(inner.in_features // 8, inner.out_features, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(1, inner.out_features))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptq_and_awq_layers_are_refused_by_name(make_tiny, method):
    model = make_tiny()
    model.model.layers[EDITED].mlp.down_proj = QuantLinear(model.model.layers[EDITED].mlp.down_proj)
    model.config.quantization_config = {"quant_method": method, "bits": 4}
    with pytest.raises(UnsupportedModelError, match=f"QuantLinear.*'{method}'"):
        ModelAdapter(model)


def test_float8_weights_are_refused_by_name(make_tiny):
    model = make_tiny()
    down = model.model.layers[EDITED].mlp.down_proj
    down.weight = torch.nn.Parameter(down.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    model.config.quantization_config = {"quant_method": "fp8"}
    with pytest.raises(UnsupportedModelError, match="float8_e4m3fn.*'fp8'"):
        ModelAdapter(model)
