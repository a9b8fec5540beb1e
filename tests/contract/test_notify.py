"""LISTEN/NOTIFY as a wake-up hint: who sends it, who hears it, what happens when it is lost.

The listener tests need PostgreSQL (SQLite has no NOTIFY); the fallback-poll test runs on every
backend, since polling is all SQLite has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import insert, select

from nightshift.clock import SystemClock
from nightshift.config import Settings
from nightshift.domain.misfire import FirePlan
from nightshift.service import Service
from nightshift.store import NewRun, SqlStore, open_store
from nightshift.store.sql.notify import APPLICATION_NAME, JOBS, RUNS, Listener, notify
from nightshift.store.sql.runs import run_values
from nightshift.store.tables import jobs, runs
from nightshift.worker.kinds.registry import build_executors
from nightshift.worker.worker import Worker
from tests.conftest import PG_URL, _truncate

pytestmark = pytest.mark.timeout(60)
FN = {"function": "tests.jobs_worker:ok"}


@pytest.fixture
def pg_url(pg_store_session: SqlStore) -> str:
    _truncate(pg_store_session)
    return pg_store_session.url


@pytest.fixture
def other(pg_url: str) -> Iterator[SqlStore]:
    """The database as another process writes it: no in-process wake reaches our worker."""
    store = open_store(pg_url, migrate=False)
    yield store
    store.close()


class Heard:
    """Records when each channel's subscriber was called."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {RUNS: [], JOBS: []}
        self.changed = asyncio.Event()

    def on(self, channel: str):  # type: ignore[no-untyped-def]
        def callback() -> None:
            self.calls[channel].append(time.monotonic())
            self.changed.set()

        return callback

    async def next_call(self, channel: str, after: int, timeout: float = 5.0) -> float:
        """Wait until `channel` has been heard more than `after` times; when it was."""
        end = time.monotonic() + timeout
        while len(self.calls[channel]) <= after:
            self.changed.clear()
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{channel} not heard within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return self.calls[channel][after]


@pytest.fixture
async def listening(pg_url: str) -> AsyncIterator[tuple[Listener, Heard]]:
    listener = Listener(pg_url, check_s=0.5, backoff_s=(0.05, 0.2))
    heard = Heard()
    listener.subscribe(RUNS, heard.on(RUNS))
    listener.subscribe(JOBS, heard.on(JOBS))
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    # The first connection calls every subscriber once (nothing missed before it listened).
    await heard.next_call(RUNS, 0)
    await heard.next_call(JOBS, 0)
    yield listener, heard
    stop.set()
    await asyncio.wait_for(task, 5)


def _job(store: SqlStore, name: str = "j", **fields):  # type: ignore[no-untyped-def]
    settings = Settings(database_url=store.url)
    service = Service(store, SystemClock(), settings, build_executors(settings))
    return service.create_job({"name": name, "kind": "python", "config": FN, **fields})


@pytest.mark.postgres
async def test_commits_notify_and_rollbacks_do_not(listening, other: SqlStore) -> None:  # type: ignore[no-untyped-def]
    _listener, heard = listening
    runs_before, jobs_before = len(heard.calls[RUNS]), len(heard.calls[JOBS])
    job = await asyncio.to_thread(_job, other)  # a job change: schedulers re-read timers
    await heard.next_call(JOBS, jobs_before)

    sent = time.monotonic()
    now = SystemClock().now()
    await asyncio.to_thread(other.enqueue, NewRun(job_id=job.id, run_at=now), now)
    heard_at = await heard.next_call(RUNS, runs_before)
    assert heard_at - sent < 2.0

    def rolled_back() -> None:
        with other.engine.connect() as conn, conn.begin() as tx:
            notify(conn, RUNS)
            tx.rollback()

    count = len(heard.calls[RUNS])
    await asyncio.to_thread(rolled_back)
    await asyncio.sleep(0.3)
    assert len(heard.calls[RUNS]) == count  # delivered at commit only


@pytest.mark.postgres
async def test_notifications_of_another_schema_are_ignored(listening, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    listener, heard = listening
    count = len(heard.calls[RUNS])
    with psycopg.connect(PG_URL, autocommit=True) as conn:  # the server's default schema
        conn.execute("SELECT pg_notify(%s, %s)", [RUNS, "someone_else"])
        conn.execute("SELECT pg_notify(%s, %s)", [RUNS, listener.schema])
    await heard.next_call(RUNS, count)
    await asyncio.sleep(0.2)
    assert len(heard.calls[RUNS]) == count + 1


@pytest.mark.postgres
async def test_the_listener_reconnects_and_wakes_everyone_after_losing_its_connection(
    listening,
) -> None:  # type: ignore[no-untyped-def]
    listener, heard = listening
    assert listener.connected and listener.connections == 1
    count = len(heard.calls[RUNS])
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [f"{APPLICATION_NAME}:{os.getpid()}"],
        ).fetchall()
    assert killed == [(True,)]
    # Notifications sent while it was away are lost; the wake after reconnecting covers them.
    await heard.next_call(RUNS, count, timeout=10)
    assert listener.connections == 2 and listener.connected


