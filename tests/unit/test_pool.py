"""The python kind's process pool: the queue of waiting runs, start reports, stops, revokes."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nightshift.worker.child import _Channel
from nightshift.worker.executor import MemoryIO
from nightshift.worker.pool import PoolClosed, ProcessPool

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MakePool = Callable[..., Awaitable[ProcessPool]]


def payload(function: str, run_id: int = 1, **params: Any) -> dict[str, Any]:
    reference = function if ":" in function else f"tests.pool_jobs:{function}"
    return {
        "function": reference,
        "params": params,
        "app": "default",
        "run_id": run_id,
        "job": function,
        "attempt": 1,
        "state": None,
    }


class RecordingIO(MemoryIO):
    """Notes the moment it is started in a list shared by the test's runs."""

    def __init__(self, name: str = "", starts: list[str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.starts = starts if starts is not None else []

    def started(self) -> None:
        super().started()
        self.starts.append(self.name)


class HookIO(MemoryIO):
    """A RunIO with the optional `on_stop` registration."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def logged_pid(io: MemoryIO) -> int:
    [(_, line)] = [entry for entry in io.lines if entry[1].startswith("pid ")]
    return int(line.split()[1])


@pytest_asyncio.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[ProcessPool] = []

    async def make(size: int = 1, pipeline: bool = True) -> ProcessPool:
        pool = ProcessPool(size, sys_path=[ROOT], pipeline=pipeline)
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


# -- the queue ------------------------------------------------------------------------------------


async def test_waiting_tasks_go_smallest_order_first_fifo_among_equals(make_pool: MakePool) -> None:
    pool = await make_pool(1, pipeline=False)
    starts: list[str] = []
    blocker = asyncio.create_task(pool.run(payload("sleep", s=0.3), RecordingIO("blocker", starts)))
    await wait_until(lambda: starts == ["blocker"])
    orders = {"c": (2, 0), "a1": (0, 5), "b": (1, 0), "a2": (0, 5), "first": ()}
    ios = {name: RecordingIO(name, starts) for name in orders}
    runs = [
        asyncio.create_task(pool.run(payload("pid"), ios[name], order=order))
        for name, order in orders.items()
    ]
    await wait_until(lambda: pool.waiting == 5)
    assert all(io.started_count == 0 for io in ios.values())  # waiting is not started
    outcomes = await asyncio.gather(blocker, *runs)
    assert [o["status"] for o in outcomes] == ["succeeded"] * 6
    assert starts == ["blocker", "first", "a1", "a2", "b", "c"]
    assert all(io.started_count == 1 for io in ios.values())
    assert not [t for t in threading.enumerate() if t.name.startswith("nightshift-pool")]


async def test_pipelining_queues_at_most_one_task_behind_a_busy_child(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    starts: list[str] = []
    blocker = asyncio.create_task(pool.run(payload("sleep", s=0.3), RecordingIO("blocker", starts)))
    await wait_until(lambda: starts == ["blocker"])
    ios = {name: RecordingIO(name, starts) for name in ("c", "a", "b")}
    orders = {"c": (2,), "a": (0,), "b": (1,)}
    runs = [
        asyncio.create_task(pool.run(payload("pid"), ios[name], order=orders[name])) for name in ios
    ]
    await wait_until(lambda: pool.waiting == 2)
    [child] = pool.children
    assert child.queued is not None  # "c" lies in the child's pipe, not started
    assert ios["c"].started_count == 0
    await asyncio.gather(blocker, *runs)
    # One task per child may go ahead of better ones that came after it.
    assert starts == ["blocker", "c", "a", "b"]


async def test_a_task_too_big_for_the_pipe_is_not_queued(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    io = RecordingIO()
    blocker = asyncio.create_task(pool.run(payload("sleep", s=0.3), io))
    await wait_until(lambda: io.started_count == 1)
    big = asyncio.create_task(pool.run(payload("pid", blob="x" * 1_000_000), MemoryIO()))
    await wait_until(lambda: pool.waiting == 1)
    await asyncio.sleep(0.05)
    assert pool.children[0].queued is None
    outcomes = await asyncio.gather(blocker, big)
    assert [o["status"] for o in outcomes] == ["succeeded", "succeeded"]


# -- cancellation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", [False, True])
async def test_a_cancelled_waiting_task_never_runs_and_kills_nothing(
    make_pool: MakePool, tmp_path: Path, pipeline: bool
) -> None:
    pool = await make_pool(1, pipeline=pipeline)
    [child] = pool.children
    io = RecordingIO()
    blocker = asyncio.create_task(pool.run(payload("sleep", s=0.3), io))
    await wait_until(lambda: io.started_count == 1)
    marker = tmp_path / "cancelled"
    cancelled_io = RecordingIO()
    cancelled = asyncio.create_task(pool.run(payload("touch", path=str(marker)), cancelled_io))
    other = asyncio.create_task(pool.run(payload("pid"), MemoryIO()))
    if pipeline:
        await wait_until(lambda: child.queued is not None)  # the first one is in the pipe
    else:
        await wait_until(lambda: pool.waiting == 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    outcomes = await asyncio.gather(blocker, other)
    assert [o["status"] for o in outcomes] == ["succeeded", "succeeded"]
    assert not marker.exists()
    assert cancelled_io.started_count == 0
    assert [c.pid for c in pool.children] == [child.pid]  # nobody was killed
    assert pool.waiting == 0


async def test_a_killed_childs_queued_task_runs_on_the_replacement(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    [child] = pool.children
    spin_io = MemoryIO()
    spinning = asyncio.create_task(pool.run(payload("tests.jobs_sample:spin"), spin_io))
    await wait_until(lambda: ("INFO", "spinning") in spin_io.lines)
    queued_io = RecordingIO()
    queued = asyncio.create_task(pool.run(payload("pid"), queued_io))
    await wait_until(lambda: child.queued is not None)
    spinning.cancel()  # SIGKILL: the queued task never started there
    with pytest.raises(asyncio.CancelledError):
        await spinning
    outcome = await asyncio.wait_for(queued, 10)
    assert outcome["status"] == "succeeded"
    assert queued_io.started_count == 1
    assert logged_pid(queued_io) != child.pid


async def test_a_child_that_dies_gives_back_its_queued_task(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    dying = asyncio.create_task(pool.run(payload("tests.jobs_sample:exits"), MemoryIO()))
    queued_io = RecordingIO()
    queued = asyncio.create_task(pool.run(payload("pid"), queued_io))
    died, outcome = await asyncio.wait_for(asyncio.gather(dying, queued), 10)
    assert died["error"]["type"] == "WorkerProcessDied"
    assert outcome["status"] == "succeeded"
    assert queued_io.started_count == 1


async def test_a_queued_task_moves_to_an_idle_child_instead_of_waiting_behind_a_long_one(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(2)
    long_ios = [RecordingIO(), RecordingIO()]
    longs = [asyncio.create_task(pool.run(payload("sleep", s=5.0), io)) for io in long_ios]
    await wait_until(lambda: all(io.started_count == 1 for io in long_ios))
    queued_io = RecordingIO()
    queued = asyncio.create_task(pool.run(payload("pid"), queued_io))
    await wait_until(lambda: any(c.queued is not None for c in pool.children))
    [behind] = [c for c in pool.children if c.queued is not None]
    # End the long task of the other child: its replacement becomes idle, with nothing
    # waiting; the queued task must not wait 5 s behind the first long one.
    assert behind.task is not None
    [other] = [run for run, io in zip(longs, long_ios, strict=True) if behind.task.io is not io]
    other.cancel()
    outcome = await asyncio.wait_for(queued, 4)
    assert outcome["status"] == "succeeded"
    assert logged_pid(queued_io) != behind.pid
    assert queued_io.started_count == 1
    assert not next(run for run in longs if run is not other).done()
    for run in longs:
        run.cancel()
    await asyncio.gather(*longs, return_exceptions=True)


def test_the_child_revokes_only_a_task_it_has_not_taken() -> None:
    parent, child_end = multiprocessing.Pipe()
    channel = _Channel(child_end)
    assert channel.take(1)
    channel.finish(("done", {}), 1)
    assert parent.recv() == ("done", {})
    channel.revoke(1)
    assert parent.recv() == ("revoked", 1, False)  # taken: it runs (or ran)
    channel.revoke(2)
    assert parent.recv() == ("revoked", 2, True)
    assert not channel.take(2)  # skipped when the main thread reads it
    assert channel.take(3)


# -- stops ----------------------------------------------------------------------------------------


async def test_a_stop_asked_while_queued_reaches_the_task_and_not_the_next(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    [child] = pool.children
    io = RecordingIO()
    blocker = asyncio.create_task(pool.run(payload("sleep", s=0.3), io))
    await wait_until(lambda: io.started_count == 1)
    stopped_io = MemoryIO()
    stopped = asyncio.create_task(pool.run(payload("stop_seen"), stopped_io))
    await wait_until(lambda: child.queued is not None)
    stopped_io.stop_event.set()
    await blocker
    outcome = await stopped
    assert (outcome["status"], stopped_io.lines) == ("stopped", [("INFO", "stop True")])
    next_io = MemoryIO()
    outcome = await pool.run(payload("stop_seen"), next_io)
    assert (outcome["status"], next_io.lines) == ("succeeded", [("INFO", "stop False")])


async def test_an_io_with_on_stop_is_not_polled(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    io = HookIO()
    running = asyncio.create_task(pool.run(payload("tests.jobs_sample:stoppable"), io))
    await wait_until(lambda: any("started at" in line for _, line in io.lines))
    [callback] = io.callbacks
    assert not pool._polled
    io.stop_event.set()
    callback()
    outcome = await asyncio.wait_for(running, 5)
    assert outcome["status"] == "stopped"
    callback()  # late: a no-op, and nothing leaks into the next task
    next_io = MemoryIO()
    outcome = await pool.run(payload("stop_seen"), next_io)
    assert next_io.lines == [("INFO", "stop False")]


# -- life cycle -----------------------------------------------------------------------------------


async def test_close_fails_waiting_and_queued_tasks(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    [child] = pool.children
    io = RecordingIO()
    running = asyncio.create_task(pool.run(payload("sleep", s=5.0), io))
    await wait_until(lambda: io.started_count == 1)
    queued = asyncio.create_task(pool.run(payload("pid"), MemoryIO()))
    waiting = asyncio.create_task(pool.run(payload("pid"), MemoryIO()))
    await wait_until(lambda: child.queued is not None and pool.waiting == 1)
    await pool.close()
    outcome = await running
    assert outcome["error"]["type"] == "WorkerProcessDied"
    for task in (queued, waiting):
        with pytest.raises(PoolClosed):
            await task
    with pytest.raises(PoolClosed):
        await pool.run(payload("pid"), MemoryIO())


async def test_recycle_moves_a_queued_task_to_a_new_child(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    [child] = pool.children
    blocker_io = RecordingIO()
    blocker = asyncio.create_task(pool.run(payload("sleep", s=0.5), blocker_io))
    await wait_until(lambda: blocker_io.started_count == 1)
    queued_io = MemoryIO()
    queued = asyncio.create_task(pool.run(payload("pid"), queued_io))
    await wait_until(lambda: child.queued is not None)
    await pool.recycle()
    await wait_until(lambda: child.queued is None)  # revoked: it waits for new code
    await asyncio.wait_for(asyncio.gather(blocker, queued), 10)
    assert logged_pid(blocker_io) == child.pid
    assert logged_pid(queued_io) != child.pid


async def test_the_log_capture_survives_a_job_that_unhooks_logging(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    outcome = await pool.run(payload("unhooks_logging"), MemoryIO())
    assert outcome["status"] == "succeeded"
    io = MemoryIO()
    await pool.run(payload("tests.jobs_sample:logs", who="Ada"), io)
    assert io.lines[:3] == [
        ("INFO", "hello Ada"),
        ("WARNING", "library warning"),
        ("INFO", "printed line"),
    ]
