"""What the model remembers: facts, the weight ledger, the persistent store."""
from .facts import Fact
from .ledger import WeightLedger
from .store import FactRecord, Store, StoreError, WrongModelError

__all__ = ["Fact", "WeightLedger", "Store", "FactRecord", "StoreError", "WrongModelError"]
