"""Workers executing real python and http jobs against a real store, on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import pytest
from sqlalchemy import update

from nightshift.clock import FakeClock, SystemClock
from nightshift.config import Settings
from nightshift.domain.misfire import FirePlan
from nightshift.domain.models import JobKind
from nightshift.domain.status import RunStatus
from nightshift.service import Service
from nightshift.store import NewRun, SqlStore
from nightshift.store.tables import runs
from nightshift.worker import worker as worker_module
from nightshift.worker.channel import RunChannel
from nightshift.worker.executor import Outcome, Task
from nightshift.worker.kinds.python import PythonExecutor
from nightshift.worker.kinds.registry import build_executors
from nightshift.worker.pool import _Task as PoolTask
from nightshift.worker.store_process import store_calls
from nightshift.worker.worker import Worker

S = RunStatus
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["threads", "process"])
async def rig(
    store: SqlStore, settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Service, Worker]]:
    """A worker making its store calls on threads, or through its store process."""
    clock = SystemClock()
    executors = build_executors(settings)
    calls = store_calls(store, settings.model_copy(update={"worker_store_calls": request.param}))
    worker = Worker(store, clock, settings, executors, calls=calls)
    service = Service(store, clock, settings, executors, on_change=worker.wake)
    await worker.start()
    yield service, worker
    await worker.close(grace_s=0)


def py(service: Service, fn: str, name: str | None = None, **fields):  # type: ignore[no-untyped-def]
    config = {"function": f"tests.jobs_worker:{fn}", "params": fields.pop("params", {})}
    return service.create_job({"name": name or fn, "kind": "python", "config": config, **fields})


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    """The worker's loop in the background; stopped, and the worker closed, at the end."""
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await runner
        await worker.close(grace_s=0)


async def until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition the worker makes true in its own time (polled, bounded)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_a_python_run_is_recorded_with_times_logs_and_result(rig, store) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    job = py(service, "ok")
    run = service.run_now(job.id, params={"who": "nightshift"}, run_by="alice")
    assert await worker.run_once()
    done = store.get_run(run.id)
    assert done.status == S.SUCCEEDED
    assert done.result == {"returned": "OK"}
    assert done.run_by == "alice" and done.progress == 100.0
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.duration_s(done.finished_at) >= 0 and done.waiting_s(done.finished_at) >= 0
    assert "hello nightshift" in [line.message for line in store.get_logs(run.id)]


async def test_failures_retry_with_linked_attempts_then_fail(rig, store) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    job = py(service, "flaky", retries={"max": 2, "backoff_s": 0})
    first = service.run_now(job.id)
    for _ in range(3):
        assert await worker.run_once()
    attempts = sorted(store.list_runs(job_id=job.id), key=lambda r: r.attempt)
    assert [(r.attempt, r.status) for r in attempts] == [
        (1, S.FAILED),
        (2, S.FAILED),
        (3, S.FAILED),
    ]
    assert [r.retry_of for r in attempts] == [None, first.id, first.id]
    assert attempts[2].error["type"] == "RuntimeError"
    assert "attempt 3 failed" in attempts[2].error["message"]
    assert "Traceback" in attempts[2].error["traceback"]
    assert any("attempt 2 of 3" in line.message for line in store.get_logs(first.id))
    assert not await worker.run_once()  # no fourth attempt


