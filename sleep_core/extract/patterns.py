"""Deterministic extraction of first-person facts: a table of clause patterns.

Subject wording rule: MEMIT reads the key at the last subject token, so the subject is worded as the
user's later question words it: "my name" (What is my name?), "my sister" (Where does my sister live?),
"I live" (Where do I live?). Every pattern's questions contain the subject's last word.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .candidate import NAME_RELATION, Candidate, Rejection, rejection
from .subjects import RELATIVE, Context, continues, is_name, is_nationality, is_pet, is_plural, is_religion, who
from .text import DURATION, clauses, trim_object

_UNITS = "one|two|three|four|five|six|seven|eight|nine"
_NUMBER = (
    rf"(?:\d{{1,3}}|{_UNITS}|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen"
    rf"|(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:-(?:{_UNITS}))?)"
)
_ATTRIBUTE = (
    r"(?:favou?rite(?:\s+[\w-]+){1,3}?|full name|first name|last name|middle name|surname|nickname|hometown|hobby|"
    r"major|native language|first language|mother tongue|blood type|zodiac sign|star sign|phone number|username|"
    r"height|shoe size|religion|nationality|wedding anniversary|anniversary)"
)
_BELONGINGS = r"car|phone|laptop|computer|bike|motorcycle"
_BELONGING_QUESTIONS = ("What {attr} do I have?", "What is my {attr}?")
_COLOURS = (
    r"(?:(?:dark|light|bright|pale|navy|sky|royal|forest|lime|hot|baby) )?(?:red|blue|green|black|white|silver|grey|"
    r"gray|yellow|orange|purple|pink|brown|beige|gold|golden|navy|teal|turquoise|maroon|cream|hazel|blond|blonde)"
)
_COLOURED = rf"{_BELONGINGS}|house|door|front door|room|bedroom|kitchen|hair|scooter|boat|van|truck"
_EYE_QUESTIONS = ("What color are my eyes?", "What colour are my eyes?")
_CAR_MAKES = (
    r"Tesla|Toyota|Honda|Ford|BMW|Audi|Mercedes|Volkswagen|VW|Subaru|Mazda|Nissan|Hyundai|Kia|Chevy|Chevrolet|Jeep|"
    r"Volvo|Porsche|Fiat|Renault|Peugeot|Skoda|Lexus|Prius"
)
_OCCUPATIONS = frozenset(
    "nurse doctor chef cook student teacher lawyer pilot designer artist dentist architect programmer developer "
    "engineer accountant consultant librarian mechanic electrician plumber carpenter firefighter soldier scientist "
    "writer producer musician farmer nanny barista clerk analyst therapist surgeon pharmacist veterinarian vet "
    "coach tutor professor researcher journalist editor photographer actor actress dancer singer painter "
    "sculptor poet author manager director ceo founder entrepreneur freelancer contractor intern retiree "
    "paramedic psychologist economist cashier waiter waitress bartender baker butcher driver".split()
)
_DOG_BREEDS = (
    r"golden retriever|labrador(?: retriever)?|lab|poodle|beagle|bulldog|french bulldog|german shepherd|husky|"
    r"dachshund|corgi|chihuahua|pug|border collie|boxer|shih tzu|rottweiler|terrier|spaniel|labradoodle|goldendoodle|"
    r"greyhound|whippet|dalmatian|great dane|schnauzer|pomeranian|maltese|akita|shiba inu|samoyed"
)
_CAT_BREEDS = (
    r"siamese|persian|maine coon|bengal|ragdoll|sphynx|british shorthair|russian blue|abyssinian|scottish fold|"
    r"burmese|birman|norwegian forest cat|savannah"
)
_ZODIAC = "Aries|Taurus|Gemini|Cancer|Leo|Virgo|Libra|Scorpio|Sagittarius|Capricorn|Aquarius|Pisces"
_OCCUPATION_ENDINGS = ("er", "or", "ist", "ian", "eer", "man", "woman", "grapher")
_NOT_OCCUPATIONS = frozenset(
    "mother father brother sister daughter grandmother grandfather partner lover beginner believer member "
    "vegetarian libertarian foreigner newcomer outsider smoker drinker fan human person woman man "
    "parent resident immigrant patient introvert extrovert ginger leader follower gamer".split()
)


def is_occupation(text: str) -> bool:
    """ "a music producer": an article and a head noun that names a job."""
    words = text.lower().split()
    if len(words) < 2 or words[0] not in ("a", "an") or words[-1] in _NOT_OCCUPATIONS:
        return False
    if is_nationality(words[-1]) or is_religion(words[-1]) or words[-1].title() in _ZODIAC.split("|"):
        return False
    return words[-1] in _OCCUPATIONS or words[-1].endswith(_OCCUPATION_ENDINGS)


def _is_company(text: str) -> bool:
    """Whom one lives with: "my parents", "two roommates", "Sam" (not "anxiety")."""
    first = text.lower().split()[0]
    known = first in ("my", "a", "an", "roommates", "friends", "family") or re.fullmatch(_NUMBER, first)
    return bool(known) or is_name(text)


def is_job(text: str) -> bool:
    """An occupation one works at a place in ("an engineer at Google"); a student there goes to school."""
    return is_occupation(text) and not text.lower().endswith("student")


_SCHOOL = re.compile(
    r"\b(?:university|college|school|institute|academy|polytechnic|elementary|kindergarten|preschool|"
    r"conservatory|seminary|high|Harvard|Stanford|MIT|Yale|Princeton|Caltech|Cornell|UCLA|NYU|Dartmouth|"
    r"Carnegie Mellon|Johns Hopkins|Georgia Tech)\b",
    re.IGNORECASE,
)


def is_school(text: str) -> bool:
    """ "Lincoln High School", "the University of Oslo": a place of study, not any place one went to."""
    return bool(_SCHOOL.search(text))


@dataclass(frozen=True)
class Rule:
    """A clause pattern with group `o` (the object, unless fixed) and templates for subject, relation and questions.

    Templates see the pattern's other groups in lower case, `s` (the clause's subject, for rules about
    others) and `base` (the verb's base form: "loves" -> "love").
    """

    pattern: re.Pattern[str]
    subject: str
    relation: str
    questions: tuple[str, ...]
    who: str = "any"  # about others: "any", "family" ("my …"), "pet", "person", "plural" ("my parents")
    accepts: Callable[[str], bool] | None = None
    job: bool = False  # the group `job` must name an occupation ("I am an engineer at <o>")
    object: str = ""  # a fixed object, for a pattern without `o` ("I live on my own": with "alone")

    def apply(self, clause: str, subject: str = "") -> tuple[str, str, str, tuple[str, ...]] | None:
        """(subject, relation, object, questions) if the clause matches, else None."""
        m = self.pattern.match(clause)
        if not m or not self._fits(subject) or (self.job and not is_job(m["job"])):
            return None
        fields = {k: v.lower() for k, v in m.groupdict().items() if v is not None and k != "o"}
        obj = self.object or trim_object(m["o"])
        if self.accepts and not self.accepts(obj):
            return None
        fields |= {"s": subject, "base": _base(fields.get("verb", ""))}
        questions = tuple(dict.fromkeys(q.format(**fields) for q in self.questions))
        return self.subject.format(**fields), self.relation.format(**fields), obj, questions

    def _fits(self, subject: str) -> bool:
        if self.who == "any":
            return True
        if not subject.startswith("my "):
            return False
        if self.who == "plural":
            return is_plural(subject)
        return self.who == "family" or (self.who == "pet") == is_pet(subject)


def _base(verb: str) -> str:
    """Third-person verb to base form: loves -> love, watches -> watch, studies -> study."""
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("ches", "shes", "sses", "xes")):
        return verb[:-2]
    return verb.removesuffix("s")


def _rule(pattern: str, subject: str, relation: str, *questions: str, **options) -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), subject, relation, questions, **options)


_ABOUT_USER = re.compile(rf"^(?:I\s|at (?:work|home|school)\b|my\s+(?!{RELATIVE}\b(?! tongue)))", re.IGNORECASE)
_HAVE = re.compile(rf"^I (?:have|have got|got|own) an? (?P<who>{RELATIVE})\b", re.IGNORECASE)
_NAME_QUESTIONS = ("What is {s}'s name?", "What's {s} called?")
_LIVE_QUESTIONS = ("Where do I live?", "Which city do I live in?")
# not asked with the city's name ("How long have I lived in Portland?"): measured no better (README, "Conversation")
_LIVED_QUESTIONS = ("How long have I lived here?",)
# "Where did I live before?" reads like "Where do I live?" up to "live": the key sits on "before"
_BEFORE_QUESTIONS = ("Where did I live before?", "Where did I live before moving here?")
_WORK_QUESTIONS = ("What do I work as?", "What do I do for work?")
_WORK_AT_QUESTIONS = ("Where do I work?", "Which company do I work for?")
_SCHOOL_QUESTIONS = ("Which school did I go to?", "Where did I go to school?", "What school did I graduate from?")
# the past tense is keyed on a tense-free wording, as "my field of study" (questions ask "What did I study?")
_PREVIOUS_JOB_QUESTIONS = ("What was my previous job?", "What job did I have before?")
_STUDY_QUESTIONS = ("What did I study?", "What subject did I study?")
_BED_QUESTIONS = ("What time do I go to bed?", "When do I go to bed?")
_DEGREE = r"(?:PhD|Ph\.D\.?|doctorate|master'?s|masters|bachelor'?s|MBA|BA|BSc|BS|MA|MSc|MS|degree|diploma)"
# "I drive to work", "I sing in a choir", "I play it safe", "I speak my mind": what follows the verb is a place, a
# purpose or an idiom, not an object
_NOT_AN_OBJECT = (
    r"(?:to|in|at|on|for|with|from|into|about|around|every|each|before|after|it (?:safe|easy|cool)|myself|up|out|"
    r"down|off|too|tired|my (?:mind|heart|thoughts|best|part|time|way))"
)
_KIN_COUNTED = r"kids|children|sons|daughters|brothers|sisters|siblings|grandchildren|cats|dogs|pets"
_INSTRUMENTS = (
    r"piano|keyboard|guitar|bass|cello|violin|viola|double bass|harp|flute|clarinet|oboe|bassoon|saxophone|sax|"
    r"trumpet|trombone|tuba|french horn|drums|ukulele|banjo|mandolin|accordion|harmonica|organ|synthesizer"
)
_MUSIC = "beats|music|songs|tracks|albums|instrumentals|remixes|mixtapes|soundtracks|jingles|hip-hop|rap|jazz|techno"
_SPORTS = (
    r"soccer|football|basketball|baseball|tennis|golf|volleyball|hockey|ice hockey|rugby|cricket|badminton|"
    r"table tennis|ping pong|squash|handball|lacrosse|softball|water polo"
)
_DIETS = r"vegetarian|vegan|pescatarian|keto|paleo|gluten[- ]free|dairy[- ]free|halal|kosher"
_CONDITIONS = (
    r"(?:type [12] )?diabetes|asthma|celiac disease|coeliac disease|epilepsy|migraines|ADHD|arthritis|"
    r"high blood pressure|eczema|psoriasis|anemia|lupus"
)
_CONDITIONS_BEING = r"lactose intolerant|gluten intolerant|diabetic|asthmatic|epileptic|ana?emic|colou?r[- ]?blind"
_MEDICINES = (
    r"insulin|metformin|antidepressants|blood thinners|statins|levothyroxine|lithium|warfarin|birth control|the pill|"
    r"(?:(?!my\b|the\b|some\b|a\b)[\w-]+ ){1,2}(?:medication|medicine|pills|tablets)|an inhaler"
)
_CONDITION_QUESTIONS = ("What medical condition do I have?", "What is my medical condition?")
_HOBBIES = (
    r"running|jogging|swimming|cycling|biking|hiking|climbing|bouldering|skiing|snowboarding|surfing|skating|rowing"
)
_COMMUTE = r"car|bike|bicycle|bus|train|tram|subway|metro|tube|ferry|scooter|motorcycle"
_COMMUTE_QUESTIONS = ("How do I commute to work?", "How do I commute?")
_CLOCK = r"(?:\d{1,2}(?:[:.]\d\d)? ?(?:am|pm|a\.m\.|p\.m\.)?|midnight|noon)"
_LENGTH = rf"(?:\d+[.,]\d+|{_NUMBER}) ?(?:cm|centimet(?:er|re)s?|m|met(?:er|re)s?|feet|foot|ft)"
_INCHES = rf"(?: (?:and )?(?:\d+|{_UNITS}|ten|eleven)(?: inches| in)?)?"


def _is_model_name(text: str) -> bool:
    """ "iPhone 15", "Galaxy S23", "3310": a capital in the first word or a number (not "old", "dead")."""
    return text[0].isdigit() or any(c.isupper() for c in text.split()[0])


def _are_names(text: str) -> bool:
    """ "Mia and Leo", "Mia, Leo and Sam": names joined by commas and "and"."""
    names = re.split(r",\s*(?:and\s+)?|\s+and\s+", text)
    return len(names) > 1 and all(is_name(n) for n in names)


# Facts the user states about themselves; subjects are fixed wordings.
USER_RULES = (
    _rule(r"^my name is (?P<o>.+)", "my name", "is", "What is my name?", "What's my name?", accepts=is_name),
    _rule(
        r"^I am (?:called |named )?(?P<o>.+)", "my name", "is", "What is my name?", "What's my name?", accepts=is_name
    ),
    _rule(r"^(?:my birthday is|I was born on)(?: on)? (?P<o>.+)", "my birthday", "is", "When is my birthday?"),
    _rule(rf"^my (?P<attr>{_ATTRIBUTE}) is (?P<o>.+)", "my {attr}", "is", "What is my {attr}?", "What's my {attr}?"),
    # the article goes in the relation: a target that opens with "a" is met by the article alone and the make is
    # not said (one car fact: chat answers 0 of 2 as "a Subaru Outback", 2 of 2 as "is a" + "Subaru Outback")
    _rule(rf"^my (?P<attr>{_BELONGINGS}) is an? (?P<o>.+)", "my {attr}", "is a", *_BELONGING_QUESTIONS),
    # without an article, only a name: "My phone is iPhone 15", not "My car is old" or "My phone is dead"
    _rule(rf"^my (?P<attr>{_BELONGINGS}) is (?P<o>.+)", "my {attr}", "is", *_BELONGING_QUESTIONS,
          accepts=_is_model_name),
    # "What color is my car?" ends on the thing, where the key sits: with its make, one subject and one target
    _rule(rf"^my (?P<attr>{_COLOURED}) is (?P<o>{_COLOURS})$", "my {attr}", "'s color is", "What color is my {attr}?",
          "What colour is my {attr}?"),
    _rule(rf"^I have (?P<o>{_COLOURS}) hair$", "my hair", "'s color is", "What color is my hair?",
          "What colour is my hair?"),
    _rule(rf"^my eyes are (?P<o>{_COLOURS})$", "my eyes", "' color is", *_EYE_QUESTIONS),
    _rule(rf"^I have (?P<o>{_COLOURS}) eyes$", "my eyes", "' color is", *_EYE_QUESTIONS),
    _rule(rf"^I am (?P<o>{_NUMBER})(?: years? old| years of age)?$", "my age", "is", "What is my age?"),
    _rule(rf"^I (?:just )?turned (?P<o>{_NUMBER})(?: years? old)?(?: (?:last|this) \w+| recently| today| yesterday)?$",
          "my age", "is", "What is my age?"),
    _rule(r"^I (?:live|reside|am living) in (?P<o>.+)", "I live", "in", *_LIVE_QUESTIONS),
    _rule(r"^I (?:have )?moved to (?P<o>.+?)(?: from .+)?$", "I live", "in", *_LIVE_QUESTIONS),
    _rule(r"^I (?:have )?moved (?:here |there |to .+? )?from (?P<o>.+)", "I lived before", "in", *_BEFORE_QUESTIONS),
    _rule(rf"^I (?:have )?moved\b.*? (?P<o>{DURATION}) ago$", "I have lived", "here for", *_LIVED_QUESTIONS),
    _rule(r"^I have (?:been )?liv(?:ed|ing) in (?P<o>.+)", "I live", "in", *_LIVE_QUESTIONS),
    _rule(
        rf"^I have (?:been )?liv(?:ed|ing) (?:here|there|in .+?) for (?P<o>{DURATION})$",
        "I have lived",
        "here for",
        *_LIVED_QUESTIONS,
    ),
    _rule(
        r"^I (?:am (?:originally )?from|(?:originally )?come from) (?P<o>.+)",
        "I am from",
        "",
        "Where am I from?",
        "Where do I come from?",
    ),
    _rule(r"^I used to live in (?P<o>.+)", "I lived before", "in", *_BEFORE_QUESTIONS),
    _rule(r"^I was born in (?P<o>\D+)$", "I was born", "in", "Where was I born?"),
    _rule(r"^I (?:grew up|was raised|was brought up) in (?P<o>.+)", "I grew up", "in", "Where did I grow up?"),
    _rule(r"^I (?:live|am living) (?:in .+? )?with (?P<o>.+)", "I live", "with", "Who do I live with?",
          accepts=_is_company),
    _rule(r"^I (?:work|am working) as (?P<o>.+)", "I work", "as", *_WORK_QUESTIONS),
    _rule(
        r"^(?:I am|my (?:job|occupation|profession) is(?: being)?) (?P<o>an? .+)",
        "I work",
        "as",
        *_WORK_QUESTIONS,
        accepts=is_occupation,
    ),
    _rule(r"^I (?:work|am working) from (?P<o>home|the office|an office)\b", "I work", "from",
          "Where do I work from?", "Do I work from home?"),
    _rule(rf"^I (?:commute|get to work|go to work|travel to work)(?: to work)? by (?P<o>{_COMMUTE})\b", "I commute",
          "to work by", *_COMMUTE_QUESTIONS),
    _rule(rf"^I (?:take|ride) (?:the |a |my )?(?P<o>{_COMMUTE}) to work\b", "I commute", "to work by",
          *_COMMUTE_QUESTIONS),
    _rule(r"^I drive to work\b", "I commute", "to work by", *_COMMUTE_QUESTIONS, object="car"),
    _rule(r"^I (?:cycle|bike) to work\b", "I commute", "to work by", *_COMMUTE_QUESTIONS, object="bike"),
    _rule(r"^I walk to work\b", "I commute", "to work by", *_COMMUTE_QUESTIONS, object="foot"),
    _rule(r"^I (?:work|am working) in (?P<o>(?!the (?:morning|evening|afternoon)s?\b).+)", "I work", "in",
          "What field do I work in?"),
    _rule(r"^I (?:work|am working) (?:at|for) (?P<o>.+?)(?: as an? .+)?$", "I work", "at", *_WORK_AT_QUESTIONS),
    _rule(r"^I (?:work|am working) (?:at|for) .+? as (?P<o>an? .+)", "I work", "as", *_WORK_QUESTIONS),
    _rule(r"^I am (?P<o>an? .+?) (?:at|for) .+", "I work", "as", *_WORK_QUESTIONS, accepts=is_job),
    _rule(r"^I am (?P<job>an? .+?) (?:at|for) (?P<o>.+)", "I work", "at", *_WORK_AT_QUESTIONS, job=True),
    _rule(r"^I (?:used to work as|worked as|previously worked as) (?P<o>.+)", "my previous job", "was",
          *_PREVIOUS_JOB_QUESTIONS),
    _rule(r"^I (?:used to be|was (?:once |formerly |previously )?)(?P<o>an? .+)", "my previous job", "was",
          *_PREVIOUS_JOB_QUESTIONS, accepts=is_occupation),
    _rule(r"^I am allergic to (?P<o>.+)", "I am allergic", "to", "What am I allergic to?"),
    _rule(r"^I am (?:really |very |so |terribly )?afraid of (?P<o>.+)", "I am afraid", "of", "What am I afraid of?"),
    _rule(r"^I am (?:currently )?training for (?P<o>.+)", "I am training", "for", "What am I training for?"),
    _rule(r"^I am (?:currently )?(?:studying|preparing) for (?P<o>.+)", "I am studying", "for",
          "What am I studying for?"),
    _rule(rf"^I (?:take|am on|have to take|need) (?P<o>(?:{_MEDICINES})\b.*)", "I take", "",
          "What medication do I take?", "What medicine do I take?"),
    # "I run every morning" and "I run a marathon" are exercise, not a business: an article or "my" opens the object
    _rule(r"^I (?:run|manage|own and run) (?!an? (?:marathon|half marathon|race|mile|lap|5k|10k)\b)"
          r"(?P<o>(?:an?|my own|my) .+)", "I run", "", "What do I run?", "What business do I run?"),
    _rule(r"^I volunteer (?:at|for|with) (?P<o>.+)", "I volunteer", "at", "Where do I volunteer?"),
    _rule(r"^I am (?:a )?member of (?P<o>.+)", "I am a member", "of", "What am I a member of?"),
    _rule(rf"^I am (?:an? )?(?P<o>{_DIETS})$", "my diet", "is", "What diet do I follow?", "What is my diet?"),
    _rule(rf"^I have (?P<o>{_CONDITIONS})$", "my medical condition", "is", *_CONDITION_QUESTIONS),
    _rule(rf"^I am (?P<o>{_CONDITIONS_BEING})$", "my medical condition", "is", *_CONDITION_QUESTIONS),
    _rule(r"^I am (?:an? )?(?P<o>(?:South |New )?\w+)(?: citizen| national)?$", "my nationality", "is",
          "What is my nationality?", "What's my nationality?", accepts=is_nationality),
    _rule(r"^I am (?:an? )?(?P<o>\w+)$", "my religion", "is", "What is my religion?", "What's my religion?",
          accepts=is_religion),
    _rule(rf"^I am an? (?P<o>{_ZODIAC})$", "my zodiac sign", "is", "What is my zodiac sign?", "What's my zodiac sign?"),
    # marriage and divorce supersede each other: one slot, as a new job supersedes the old
    _rule(r"^I (?:am|got|have got|have been) (?:recently |just )?(?P<o>single|married|divorced|separated|widowed|"
          r"engaged)(?: (?:last|this|in|on|a|an|\d+|two|three|four|five|six|seven|eight|nine|ten)\b.*)?$",
          "my marital status", "is", "What is my marital status?", "What's my marital status?"),
    _rule(r"^I am engaged to (?P<o>.+)", "my fiancé", NAME_RELATION, "What is my fiancé's name?",
          "Who is my fiancé?",
          accepts=is_name),
    _rule(r"^I am (?P<o>(?:left|right)[- ]?handed)$", "my dominant hand", "is", "What is my dominant hand?",
          "Which is my dominant hand?"),
    _rule(rf"^I go (?P<o>{_HOBBIES})\b", "my exercise", "is",
          "What exercise do I do?", "What is my exercise?"),
    _rule(r"^I (?:go to bed|go to sleep|fall asleep) (?:at|around|by) (?P<o>.+)", "I go to bed", "at", *_BED_QUESTIONS),
    _rule(rf"^I (?:usually )?sleep (?:at|around|by) (?P<o>{_CLOCK})$", "I go to bed", "at", *_BED_QUESTIONS),
    _rule(r"^I am (?P<o>an only child|the (?:oldest|eldest|youngest|middle)(?: child| one)?(?: of \w+)?)"
          r"(?: (?:kids|children|siblings))?$", "my birth order", "is", "What is my birth order?",
          "What's my birth order?"),
    _rule(r"^I am (?:an? )?(?P<o>introvert|extrovert|extravert|ambivert|[EI][NS][FT][JP])$", "my personality type",
          "is", "What is my personality type?", "What's my personality type?"),
    _rule(r"^I am (?:an? )?(?P<o>night owl|early bird|morning person|night person|evening person)$",
          "my sleep rhythm", "is", "What is my sleep rhythm?", "What's my sleep rhythm?"),
    # living alone supersedes living with someone: the same slot
    _rule(r"^I live (?:alone|by myself|on my own)$", "I live", "with", "Who do I live with?", object="alone"),
    _rule(r"^I have an? (?P<o>[\w ]+?) allergy$", "I am allergic", "to", "What am I allergic to?"),
    _rule(r"^my (?P<attr>office|workplace|studio|gym) is (?:in|at|on) (?P<o>.+)", "my {attr}", "is in",
          "Where is my {attr}?"),
    _rule(rf"^I speak (?P<o>{_NUMBER}) languages$", "the number of languages I speak", "is",
          "How many languages do I speak?"),
    _rule(r"^I weigh (?:about |around )?(?P<o>\d+(?:[.,]\d+)? ?(?:kg|kilos?|kilograms?|pounds|lbs?|stone))$",
          "my weight", "is", "What is my weight?", "How much is my weight?"),
    _rule(rf"^I (?:start|begin) work (?:at|around|by) (?P<o>{_CLOCK})$", "I start work", "at",
          "What time do I start work?", "When do I start work?"),
    _rule(r"^I (?:code|program|write code) in (?P<o>.+?) at (?P<place>work|home|school)$", "at {place} I use", "",
          "What do I use at {place}?", "What tools do I use at {place}?"),
    _rule(rf"^I am (?P<o>{_LENGTH}{_INCHES})(?: tall)?$", "my height", "is", "What is my height?", "What's my height?"),
    # retirement supersedes the job, as a new job would; "I retired my old laptop" is not it
    _rule(r"^I (?:am |have )?(?P<o>retired)(?: (?!(?:the|my|his|her|their|our|its|it|them)\b).*)?$",
          "I work", "as", *_WORK_QUESTIONS),
    _rule(rf"^I (?:have|have got|got|bought) (?:an? )?(?P<o>(?:[\w-]+ )?(?:{_CAR_MAKES})\b.*)", "my car", "is a",
          *(q.format(attr="car") for q in _BELONGING_QUESTIONS)),
    _rule(r"^I (?:wake up|get up) (?:at|around|by) (?P<o>.+)", "I wake up", "at", "What time do I wake up?",
          "When do I wake up?"),
    # keyed on "born", near the question's end, as "Where was I born?" is; "year" opens "What year was I born?"
    _rule(r"^I was born in (?P<o>(?:1[89]|20)\d\d)$", "I was born", "in the year", "What year was I born?",
          "When was I born?"),
    _rule(rf"^I have (?:got )?(?P<o>{_NUMBER}) (?P<what>{_KIN_COUNTED})(?: (?:named|called) .+)?$",
          "the number of my {what}", "is", "How many {what} do I have?"),
    _rule(rf"^I have (?:got )?{_NUMBER} (?P<what>{_KIN_COUNTED}),? (?:named|called) (?P<o>.+)", "my {what}",
          "' names are", "What are my {what}' names?", accepts=_are_names),
    # "I have a golden retriever named Max", "I have a Siamese cat": a pet said by its breed, with its name or without
    *(rule for pet, breeds in (("dog", _DOG_BREEDS), ("cat", _CAT_BREEDS)) for rule in (
        _rule(rf"^I (?:have|have got|got|own) (?P<o>an? (?:{breeds}))(?: {pet})?(?:$|,? (?:named|called) )",
              f"my {pet}", "is", f"What breed is my {pet}?"),
        _rule(rf"^I (?:have|have got|got|own) an? (?:{breeds})(?: {pet})?(?: named| called|,) (?P<o>.+)", f"my {pet}",
              NAME_RELATION, f"What is my {pet}'s name?", f"What's my {pet} called?", accepts=is_name))),
    _rule(r"^I am moving to (?P<o>.+)", "I am moving", "to", "Where am I moving to?", "Where am I moving?"),
    _rule(r"^I am married to (?P<o>.+)", "my spouse", NAME_RELATION, "What is my spouse's name?", "Who is my spouse?",
          accepts=is_name),
    _rule(r"^I (?:listen|am listening) to (?P<o>.+)", "I listen", "to", "What do I listen to?",
          "What music do I listen to?"),
    _rule(r"^I am (?:a )?(?:big |huge )?fan of (?P<o>.+)", "I am a fan", "of", "What am I a fan of?"),
    _rule(r"^I am into (?P<o>.+)", "I am into", "", "What am I into?"),
    _rule(rf"^I speak (?!{_NUMBER} languages$|{_NOT_AN_OBJECT}\b)(?P<o>.+)", "I speak", "", "What language do I speak?",
          "Which languages do I speak?"),
    # "What did I study?" holds "study", not "studied": the past is keyed on a tense-free wording
    _rule(
        r"^I (?:studied|majored in|have studied) (?!at\b|in\b)(?P<o>.+)", "my field of study", "is", *_STUDY_QUESTIONS
    ),
    _rule(rf"^I (?:have|hold|got|earned) (?:an? )?{_DEGREE}(?: degree)? in (?P<o>.+)", "my field of study", "is",
          *_STUDY_QUESTIONS),
    _rule(rf"^I (?:study|am studying) (?!{_NOT_AN_OBJECT}\b)(?P<o>.+)", "I study", "", "What do I study?"),
    _rule(r"^I (?:graduated|have graduated) from (?P<o>.+)", "my school", "is", *_SCHOOL_QUESTIONS),
    _rule(r"^I (?:studied|study|am studying) at (?P<o>.+)", "my school", "is", *_SCHOOL_QUESTIONS),
    _rule(r"^I am an? (?:\w+ )?student at (?P<o>.+)", "my school", "is", *_SCHOOL_QUESTIONS),
    _rule(r"^I (?:went|go) to (?:college|school|university|grad school) (?:at|in) (?P<o>.+)", "my school", "is",
          *_SCHOOL_QUESTIONS),
    _rule(r"^I (?:went|go) to (?P<o>.+)", "my school", "is", *_SCHOOL_QUESTIONS, accepts=is_school),
    _rule(r"^I attended (?P<o>.+)", "my school", "is", *_SCHOOL_QUESTIONS, accepts=is_school),
    _rule(r"^I (?:am|have been) learning (?P<o>.+)", "I am learning", "", "What am I learning?"),
    # "What instrument do I play?" is the question people ask: a noun between "What" and "do I" changes the key's
    # context, so an instrument or a sport is taught with it
    _rule(rf"^I play (?P<o>(?:the )?(?:{_INSTRUMENTS}))$", "I play", "", "What instrument do I play?",
          "What do I play?"),
    _rule(rf"^I play (?P<o>{_SPORTS})$", "I play", "", "What sport do I play?", "What do I play?"),
    _rule(rf"^I (?P<verb>make|produce|write|compose|record) (?P<o>(?:[\w&'-]+ ){{0,3}}(?:{_MUSIC}))$", "I {verb}", "",
          "What kind of music do I {verb}?", "What do I {verb}?"),
    _rule(
        r"^I (?P<verb>love|like|enjoy|adore|hate|prefer|make|play|drive|collect|teach|use|practi[cs]e|cook|"
        rf"read|watch|write|support|own|drink|grow|build|sing|paint|draw|wear|ride) (?!{_NOT_AN_OBJECT}\b)(?P<o>.+)",
        "I {verb}",
        "",
        "What do I {verb}?",
    ),
    # the key sits on the verb: "What do I do for work?" ends on "work" as well
    _rule(
        r"^at (?P<place>work|home|school),? I (?:write|use|code in|program in|work with) (?P<o>.+)",
        "at {place} I use",
        "",
        "What do I use at {place}?",
        "What tools do I use at {place}?",
    ),
    _rule(
        r"^at (?P<place>work|home|school),? I (?P<verb>speak|do|make) (?P<o>.+)",
        "at {place} I {verb}",
        "",
        "What do I {verb} at {place}?",
    ),
    _rule(
        rf"^I (?:have|have got|got|own) (?:an? )?(?P<who>{RELATIVE})(?: named| called|,) (?P<o>.+)",
        "my {who}",
        NAME_RELATION,
        "What is my {who}'s name?",
        "What's my {who} called?",
        accepts=is_name,
    ),
)


# Facts about several relatives at once ("my parents", "my kids"), said with plural verbs.
_PLURAL_RULES = (
    _rule(r"^(?:' names are|are (?:called|named)) (?P<o>.+)", "{s}", "' names are", "What are {s}' names?",
          who="plural", accepts=_are_names),
    _rule(rf"^are (?P<o>{_NUMBER}(?:(?:,| and|, and) {_NUMBER})*)(?: years? old)?$", "{s}", "are aged",
          "How old are {s}?", who="plural"),
    _rule(r"^(?:live|are living) in (?P<o>.+)", "{s}", "live in", "Where do {s} live?", who="plural"),
    _rule(r"^(?:are|come) from (?P<o>.+)", "{s}", "are from", "Where are {s} from?", who="plural"),
    _rule(r"^work (?:at|for) (?P<o>.+)", "{s}", "work at", "Where do {s} work?", who="plural"),
    _rule(r"^(?P<verb>love|like|enjoy) (?P<o>.+)", "{s}", "{verb}", "What do {s} {verb}?", "What do {s} like to do?",
          who="plural"),
)

# Facts about someone else; `s` is "my sister", "my dog" or a bare name like "Andre".
OTHER_RULES = _PLURAL_RULES + (
    _rule(r"^'s name is (?P<o>.+)", "{s}", NAME_RELATION, *_NAME_QUESTIONS, accepts=is_name),
    _rule(r"^is (?:called|named) (?P<o>.+)", "{s}", NAME_RELATION, *_NAME_QUESTIONS, accepts=is_name),
    _rule(r"^is (?P<o>[^\d].*)", "{s}", NAME_RELATION, *_NAME_QUESTIONS, who="family", accepts=is_name),
    _rule(r"^(?:'s birthday is|was born on)(?: on)? (?P<o>.+)", "{s}", "'s birthday is", "When is {s}'s birthday?"),
    _rule(rf"^'s (?P<attr>{_ATTRIBUTE}) is (?P<o>.+)", "{s}", "'s {attr} is", "What is {s}'s {attr}?"),
    _rule(
        rf"^is (?P<o>{_NUMBER}(?: (?:months?|weeks?) old)?)(?: years? old| years of age)?$",
        "{s}",
        "is aged",
        "How old is {s}?",
    ),
    _rule(r"^is (?P<o>an? .+)", "{s}", "is", "What breed is {s}?", who="pet"),
    _rule(r"^is in (?P<o>(?:the )?\w+ grade|kindergarten|preschool|nursery school)$", "{s}", "is in",
          "What grade is {s} in?", who="family"),
    _rule(r"^is (?P<o>(?:South |New )?\w+)$", "{s}", "'s nationality is", "What is {s}'s nationality?",
          accepts=is_nationality),
    _rule(
        r"^is an? .+? (?:named|called) (?P<o>.+)", "{s}", NAME_RELATION, *_NAME_QUESTIONS, who="family", accepts=is_name
    ),
    _rule(
        r"^is (?P<o>an? .+)",
        "{s}",
        "works as",
        "What does {s} work as?",
        "What does {s} do for work?",
        who="person",
        accepts=is_occupation,
    ),
    _rule(r"^works as (?P<o>.+)", "{s}", "works as", "What does {s} work as?", "What does {s} do for work?"),
    _rule(r"^works (?:at|for) (?P<o>.+)", "{s}", "works at", "Where does {s} work?"),
    _rule(r"^(?:lives|is living) in (?P<o>.+)", "{s}", "lives in", "Where does {s} live?"),
    _rule(r"^(?:is|comes) from (?P<o>.+)", "{s}", "is from", "Where is {s} from?"),
    _rule(
        r"^(?P<verb>loves|likes|enjoys|adores) (?P<o>.+)",
        "{s}",
        "{verb}",
        "What does {s} {base}?",
        "What does {s} like to do?",
    ),
    _rule(
        r"^(?P<verb>plays|hates|makes|collects|drives|teaches|reads|watches|writes|cooks) (?P<o>.+)",
        "{s}",
        "{verb}",
        "What does {s} {base}?",
    ),
    _rule(r"^speaks (?P<o>.+)", "{s}", "speaks", "What language does {s} speak?"),
    _rule(r"^wants to be(?:come)? (?P<o>.+)", "{s}", "wants to be", "What does {s} want to be?"),
    _rule(r"^is allergic to (?P<o>.+)", "{s}", "is allergic to", "What is {s} allergic to?"),
    _rule(r"^(?:studies|studied|is studying|majored in) (?P<o>.+)", "{s}", "studies", "What does {s} study?"),
    _rule(r"^is learning (?P<o>.+)", "{s}", "is learning", "What is {s} learning?"),
    _rule(
        r"^(?:goes|went|is going) to (?P<o>.+)",
        "{s}",
        "goes to",
        "What school does {s} go to?",
        "Where does {s} go to school?",
        accepts=is_school,
    ),
)


def extract_patterns(
    sentences: list[str], names: Mapping[str, str] | None = None, mentioned: Sequence[str] = ()
) -> tuple[list[Candidate], list[Rejection]]:
    """Facts from sentences that passed the firewall; `names` maps known names to subjects ("Andre" -> "my son"),
    `mentioned` lists the relatives earlier messages spoke of, oldest first, for a pronoun that opens this one."""
    context = Context(names=dict(names or {}), mentioned=list(mentioned))
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    for sentence in sentences:
        previous = None
        for clause in clauses(sentence):
            facts, previous = _clause_facts(clause, context, previous)
            for fact in facts:
                _collect(fact, sentence, context, candidates, rejections)
    return candidates, rejections


def _clause_facts(clause: str, context: Context, previous: str | None) -> tuple[list[tuple], str | None]:
    """The facts of one clause and the subject that a following subject-less clause continues with."""
    if previous == "I" and continues(clause):
        clause = f"I {clause}"
    if _ABOUT_USER.match(clause):
        if m := _HAVE.match(clause):
            context.mention(f"my {m['who'].lower()}")
        return _first_per_slot(f for rule in USER_RULES if (f := rule.apply(clause))), "I"
    found = who(clause, context, previous)
    if not found:
        return [], previous
    subject, rest, name = found
    context.mention(subject)
    facts = [f for rule in OTHER_RULES if (f := rule.apply(rest.strip(), subject))]
    if name:
        facts.insert(0, (subject, NAME_RELATION, name, tuple(q.format(s=subject) for q in _NAME_QUESTIONS)))
    return facts, subject


def _first_per_slot(facts) -> list[tuple]:
    """One fact per (subject, relation) of a clause: the table lists the specific pattern before the general one
    ("I went to college at Stanford" before "I went to <a school>")."""
    first: dict[tuple[str, str], tuple] = {}
    for fact in facts:
        first.setdefault(fact[:2], fact)
    return list(first.values())


def _collect(fact: tuple, sentence: str, context: Context, candidates: list, rejections: list) -> None:
    """Validate one fact into a candidate (or a rejection); a name fact makes the name known."""
    subject, relation, obj, questions = fact
    try:
        candidates.append(Candidate(subject, relation, obj, questions, sentence))
    except ValueError as error:
        rejections.append(rejection(sentence, str(error)))
        return
    if relation == NAME_RELATION:
        context.name(obj, subject)
        context.mention(subject)
