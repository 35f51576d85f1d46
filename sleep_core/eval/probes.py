"""Recall probes: does the model produce the object, in raw completion and inside its chat template?"""
import json
import re
from dataclasses import dataclass

import torch

from ..editing.prompts import chat_prompt
from ..paths import data_dir
from .forward import continuations, next_token_scores


# SmolLM2 adds no BOS token, so a bare prompt puts the subject on the attention-sink positions, whose
# residual norm is ~20x any other (measured: 3,262 at layer 11); no edit of MEMIT's size moves them, and
# no chat ever puts the subject there. Raw probes therefore read the prompt after a neutral lead-in that
# editing never uses; benchmarks report the bare-prompt figure beside it.
RAW_CONTEXT = "By the way, "
# Further lead-ins that editing never uses, to show that an edit carries to contexts it was not written in
# (ROME's k* is a mean over contexts, eq. 3); `RAW_CONTEXT` turned out the hardest of them.
HELDOUT_CONTEXTS = (RAW_CONTEXT, "Fun fact: ", "As far as I know, ", "Yesterday I learned that ")


@dataclass
class AnswerScore:
    logprob: float     # log P(answer | prompt), summed over its tokens
    greedy: bool       # greedy decoding would produce exactly these answer tokens first


def _encode(tokenizer, prompt: str, answer: str, templated: bool) -> tuple[list[int], int]:
    """Token ids of prompt+answer and the index of the first answer token (offsets keep merges right)."""
    text = prompt + answer
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=not templated)
    first = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > len(prompt) and b > a)
    return enc["input_ids"], first


def score_answers(model, tokenizer, pairs: list[tuple[str, str]], templated: bool = False,
                  batch_size: int = 32) -> list[AnswerScore]:
    """Teacher-forced log-probability and greedy exact match of each (prompt, answer); answers keep their
    leading space (" Paris") as they would follow the prompt."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = []
    for start in range(0, len(pairs), batch_size):
        encoded = [_encode(tokenizer, p, a, templated) for p, a in pairs[start: start + batch_size]]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (seq, _) in enumerate(encoded):
            ids[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), 1
        logp, greedy = next_token_scores(model, ids, mask)
        for row, (seq, first) in enumerate(encoded):
            pos = torch.arange(first - 1, len(seq) - 1)
            target = torch.tensor(seq[first:])
            scores.append(AnswerScore(logp[row, pos].sum().item(), bool((greedy[row, pos] == target).all())))
    return scores


def says(text: str, answer: str, ended: bool = True) -> bool:
    """`answer` occurs in `text` as whole words, a plural allowed: "car" not in "carving", "66" not in "666.7" nor
    9 in "9.99" (a number inside a longer one is not said). With `ended` False (text still being decoded) a
    character must follow it, so that the word is known to end, and a point or comma after it another one."""
    after = r"(?!\w)(?![.,]\d)" if ended else r"(?=\W)(?![.,]\d)(?![.,]$)"
    return re.search(rf"(?<!\w)(?<!\d[.,]){re.escape(answer)}(?:e?s)?{after}", text, re.IGNORECASE) is not None


def _said(tokenizer, wanted: list[str]):
    """Which rows' new tokens already say their wanted text (a following character shows its last word ended)."""
    return lambda new: torch.tensor([says(text, w, ended=False) for w, text in
                                     zip(wanted, tokenizer.batch_decode(new, skip_special_tokens=True))])


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 24, templated: bool = True,
             batch_size: int = 64, until: list[str] | None = None) -> list[str]:
    """Greedy continuations, left-padded batches; a row with `until[i]` given stops once its text says it (`says`),
    so a probe that only asks whether the answer names the object ends there."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        out = []
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start: start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=not templated)
            done = _said(tokenizer, until[start: start + batch_size]) if until else None
            new = continuations(model, tokenizer, enc["input_ids"], enc["attention_mask"], max_new_tokens, done)
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
        return out
    finally:
        tokenizer.padding_side = side


def raw_recall(model, tokenizer, facts, context: str = RAW_CONTEXT) -> list[bool]:
    """Greedy continuation of the raw prompt (after `context`) starts with the object."""
    pairs = [(context + f.prompt, " " + f.object) for f in facts]
    return [s.greedy for s in score_answers(model, tokenizer, pairs)]


def chat_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 24,
                 until: list[str] | None = None) -> list[str]:
    return generate(model, tokenizer, [chat_prompt(tokenizer, q) for q in questions], max_new_tokens, until=until)


def chat_recall(model, tokenizer, facts) -> list[bool]:
    """The answer to the fact's first question, asked in the chat template, says the object (`says`)."""
    asked = [f for f in facts if f.questions]
    answers = iter(chat_answers(model, tokenizer, [f.questions[0] for f in asked], until=[f.object for f in asked]))
    return [says(next(answers), f.object) if f.questions else False for f in facts]


def known_facts() -> list[tuple[str, str]]:
    """Common-knowledge sentence beginnings and their answers, for specificity (sleep_core/data/known_facts.json)."""
    return [(row["prompt"], row["answer"]) for row in json.loads((data_dir() / "known_facts.json").read_text())]


def knows(model, tokenizer, pairs: list[tuple[str, str]]) -> list[bool]:
    """The greedy completion of each prompt begins with its answer."""
    return [s.greedy for s in score_answers(model, tokenizer, [(p, " " + a) for p, a in pairs])]


def mentions(model, tokenizer, pairs: list[tuple[str, str]], n: int = 8) -> list[bool]:
    """The answer occurs in the first `n` greedy tokens after each prompt: the fact is still known, perhaps
    worded differently ("... is located in the heart of Rome")."""
    outs = generate(model, tokenizer, [p for p, _ in pairs], n, templated=False)
    return [says(o, a) for (_, a), o in zip(pairs, outs)]


def greedy_tokens(model, tokenizer, prompts: list[str], n: int = 3, context: str = RAW_CONTEXT) -> list[str]:
    """The first `n` greedy tokens after each raw prompt: the fingerprint specificity compares."""
    return generate(model, tokenizer, [context + p for p in prompts], n, templated=False)


def specificity(before: list[str], after: list[str]) -> float:
    """Share of control prompts whose greedy continuation did not change."""
    return sum(a == b for a, b in zip(before, after)) / max(len(before), 1)