async def test_text_the_database_cannot_store_never_blocks_other_outcomes(rig, store) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL refuses NUL characters in text and JSON. A run whose error and log line hold
    one still ends (the character replaced), and so do the runs recorded with it."""
    service, worker = rig
    bad = service.run_now(py(service, "nul_bytes").id)
    good = service.run_now(py(service, "ok").id)
    assert await worker.run_once()
    failed, succeeded = store.get_run(bad.id), store.get_run(good.id)
    assert succeeded.status == S.SUCCEEDED
    assert failed.status == S.FAILED
    nul = "\ufffd" if store.dialect == "postgresql" else "\x00"  # SQLite keeps it as it is
    assert failed.error["type"] == "ValueError"
    assert failed.error["message"] == f"bad{nul}byte"
    assert f"before{nul}after" in [line.message for line in store.get_logs(bad.id)]


class _Returns:
    """The python kind's part played by jobs that return what their params say: a value the
    database refuses (`refused`), or a plain one."""

    kind = JobKind.PYTHON
    reports_start = False

    def validate(self, config: dict) -> dict:  # type: ignore[type-arg]
        return config

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def execute(self, task: Task, io: object) -> Outcome:
        if task.params.get("refused"):
            return Outcome("succeeded", result={"value": object()})  # no JSON for that
        return Outcome("succeeded", result={"value": task.params["value"]})


async def test_an_outcome_the_database_refuses_fails_its_run_alone(store, settings) -> None:  # type: ignore[no-untyped-def]
    """Recorded together, the refused outcome would fail the whole batch again and again: it
    is recorded apart, as a failure that says why, and the others as they are."""
    clock = SystemClock()
    executors = {**build_executors(settings), JobKind.PYTHON: _Returns()}
    worker = Worker(store, clock, settings, executors)  # type: ignore[arg-type]
    service = Service(store, clock, settings, executors, on_change=worker.wake)  # type: ignore[arg-type]
    await worker.start()
    try:
        job = py(service, "ok")
        before = service.run_now(job.id, params={"value": 1})
        refused = service.run_now(job.id, params={"refused": True})
        after = service.run_now(job.id, params={"value": 2})
        while await worker.run_once():
            pass
    finally:
        await worker.close(grace_s=0)
    assert [store.get_run(r.id).result for r in (before, after)] == [{"value": 1}, {"value": 2}]
    failed = store.get_run(refused.id)
    assert (failed.status, failed.error["type"]) == (S.FAILED, "UnstorableOutcome")
    assert failed.error["message"].startswith("the outcome could not be stored: ")
    assert failed.result is None and failed.finished_at is not None
    assert store.count_runs(job_id=job.id) == 3  # not retried: the values would be refused again


async def test_a_timeout_kills_a_job_stuck_in_a_cpu_loop(rig, store) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    job = py(service, "cpu_loop", timeout_s=0.5)
    run = service.run_now(job.id)
    await asyncio.wait_for(worker.run_once(), timeout=10)
    done = store.get_run(run.id)
    assert done.status == S.FAILED
    assert done.error["type"] == "Timeout" and "0.5 s" in done.error["message"]
    ok = service.run_now(py(service, "ok").id)  # the pool replaced the killed process
    await worker.run_once()
    assert store.get_run(ok.id).status == S.SUCCEEDED


async def test_an_unknown_function_deactivates_the_job(rig, store) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    job = service.create_job(
        {
            "name": "ghost",
            "kind": "python",
            "config": {"function": "tests.jobs_worker:nope"},
            "schedule": "every 1h",
            "retries": 3,
        }
    )
    run = service.run_now(job.id)
    await worker.run_once()
    assert store.get_run(run.id).status == S.FAILED
    after = store.get_job(job.id)
    assert after.enabled is False and "nope" in after.deactivated_reason
    assert after.next_fire_at is None
    assert not await worker.run_once()  # an import error is not retried


@pytest.mark.parametrize("signal", ["EXIT", "STOP", "SLEEP"])
async def test_return_values_steer_the_job(rig, store, signal) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    job = py(service, "signal", schedule="every 1m", params={"signal": signal})
    run = service.run_now(job.id)
    await worker.run_once()
    after = store.get_job(job.id)
    started = store.get_run(run.id).started_at
    if signal == "EXIT":
        assert not after.enabled and "EXIT" in after.deactivated_reason
    elif signal == "STOP":
        assert after.enabled and after.hold == "stop"
        assert store.next_fire_due() is None
        assert service.release_holds() == 1
        assert store.get_job(job.id).hold is None and store.next_fire_due() is not None
    else:
        assert after.next_fire_at >= started + timedelta(hours=24)
        assert after.next_fire_at <= started + timedelta(hours=24, minutes=1)


async def test_children_are_linked_and_counted(rig, store) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    parent_job = py(service, "parent", params={"children": 3})
    py(service, "child")
    parent = service.run_now(parent_job.id)
    while await worker.run_once():
        pass
    kids = [r for r in store.list_runs(root_id=parent.id) if r.id != parent.id]
    assert len(kids) == 3 and all(
        k.parent_id == parent.id and k.status == S.SUCCEEDED for k in kids
    )
    assert sorted(k.params["n"] for k in kids) == [0, 1, 2]
    done = store.get_run(parent.id)
    assert (done.children_total, done.children_finished, done.children_failed) == (3, 3, 0)


async def test_a_stop_request_checkpoints_and_resumable_state(rig, store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    out = tmp_path / "items.txt"
    job = py(service, "items", params={"total": 1000, "delay": 0.005, "out": str(out)})
    run = service.run_now(job.id)
    task = asyncio.create_task(worker.run_once())
    await until(lambda: out.exists() and len(out.read_text().split()) >= 20)
    with store.engine.begin() as conn:  # what the stop operation writes
        conn.execute(update(runs).where(runs.c.id == run.id).values(status="stopping"))
    await asyncio.wait_for(task, 10)
    stopped = store.get_run(run.id)
    assert stopped.status == S.STOPPED
    processed = [int(x) for x in out.read_text().split()]
    assert stopped.state == len(processed) and processed == list(range(len(processed)))
    assert 0 < stopped.progress < 100


async def test_replace_cancels_the_running_run(rig, store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    mark = tmp_path / "mark"
    job = py(
        service,
        "marks_then_sleeps",
        overlap="replace",
        schedule="every 1h",
        params={"mark": str(mark)},
    )
    old = service.run_now(job.id)
    runner = asyncio.create_task(worker.run(asyncio.Event()))
    await until(mark.exists)
    now = worker.clock.now()
    store.update_job(job.id, {"next_fire_at": now})
    plan = FirePlan(runs=[(now, now)], next_fire_at=now + timedelta(hours=1), replace_active=True)
    # As the scheduler does: on PostgreSQL a fire leaves the job due while another transaction
    # (a heartbeat) holds its run, and the next tick fires it.
    await until(lambda: store.fire_due(now, lambda j: plan, 10) == 1)
    await until(lambda: store.get_run(old.id).status == S.CANCELLED)
    assert store.get_run(old.id).reason == "replaced"
    await until(
        lambda: any(
            r.scheduled_for == now and r.status == S.RUNNING for r in store.list_runs(job_id=job.id)
        )
    )
    runner.cancel()


async def test_graceful_close_returns_unfinished_runs_to_pending(store, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    worker = Worker(store, SystemClock(), settings, build_executors(settings))
    service = Service(store, worker.clock, settings, worker.executors)
    await worker.start()
    mark = tmp_path / "mark"
    job = py(service, "marks_then_sleeps", params={"mark": str(mark), "seconds": 60})
    run = service.run_now(job.id)
    runner = asyncio.create_task(worker.run(asyncio.Event()))
    await until(mark.exists)
    await worker.close(grace_s=0.2)
    runner.cancel()
    back = store.get_run(run.id)
    assert (back.status, back.lease_owner, back.started_at) == (S.PENDING, None, None)
    assert back.attempt == 1


async def test_a_new_worker_recovers_runs_of_a_dead_one_at_start(store, settings) -> None:  # type: ignore[no-untyped-def]
    clock = SystemClock()
    service = Service(store, clock, settings, build_executors(settings))
    run = service.run_now(py(service, "ok").id)
    store.claim("localhost-that-died:1:abcd", clock.now(), 3600, 10, ["python"])
    import socket

    dead_owner = f"{socket.gethostname()}:999999:dead"
    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run.id).values(lease_owner=dead_owner))
    worker = Worker(store, clock, settings, build_executors(settings))
    await worker.start()  # recovers without waiting an hour for the lease
    try:
        assert await worker.run_once()
        attempts = store.list_runs(job_id=run.job_id)
        assert [(r.attempt, r.status) for r in attempts] == [(2, S.SUCCEEDED), (1, S.FAILED)]
        assert attempts[1].reason == "worker lost"
    finally:
        await worker.close(grace_s=0)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"hello": "world"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ping_url() -> Iterator[str]:
    """A URL on a real HTTP server on loopback that answers {"hello": "world"}."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/ping"
    server.shutdown()


