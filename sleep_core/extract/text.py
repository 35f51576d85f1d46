"""Normalising a message and cutting it into sentences, clauses and clean objects."""

import re
import unicodedata

_TRANSLATE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ", "\t": " "})
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2060\ufeff]")
_SPLIT = re.compile(r"(?<=[.!?])\s+|\s*[\n;]+\s*")
_ABBREVIATION = re.compile(r"(?:^|\s)(?:mr|mrs|ms|dr|st|jr|sr|prof|mt|ft|vs|etc|e\.g|i\.e|u\.s)\.$", re.IGNORECASE)
# Openers that carry no fact; "No, my name is Bob" is a correction, not a negation.
_OPENER = re.compile(
    r"^(?:(?:well|oh|ok|okay|yes|yeah|yep|no|nope|hi|hey|hello|anyway|actually|btw|by the way|fyi|for the record"
    r"|just so you know|also|so)\s*[,!:-]\s*|(?:so|and|also|plus|actually|anyway|btw)\s+)+",
    re.IGNORECASE,
)
_PLEASANTRY = re.compile(
    r"(?<![\s,.!-])[\s,.!-]*\b(?:nice|pleased|good) to meet you\W*$|(?<![\s,.!-])[\s,.!-]+(?:thanks|thank you)\W*$",
    re.IGNORECASE,
)
# "Remember that my name is Bob" teaches a fact; "Remember that you must…" stays an instruction.
_REMEMBER = re.compile(
    r"^(?:please\s+)?(?:remember|note|keep in mind|don't forget|do not forget)(?:\s+that)?\s*[,:]?\s+(?=(?:i|my)\b)",
    re.IGNORECASE,
)
VERBS = (
    "is|am|are|was|has|have|loves?|likes?|enjoys?|adores?|wants?|lives?|works?|speaks?|studies|studied|plays?|"
    "makes?|moved|prefers?|hates?|comes?|grew|teaches|teach|writes?|drives?|collects?|cooks?|goes|went|graduated|"
    "attended|listens?|supports?|owns?|used"
)
_CLAUSE = re.compile(
    rf"\s*[,;]?\s+(?:and|but|while|whereas)\s+"
    rf"(?=(?:I|[Hh]e|[Ss]he|[Tt]hey|[Mm]y|[A-Z][\w'-]*\s+(?:{VERBS})|(?:{VERBS}))\b)"
)
_CONTRACTIONS = (
    (re.compile(r"\bI'm\b", re.IGNORECASE), "I am"),
    (re.compile(r"\bI've\b", re.IGNORECASE), "I have"),
    (re.compile(r"\b(he|she|it)'s\b", re.IGNORECASE), r"\1 is"),
    (re.compile(r"\bthey're\b", re.IGNORECASE), "they are"),
    (re.compile(r"\bmy name's\b", re.IGNORECASE), "my name is"),
)
_ADVERBS = re.compile(
    r"\b(?:really|also|mostly|usually|often|currently|now|still|just|actually|absolutely|totally|mainly|primarily|"
    r"generally|normally|typically|definitely|especially|truly|sometimes)\s+(?=[a-z])"
)
_DURATION_WORDS = (
    r"(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|a few|a couple of|several|many)"
)
_DURATION_UNITS = r"(?:years?|months?|weeks?|days?|decades?)"
DURATION = rf"(?:(?:over|almost|about|nearly|more than|around)\s+)?{_DURATION_WORDS}\s+{_DURATION_UNITS}"
# What follows an object but is not part of it: subordinate clauses, time phrases, companions.
_TAIL = re.compile(
    rf"\s*,?\s+(?i:when|because|since|although|though|while|whereas|which|who|whom|where|but|so that|as well|"
    rf"too|with|for|named|called|ago|now|currently|these days|at the moment|right now|recently|very much|sometimes|"
    rf"often|occasionally|all the time|a lot|"
    rf"last year|this year|yesterday|today|soon|next (?:week|month|year|spring|summer|fall|autumn|winter)|"
    rf"in \d{{4}}|{DURATION}\s+ago|every|each|daily|nightly|weekly|on weekends|"
    rf"on the weekends?|(?:once|twice|\w+ times) a (?:day|week|month|year)|in the (?:morning|evening|afternoon)s?)\b"
    rf".*$|,\s+(?=[a-z])(?!and\b|or\b).*$"
)


def normalize(text: str) -> str:
    """Unicode-normalise, straighten quotes, drop invisible characters, collapse spaces."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text).translate(_TRANSLATE))
    return re.sub(r" {2,}", " ", text).strip()


def sentences(text: str) -> list[str]:
    """Split a normalised message into sentences without their openers ("Oh, ", "Remember that ")."""
    pieces: list[str] = []
    for piece in _SPLIT.split(text):
        if pieces and _ABBREVIATION.search(pieces[-1]):
            pieces[-1] = f"{pieces[-1]} {piece}"
        elif piece.strip():
            pieces.append(piece.strip())
    stripped = (_PLEASANTRY.sub("", _REMEMBER.sub("", _OPENER.sub("", p))).strip() for p in pieces)
    return [s for s in stripped if s]


def clauses(sentence: str) -> list[str]:
    """Split a sentence at "and"/"but" where a new subject or a verb follows; expand contractions."""
    text = sentence.rstrip(" .!")
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _ADVERBS.sub("", text)
    return [c.strip(" ,") for c in _CLAUSE.split(text) if c.strip(" ,")]


def trim_object(text: str) -> str:
    """Cut what trails an object ("an artist when he grows up" -> "an artist") and stray punctuation."""
    return _TAIL.sub("", text).strip(" \"'.,!;:()-")
