"""PostgreSQL LISTEN/NOTIFY: wake-up hints between processes. The rows stay the truth.

A sender calls `notify(conn, channel)` inside the transaction that made the change. PostgreSQL
delivers it at commit, never for a rolled-back transaction, and merges identical notifications
of one transaction, so a batch of 500 fires costs one. The payload is the schema name: processes
of deployments (or test sessions) that share a database in separate schemas wake only their own.

A `Listener` keeps one dedicated connection that LISTENs and calls its subscribers on each
notification. It reconnects with backoff when the connection breaks (a server restart, a killed
backend, a network cut found by a periodic check), and after every (re)connection it calls every
subscriber once: whatever was sent while nobody listened is found by the look that follows.
A notification can still be lost in between, which is why workers and schedulers keep a slow
poll (`NIGHTSHIFT_POLL_S`). SQLite has no NOTIFY; its processes rely on in-process wakes and polls.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, literal, select
from sqlalchemy.engine import make_url
from sqlalchemy.sql.elements import ColumnElement

from nightshift.outage import one_line
from nightshift.store.sql.prepared import Prepares

if TYPE_CHECKING:  # imported when a listener runs: a SQLite service never loads the driver
    import psycopg

log = logging.getLogger("nightshift.notify")

RUNS = "nightshift_runs"  # a pending run was added or handed back: workers claim or re-time
JOBS = "nightshift_jobs"  # a job's timing may have changed: schedulers re-read the timers

#: + ":<pid>": a process's listener is found in pg_stat_activity by its application_name.
APPLICATION_NAME = "nightshift-listen"


def notification(channel: str) -> ColumnElement[str]:
    """The expression that sends a notification on `channel` (PostgreSQL), for a statement
    that has more to do: a hot path saves the round trip of `notify`."""
    return func.pg_notify(literal(channel), func.coalesce(func.current_schema(), ""))


# On the driver (prepared.py): SQLAlchemy's own execution cost more than the round trip.
_SEND = {channel: Prepares(select(notification(channel))) for channel in (RUNS, JOBS)}


def notify(conn: Connection, channel: str) -> None:
    """Wake the listeners of `channel` when this transaction commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        _SEND[channel].rows(conn, {})


def conninfo(url: str) -> str:
    """A libpq connection string from a SQLAlchemy URL (`postgresql+psycopg://` or not)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """LISTEN on one connection of its own; call subscribers from the event loop on NOTIFY.

    `run(stop)` holds the connection until `stop` is set. `connected` is True while notifications
    can arrive; workers and schedulers poll faster while it is False.
    """

    def __init__(
        self,
        url: str,
        *,
        check_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self._conninfo = conninfo(url)
        self._check_s = check_s
        self._backoff_min, self._backoff_max = backoff_s
        self._subscribers: dict[str, list[Callable[[], None]]] = {}
        self.connected = False
        self.connections = 0  # how many times a LISTEN connection was established
        self.schema: str | None = None

    def subscribe(self, channel: str, callback: Callable[[], None]) -> None:
        self._subscribers.setdefault(channel, []).append(callback)

    @property
    def channels(self) -> list[str]:
        return list(self._subscribers)

    async def run(self, stop: asyncio.Event) -> None:
        listening = asyncio.create_task(self._listen_forever(), name="listener")
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({listening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listening, stopping):
                task.cancel()
            await asyncio.gather(listening, stopping, return_exceptions=True)
            self.connected = False

    async def _listen_forever(self) -> None:
        import psycopg

        delay = self._backoff_min
        failures = 0  # connection attempts failed in a row: the first is a warning, not each
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=f"{APPLICATION_NAME}:{os.getpid()}",
                    # A dead peer without a reset (a cut network) is noticed by the kernel too.
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                )
            except Exception as exc:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "LISTEN: cannot connect (%s); retrying", one_line(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            try:
                async with conn:
                    await self._subscribe(conn, failures)
                    failures, delay = 0, self._backoff_min
                    await self._receive(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN: connection lost (%s); reconnecting", one_line(exc))
            finally:
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _subscribe(self, conn: psycopg.AsyncConnection, failures: int) -> None:
        from psycopg import sql

        cursor = await conn.execute("SELECT coalesce(current_schema(), '')")
        row = await cursor.fetchone()
        self.schema = row[0] if row else ""
        for channel in self._subscribers:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self.connected = True
        self.connections += 1
        if self.connections > 1:
            log.info("LISTEN: connected again (after %d failed attempt(s))", failures)
        # Anything committed while nobody listened is found by the look each subscriber makes now.
        for channel in self._subscribers:
            self._dispatch(channel)

    async def _receive(self, conn: psycopg.AsyncConnection) -> None:
        while True:
            async for note in conn.notifies(timeout=self._check_s):
                if note.payload == self.schema:
                    self._dispatch(note.channel)
            # Quiet for a while: make sure the connection still works rather than trust silence.
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout=5)

    def _dispatch(self, channel: str) -> None:
        for callback in self._subscribers.get(channel, []):
            try:
                callback()
            except Exception:
                log.exception("LISTEN: a subscriber of %s failed", channel)
