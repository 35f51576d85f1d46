"""A fact proposed for learning, and the record of a sentence that was not learned."""

import re
from dataclasses import dataclass

from ..memory.facts import Fact

NAME_RELATION = "'s name is"

_PRONOUNS = frozenset(
    "i me my mine you your yours he him his she her hers it its we us our they them their this that these those "
    "there here one someone something anything everything nothing stuff things a lot lots much".split()
)
_PLACEHOLDER = re.compile(
    r"[|<>{}\[\]\\]|\.\.\.|\u2026|\b(?:SUBJECT|RELATION|OBJECT|PREDICATE|ENTITY|PLACEHOLDER)\b"
    r"|^(?:subject|relation|object|name|value|person|thing|x|y|z|n/?a|null|none|unknown|todo|tbd|\?+)$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_MULTI_FILLER = frozenset({"a lot", "so much", "many things"})


@dataclass(frozen=True)
class Rejection:
    """A piece of a message that was not learned, with a reason the UI can show."""

    text: str
    reason: str


def rejection(text: str, reason: str, limit: int = 200) -> Rejection:
    """A rejection whose text is short enough to show: a 1 MB paste is cut."""
    return Rejection(text if len(text) <= limit else text[: limit - 1] + "\u2026", reason)


@dataclass(frozen=True)
class Candidate:
    """A fact about the user: `prompt` + " " + `object` is the raw sentence MEMIT writes.

    MEMIT reads its key at the last token of `subject`, so every question in `questions` contains the
    subject's last word: asked later in chat, the question hits the same key.
    """

    subject: str
    relation: str
    object: str
    questions: tuple[str, ...]
    source_text: str

    def __post_init__(self):
        reason = _field_problem(self) or _content_problem(self)
        if reason:
            raise ValueError(reason)

    @property
    def fact(self) -> Fact:
        return Fact(self.subject, self.relation, self.object, self.questions)

    @property
    def prompt(self) -> str:
        """The completion prompt that the object follows after a space ("my sister's name is")."""
        return self.fact.prompt

    @property
    def key_word(self) -> str:
        """The subject's last word: its last token is where MEMIT reads the key, in prompts and questions."""
        return self.subject.split()[-1]


def _field_problem(c: Candidate) -> str | None:
    """Types, lengths and characters of each field."""
    fields = (c.subject, c.relation, c.object, c.source_text, *c.questions)
    if not isinstance(c.questions, tuple) or not all(isinstance(f, str) for f in fields):
        return "malformed fact"
    if any(_CONTROL.search(f) for f in fields[:3] + fields[4:]):
        return "line breaks or control characters in a fact"
    if any(f != f.strip() for f in fields[:3]):
        return "stray spaces around a fact field"
    bounds = ((c.subject, 2, 60, 6), (c.relation, 0, 40, 6), (c.object, 1, 100, 12))
    if any(not lo <= len(f) <= hi or len(f.split()) > words for f, lo, hi, words in bounds):
        return "fact too short or too long"
    if not c.source_text.strip() or len(c.source_text) > 10_000:
        return "source text empty or too long"
    if not 1 <= len(c.questions) <= 6 or any(not 5 <= len(q) <= 200 or not q.endswith("?") for q in c.questions):
        return "needs one to six questions, each ending with '?'"
    return None


def _content_problem(c: Candidate) -> str | None:
    """What makes a well-formed fact unusable: placeholders, pronouns, questions that miss the key."""
    if any(_PLACEHOLDER.search(f) for f in (c.subject, c.relation, c.object)):
        return "a placeholder, not a fact"
    if c.subject.lower() in _PRONOUNS:
        return f"unclear subject '{c.subject}'"
    if c.object.lower() in _PRONOUNS or c.object.lower() in _MULTI_FILLER:
        return f"unclear object '{c.object}'"
    if not any(ch.isalnum() for ch in c.object) or c.object.lower() == c.subject.lower():
        return "the object says nothing"
    word = re.compile(rf"\b{re.escape(c.key_word)}\b", re.IGNORECASE)
    if not all(word.search(q) for q in c.questions):
        return f"a question does not mention '{c.key_word}'"
    return None
