"""Persistence: the store interface (a spec), its tables, one SQL store, and migrations."""

from nightshift.store.base import ClaimedRun, Completion, NewRun, RunProgress, Store, SyncResult
from nightshift.store.sql.store import SqlStore, open_store

__all__ = [
    "ClaimedRun",
    "Completion",
    "NewRun",
    "RunProgress",
    "SqlStore",
    "Store",
    "SyncResult",
    "open_store",
]
