"""Tokenized rewriting prompts of a batch of facts, with the position of each fact's last subject token."""
from dataclasses import dataclass, replace

import torch

from ..memory.facts import Fact
from .hparams import EditConfig


def chat_prompt(tokenizer, question: str) -> str:
    """The question as the model's chat template renders it, ready for the assistant's answer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


@dataclass
class Segment:
    text: str           # the whole prompt, with the object appended for rewriting prompts
    fact: int           # index of its fact in the batch
    subject_end: int    # character index where the subject's last occurrence before the answer ends
    answer_start: int   # character index of the object, or len(text) for KL prompts
    rewrite: bool       # a rewriting prompt (object NLL) rather than a KL prompt
    templated: bool = False  # rendered by the chat template, which brings its own special tokens


@dataclass
class PromptBatch:
    input_ids: torch.Tensor        # (P, T), right-padded
    attention_mask: torch.Tensor   # (P, T)
    subject_pos: torch.Tensor      # (P,) last subject token
    last_pos: torch.Tensor         # (P,) last prompt token before the answer
    fact: torch.Tensor             # (P,) fact index
    rewrite: torch.Tensor          # (P,) bool
    answer_mask: torch.Tensor      # (P, T) True where the token is part of the object
    n_facts: int
    fact_target: torch.Tensor      # (n,) each fact's target delta: facts about one subject share one
    chat: torch.Tensor             # (P,) bool: a chat-template question rather than a raw prompt

    @property
    def target(self) -> torch.Tensor:
        """(P,) the target delta of each prompt's fact."""
        return self.fact_target[self.fact]

    @property
    def n_targets(self) -> int:
        return int(self.fact_target.max()) + 1

    def model_inputs(self, device) -> dict:
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}

    def groups(self, ratio: float = 3.0) -> list[tuple[torch.Tensor, dict]]:
        """Rows of similar length with their trimmed inputs: short raw prompts are not padded to chat length."""
        out = []
        for rows in similar(self.attention_mask.sum(1), ratio):
            width = int(self.attention_mask[rows].sum(1).max())
            out.append((rows, {"input_ids": self.input_ids[rows, :width],
                               "attention_mask": self.attention_mask[rows, :width]}))
        return out


def similar(lengths: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    """Indices split into groups whose longest member is at most `ratio` times their shortest."""
    order = torch.argsort(lengths, stable=True).tolist()
    groups, current = [], [order[0]]
    for row in order[1:]:
        if lengths[row] > ratio * max(int(lengths[current[0]]), 1):
            groups.append(current)
            current = []
        current.append(row)
    groups.append(current)
    return [torch.tensor(g) for g in groups]


def _subject_end(text: str, subject: str, before: int) -> int:
    """End of the subject's last occurrence; questions that invert it ("What am I learning?") need only
    contain its last word, where the key is read."""
    for needle in (subject, subject.split()[-1]):
        at = text.lower().rfind(needle.lower(), 0, before)
        if at >= 0:
            return at + len(needle)
    raise ValueError(f"subject {subject!r} does not occur in prompt {text!r}")


def shared_targets(facts: list[Fact], cfg: EditConfig) -> list[int]:
    """Each fact's target index. Facts about one subject ("my son's name", "my son is aged") read their key at
    the same token after the same words, so no two values can be written there: one target carries them all
    (ROME's view of a subject's value vector). The reference gave every fact its own; seed mode keeps that."""
    if cfg.seed:
        return list(range(len(facts)))
    first: dict[str, int] = {}
    return [first.setdefault(f.subject_key, len(first)) for f in facts]


def _segments(tokenizer, facts: list[Fact], cfg: EditConfig, with_kl: bool, targets: list[int]) -> list[Segment]:
    out = []
    for i, fact in enumerate(facts):
        for prefix in cfg.prefixes:
            prompt = prefix + fact.prompt
            out.append(Segment(f"{prompt} {fact.object}", i, _subject_end(prompt, fact.subject, len(prompt)),
                               len(prompt) + 1, True))
        if not cfg.seed:
            for question in fact.questions[: cfg.chat_questions]:
                prompt = chat_prompt(tokenizer, question)
                out.append(Segment(prompt + fact.object, i, _subject_end(prompt, fact.subject, len(prompt)),
                                   len(prompt), True, templated=True))
        if with_kl and targets.index(targets[i]) == i:     # one KL prompt per subject
            prompt = f"{fact.subject} is a"
            out.append(Segment(prompt, i, len(fact.subject), len(prompt), False))
    return out


def _encode(tokenizer, seg: Segment) -> tuple[Segment, dict]:
    """The segment and its tokens, opened with a line break if its subject ends in its first token. A model's first
    position is its attention sink (SmolLM2's residual there is ~5x any other token's at layer 8, ~150x at layer
    11), so a key read or a target written there is not the subject's, and the target's scale taken there is far
    too large."""
    enc = tokenizer(seg.text, return_offsets_mapping=True, add_special_tokens=not seg.templated)
    first = enc["offset_mapping"][:1]
    if seg.templated or not first or first[0][1] < seg.subject_end:
        return seg, enc
    seg = replace(seg, text="\n" + seg.text, subject_end=seg.subject_end + 1, answer_start=seg.answer_start + 1)
    return seg, tokenizer(seg.text, return_offsets_mapping=True)


def build_batch(tokenizer, facts: list[Fact], cfg: EditConfig, with_kl: bool = True) -> PromptBatch:
    """Tokenize every prompt of every fact once; keys and targets are read from the same batch."""
    targets = shared_targets(facts, cfg)
    segs, enc = zip(*(_encode(tokenizer, s) for s in _segments(tokenizer, facts, cfg, with_kl, targets)))
    width = max(len(e["input_ids"]) for e in enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(segs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(segs), width), dtype=torch.long)
    answer = torch.zeros((len(segs), width), dtype=torch.bool)
    subject_pos, last_pos = [], []
    for row, (seg, e) in enumerate(zip(segs, enc)):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        mask[row, :n] = 1
        starts = [a for a, b in e["offset_mapping"]]
        ends = [b for a, b in e["offset_mapping"]]
        subject_pos.append(max(t for t in range(n) if starts[t] < seg.subject_end and ends[t] > 0))
        in_answer = [seg.rewrite and ends[t] > seg.answer_start for t in range(n)]
        answer[row, :n] = torch.tensor(in_answer)
        first_answer = in_answer.index(True) if any(in_answer) else n
        last_pos.append(first_answer - 1)
    if cfg.seed:  # the reference read its key at the last token of "subject relation"
        subject_pos = last_pos
    return PromptBatch(ids, mask, torch.tensor(subject_pos), torch.tensor(last_pos),
                       torch.tensor([s.fact for s in segs]), torch.tensor([s.rewrite for s in segs]),
                       answer, len(facts), torch.tensor(targets), torch.tensor([s.templated for s in segs]))