async def test_an_http_run_records_request_and_response(rig, store, ping_url) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    job = service.create_job(
        {
            "name": "ping",
            "kind": "http",
            "config": {"url": ping_url, "query": "parameters={type:1}"},
        }
    )
    run = service.run_now(job.id)
    await worker.run_once()
    done = store.get_run(run.id)
    assert done.status == S.SUCCEEDED
    assert done.result["request"]["url"].endswith("/ping?parameters={type:1}")
    assert done.result["response"]["status"] == 200
    assert '"hello"' in done.result["response"]["body"]
    assert any("200" in line.message for line in store.get_logs(run.id))


async def test_finished_runs_are_freed_as_they_end_not_by_the_cyclic_collector(  # type: ignore[no-untyped-def]
    rig, store, ping_url
) -> None:
    """A run's objects (its channel, the pool's task, the stop callback) hold no reference
    cycle, so they go as the run ends. With one cycle per run only the collector freed them,
    and its passes took ~16 % of the worker's loop at 15,000 runs/s (bench/PROFILE.md)."""
    service, worker = rig
    jobs = [
        py(service, "ok", timeout_s=30),  # a timeout arms a timer on the channel
        py(service, "flaky"),
        service.create_job({"name": "ping", "kind": "http", "config": {"url": ping_url}}),
    ]
    await worker.processes_ready()
    gc.collect()
    gc.disable()
    try:
        ran = [service.run_now(job.id) for job in jobs for _ in range(5)]
        while await worker.run_once():
            pass
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable, kept to look at
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, RunChannel | PoolTask)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert {store.get_run(run.id).status for run in ran} == {S.SUCCEEDED, S.FAILED}
    assert left == []


