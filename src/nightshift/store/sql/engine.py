"""Engines and transactions, with the few settings each dialect needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    skip_locked: bool  # FOR UPDATE SKIP LOCKED: several schedulers and workers share the rows

    @property
    def is_sqlite(self) -> bool:
        return self.name == "sqlite"


def make_engine(url: str, *, sqlite_synchronous: str = "NORMAL") -> tuple[Engine, Dialect]:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )
        _configure_sqlite(engine, sqlite_synchronous)
        return engine, Dialect("sqlite", skip_locked=False)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(parsed, pool_size=8, max_overflow=8, pool_pre_ping=True)
        return engine, Dialect("postgresql", skip_locked=True)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"NIGHTSHIFT_SQLITE_SYNCHRONOUS={synchronous!r} is not a SQLite level")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's begin event below issue BEGIN itself: pysqlite's implicit BEGIN is
        # deferred, and a deferred transaction that later writes can fail with SQLITE_BUSY
        # without waiting for busy_timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives any process crash (kill -9); FULL adds power-loss durability.
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Transactions:
    """`write()` takes SQLite's write lock up front; `read()` is a plain transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn


def insert_or_ignore(conn: Connection, table):  # type: ignore[no-untyped-def]
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()
