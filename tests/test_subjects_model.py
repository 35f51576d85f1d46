"""Facts about one subject on the default model: they share the key at the subject's last token, so each new
one is written together with the others, and every one of them is answered in chat."""
import pytest

from sleep_core import Fact, Memory, MemoryConfig
from sleep_core.eval import chat_answers

pytestmark = pytest.mark.model

DOG = [Fact("my dog", "'s name is", "Biscuit", ("What is my dog's name?",)),
       Fact("my dog", "is", "a golden retriever", ("What breed is my dog?",)),
       Fact("my dog", "loves", "swimming", ("What does my dog love?",))]


@pytest.mark.parametrize("mode", ["constrained", "seed"])
def test_every_fact_about_one_subject_is_answered(real_model, tokenizer, tmp_path, mode):
    """Seed mode gives each fact its own target at the same key, as the reference did: the later facts
    overwrite or cannot reach the earlier ones (the failure this design removes)."""
    memory = Memory.open(real_model, tokenizer, MemoryConfig(store_dir=tmp_path, mode=mode, auto_sleep=False))
    try:
        for fact in DOG:          # one message at a time, as in chat
            memory.inject_now([fact])
        answers = chat_answers(real_model, tokenizer, [f.questions[0] for f in DOG])
        recalled = [f.object.split()[-1].lower() in a.lower() for f, a in zip(DOG, answers)]
        assert all(recalled) if mode == "constrained" else not all(recalled), answers
    finally:
        memory.forget_everything()
        memory.close()
