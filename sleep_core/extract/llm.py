"""Facts extracted by a chat model prompted for JSON triples, validated like any other candidate.

A 135M model is weak at this (it copies the prompt's example and invents relatives): the pattern
extractor always runs, this one only adds facts when configured, and whatever it returns must pass
the same validation plus grounding: the object and every content word of the subject and relation
must occur in the message.
"""

import itertools
import json
import logging
import re
from collections.abc import Callable

from .candidate import Candidate, Rejection, rejection

logger = logging.getLogger(__name__)

MAX_REPLY_CHARS = 20_000
MAX_TRIES = 50  # places a JSON value may start; bounds the work on replies full of brackets
SYSTEM = (
    "You extract facts that the user states about themselves, their family or their pets. Reply with a JSON "
    'array only, one item per fact: {"subject": ..., "relation": ..., "object": ..., "question": ...}. '
    'subject: the words a later question would contain, in the user\'s voice ("my name", "my sister", "I live"). '
    "object: copied word for word from the message. question: how the user would ask for it later. "
    "Reply [] for questions, wishes, negations, instructions and other people's words."
)
EXAMPLE = (
    "My sister Alice lives in Lisbon.",
    json.dumps(
        [
            {
                "subject": "my sister",
                "relation": "'s name is",
                "object": "Alice",
                "question": "What is my sister's name?",
            },
            {
                "subject": "my sister",
                "relation": "lives in",
                "object": "Lisbon",
                "question": "Where does my sister live?",
            },
        ]
    ),
)
_FIELDS = ("subject", "relation", "object", "question")
# Words a subject or relation may use that the message need not contain ("my sister's name is").
_GLUE = frozenset("i my me is am are was in at as to of from for the a an s name called named".split())
_USER = (
    (re.compile(r"^(?:the )?user's\b", re.IGNORECASE), "my"),
    (re.compile(r"^(?:the )?user\b", re.IGNORECASE), "I"),
)


class LLMExtractor:
    """Extracts facts with `generate(messages) -> reply text`, e.g. the loaded model behind a chat template."""

    def __init__(self, generate: Callable[[list[dict]], str]):
        self.generate = generate

    def messages(self, text: str) -> list[dict]:
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": EXAMPLE[0]},
            {"role": "assistant", "content": EXAMPLE[1]},
            {"role": "user", "content": text},
        ]

    def extract(self, text: str) -> tuple[list[Candidate], list[Rejection]]:
        """Candidates from the model's reply to `text`; nothing (not an exception) if the model fails."""
        try:
            reply = self.generate(self.messages(text))
        except Exception:  # a broken backend must not break the chat; the patterns still run
            logger.warning("fact extraction by the model failed", exc_info=True)
            return [], []
        candidates, rejections = [], []
        for item in parse_items(str(reply)):
            try:
                candidates.append(candidate(item, text))
            except ValueError as error:
                rejections.append(rejection(json.dumps(item, ensure_ascii=False), f"model output: {error}"))
        return candidates, rejections


def parse_items(reply: str) -> list:
    """The first JSON array (or single object) in a reply, wherever the model put it; [] if there is none."""
    decoder = json.JSONDecoder()
    reply = reply[:MAX_REPLY_CHARS]
    for match in itertools.islice(re.finditer(r"[\[{]", reply), MAX_TRIES):
        try:
            value, _ = decoder.raw_decode(reply, match.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict) and any(k in value for k in _FIELDS):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return value
    return []


def candidate(item: dict, message: str) -> Candidate:
    """Validate one model item against the message it came from; ValueError with the reason if unusable."""
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in _FIELDS):
        raise ValueError("needs subject, relation, object and question as text")
    subject, relation, obj, question = (" ".join(item[k].split()) for k in _FIELDS)
    for pattern, replacement in _USER:
        subject = pattern.sub(replacement, subject)
    subject = re.sub(r"^My\b", "my", subject)
    if f" {_folded(obj)} " not in f" {_folded(message)} ":
        raise ValueError(f"'{obj[:40]}' is not in the message")
    spoken = set(re.findall(r"\w+", message.lower()))
    unsaid = [w for w in re.findall(r"\w+", f"{subject} {relation}".lower()) if w not in spoken | _GLUE]
    if unsaid:
        raise ValueError(f"'{unsaid[0]}' is not in the message")
    return Candidate(subject, relation, obj.strip(" ."), (question,), message)


def _folded(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s'-]", " ", text.lower()).split())
