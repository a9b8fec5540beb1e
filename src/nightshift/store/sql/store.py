"""The SQL store: one class for SQLite and PostgreSQL, assembled from one module per concern."""

from __future__ import annotations

from nightshift.store.migrate import upgrade
from nightshift.store.sql.access import AccessStore
from nightshift.store.sql.alerts import AlertStore
from nightshift.store.sql.catalog import CatalogStore
from nightshift.store.sql.control import ControlStore
from nightshift.store.sql.engine import Transactions, make_engine
from nightshift.store.sql.firing import FiringStore
from nightshift.store.sql.job_cache import JobCache
from nightshift.store.sql.leases import LeaseStore
from nightshift.store.sql.manage import ManageStore
from nightshift.store.sql.runs import RunStore
from nightshift.store.sql.stats import StatsStore


class SqlStore(
    CatalogStore,
    ManageStore,
    RunStore,
    FiringStore,
    LeaseStore,
    AccessStore,
    ControlStore,
    AlertStore,
    StatsStore,
):
    """Implements `nightshift.store.base.Store`; see there for what each method promises."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = url
        self.engine, self._dialect = make_engine(url, sqlite_synchronous=sqlite_synchronous)
        self._tx = Transactions(self.engine)
        self._job_cache = JobCache()  # claims' and ticks' (store.sql.job_cache)

    @property
    def dialect(self) -> str:
        return self._dialect.name

    def migrate(self) -> None:
        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self._tx.close()

    def ping(self) -> None:
        with self._tx.read() as conn:
            conn.exec_driver_sql("SELECT 1")


def open_store(url: str, *, sqlite_synchronous: str = "NORMAL", migrate: bool = True) -> SqlStore:
    """A store on `url` with its schema brought up to date."""
    store = SqlStore(url, sqlite_synchronous=sqlite_synchronous)
    if migrate:
        store.migrate()
    return store
