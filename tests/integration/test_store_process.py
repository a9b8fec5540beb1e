"""The worker's store process: calls answered from another process, errors as raised, a killed
process replaced without losing or repeating a run, and its end with the service."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nightshift.clock import SystemClock
from nightshift.config import Settings
from nightshift.domain.status import RunStatus
from nightshift.errors import NotFound, Refused
from nightshift.runtime import Runtime
from nightshift.scheduler import Scheduler
from nightshift.service import Service
from nightshift.store import SqlStore
from nightshift.store.base import Completion
from nightshift.store.sql.engine import ProcessTurns, writers_lock_path
from nightshift.worker.kinds.registry import build_executors
from nightshift.worker.store_calls import ThreadCalls
from nightshift.worker.store_process import StoreProcess, StoreProcessGone, store_calls
from nightshift.worker.worker import Worker
from tests.contract.test_worker import until
from tests.factories import whole_second_ahead
from tests.integration.conftest import ServiceProcess, wait_for

S = RunStatus
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def calls(store: SqlStore, settings: Settings) -> AsyncIterator[StoreProcess]:
    calls = store_calls(store, settings.model_copy(update={"worker_store_calls": "process"}))
    assert isinstance(calls, StoreProcess)
    await calls.start()
    yield calls
    await calls.close()


def _service(store: SqlStore, settings: Settings) -> Service:
    return Service(store, SystemClock(), settings, build_executors(settings))


async def test_calls_are_answered_by_another_process(calls: StoreProcess, store, settings) -> None:  # type: ignore[no-untyped-def]
    service = _service(store, settings)
    job = service.create_job(
        {"name": "noop", "kind": "python", "config": {"function": "tests.jobs_worker:ok"}}
    )
    run = service.run_now(job.id)
    assert calls.pid is not None and calls.pid != os.getpid()

    found = await calls.call("claims", "find_job", "default", "noop")
    assert found == store.get_job(job.id)
    claimed = await calls.call("claims", "claim", "me", datetime.now(UTC), 30.0, 10, ["python"])
    assert [c.run.id for c in claimed] == [run.id]
    assert store.get_run(run.id).status == S.RUNNING  # committed where everyone sees it
    done = Completion(run.id, "me", S.SUCCEEDED, datetime.now(UTC), result={"n": 1})
    assert await calls.call("records", "complete", [done]) == [True]
    after = store.get_run(run.id)
    assert (after.status, after.result) == (S.SUCCEEDED, {"n": 1})


async def test_errors_come_back_as_raised(calls: StoreProcess, store, settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound) as missing:
        await calls.call("claims", "get_job", 4242)
    assert (missing.value.what, missing.value.key) == ("job", 4242)

    service = _service(store, settings)
    job = service.create_job(
        {"name": "noop", "kind": "python", "config": {"function": "tests.jobs_worker:ok"}}
    )
    run = service.run_now(job.id)
    await calls.call("claims", "claim", "me", datetime.now(UTC), 30.0, 10, ["python"])
    unstorable = Completion(run.id, "me", S.SUCCEEDED, datetime.now(UTC), result={1, 2})
    with pytest.raises(Refused):  # a set is no JSON: the worker records the failure instead
        await calls.call("records", "complete", [unstorable])
    assert store.get_run(run.id).status == S.RUNNING  # nothing half-written
    # The process serves on after an error.
    assert await calls.call("claims", "find_job", "default", "noop") == store.get_job(job.id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_killed_store_process_fails_its_callers_and_another_takes_over(
    calls: StoreProcess, store: SqlStore, database_url: str
) -> None:
    first = calls.pid
    assert first is not None
    # Another writer holds SQLite's write lock: the claim waits in the store process.
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiting = asyncio.ensure_future(
        calls.call("claims", "claim", "me", datetime.now(UTC), 30.0, 10, ["python"])
    )
    await asyncio.sleep(0)  # the request is written
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StoreProcessGone):
        await waiting
    holder.execute("ROLLBACK")
    holder.close()

    assert await calls.call("claims", "lease_owners") == []
    assert calls.pid is not None and calls.pid != first
    assert not _alive(first)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_scheduler_fires_in_the_store_process_and_a_kill_there_loses_no_fire(
    calls: StoreProcess, store: SqlStore, settings: Settings, database_url: str
) -> None:
    """With a store process the scheduler's transactions run there, between the worker's
    claims. Killed under the first one, the tick fails, is retried with a new process, and
    every due job fires once."""
    service = _service(store, settings)
    start = whole_second_ahead()
    jobs = [
        service.create_job(
            {
                "name": f"every-hour-{i}",
                "kind": "python",
                "config": {"function": "tests.jobs_worker:ok"},
                "schedule": "every 1h",
                "start_at": start.isoformat(),
            }
        )
        for i in range(10)
    ]
    assert all(j.next_fire_at == start for j in jobs)  # all due at once, in a second
    names: list[str] = []
    call = calls.call

    async def observed(lane, name, *args):  # type: ignore[no-untyped-def]
        names.append(name)
        return await call(lane, name, *args)

    calls.call = observed  # type: ignore[method-assign]
    scheduler = Scheduler(
        store,
        SystemClock(),
        settings.model_copy(update={"scheduler_batch": 4}),
        calls=calls,
    )
    # Another writer holds SQLite's write lock: the first batch waits in the store process.
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop, reboot=False))
    try:
        await until(lambda: "fire_due" in names, timeout=10)
        first = calls.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        holder.execute("ROLLBACK")
        await until(lambda: store.count_runs() == 10, timeout=20)
    finally:
        holder.close()
        stop.set()
        await running
    assert calls.pid is not None and calls.pid != first
    assert names.count("fire_due") >= 4  # batches of 4 after the failed one: 4, 4, 2
    runs = store.list_runs(limit=100)
    assert sorted(r.job_id for r in runs) == sorted(j.id for j in jobs)  # once each
    assert {r.scheduled_for for r in runs} == {start}
    assert {store.get_job(j.id).next_fire_at for j in jobs} == {start + timedelta(hours=1)}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_tick_under_way_at_shutdown_ends_before_the_store_process_closes(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler's transactions go through the worker's store process: a stop that comes
    during a tick lets the tick finish there before the worker closes it."""
    runtime = Runtime(
        settings.model_copy(update={"worker_store_calls": "process"}), roles=("scheduler", "worker")
    )
    start = whole_second_ahead()
    job = runtime.service.create_job(
        {
            "name": "every-second",
            "kind": "python",
            "config": {"function": "tests.jobs_worker:ok"},
            "schedule": "every 1s",
            "start_at": start.isoformat(),
        }
    )
    calls = runtime.worker.calls
    assert isinstance(calls, StoreProcess)
    loop = asyncio.get_running_loop()
    tick = runtime.scheduler.tick

    def stopping_tick(now, *args):  # type: ignore[no-untyped-def]
        # The stop comes during the tick of the first fire (made up to fire_ahead_s early).
        if now + runtime.scheduler.ahead >= start and not runtime.stop.is_set():
            loop.call_soon_threadsafe(runtime.request_stop)
            deadline = time.monotonic() + 1.0  # as long as the worker takes to close, or more
            while not calls._closed and time.monotonic() < deadline:
                time.sleep(0.01)
        return tick(now, *args)

    runtime.scheduler.tick = stopping_tick  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="nightshift"):
        await asyncio.wait_for(runtime.serve(), 30)
    assert [r.scheduled_for for r in runtime.store.list_runs(job_id=job.id)] == [start]
    assert not [r for r in caplog.records if r.name == "nightshift.scheduler"]


