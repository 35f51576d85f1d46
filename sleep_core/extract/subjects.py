"""Who a clause is about: the user's relatives and pets ("my sister"), their names, and pronouns."""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .candidate import NAME_RELATION
from .text import VERBS

FEMALE = frozenset(
    "sister daughter wife mother mom mum girlfriend grandmother grandma aunt niece fiancee fiancée".split()
)
MALE = frozenset("brother son husband father dad boyfriend grandfather grandpa uncle nephew fiance fiancé".split())
PETS = frozenset("dog cat puppy kitten horse parrot rabbit hamster bird turtle pet".split())
PLURAL = frozenset("parents grandparents kids children sons daughters brothers sisters siblings cats dogs".split())
_OTHERS = "partner spouse best friend friend cousin boss roommate kid child baby twin".split()
_RELATIVES = sorted(FEMALE | MALE | PETS | PLURAL | set(_OTHERS), key=len, reverse=True)
_MODIFIERS = "older|younger|little|big|baby|elder|eldest|oldest|youngest|twin|step|half|best"
RELATIVE = rf"(?:(?:{_MODIFIERS})\s+)?(?:{'|'.join(_RELATIVES)})"
_MY_RELATIVE = re.compile(rf"^my\s+(?P<who>{RELATIVE})\b(?P<rest>.*)$", re.IGNORECASE)
_APPOSITION = re.compile(
    rf"^\s*,?\s*(?P<name>[^\W\d_][\w'-]*(?:\s+[^\W\d_][\w'-]*){{0,2}})\s*,?\s+(?P<rest>(?:{VERBS})\b.*)$"
)
_PRONOUN = re.compile(r"^(?P<pronoun>he|she|it|they)\b(?P<rest>.*)$", re.IGNORECASE)
_BARE_NAME = re.compile(rf"^(?P<name>[^\W\d_][\w'-]*(?:\s+[^\W\d_][\w'-]*)?)(?P<rest>(?:'s|\s+(?:{VERBS}))\b.*)$")
_CONTINUES = re.compile(rf"^(?:{VERBS})\b", re.IGNORECASE)
NATIONALITIES = frozenset(
    "American Canadian Mexican Brazilian Argentinian Argentine Chilean Colombian Peruvian Venezuelan Cuban "
    "British English Scottish Welsh Irish French German Italian Spanish Portuguese Dutch Belgian Swiss Austrian "
    "Swedish Norwegian Danish Finnish Icelandic Polish Czech Slovak Hungarian Romanian Bulgarian Greek Turkish "
    "Russian Ukrainian Serbian Croatian Slovenian Lithuanian Latvian Estonian Israeli Lebanese Syrian Iraqi "
    "Iranian Persian Saudi Egyptian Moroccan Algerian Tunisian Nigerian Ghanaian Kenyan Ethiopian Indian "
    "Pakistani Bangladeshi Nepali Chinese Japanese Korean Vietnamese Thai Filipino Indonesian Malaysian "
    "Singaporean Taiwanese Australian".split()
) | {"South African", "South Korean", "New Zealander"}
RELIGIONS = frozenset(
    "Christian Catholic Protestant Orthodox Evangelical Baptist Methodist Lutheran Anglican Mormon Quaker Jewish "
    "Muslim Hindu Buddhist Sikh Jain Taoist Pagan Atheist Agnostic".split()
)
# Capitalised words after "is" that describe rather than name ("My wife is French").
_NOT_NAMES = NATIONALITIES | RELIGIONS | frozenset(
    "Vegan Vegetarian Arabic Hispanic Latino Latina Asian African European "
    "OK Okay Fine Good Great Sorry Sure Ready Done Back Here There Home Single Married Busy Happy Tired".split()
)


def is_nationality(text: str) -> bool:
    """ "Brazilian", "South Korean": a nationality's adjective."""
    return text.title() in NATIONALITIES


def is_religion(text: str) -> bool:
    """ "Catholic", "atheist": a faith (or none) said of a person."""
    return text.title() in RELIGIONS