@pytest.mark.postgres
async def test_a_worker_wakes_on_notify_long_before_its_poll(pg_url: str, other: SqlStore) -> None:
    """Another process enqueues; the worker claims within milliseconds although it polls every
    30 s. Figures: created -> started, which is what a user sees as waiting time."""
    settings = Settings(database_url=pg_url, worker_processes=1, heartbeat_s=0.1, poll_s=30.0)
    listener = Listener(pg_url)
    worker = Worker(
        open_store(pg_url, migrate=False),
        SystemClock(),
        settings,
        build_executors(settings),
        notified=lambda: listener.connected,
    )
    listener.subscribe(RUNS, worker.wake)
    stop = asyncio.Event()
    await worker.start()
    tasks = [asyncio.create_task(listener.run(stop)), asyncio.create_task(worker.run(stop))]
    try:
        await _until(lambda: listener.connected)
        job = await asyncio.to_thread(_job, other)
        await asyncio.sleep(0.5)  # let the first idle wait begin: a 30 s one
        waits = []
        for _ in range(10):
            now = SystemClock().now()
            run = await asyncio.to_thread(other.enqueue, NewRun(job_id=job.id, run_at=now), now)
            done = await _until(lambda r=run: _finished(other, r.id))
            waits.append((done.started_at - done.created_at).total_seconds())
            await asyncio.sleep(0.1)  # no completion wake pending when the next one comes
        print(
            f"NOTIFY wake: created -> started median {statistics.median(waits) * 1000:.1f} ms, "
            f"max {max(waits) * 1000:.1f} ms over {len(waits)} runs"
        )
        assert statistics.median(waits) < 1.0 and max(waits) < 5.0
    finally:
        stop.set()
        await worker.close(grace_s=0)
        await asyncio.gather(*tasks, return_exceptions=True)
        worker.store.close()


async def test_a_run_without_a_wake_is_found_by_the_poll(store: SqlStore, settings) -> None:  # type: ignore[no-untyped-def]
    """A lost notification: the run appears by a plain INSERT (no NOTIFY, no local wake). The
    idle worker finds it at its next poll: POLL_S (1 s) without a listener, as on SQLite."""
    worker = Worker(store, SystemClock(), settings, build_executors(settings))
    stop = asyncio.Event()
    await worker.start()
    task = asyncio.create_task(worker.run(stop))
    try:
        job = await asyncio.to_thread(_job, store)
        await asyncio.sleep(0.3)
        now = SystemClock().now()
        run_id = await asyncio.to_thread(_insert_silently, store, job.id, now)
        began = time.monotonic()
        await _until(lambda: _finished(store, run_id), timeout=10)
        assert time.monotonic() - began < 1.0 + 3.0  # one poll, with room for a loaded machine
    finally:
        stop.set()
        await worker.close(grace_s=0)
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.postgres
async def test_fire_due_notifies_once_per_batch_and_only_when_it_created_runs(
    listening, other: SqlStore
) -> None:  # type: ignore[no-untyped-def]
    _listener, heard = listening
    now = SystemClock().now()
    made = [await asyncio.to_thread(_job, other, f"j{i}", schedule="every 1h") for i in range(5)]
    with other.engine.begin() as conn:
        conn.execute(
            jobs.update().where(jobs.c.id.in_([j.id for j in made])).values(next_fire_at=now)
        )
    await asyncio.sleep(0.3)
    count = len(heard.calls[RUNS])

    def plan(job):  # type: ignore[no-untyped-def]
        return FirePlan(runs=[(now, now)], next_fire_at=now + timedelta(hours=1))

    assert await asyncio.to_thread(other.fire_due, now, plan, 100) == 5
    await heard.next_call(RUNS, count)
    await asyncio.sleep(0.3)
    assert len(heard.calls[RUNS]) == count + 1  # one NOTIFY for five runs
    assert await asyncio.to_thread(other.fire_due, now, plan, 100) == 0
    await asyncio.sleep(0.3)
    assert len(heard.calls[RUNS]) == count + 1


def _insert_silently(store: SqlStore, job_id: int, now) -> int:  # type: ignore[no-untyped-def]
    """A pending run written the way no Nightshift process writes one: without a NOTIFY."""
    with store.engine.begin() as conn:
        job_row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()._mapping
        values = run_values(NewRun(job_id=job_id, run_at=now), job_row, now)
        return conn.execute(insert(runs).values(values).returning(runs.c.id)).scalar_one()


def _finished(store: SqlStore, run_id: int):  # type: ignore[no-untyped-def]
    run = store.get_run(run_id)
    return run if run.finished_at is not None else None


async def _until(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