async def test_queue_overlap_runs_one_after_the_other(rig, store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service, worker = rig
    job = py(service, "marks_then_sleeps", overlap="queue")
    first = service.run_now(job.id, params={"mark": str(tmp_path / "a"), "seconds": 0.3})
    second = service.run_now(job.id, params={"mark": str(tmp_path / "b"), "seconds": 0.3})
    runner = asyncio.create_task(worker.run(asyncio.Event()))
    try:
        await until(lambda: store.get_run(second.id).status == S.SUCCEEDED)
    finally:
        runner.cancel()
    a, b = store.get_run(first.id), store.get_run(second.id)
    assert a.status == S.SUCCEEDED
    assert b.started_at >= a.finished_at  # queued behind the first, never in parallel


async def test_runs_announced_while_a_claim_is_under_way_start_at_once(
    rig, store, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A scheduler's batch can commit after a claim's snapshot and announce itself before
    that claim answers "nothing due" (the last batch of a big instant did, on PostgreSQL).
    The announcement wins: the worker looks again at once, not at its next poll."""
    service, worker = rig
    monkeypatch.setattr(worker_module, "POLL_S", 60.0)  # what a lost wake-up would cost
    job = py(service, "ok")
    announced: list[int] = []
    call = worker._call

    async def claim_then_announce(name: str, *args: object) -> object:
        result = await call(name, *args)
        if name == "claim_slots" and not announced:
            # Nothing was due for this claim; a run is committed and announced (wake())
            # before the worker has read its answer.
            announced.append(service.run_now(job.id).id)
        return result

    monkeypatch.setattr(worker, "_call", claim_then_announce)
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: bool(announced) and store.get_run(announced[0]).finished_at)
    finally:
        stop.set()
        await runner
    assert store.get_run(announced[0]).status == S.SUCCEEDED


# -- runs claimed ahead of the processes (worker_prefetch) ----------------------------------


@pytest.fixture
async def one_process(store: SqlStore, database_url: str) -> AsyncIterator[tuple[Service, Worker]]:
    settings = Settings(
        database_url=database_url,
        worker_processes=1,
        worker_prefetch=8,
        worker_prefetch_window_s=60,  # hold up to 8 whatever their length
        heartbeat_s=0.1,
        lease_s=5,
    )
    service, worker = await warmed(store, settings)
    yield service, worker
    await worker.close(grace_s=0)


async def warmed(store: SqlStore, settings: Settings) -> tuple[Service, Worker]:
    """A started worker that has run one python run: it holds runs ahead of the processes only
    once it knows how long they take."""
    clock = SystemClock()
    worker = Worker(store, clock, settings, build_executors(settings))
    service = Service(store, clock, settings, worker.executors, on_change=worker.wake)
    await worker.start()
    service.run_now(py(service, "ok").id)
    assert await worker.run_once()
    return service, worker


async def test_runs_waiting_for_a_process_start_and_time_out_from_when_they_get_one(
    one_process, store, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    service, worker = one_process
    out = tmp_path / "began"
    params = {"seconds": 0.3, "out": str(out)}
    job = py(service, "sleeps", params=params, timeout_s=0.6)
    made = [service.run_now(job.id) for _ in range(3)]
    assert await worker.run_once()  # one claim takes all three; one process runs them in turn
    done = sorted((store.get_run(r.id) for r in made), key=lambda r: r.started_at)
    # Each ran to the end: the third waited ~0.6 s for the process, which would have used up
    # its 0.6 s timeout had the clock started at the claim.
    assert [r.status for r in done] == [S.SUCCEEDED] * 3
    for earlier, later in pairwise(done):
        # recorded when it really began: after the previous one's 0.3 s on the only process
        assert later.started_at >= earlier.started_at + timedelta(seconds=0.3)
    assert done[2].waiting_s(done[2].finished_at) >= 0.5
    assert sorted(int(x) for x in out.read_text().split()) == sorted(r.id for r in made)


async def test_a_stop_request_ends_a_run_still_waiting_for_a_process_unstarted(
    one_process, store, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    service, worker = one_process
    out = tmp_path / "began"
    job = py(service, "sleeps", params={"seconds": 1.0, "out": str(out)})
    first, second = service.run_now(job.id), service.run_now(job.id)
    task = asyncio.create_task(worker.run_once())
    await until(out.exists)
    assert store.get_run(second.id).status == S.RUNNING  # claimed, waiting for the process
    with store.engine.begin() as conn:  # what the stop operation writes
        conn.execute(update(runs).where(runs.c.id == second.id).values(status="stopping"))
    await asyncio.wait_for(task, 10)
    assert store.get_run(second.id).status == S.STOPPED
    assert store.get_run(first.id).status == S.SUCCEEDED
    assert out.read_text().split() == [str(first.id)]  # the stopped one never began


async def test_closing_returns_runs_waiting_for_a_process_to_pending_at_once(
    one_process, store, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    service, worker = one_process
    out = tmp_path / "began"
    job = py(service, "sleeps", params={"seconds": 0.5, "out": str(out)})
    made = [service.run_now(job.id) for _ in range(4)]
    runner = asyncio.create_task(worker.run(asyncio.Event()))
    await until(out.exists)
    await worker.close(grace_s=5)  # the running one finishes; the waiting ones go back
    runner.cancel()
    statuses = sorted(str(store.get_run(r.id).status) for r in made)
    assert statuses == ["pending", "pending", "pending", "succeeded"]
    assert len(out.read_text().split()) == 1


@pytest.fixture
async def ahead(store: SqlStore, settings: Settings) -> AsyncIterator[tuple[Service, Worker]]:
    """A worker that claims runs up to 2 s before their time (wide, for a loaded machine)."""
    service, worker = await warmed(store, settings.model_copy(update={"fire_ahead_s": 2.0}))
    yield service, worker
    await worker.close(grace_s=0)


def later(store: SqlStore, job_id: int, seconds: float):  # type: ignore[no-untyped-def]
    """A run of the job due `seconds` from now."""
    at = SystemClock().now() + timedelta(seconds=seconds)
    return store.enqueue(NewRun(job_id=job_id, run_at=at, scheduled_for=at), SystemClock().now())


@pytest.mark.parametrize("kind", ["python", "http"])
async def test_a_run_claimed_ahead_of_its_time_starts_at_it(
    ahead, store, tmp_path, kind, ping_url
) -> None:  # type: ignore[no-untyped-def]
    service, worker = ahead
    out = tmp_path / "began"
    if kind == "python":
        job = py(service, "sleeps", params={"seconds": 0, "out": str(out)})
    else:
        job = service.create_job({"name": "ping", "kind": "http", "config": {"url": ping_url}})
    run = later(store, job.id, 1.0)
    task = asyncio.create_task(worker.run_once())
    await until(lambda: store.get_run(run.id).status == S.RUNNING)  # claimed, held
    assert SystemClock().now() < run.run_at
    await asyncio.wait_for(task, 10)
    done = store.get_run(run.id)
    assert done.status == S.SUCCEEDED
    assert done.started_at >= run.run_at  # never before its time
    if kind == "python":
        assert out.read_text().split() == [str(run.id)]


async def test_a_run_held_for_its_time_can_be_stopped_and_never_begins(  # type: ignore[no-untyped-def]
    ahead, store, tmp_path
) -> None:
    service, worker = ahead
    out = tmp_path / "began"
    job = py(service, "sleeps", params={"seconds": 0, "out": str(out)})
    run = later(store, job.id, 1.5)
    task = asyncio.create_task(worker.run_once())
    await until(lambda: store.get_run(run.id).status == S.RUNNING)
    with store.engine.begin() as conn:  # what the stop operation writes
        conn.execute(update(runs).where(runs.c.id == run.id).values(status="stopping"))
    await asyncio.wait_for(task, 10)
    assert store.get_run(run.id).status == S.STOPPED
    assert SystemClock().now() < run.run_at  # it did not wait for its time to end
    assert not out.exists()


async def test_closing_returns_runs_held_for_their_time_to_pending(ahead, store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service, worker = ahead
    out = tmp_path / "began"
    job = py(service, "sleeps", params={"seconds": 0, "out": str(out)})
    run = later(store, job.id, 1.5)
    runner = asyncio.create_task(worker.run(asyncio.Event()))
    await until(lambda: store.get_run(run.id).status == S.RUNNING)
    await worker.close(grace_s=5)
    runner.cancel()
    back = store.get_run(run.id)
    assert back.status == S.PENDING and back.run_at == run.run_at
    assert not out.exists()


async def test_runs_whose_claim_answers_after_close_began_go_back_to_pending(  # type: ignore[no-untyped-def]
    ahead, store, tmp_path, monkeypatch
) -> None:
    service, worker = ahead
    out = tmp_path / "began"
    run = later(store, py(service, "sleeps", params={"seconds": 0, "out": str(out)}).id, 1.5)
    answer = asyncio.Event()
    call = worker._call

    async def slow_claim(name: str, *args: object) -> object:
        result = await call(name, *args)
        if name == "claim_slots" and result:
            await answer.wait()  # committed; its answer comes after close() began
        return result

    monkeypatch.setattr(worker, "_call", slow_claim)
    runner = asyncio.create_task(worker.run(asyncio.Event()))
    await until(lambda: store.get_run(run.id).status == S.RUNNING)
    closing = asyncio.create_task(worker.close(grace_s=5))
    await asyncio.sleep(0.1)
    answer.set()
    await asyncio.wait_for(closing, 10)
    runner.cancel()
    assert store.get_run(run.id).status == S.PENDING
    assert not out.exists()


async def test_a_run_not_held_ahead_starts_at_its_time_after_claims_of_other_kinds(  # type: ignore[no-untyped-def]
    store, settings, tmp_path, monkeypatch, ping_url
) -> None:
    """A worker whose python runs take longer than fire_ahead_s holds none for its time: that
    run is claimed at its time, even when claims of other kinds came between."""
    monkeypatch.setattr(worker_module, "POLL_S", 10.0)  # the fallback would be far too late
    settings = settings.model_copy(update={"fire_ahead_s": 0.3, "worker_processes": 1})
    clock = SystemClock()
    worker = Worker(store, clock, settings, build_executors(settings))
    service = Service(store, clock, settings, worker.executors, on_change=worker.wake)
    await worker.start()
    out = tmp_path / "began"
    service.run_now(py(service, "sleeps", "long", params={"seconds": 0.4, "out": str(out)}).id)
    assert await worker.run_once()  # it has seen a python run take 0.4 s
    async with running(worker):
        run = later(store, py(service, "sleeps", params={"seconds": 0, "out": str(out)}).id, 0.8)
        ping = service.create_job({"name": "ping", "kind": "http", "config": {"url": ping_url}})
        service.run_now(ping.id)  # claimed now, on its own: the python run is not due yet
        await until(lambda: store.get_run(run.id).status == S.SUCCEEDED, timeout=8)
        done = store.get_run(run.id)
        assert run.run_at <= done.started_at < run.run_at + timedelta(seconds=0.5)


async def test_a_fresh_worker_holds_runs_for_their_time_and_gives_back_what_it_cannot_start(  # type: ignore[no-untyped-def]
    store, settings, tmp_path
) -> None:
    """Before any run ended here, python runs are taken to be short and held for their time.
    Held behind a long one for fire_ahead_s after it, they go back to pending, unstarted, and
    another worker starts them."""
    settings = settings.model_copy(update={"fire_ahead_s": 0.5, "worker_processes": 1})
    clock = SystemClock()
    # Two workers of one test process stand for two processes on one host. The first's lease
    # names another live process: under this process's pid the second would take it for its
    # own dead predecessor (a restarted container) and recover its running run.
    elsewhere = f"{socket.gethostname()}:{os.getppid()}:first"
    first = Worker(store, clock, settings, build_executors(settings), owner=elsewhere)
    service = Service(store, clock, settings, first.executors, on_change=first.wake)
    await first.start()
    second = Worker(store, clock, settings, build_executors(settings))
    out = tmp_path / "began"
    job = py(service, "sleeps", params={"seconds": 3.0, "out": str(out)})
    made = [later(store, job.id, 1.0) for _ in range(3)]
    stop = asyncio.Event()
    runners = [asyncio.create_task(first.run(stop))]
    try:
        await until(lambda: all(store.get_run(r.id).status == S.RUNNING for r in made))
        assert SystemClock().now() < made[0].run_at  # all three claimed, held for their time

        def statuses() -> list[str]:
            return sorted(str(store.get_run(r.id).status) for r in made)

        # One began at its time; the two behind it went back 0.5 s after it.
        await until(lambda: statuses() == ["pending", "pending", "running"], timeout=5)
        assert SystemClock().now() < made[0].run_at + timedelta(seconds=1.5)
        assert len(out.read_text().split()) == 1  # never begun
        back = [r.id for r in made if store.get_run(r.id).status == S.PENDING]
        assert all(store.get_run(run_id).started_at is None for run_id in back)
        assert first.withdrawn_total == 2  # counted for /metrics
        await second.start()
        runners.append(asyncio.create_task(second.run(stop)))
        await until(lambda: len(out.read_text().split()) == 2, timeout=5)
        assert int(out.read_text().split()[1]) in back  # began on the other worker
    finally:
        stop.set()
        await asyncio.gather(*runners)
        await asyncio.gather(first.close(grace_s=0), second.close(grace_s=0))


class _Unreported:
    """The python kind's place, holding its runs as a process pool does between a run's time
    and its "began": neither started nor ended, here for good (the test's tap)."""

    kind = JobKind.PYTHON
    reports_start = True
    starts_on_time = True

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def validate(self, config: dict) -> dict:  # type: ignore[type-arg]
        return config

    async def start(self) -> None:
        pass

    async def execute(self, task: Task, io: object) -> Outcome:
        self.tasks.append(task)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


async def test_a_run_held_for_its_time_takes_a_process_once_the_time_has_come(  # type: ignore[no-untyped-def]
    store, settings, monkeypatch
) -> None:
    """A fresh worker holds no more due runs than it has processes: a run it claimed ahead of
    its time counts as one of them from that time on, though its process has not reported it
    begun yet. Counted as still held, it let the worker take a due run too many, which then
    waited for a process while another worker had one free (a flaky fault test showed it)."""
    clock = FakeClock(SystemClock().now())
    settings = settings.model_copy(update={"fire_ahead_s": 0.5, "worker_processes": 2})
    executors = build_executors(settings)
    pool = executors[JobKind.PYTHON] = _Unreported()  # type: ignore[assignment]
    worker = Worker(store, clock, settings, executors)
    service = Service(store, clock, settings, executors, on_change=worker.wake)
    await worker.start()
    claims: list[object] = []
    call = worker._call

    async def counted(name: str, *args: object) -> object:
        result = await call(name, *args)
        if name == "claim_slots":
            claims.append(args[3])
        return result

    monkeypatch.setattr(worker, "_call", counted)
    job = py(service, "ok")
    t0 = clock.now()

    def enqueue(at: datetime) -> int:
        return store.enqueue(NewRun(job_id=job.id, run_at=at), clock.now()).id

    first = enqueue(t0)
    ahead = enqueue(t0 + timedelta(seconds=0.01))
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: len(pool.tasks) == 2)  # one due, one held for its time
        assert {t.run_id for t in pool.tasks} == {first, ahead}
        clock.advance(0.02)  # its time has come; its process says nothing yet
        due = [enqueue(clock.now()) for _ in range(3)]
        looked = len(claims)
        worker.wake()
        await until(lambda: len(claims) > looked)  # it looked for work after the wake
        assert len(pool.tasks) == settings.worker_processes  # and took none: no process free
        assert [store.get_run(r).status for r in due] == [S.PENDING] * 3
    finally:
        stop.set()
        await runner
        await worker.close(grace_s=0)


# -- the python processes start in the background --------------------------------------------


def slow_to_import(tmp_path) -> tuple[PythonExecutor, object, object]:  # type: ignore[no-untyped-def]
    """A python kind whose process imports a module that waits for a gate file (a heavy
    import: pandas, Django's set-up), after writing its pid. Returns it, the gate, the pid
    file."""
    gate, pid = tmp_path / "open", tmp_path / "pid"
    (tmp_path / "slow_to_import.py").write_text(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid)!r}).write_text(str(os.getpid()))\n"
        "end = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(gate)!r}).exists() and time.monotonic() < end:\n"
        "    time.sleep(0.01)\n"
    )
    kind = PythonExecutor(processes=1, imports=["slow_to_import"], sys_path=[str(tmp_path)])
    return kind, gate, pid