async def test_a_worker_loses_and_repeats_nothing_when_its_store_process_is_killed(
    store: SqlStore, settings: Settings, tmp_path: Path
) -> None:
    """Killed three times during a drain: every run succeeds once, in its first attempt,
    including runs whose claim or outcome committed while the reply was lost."""
    settings = settings.model_copy(update={"worker_store_calls": "process"})
    service = _service(store, settings)
    job = service.create_job(
        {"name": "mark", "kind": "python", "config": {"function": "tests.jobs_worker:sleeps"}}
    )
    out = tmp_path / "started"
    ids = [
        service.run_now(job.id, params={"out": str(out), "seconds": 0.01}).id for _ in range(240)
    ]
    calls = store_calls(store, settings)
    worker = Worker(store, SystemClock(), settings, build_executors(settings), calls=calls)
    await worker.start()
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    killed = []
    try:
        for done in (40, 100, 160):
            await until(
                lambda n=done: store.count_runs(job_id=job.id, status=["succeeded"]) >= n, 60
            )
            assert isinstance(calls, StoreProcess) and calls.pid is not None
            killed.append(calls.pid)
            os.kill(calls.pid, signal.SIGKILL)
        await until(lambda: store.count_runs(job_id=job.id, status=["succeeded"]) == 240, 60)
    finally:
        stop.set()
        await running
        await worker.close(grace_s=0)
    runs = store.list_runs(job_id=job.id, limit=1000)
    assert sorted(r.id for r in runs) == sorted(ids)  # no retry was ever inserted
    assert {(r.status, r.attempt, r.reason) for r in runs} == {(S.SUCCEEDED, 1, None)}
    started = out.read_text().split()
    assert sorted(map(int, started)) == sorted(ids)  # each executed exactly once
    assert len(set(killed)) == 3 and not any(_alive(pid) for pid in killed)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_run_claimed_by_a_call_that_went_unanswered_goes_back_at_once(
    store: SqlStore, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    """A claim can commit in the store process and lose its reply: the worker hands such runs
    back when the claim fails, rather than letting them count as lost when their leases end."""
    settings = settings.model_copy(update={"worker_store_calls": "process", "lease_s": 30.0})
    service = _service(store, settings)
    job = service.create_job(
        {"name": "mark", "kind": "python", "config": {"function": "tests.jobs_worker:sleeps"}}
    )
    out = tmp_path / "started"
    calls = store_calls(store, settings)
    assert isinstance(calls, StoreProcess)
    worker = Worker(store, SystemClock(), settings, build_executors(settings), calls=calls)
    await worker.start()
    # As if the worker's last claim had committed and its reply had been lost:
    stray = service.run_now(job.id, params={"out": str(out), "seconds": 0})
    store.claim(worker.owner, datetime.now(UTC), 30.0, 1, ["python"])
    assert store.get_run(stray.id).lease_owner == worker.owner
    # The next claim waits behind another writer in the store process, which dies then.
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    claiming = asyncio.Event()
    call = calls.call

    async def observed(lane, name, *args):  # type: ignore[no-untyped-def]
        if name == "claim_slots":
            claiming.set()
        return await call(lane, name, *args)

    calls.call = observed  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await claiming.wait()
        assert calls.pid is not None
        os.kill(calls.pid, signal.SIGKILL)
        holder.execute("ROLLBACK")
        await until(lambda: store.get_run(stray.id).status == S.SUCCEEDED, timeout=10)
    finally:
        holder.close()
        stop.set()
        await running
        await worker.close(grace_s=0)
    run = store.get_run(stray.id)
    assert (run.attempt, run.reason, run.error) == (1, None, None)
    assert out.read_text().split() == [str(stray.id)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_store_process_ends_with_the_service(tmp_path: Path, database_url: str) -> None:
    service = ServiceProcess(tmp_path, database_url)
    service.start()
    pid = int(wait_for(lambda: _logged_store_pid(service.log)))
    assert _alive(pid)
    service.signal(signal.SIGKILL)
    service.wait()
    wait_for(lambda: not _alive(pid), timeout=10)


def test_threads_on_postgresql_and_a_process_on_a_sqlite_file(tmp_path: Path) -> None:
    class Fake:
        def __init__(self, dialect: str, url: str) -> None:
            self.dialect, self.url = dialect, url

    auto = Settings()
    pg = Fake("postgresql", "postgresql://x/y")
    on_file = Fake("sqlite", f"sqlite:///{tmp_path / 'n.db'}")
    in_memory = Fake("sqlite", "sqlite://")
    assert isinstance(store_calls(pg, auto), ThreadCalls)
    assert isinstance(store_calls(on_file, auto), StoreProcess)
    assert isinstance(store_calls(in_memory, auto), ThreadCalls)  # no other process sees it
    process = auto.model_copy(update={"worker_store_calls": "process"})
    assert isinstance(store_calls(pg, process), StoreProcess)
    threads = auto.model_copy(update={"worker_store_calls": "threads"})
    assert isinstance(store_calls(on_file, threads), ThreadCalls)


_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_writers_of_several_processes_take_turns_and_a_dead_holder_lets_go(
    store: SqlStore, settings: Settings
) -> None:
    """Writers queue on a lock file beside the database (woken when it is free, not polling
    with SQLite's sleeps); a holder killed with -9 releases it."""
    path = writers_lock_path(store.engine)
    assert path is not None and path.endswith("nightshift.db-writers")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        service = _service(store, settings)
        done = threading.Event()
        created: list[object] = []

        def write() -> None:
            created.append(
                service.create_job(
                    {
                        "name": "later",
                        "kind": "python",
                        "config": {"function": "tests.jobs_worker:ok"},
                    }
                )
            )
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.3)  # it waits its turn
        assert store.find_job("default", "later") is None
        holder.kill()
        assert done.wait(10)
        writer.join()
        assert store.find_job("default", "later") is not None
    finally:
        holder.kill()
        holder.wait()


_WAITER = """
import sys
from nightshift.store.sql.engine import ProcessTurns
turns = ProcessTurns(sys.argv[1])
with turns:
    print("got", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_waiting_process_writes_before_the_holder_writes_again(store: SqlStore) -> None:
    """The writer that let go cannot take its turn back from one already waiting: a big
    instant's batches of fires let the worker's claim in between them."""
    path = writers_lock_path(store.engine)
    assert path is not None
    mine = ProcessTurns(path)
    mine.__enter__()
    waiter = subprocess.Popen(
        [sys.executable, "-c", _WAITER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    again = threading.Event()
    try:
        probe = os.open(f"{path}-queue", os.O_RDWR)
        try:
            wait_for(lambda: _locked(probe), timeout=20)  # the waiter queues behind us
        finally:
            os.close(probe)
        mine.__exit__(None, None, None)

        def write_again() -> None:
            with mine:
                again.set()

        writer = threading.Thread(target=write_again)
        writer.start()
        assert waiter.stdout is not None and waiter.stdout.readline() == b"got\n"
        assert not again.wait(0.2)  # our next turn waits for the waiter's
        waiter.communicate(b"done\n", timeout=10)
        assert again.wait(10)
        writer.join()
    finally:
        waiter.kill()
        waiter.wait()
        mine.close()


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _logged_store_pid(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if "worker store calls: process " in line:
            return line.rsplit(" ", 1)[1]
    return None
