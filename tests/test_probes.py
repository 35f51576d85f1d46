"""The probes' greedy decoding on tiny random models: the same tokens as transformers' generate, for less work
(the prompts' common beginning runs once, rows that have ended leave the batch)."""
import re

import pytest
import torch

from sleep_core.eval.probes import chat_prompt, generate, says

QUESTIONS = ["Where does Aria live?", "What is my dog's name?", "What does Kaito work as for a living these days?"]


def _reference(model, tokenizer, prompts: list[str], n: int) -> list[str]:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_greedy_continuations_are_generates(make_tiny, tokenizer, kind):
    model = make_tiny(kind)
    prompts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    assert generate(model, tokenizer, prompts, 10) == _reference(model, tokenizer, prompts, 10)
    raw = ["Aria lives in", "The capital of France is", "Hi"]      # nothing in common: no shared beginning
    assert generate(model, tokenizer, raw, 6, templated=False) == _reference(model, tokenizer, raw, 6)


def test_rows_that_said_enough_leave_the_batch(make_tiny, tokenizer):
    model = make_tiny("llama")
    prompts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    full = generate(model, tokenizer, prompts, 12)
    said = re.match(r"\W*(\w+)", full[0])[1]        # its first word: a row stops once that word has ended
    batch_sizes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: batch_sizes.append(len(out)))
    try:
        cut = generate(model, tokenizer, prompts, 12, until=[said, "\u2603 never said", "\u2603 never said"])
    finally:
        hook.remove()
    assert said in cut[0] and full[0].startswith(cut[0]) and len(cut[0]) < len(full[0])
    assert cut[1:] == full[1:]                         # the other rows went on to the end, unchanged
    assert batch_sizes[0] == 1                         # the chat template's common beginning, once
    assert batch_sizes[1] == 3 and batch_sizes[-1] == 2


@pytest.mark.parametrize("text,answer,said", [
    ("red car, no.", "car", True), ("carving out a career", "car", False),
    ("673.62 is the number", "67", False), ("666.666666666667", "66", False), ("66 years old", "66", True),
    ("9.9999 in the decimal system", "9", False), ("at 9. Then", "9", True), ("1,200 dollars", "200", False),
    ("Watchmaker. watchtamper.", "watchmaker", True), ("two cats", "cat", True), ("C++ is fast", "C++", True),
    ("Marine biologist marineologist", "marine biologist", True), ("Severina, in Zurich", "Severin", False),
])
def test_an_answer_says_the_object_in_whole_words(text, answer, said):
    assert says(text, answer) is said


def test_while_decoding_a_word_has_not_ended_until_a_character_follows():
    assert not says("I drive a car", "car", ended=False) and says("I drive a car!", "car", ended=False)
    assert not says("it is 9.", "9", ended=False) and says("it is 9. ", "9", ended=False)
    assert says("I drive a car", "car")
