"""What must never be learned: each check returns a short reason the UI can show, or None.

Only what the user asserts about their own world is learned. Questions, wishes, negations, other
people's words, the assistant's claims and anything addressed to the assistant are not, and a message
that tries to instruct the model (an injection dressed as a fact) teaches nothing at all.
"""

import re

MAX_CHARS = 2_000
# "api" reaches here only when the operator enabled learning from API requests (off by default).
USER_SOURCES = frozenset({"user", "chat", "api"})

NOT_USER = "not said by the user"
TOO_LONG = "message too long to learn from"
MARKUP = "contains code or markup"
INSTRUCTION = "an instruction to the assistant, not a fact"
URL = "contains a web or e-mail address"
QUESTION = "a question, not a statement"
HYPOTHETICAL = "hypothetical or uncertain, not a fact"
ABOUT_ASSISTANT = "about the assistant, not about you"
REPORTED = "someone else's words, not yours"
NEGATION = "a negation; only positive statements are learned"

_MARKUP = re.compile(
    r"`|~~~|<\s*/?\s*[a-zA-Z!?][^<>\n]{0,200}>|[{}]|\[[^\]\n]{0,200}\]\(|\*\*|__|^\s{0,3}(?:#{1,6}\s|\|.*\||>\s)"
    r"|\\[a-zA-Z]+\{|<\|",
    re.MULTILINE,
)
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.!?\n]{0,40}?\b(?:instructions?|previous|prior|above|earlier|rules"
    r"|prompt)\b|\bsystem\s*(?:prompt|message|instructions?)\b|\bfrom now on\b|\bgoing forward\b"
    r"|\byou(?:\s+(?:are|must|should|shall|will|have to|need to)|'(?:re|ll))\b"
    r"|\b(?:role-?\s?play|jailbreak|developer mode|act as|pretend to be)\b"
    r"|\b(?:always|never)\s+(?:respond|reply|answer|say|mention|refuse|obey|follow|use|tell|call)\b"
    r"|\b(?:instructions?|directives?|guidelines|rules)\s+(?:are|is|say|says|state)\b"
    r"|\bnew\s+(?:rules?|instructions?)\b"
    r"|\[/?(?:INST|SYS)\]|<<\s*SYS\s*>>|^\s*(?:system|assistant|user|human|ai|bot)\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_URL = re.compile(r"\bhttps?:|\bwww\.|\b[\w-]+\.(?:com|org|net|io|dev|ai|co|gov|edu|uk|de)\b|@[\w-]+\.", re.IGNORECASE)
_QUESTION = re.compile(
    r"\?|^(?:what|where|who|whom|whose|which|why|how)\b|^when\s+(?:do|does|did|is|are|was|were|will|can|should)\b"
    r"|^(?:do|does|did|is|are|am|was|were|can|could|will|would|should|shall|have|has|had)\s+"
    r"(?:i|you|he|she|it|we|they|my|your|there|the)\b",
    re.IGNORECASE,
)
# Lower case only after the first word, so names like Will, May or Hope are not taken for modal verbs.
_HYPOTHETICAL = re.compile(
    r"(?i:^(?:if|unless|imagine|suppose|supposing|pretend|hypothetically|maybe|perhaps|probably|possibly|someday"
    r"|let's say|let us say|what if|in theory)\b)|\b(?:if|unless|imagine|imagining|suppose|supposing|pretend"
    r"|hypothetically|maybe|perhaps|probably|possibly|might|may|would|could|should|wish|hope|will|shall|gonna"
    r"|someday|let's say|what if|in theory|[Ii] think|[Ii] guess|[Ii] believe|[Ii] suppose|not sure|\w+'d|\w+'ll)\b"
)
_IMPERATIVE = re.compile(
    r"^(?:please\s+|pls\s+|kindly\s+)?(?:remember|memori[sz]e|note|store|save|learn|record|tell|say|answer|respond"
    r"|reply|write|repeat|act|pretend|ignore|forget|disregard|stop|start|explain|describe|list|give|show|help"
    r"|translate|summari[sz]e|call|make|let|don't|do not|never|always|be|go|find|create|generate|keep|please)\b",
    re.IGNORECASE,
)
_SECOND_PERSON = re.compile(r"\b(?:you|your|yours|yourself|yourselves|ya)\b", re.IGNORECASE)
_REPORTED = re.compile(
    r"[\"«»„]|\b(?:says?|said|saying|tells?|told|claims?|claimed|thinks|believes|heard|according to|supposedly"
    r"|allegedly|apparently|rumou?red)\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(
    r"\b(?:not|no|never|neither|nor|nobody|none|nothing|nowhere|cannot|anymore|no longer)\b|n't\b", re.IGNORECASE
)
_SENTENCE_CHECKS = (
    (_URL, URL),
    (_QUESTION, QUESTION),
    (_HYPOTHETICAL, HYPOTHETICAL),
    (_IMPERATIVE, INSTRUCTION),
    (_SECOND_PERSON, ABOUT_ASSISTANT),
    (_REPORTED, REPORTED),
    (_NEGATION, NEGATION),
)


def check_source(source: str) -> str | None:
    """Only the user's own chat messages teach; the assistant's replies, tools and APIs do not."""
    return None if source in USER_SOURCES else f"{NOT_USER} (source: {str(source)[:20]})"


def check_size(text: str, max_chars: int = MAX_CHARS) -> str | None:
    """Messages over the bound are refused before any other work, so a 1 MB paste costs nothing."""
    return f"{TOO_LONG} (over {max_chars} characters)" if len(text) > max_chars else None


def check_message(text: str) -> str | None:
    """Reasons to learn nothing from a whole (normalised) message: code or markup, instructions to the model."""
    if _MARKUP.search(text):
        return MARKUP
    if _INJECTION.search(text):
        return INSTRUCTION
    return None


def check(text: str, max_chars: int = MAX_CHARS) -> str | None:
    """The reason not to learn one sentence (or one candidate fact), or None if it is a plain assertion."""
    if reason := check_size(text, max_chars) or check_message(text):
        return reason
    return next((reason for pattern, reason in _SENTENCE_CHECKS if pattern.search(text)), None)
