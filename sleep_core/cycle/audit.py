"""Audit: probe every stored fact in batches, raw and in the chat template."""
from dataclasses import dataclass

from ..eval.probes import chat_recall, raw_recall
from ..memory.store import FactRecord


@dataclass
class Audit:
    raw: dict[int, bool]
    chat: dict[int, bool]

    def score(self, fact_id: int) -> float:
        return (self.raw[fact_id] + self.chat[fact_id]) / 2

    def healthy(self, fact_id: int) -> bool:
        """A fact is healthy when raw completion recalls it; chat recall is reported beside it."""
        return self.raw[fact_id]

    def recall(self, kind: str = "raw") -> float:
        values = list(getattr(self, kind).values())
        return sum(values) / len(values) if values else 1.0


def audit(model, tokenizer, records: list[FactRecord]) -> Audit:
    facts = [r.fact for r in records]
    ids = [r.id for r in records]
    return Audit(dict(zip(ids, raw_recall(model, tokenizer, facts))),
                 dict(zip(ids, chat_recall(model, tokenizer, facts))))
