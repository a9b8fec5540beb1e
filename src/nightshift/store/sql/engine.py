"""Engines and transactions, with the few settings each dialect needs."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    event,
    exc,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Dialect as SaDialect
from sqlalchemy.engine import make_url

from nightshift.store.sql.prepared import driver_cursor
from nightshift.store.tables import json_for_postgresql

log = logging.getLogger(__name__)


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
        engine = create_engine(
            parsed, pool_size=8, max_overflow=8, json_serializer=json_for_postgresql
        )
        _ping_when_idle(engine, PING_IDLE_S)
        return engine, Dialect("postgresql", skip_locked=True)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


#: A pooled PostgreSQL connection idle this long is pinged before it is handed out again.
PING_IDLE_S = 1.0


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Pre-ping, but only connections that sat idle: `pool_pre_ping` costs a round trip on
    every checkout, a sixth of a busy worker's claim or completion. A connection used within
    the last `idle_s` is taken as alive; if the server went away in between, the statement
    fails as a disconnect, SQLAlchemy invalidates the whole pool, and the caller retries."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool discards this connection and checks out another (documented recipe).
            raise exc.DisconnectionError(str(error)) from error


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
        ensure_sqlite_math(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        # On the driver: through exec_driver_sql this was a third of a transaction's overhead.
        with driver_cursor(conn, statement, ()) as cursor:
            cursor.execute(statement)


def ensure_sqlite_math(connection: sqlite3.Connection, *, force: bool = False) -> None:
    """Statistics bin durations with `ln` and `floor` in SQL. SQLite has them only when built
    with its math functions; otherwise (or `force`) give it Python's, which call the same C
    `log` and `floor`, so a bin is the same either way."""
    if not force:
        try:
            connection.execute("SELECT ln(1), floor(1)").fetchall()
            return
        except sqlite3.OperationalError:
            pass
    connection.create_function("ln", 1, _ln, deterministic=True)
    connection.create_function("floor", 1, _floor, deterministic=True)


def _ln(x: float | None) -> float | None:
    return None if x is None or x <= 0 else math.log(x)


def _floor(x: float | None) -> float | None:
    return None if x is None else float(math.floor(x))


class FairLock:
    """A lock handed to its waiters in arrival order.

    SQLite lets one writer in at a time and makes the others sleep and retry (busy_timeout): a
    thread that writes back to back (a busy worker) can starve an API request for seconds. In
    one process, writers queue here instead, first come first served."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self._held = False

    def __enter__(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # the releasing thread hands the lock over: still held, now ours

    def __exit__(self, *_: object) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False


class ProcessTurns:
    """An exclusive `flock` on a file beside the SQLite database, held by one writer of all
    the processes that use it (the service and its worker's store process, say).

    SQLite makes a writer that finds the database locked sleep and retry, with waits of 1, 2,
    5, 10, ... 100 ms: against a store process writing back to back, an API request waited up
    to 150 ms (p99 ~100 ms). The kernel wakes a process waiting here the moment the lock is
    free, and releases it when its holder dies. Taken after `FairLock`, so one thread per
    process waits here.

    A second lock, the queue, makes the turns fair: a writer holds it while it waits, so the
    holder cannot take the database back at once when it lets go (the kernel does not hand a
    freed `flock` to the longest waiter). Without it the scheduler's batches of a big instant
    ran back to back while the worker's claim for the first one waited for the last."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._queue = os.open(f"{path}-queue", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            os.close(self._fd)
            raise

    def __enter__(self) -> None:
        fcntl.flock(self._queue, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self._queue, fcntl.LOCK_UN)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._fd, self._queue):
            with contextlib.suppress(OSError):
                os.close(fd)


def writers_lock_path(engine: Engine) -> str | None:
    """The file SQLite writers of every process take turns on; None for a database in
    memory."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    return f"{database}-writers"


class Transactions:
    """`write()` takes SQLite's write lock up front (after this process's earlier writers,
    then other processes'); `read()` is a plain transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._processes: ProcessTurns | None = None
        self._turns: AbstractContextManager[None] = contextlib.nullcontext()
        if engine.dialect.name == "sqlite":
            self._turns = FairLock()
            path = writers_lock_path(engine)
            if path is not None:
                try:
                    self._processes = ProcessTurns(path)
                except OSError as error:  # a read-only directory: SQLite's own waits only
                    log.warning("writers take turns by SQLite's busy waits: %s", error)
        self._process_turns: AbstractContextManager[None] = (
            self._processes or contextlib.nullcontext()
        )

    def close(self) -> None:
        if self._processes is not None:
            self._processes.close()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        # This process's writers in arrival order, then the other processes'.
        with self._turns, self._process_turns, self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn


def insert_or_ignore(dialect: Connection | str, table):  # type: ignore[no-untyped-def]
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect (or the dialect named)."""
    name = dialect if isinstance(dialect, str) else dialect.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """Rows of one table as the driver takes them: the columns, then one list per row (a
    list, or an iterator that encodes each row as the insert consumes it)."""

    table: Table
    names: tuple[str, ...]
    values: Iterable[list[Any]]


def encode_rows(
    dialect: SaDialect,
    table: Table,
    rows: Iterable[Mapping[str, Any]],
    *,
    key: str | None = None,
    lazy: bool = False,
) -> EncodedRows:
    """Encode rows (mappings with the same keys) for `bulk_insert`.

    Each value goes through its column's own bind processor, so rows are encoded exactly as
    `insert(table)` encodes them; only SQLAlchemy's per-row statement machinery is skipped,
    which costs more than the database itself for 100,000 rows. With `key` (the primary key's
    column, absent from the rows), each row starts with a slot for it, filled by
    `bulk_insert`. Eager (the default), everything is encoded now: before the transaction,
    SQLite's write lock is not held while Python encodes. `lazy`: each row is encoded as the
    insert reads it, so that PostgreSQL inserts the first rows while Python encodes the rest."""
    remaining = iter(rows)
    first = next(remaining, None)
    if first is None:
        return EncodedRows(table, (), [])
    names = tuple(column.name for column in table.c if column.name in first)
    lead = 1 if key else 0
    processors = [
        (i + lead, process)
        for i, name in enumerate(names)
        if (process := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
    ]
    pick = itemgetter(*names)
    start: list[Any] = [None] * lead

    def encode(row: Mapping[str, Any]) -> list[Any]:
        encoded = [*start, *pick(row)] if len(names) > 1 else [*start, pick(row)]
        for i, process in processors:
            encoded[i] = process(encoded[i])
        return encoded

    values = map(encode, itertools.chain([first], remaining))
    return EncodedRows(table, (key, *names) if key else names, values if lazy else list(values))


def bulk_insert(conn: Connection, rows: EncodedRows, keys: Sequence[Any] | None = None) -> None:
    """Insert encoded rows in the connection's transaction in as few round trips as the driver
    allows: binary COPY on PostgreSQL (psycopg's multi-row VALUES statements are slower than
    one row at a time), executemany on SQLite. `keys` fill the rows' leading key slots (see
    `encode_rows`), in order. A constraint violation raises the driver's IntegrityError
    (`conn.dialect.loaded_dbapi.IntegrityError`)."""
    if not rows.names:
        return
    values: Iterable[list[Any]] = rows.values
    if keys is not None:
        values = _keyed(values, keys)
    dialect = conn.dialect
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if dialect.name == "postgresql":
            quote = dialect.identifier_preparer.quote
            target = dialect.identifier_preparer.format_table(rows.table)
            columns = ", ".join(quote(name) for name in rows.names)
            # Binary COPY: psycopg formats each value in C from the column's type (read from
            # the catalog, so it is the table's own); about a third less work than text.
            oids = dict(
                cursor.execute(
                    "SELECT attname, atttypid::int FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                    (target,),
                ).fetchall()
            )
            with cursor.copy(f"COPY {target} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([oids[name] for name in rows.names])
                for row in values:  # streamed: the server inserts while rows are encoded
                    copy.write_row(row)
        else:
            compiled = insert(rows.table).compile(dialect=dialect, column_keys=list(rows.names))
            assert tuple(compiled.positiontup or ()) == rows.names, "columns out of order"
            cursor.executemany(str(compiled), values)
    finally:
        cursor.close()


def _keyed(values: Iterable[list[Any]], keys: Sequence[Any]) -> Iterator[list[Any]]:
    for row, key in zip(values, keys, strict=True):
        row[0] = key
        yield row


def reserve_ids(conn: Connection, table: Table, count: int) -> list[int]:
    """`count` new primary keys of `table`, ascending, for rows inserted with explicit ids in
    this transaction: PostgreSQL draws them from the column's sequence (safe beside other
    inserts); on SQLite the transaction holds the write lock, so the ids above the largest
    one are free (the rowid rule SQLite itself follows)."""
    if count <= 0:
        return []
    (pk,) = table.primary_key.columns
    if conn.dialect.name == "postgresql":
        query = text(
            "SELECT nextval(pg_get_serial_sequence(:table, :column)) "
            "FROM generate_series(1, :count) AS n ORDER BY n"
        )
        params = {"table": table.name, "column": pk.name, "count": count}
        return list(conn.execute(query, params).scalars())
    top = conn.execute(select(func.coalesce(func.max(pk), 0))).scalar_one()
    return list(range(top + 1, top + 1 + count))