@dataclass
class Context:
    """What one message has said so far: known names and the relatives mentioned, most recent last."""

    names: dict[str, str] = field(default_factory=dict)
    mentioned: list[str] = field(default_factory=list)

    def mention(self, subject: str) -> None:
        if subject in self.mentioned:
            self.mentioned.remove(subject)
        self.mentioned.append(subject)

    def name(self, name: str, subject: str) -> None:
        """Remember that `name` (and its first word) refers to `subject`."""
        self.names[name] = subject
        self.names.setdefault(name.split()[0], subject)

    def resolve(self, pronoun: str) -> str | None:
        """The most recent relative the pronoun can refer to: he/she a person (or pet), it a pet, they several."""
        for subject in reversed(self.mentioned):
            head = subject.split()[-1]
            if (pronoun == "they") != (head in PLURAL) or (pronoun == "it" and head not in PETS):
                continue
            if (pronoun == "he" and head in FEMALE) or (pronoun == "she" and head in MALE):
                continue
            return subject
        return None


def is_name(text: str) -> bool:
    """One to four capitalised words of letters, like "Andre Patandre" (not "French")."""
    words = text.split()
    if not 1 <= len(words) <= 4 or any(w in _NOT_NAMES for w in words):
        return False
    return all(w[0].isupper() and w.replace("-", "").replace("'", "").isalpha() for w in words)


def continues(clause: str) -> bool:
    """A clause without a subject that continues the previous one ("… and wants to be an artist")."""
    return bool(_CONTINUES.match(clause))


def _is_my(subject: str, kinds: frozenset[str]) -> bool:
    """ "my dog" is one of PETS, "my parents" of PLURAL."""
    return subject.startswith("my ") and subject.split()[-1] in kinds


def is_pet(subject: str) -> bool:
    return _is_my(subject, PETS)


def is_plural(subject: str) -> bool:
    return _is_my(subject, PLURAL)


def who(clause: str, context: Context, previous: str | None) -> tuple[str, str, str | None] | None:
    """(subject, rest of the clause, name given in apposition) for a clause about someone other than the user."""
    if m := _MY_RELATIVE.match(clause):
        subject, rest = f"my {m['who'].lower()}", m["rest"]
        if (a := _APPOSITION.match(rest)) and is_name(a["name"]):
            return subject, " " + a["rest"], a["name"]
        return subject, rest, None
    if m := _PRONOUN.match(clause):
        subject = context.resolve(m["pronoun"].lower())
        return (subject, m["rest"], None) if subject else None
    if previous and previous != "I" and continues(clause):
        return previous, " " + clause, None
    return _named(clause, context)


def _named(clause: str, context: Context) -> tuple[str, str, str | None] | None:
    """A clause that starts with a known name (their subject) or an unknown capitalised name (itself)."""
    for name in sorted(context.names, key=len, reverse=True):
        if re.match(rf"{re.escape(name)}(?:'s|\s)", clause):
            return context.names[name], clause[len(name) :], None
    if (m := _BARE_NAME.match(clause)) and is_name(m["name"]) and m["name"] != "I":
        return m["name"], m["rest"], None
    return None


def names_from(facts: Iterable) -> dict[str, str]:
    """Name -> subject ("Andre" -> "my son") from facts with subject/relation/object, e.g. stored ones."""
    context = Context()
    for fact in facts:
        if fact.relation == NAME_RELATION and is_name(fact.object):
            context.name(fact.object, fact.subject)
    return context.names


def relatives(subjects: Iterable[str], earlier: Sequence[str] = (), keep: int = 8) -> list[str]:
    """`earlier` then the relatives among `subjects` ("my sister", not "my name"), each once and most recent last:
    what a pronoun in the next message may refer to (the `mentioned` of `extract`)."""
    context = Context(mentioned=list(earlier))
    for subject in subjects:
        if (m := _MY_RELATIVE.match(subject)) and not m["rest"].strip():
            context.mention(subject)
    return context.mentioned[-keep:]