async def test_other_kinds_run_while_the_python_processes_start(  # type: ignore[no-untyped-def]
    store, settings, tmp_path, ping_url
) -> None:
    """The python processes import the user's modules, which can take seconds: http runs do
    not wait for them, and python runs stay pending (for any worker) until they are up."""
    clock = SystemClock()
    executors = build_executors(settings)
    executors[JobKind.PYTHON], gate, _ = slow_to_import(tmp_path)
    worker = Worker(store, clock, settings, executors)
    service = Service(store, clock, settings, executors, on_change=worker.wake)
    await worker.start()  # returns while the process imports
    async with running(worker):
        ping = service.create_job({"name": "ping", "kind": "http", "config": {"url": ping_url}})
        python_run = service.run_now(py(service, "ok").id)
        http_run = service.run_now(ping.id)
        await until(lambda: store.get_run(http_run.id).status == S.SUCCEEDED)
        waiting = store.get_run(python_run.id)
        assert waiting.status == S.PENDING and waiting.lease_owner is None  # not taken
        assert worker.processes_up == 0  # what /metrics shows
        gate.touch()  # the import ends: the process is ready
        await until(lambda: store.get_run(python_run.id).status == S.SUCCEEDED)
        assert worker.processes_up == 1


async def test_a_worker_closed_while_its_python_processes_start_stops_them(  # type: ignore[no-untyped-def]
    store, settings, tmp_path
) -> None:
    executors = build_executors(settings)
    executors[JobKind.PYTHON], _, pid_file = slow_to_import(tmp_path)
    worker = Worker(store, SystemClock(), settings, executors)
    await worker.start()
    await until(pid_file.exists)  # the process is importing
    pid = int(pid_file.read_text())
    await asyncio.wait_for(worker.close(grace_s=0), timeout=10)  # without waiting for it

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await until(gone)


async def test_python_processes_that_fail_to_start_are_started_again(  # type: ignore[no-untyped-def]
    store, settings, tmp_path, caplog
) -> None:
    """A process that dies before it is ready fails the start, which is tried again; the
    python runs wait, pending, and run once a start succeeds."""
    marker = tmp_path / "died"
    (tmp_path / "dies_once.py").write_text(
        "import os, pathlib\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    os._exit(3)\n"
    )
    caplog.set_level(logging.INFO, logger="nightshift.worker")
    executors = build_executors(settings)
    executors[JobKind.PYTHON] = PythonExecutor(
        processes=1, imports=["dies_once"], sys_path=[str(tmp_path)]
    )
    clock = SystemClock()
    worker = Worker(store, clock, settings, executors)
    service = Service(store, clock, settings, executors, on_change=worker.wake)
    await worker.start()
    try:
        run = service.run_now(py(service, "ok").id)
        assert await worker.run_once()  # once the second start is up
        assert store.get_run(run.id).status == S.SUCCEEDED
        assert marker.exists()
        assert "could not start a python worker process; retrying" in caplog.text
        assert "1 python worker process(es) ready in" in caplog.text
    finally:
        await worker.close(grace_s=0)
