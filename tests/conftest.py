"""Fixtures: tiny random-weight models for fast tests, the real default model for integration tests."""
import threading
from contextlib import contextmanager

import pytest
import torch

from sleep_core.assets.model import ensure_default_model


@pytest.fixture(scope="session")
def default_model_dir():
    return ensure_default_model()


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(default_model_dir)


def _tiny(kind: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=2, n_positions=256)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=256)).eval()


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, tokenizer):
    """A freshly initialised tiny model of each supported layout (GPT-2 stores Conv1D weights transposed)."""
    return _tiny(request.param, len(tokenizer))


@pytest.fixture
def tiny_llama(tokenizer):
    return _tiny("llama", len(tokenizer))


@pytest.fixture(scope="session")
def make_tiny(tokenizer):
    """A factory: the same seed gives the same pristine weights, as a fresh process loading the model would."""
    return lambda kind="llama": _tiny(kind, len(tokenizer))


@pytest.fixture
def strict_lock():
    """A non-reentrant lock like the host's generation lock: taking it twice fails instead of hanging."""
    lock = threading.Lock()

    @contextmanager
    def hold():
        if not lock.acquire(timeout=10):
            raise TimeoutError("the weight lock was taken while already held")
        try:
            yield
        finally:
            lock.release()
    return hold


@pytest.fixture
def store_dir(tmp_path):
    """Each test gets its own memory store folder."""
    return tmp_path / "memory"


@pytest.fixture(scope="session")
def real_model(default_model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
