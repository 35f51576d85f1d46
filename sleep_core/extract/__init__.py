"""Facts from conversation: `extract` turns one chat message into validated candidate facts.

Each message goes through the firewall (source, size, markup, instructions), is split into sentences
that are checked one by one (questions, hypotheticals, negations, others' words, …), and the
remaining sentences are read by the pattern extractor and, when an `LLMExtractor` is given, by a chat
model that may add facts the patterns missed.
"""

from collections.abc import Mapping, Sequence

from .candidate import Candidate, Rejection, rejection
from .firewall import MAX_CHARS, check, check_message, check_size, check_source
from .llm import LLMExtractor
from .patterns import extract_patterns
from .subjects import names_from, relatives
from .text import normalize, sentences

__all__ = ["MAX_CHARS", "Candidate", "LLMExtractor", "Rejection", "check", "extract", "names_from", "relatives"]


def extract(
    text: str,
    source: str = "user",
    llm: LLMExtractor | None = None,
    names: Mapping[str, str] | None = None,
    max_chars: int = MAX_CHARS,
    mentioned: Sequence[str] = (),
) -> tuple[list[Candidate], list[Rejection]]:
    """(facts to learn, what was not learned and why) for one message.

    `names` maps names the user gave earlier to their subjects ({"Andre": "my son"}, see `names_from`),
    so "Andre loves drawing" is learned about "my son"; `mentioned` lists the relatives earlier messages spoke of,
    oldest first (see `relatives`), so "She works as a dentist." after "My sister Maya lives in Toronto." is about
    "my sister".
    """
    reason = check_source(source) or check_size(text, max_chars)
    if not reason:
        text = normalize(text)
        reason = check_message(text)
    if reason:
        return [], [rejection(text, reason)]
    kept, rejected = [], []
    for sentence in sentences(text):
        if reason := check(sentence, max_chars):
            rejected.append(rejection(sentence, reason))
        else:
            kept.append(sentence)
    candidates, invalid = _read(kept, llm, names, mentioned)
    return _screened(candidates, rejected + invalid)


def _read(
    kept: list[str], llm: LLMExtractor | None, names: Mapping[str, str] | None, mentioned: Sequence[str]
) -> tuple[list[Candidate], list[Rejection]]:
    """The patterns' facts, plus the model's facts for (subject, relation) slots the patterns left empty."""
    candidates, rejections = extract_patterns(kept, names, mentioned)
    if llm and kept:
        found, refused = llm.extract(" ".join(kept))
        filled = {(c.subject.lower(), c.relation.lower()) for c in candidates}
        candidates += [c for c in found if (c.subject.lower(), c.relation.lower()) not in filled]
        rejections += refused
    return candidates, rejections


def _screened(candidates: list[Candidate], rejected: list[Rejection]) -> tuple[list[Candidate], list[Rejection]]:
    """Apply the firewall to each fact as it would be written, and drop duplicates."""
    unique: dict[tuple[str, str, str], Candidate] = {}
    for c in candidates:
        if reason := check(f"{c.prompt} {c.object}"):
            rejected.append(rejection(f"{c.prompt} {c.object}", reason))
        else:
            unique.setdefault((c.subject.lower(), c.relation.lower(), c.object.lower()), c)
    return list(unique.values()), rejected
