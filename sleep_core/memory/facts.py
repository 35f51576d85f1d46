"""A fact as the editor sees it: a subject, a relation, an object, and the questions that ask for it."""
import unicodedata
from dataclasses import dataclass, field

import torch


def visible(text: str) -> bool:
    """Holds a character that is neither space nor a control or format character, so the model has a token to key on."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text)


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    questions: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for name in ("subject", "object"):
            if not visible(getattr(self, name)):
                raise ValueError(f"a fact needs a {name} with a visible character")
        object.__setattr__(self, "questions", tuple(self.questions))

    @property
    def prompt(self) -> str:
        """The raw completion prompt ("my sister's name is"); the object follows it after a space.
        An empty relation means the verb is part of the subject ("I speak")."""
        if not self.relation:
            return self.subject
        joiner = "" if self.relation[0] in "',.;:?!" else " "   # "X's expertise", "X, located in"
        return f"{self.subject}{joiner}{self.relation}"

    @property
    def subject_key(self) -> str:
        """Facts with the same subject key share one target value (editing/prompts.py, shared_targets)."""
        return " ".join(self.subject.lower().split())

    @property
    def key(self) -> tuple[str, str]:
        """Facts with the same key supersede each other."""
        return self.subject_key, self.relation.strip().lower()


def about(records: list, subjects: set[str]) -> list:
    """The records (anything with a `.fact`) whose fact's subject key is one of `subjects`."""
    return [r for r in records if r.fact.subject_key in subjects]


def subject_batches(records: list, limit: int) -> list[list]:
    """`records` (anything with a `.fact`) in batches of at most `limit`, a subject's records in one batch and in
    their order (they share a target; a subject with more than `limit` is a batch of its own); as they are when
    they fit in one."""
    if len(records) <= limit:
        return [list(records)]
    by_subject: dict[str, list] = {}
    for r in records:
        by_subject.setdefault(r.fact.subject_key, []).append(r)
    batches: list[list] = []
    for kin in by_subject.values():
        if batches and len(batches[-1]) + len(kin) <= limit:
            batches[-1] += kin
        else:
            batches.append(list(kin))
    return batches


@dataclass
class FactEdit:
    """One fact's share of an update: per layer a column a (d_out), b (d_in) of ΔW = Σ a bᵀ, and its keys."""
    a: dict[int, torch.Tensor]
    b: dict[int, torch.Tensor]
    k: dict[int, torch.Tensor]
    delta: torch.Tensor         # (d,) target residual change at the last edited layer
    prob: float                 # object probability the target reached

    def keys(self, layer: int) -> torch.Tensor:
        """The fact's key columns at `layer`, (d_in, c): one, or two with split keys (editing/keys.py)."""
        return self.k[layer].reshape(len(self.k[layer]), -1)
