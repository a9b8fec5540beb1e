"""The python kind's process pool: the queue of waiting runs, start reports, stops, revokes."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nightshift.worker import forkserver
from nightshift.worker.child import _Channel, _Frames
from nightshift.worker.executor import MemoryIO, Withdrawn
from nightshift.worker.framing import complete_frames, receive
from nightshift.worker.pool import PIPELINE_DEPTH, ChildProcess, PoolClosed, ProcessPool

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


Runs = tuple[ChildProcess, asyncio.Task[dict[str, Any]], asyncio.Task[dict[str, Any]]]


async def queue_behind(
    pool: ProcessPool,
    running: tuple[dict[str, Any], MemoryIO],
    queued: tuple[dict[str, Any], MemoryIO],
    started: Callable[[], bool] | None = None,
) -> Runs:
    """The pool's only child runs `running` (started: `started()`, or its io's start) with
    `queued` in its pipe behind it: the child and both runs."""
    [child] = pool.children
    payload_, io = running
    first = asyncio.create_task(pool.run(payload_, io))
    await wait_until(started or (lambda: io.started_count == 1))
    second = asyncio.create_task(pool.run(*queued))
    await wait_until(lambda: bool(child.queue))
    return child, first, second


def logged_pid(io: MemoryIO) -> int:
    [(_, line)] = [entry for entry in io.lines if entry[1].startswith("pid ")]
    return int(line.split()[1])


@pytest_asyncio.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[ProcessPool] = []

    async def make(size: int = 1, pipeline: bool = True, **options: Any) -> ProcessPool:
        pool = ProcessPool(size, sys_path=[ROOT], pipeline=pipeline, **options)
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


async def test_a_task_that_arrives_is_queued_only_behind_a_child_with_none_queued(
    make_pool: MakePool,
) -> None:
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
    assert child.queue  # "c" lies in the child's pipe, not started
    assert ios["c"].started_count == 0
    await asyncio.gather(blocker, *runs)
    # One task per child may go ahead of better ones that came after it: the others waited,
    # and went behind "c" in order once the blocker's "done" left its queue empty.
    assert starts == ["blocker", "c", "a", "b"]


async def test_a_task_too_big_for_the_pipe_is_not_queued(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    io = RecordingIO()
    blocker = asyncio.create_task(pool.run(payload("sleep", s=0.3), io))
    await wait_until(lambda: io.started_count == 1)
    big = asyncio.create_task(pool.run(payload("pid", blob="x" * 1_000_000), MemoryIO()))
    await wait_until(lambda: pool.waiting == 1)
    await asyncio.sleep(0.05)
    assert not pool.children[0].queue
    outcomes = await asyncio.gather(blocker, big)
    assert [o["status"] for o in outcomes] == ["succeeded", "succeeded"]


class QueueIO(RecordingIO):
    """A RecordingIO with `on_stop`, so that a test stops a `stoppable` task when it wants."""

    def __init__(self, name: str = "", starts: list[str] | None = None) -> None:
        super().__init__(name, starts)
        self.callbacks: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def stop(self) -> None:
        self.stop_event.set()
        for callback in self.callbacks:
            callback()


STOPPABLE = "tests.jobs_sample:stoppable"


class Queued:
    """A child running a `stoppable` task ("running") with several tasks queued behind it.

    A `stoppable` blocker runs, "running" (stoppable too) is queued behind it as it arrives,
    the `waiting` tasks (name -> (function, order)) wait; the blocker is stopped: its "done"
    starts "running" and moves the waiting ones behind it, best first, in one write.
    """

    def __init__(self, pool: ProcessPool, starts: list[str]) -> None:
        self.pool = pool
        self.starts = starts
        self.ios: dict[str, QueueIO] = {}
        self.runs: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self.writes: list[int] = []

    def run(self, name: str, function: str, order: tuple[Any, ...] = (), **params: Any) -> None:
        io = self.ios[name] = QueueIO(name, self.starts)
        self.runs[name] = asyncio.create_task(
            self.pool.run(payload(function, **params), io, order=order)
        )

    async def outcomes(self) -> dict[str, str]:
        """Wait for every run still held: name -> status; and check each one's status (the
        `stoppable` ones end "stopped", the others "succeeded")."""
        outcomes = await asyncio.wait_for(asyncio.gather(*self.runs.values()), 20)
        statuses = {name: o["status"] for name, o in zip(self.runs, outcomes, strict=True)}
        assert statuses == {
            name: "stopped" if name in ("blocker", "running") else "succeeded" for name in self.runs
        }
        return statuses

    async def setup(self, waiting: dict[str, tuple[str, tuple[Any, ...]]]) -> ChildProcess:
        [child] = self.pool.children
        self.run("blocker", STOPPABLE)
        await wait_until(lambda: self.ios["blocker"].started_count == 1)
        self.run("running", STOPPABLE)
        await wait_until(lambda: len(child.queue) == 1)
        for name, (function, order) in waiting.items():
            self.run(name, function, order)
        await wait_until(lambda: self.pool.waiting == len(waiting))
        assert len(child.queue) == 1  # nothing joins a queue on arrival behind a queued task
        write = child.write

        def counting(data: bytes) -> None:
            self.writes.append(len(data))
            write(data)

        child.write = counting  # type: ignore[method-assign]
        self.ios["blocker"].stop()
        await wait_until(lambda: self.ios["running"].started_count == 1)
        return child


async def test_a_done_moves_several_waiting_tasks_behind_its_child_in_order_in_one_write(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1, depth=4)
    starts: list[str] = []
    queued = Queued(pool, starts)
    waiting = {
        "c": ("pid", (2,)),
        "a1": ("pid", (0,)),
        "b": ("pid", (1,)),
        "a2": ("pid", (0,)),
        "d": ("pid", (3,)),
        "e": ("pid", (4,)),
    }
    child = await queued.setup(waiting)
    # Up to `depth`, best first, FIFO among equals; the rest still waits.
    assert [task.io for task in child.queue] == [queued.ios[n] for n in ("a1", "a2", "b", "c")]
    assert pool.waiting == 2
    assert len(queued.writes) == 1  # the four frames went in one write
    assert child.piped_bytes <= child.queue_limit
    assert all(queued.ios[name].started_count == 0 for name in waiting)  # queued is not started
    queued.ios["running"].stop()
    await queued.outcomes()
    assert starts == ["blocker", "running", "a1", "a2", "b", "c", "d", "e"]
    assert all(io.started_count == 1 for io in queued.ios.values())
    assert {logged_pid(queued.ios[name]) for name in waiting} == {child.pid}


async def test_the_pipe_budget_bounds_the_queue(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    starts: list[str] = []
    queued = Queued(pool, starts)
    [child] = pool.children
    blob = "x" * (child.queue_limit // 4)  # about four fit
    names = [f"t{i}" for i in range(PIPELINE_DEPTH)]
    queued.run("blocker", STOPPABLE)
    await wait_until(lambda: queued.ios["blocker"].started_count == 1)
    queued.run("running", STOPPABLE)
    await wait_until(lambda: len(child.queue) == 1)
    for name in names:
        queued.run(name, "pid", (), blob=blob)
    await wait_until(lambda: pool.waiting == len(names))
    queued.ios["blocker"].stop()
    await wait_until(lambda: queued.ios["running"].started_count == 1)
    assert 1 <= len(child.queue) < 4 < PIPELINE_DEPTH
    assert child.piped_bytes <= child.queue_limit
    assert pool.waiting == len(names) - len(child.queue)
    queued.ios["running"].stop()
    await queued.outcomes()
    assert starts == ["blocker", "running", *names]


def test_the_child_reads_several_frames_from_one_write() -> None:
    read_end, write_end = os.pipe()
    try:
        messages = [("task", n, {"n": n}, False) for n in range(1, 4)]
        data = b"".join(
            struct.pack("!i", len(body)) + body
            for body in (pickle.dumps(m, pickle.HIGHEST_PROTOCOL) for m in messages)
        )
        long_body = pickle.dumps(("task", 4, {"blob": "y" * 100}, True))
        long_frame = struct.pack("!i", -1) + struct.pack("!Q", len(long_body)) + long_body
        os.write(write_end, data + long_frame[:7])  # the last one in part
        frames = _Frames(read_end)
        assert [frames.recv() for _ in messages] == messages
        os.write(write_end, long_frame[7:])
        assert frames.recv() == ("task", 4, {"blob": "y" * 100}, True)
        os.write(write_end, data[:10])
        os.close(write_end)
        write_end = -1
        with pytest.raises(EOFError):
            frames.recv()  # a message cut short by the parent's exit
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


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
        await wait_until(lambda: child.queue)  # the first one is in the pipe
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
    spin_io, queued_io = MemoryIO(), RecordingIO()
    child, spinning, queued = await queue_behind(
        pool,
        (payload("tests.jobs_sample:spin"), spin_io),
        (payload("pid"), queued_io),
        started=lambda: ("INFO", "spinning") in spin_io.lines,
    )
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
    await wait_until(lambda: any(c.queue for c in pool.children))
    [behind] = [c for c in pool.children if c.queue]
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


@pytest.mark.parametrize("cancelled", ["b", "c"])
async def test_a_cancelled_task_in_the_middle_of_a_queue_is_revoked_and_the_rest_run_in_order(
    make_pool: MakePool, tmp_path: Path, cancelled: str
) -> None:
    pool = await make_pool(1)
    starts: list[str] = []
    queued = Queued(pool, starts)
    marker = tmp_path / "ran"
    waiting = {"a": ("pid", (0,)), "b": ("pid", (1,)), "c": ("pid", (2,)), "d": ("pid", (3,))}
    child = await queued.setup(waiting)
    assert [task.io for task in child.queue] == [queued.ios[n] for n in "abcd"]
    target = next(task for task in child.queue if task.io is queued.ios[cancelled])
    target.payload = payload("touch", path=str(marker))  # what it would do, had it run
    queued.runs[cancelled].cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued.runs.pop(cancelled)
    await wait_until(lambda: target not in child.queue)  # the child said: revoked
    assert [task.io.name for task in child.queue] == [n for n in "abcd" if n != cancelled]
    queued.ios["running"].stop()
    await queued.outcomes()
    assert starts == ["blocker", "running", *(n for n in "abcd" if n != cancelled)]
    assert queued.ios[cancelled].started_count == 0
    assert not marker.exists()
    assert [c.pid for c in pool.children] == [child.pid]  # nobody was killed
    assert pool.waiting == 0


async def test_a_child_that_dies_fails_its_running_task_and_gives_back_every_queued_one(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    starts: list[str] = []
    queued = Queued(pool, starts)
    waiting = {"a": ("pid", (0,)), "c": ("pid", (2,)), "b1": ("pid", (1,))}
    child = await queued.setup(waiting)
    assert [task.io.name for task in child.queue] == ["a", "b1", "c"]
    queued.run("b2", "pid", (1,))  # comes after them, waits: it goes after b1, before c
    await wait_until(lambda: pool.waiting == 1)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    died = await asyncio.wait_for(queued.runs.pop("running"), 10)
    assert died["status"] == "failed"
    assert died["error"]["type"] == "WorkerProcessDied"
    await queued.outcomes()
    assert starts == ["blocker", "running", "a", "b1", "b2", "c"]
    assert all(io.started_count == 1 for io in queued.ios.values())
    assert {logged_pid(queued.ios[name]) for name in ("a", "b1", "b2", "c")} != {child.pid}
    assert child.pid not in [c.pid for c in pool.children]


async def test_a_killed_childs_queued_tasks_all_run_on_the_replacement_in_order(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    starts: list[str] = []
    queued = Queued(pool, starts)
    child = await queued.setup({"a": ("pid", (0,)), "b": ("pid", (1,)), "c": ("pid", (2,))})
    queued.runs["running"].cancel()  # SIGKILL: the queued tasks never started there
    with pytest.raises(asyncio.CancelledError):
        await queued.runs.pop("running")
    await queued.outcomes()
    assert starts == ["blocker", "running", "a", "b", "c"]
    assert child.pid not in {logged_pid(queued.ios[name]) for name in "abc"}


class StandInProcess:
    """What a ChildProcess needs of its process, for a child played by the test itself."""

    pid = os.getpid()

    def __init__(self) -> None:
        self.killed = False

    def kill(self) -> None:
        self.killed = True  # close() kills what does not exit in its grace period


async def test_a_revoke_answered_after_the_predecessors_done_hands_on_to_the_next_queued() -> None:
    """The race a real child rarely shows: a queued task's revoke is decided after its
    predecessor's "done" left, but before the child took it. The child skips it and starts the
    next queued task, and the parent follows (the test plays the child)."""
    loop = asyncio.get_running_loop()
    pool = ProcessPool(1, depth=4, grace_s=0.01)
    pool._loop, pool._started = loop, True
    tasks_read, tasks_write = multiprocessing.Pipe(duplex=False)
    ours, theirs = socket.socketpair()
    process = StandInProcess()
    child = ChildProcess(process, ours, tasks_write, loop)  # type: ignore[arg-type]
    child.state = "idle"
    pool._children.add(child)
    pool._idle.append(child)
    frames = _Frames(tasks_read.fileno())
    starts: list[str] = []
    done = ("done", {"status": "succeeded"})
    names = ("t0", "t1", "t2", "t3", "t4")
    ios = {name: RecordingIO(name, starts) for name in names}
    runs = {name: asyncio.create_task(pool.run(payload("pid"), io)) for name, io in ios.items()}
    await wait_until(lambda: pool.waiting == 3)  # t0 runs, t1 is queued, the others wait
    assert [frames.recv()[1] for _ in range(2)] == [1, 2]
    pool._on_message(child, done)  # t0's: t1 starts, the others are queued behind it
    assert [task.io for task in child.queue] == [ios["t2"], ios["t3"], ios["t4"]]
    assert [frames.recv()[1] for _ in range(3)] == [3, 4, 5]
    runs["t2"].cancel()
    await wait_until(lambda: runs["t2"].done())
    assert pickle.loads(theirs.recv(1024)[4:]) == ("revoke", 3)
    pool._on_message(child, done)  # t1's, sent before the child decided on the revoke
    assert child.task is not None and child.task.io is ios["t2"]  # not started: revoking
    assert starts == ["t0", "t1"]
    pool._on_revoked(child, 3, True)  # the child skips t2 and starts t3
    assert child.task is not None and child.task.io is ios["t3"]
    assert [task.io for task in child.queue] == [ios["t4"]]
    assert starts == ["t0", "t1", "t3"]
    pool._on_message(child, done)  # t3's: t4 starts
    pool._on_message(child, done)
    assert starts == ["t0", "t1", "t3", "t4"]
    assert child.state == "idle"
    for name in ("t0", "t1", "t3", "t4"):
        assert (await runs[name])["status"] == "succeeded"
    assert ios["t2"].started_count == 0
    assert (child.piped_bytes, list(child.piped)) == (0, [])
    assert not process.killed
    await pool.close()
    assert frames.recv() == ("shutdown",)
    for end in (theirs, ours, tasks_read, tasks_write):
        end.close()


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
    stopped_io = MemoryIO()
    _, blocker, stopped = await queue_behind(
        pool, (payload("sleep", s=0.3), RecordingIO()), (payload("stop_seen"), stopped_io)
    )
    stopped_io.stop_event.set()
    await blocker
    outcome = await stopped
    assert (outcome["status"], stopped_io.lines) == ("stopped", [("INFO", "stop True")])
    next_io = MemoryIO()
    outcome = await pool.run(payload("stop_seen"), next_io)
    assert (outcome["status"], next_io.lines) == ("succeeded", [("INFO", "stop False")])


async def test_a_stop_of_a_task_deep_in_a_queue_reaches_it_and_no_other(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    starts: list[str] = []
    queued = Queued(pool, starts)
    waiting = {name: ("stop_seen", (k,)) for k, name in enumerate(("s1", "s2", "s3"))}
    child = await queued.setup(waiting)
    assert [task.io.name for task in child.queue] == ["s1", "s2", "s3"]
    queued.ios["s2"].stop()  # sent to the child now: it keeps it until s2 starts
    [target] = [task for task in child.queue if task.io.name == "s2"]
    assert target.stop
    queued.ios["running"].stop()
    outcomes = {name: await run for name, run in queued.runs.items()}
    assert (outcomes["s2"]["status"], queued.ios["s2"].lines) == (
        "stopped",
        [("INFO", "stop True")],
    )
    for name in ("s1", "s3"):
        assert (outcomes[name]["status"], queued.ios[name].lines) == (
            "succeeded",
            [("INFO", "stop False")],
        )


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
    await wait_until(lambda: child.queue and pool.waiting == 1)
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
    blocker_io, queued_io = RecordingIO(), MemoryIO()
    child, blocker, queued = await queue_behind(
        pool, (payload("sleep", s=0.5), blocker_io), (payload("pid"), queued_io)
    )
    await pool.recycle()
    await wait_until(lambda: not child.queue)  # revoked: it waits for new code
    await asyncio.wait_for(asyncio.gather(blocker, queued), 10)
    assert logged_pid(blocker_io) == child.pid
    assert logged_pid(queued_io) != child.pid


async def test_recycle_moves_every_queued_task_to_a_new_child_in_order(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    starts: list[str] = []
    queued = Queued(pool, starts)
    child = await queued.setup({"a": ("pid", (0,)), "b": ("pid", (1,)), "c": ("pid", (2,))})
    recycled = asyncio.create_task(pool.recycle())
    await wait_until(lambda: not child.queue)  # revoked: they wait for new code
    assert pool.waiting == 3
    queued.ios["running"].stop()
    await recycled
    await queued.outcomes()
    assert starts == ["blocker", "running", "a", "b", "c"]
    assert child.pid not in {logged_pid(queued.ios[name]) for name in "abc"}


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


# -- tasks held for their time (a run claimed ahead) -----------------------------------------------


def placed(pool: ProcessPool) -> int:
    """Tasks on the pool's children: running, or queued in their pipes."""
    return sum(len(c.queue) + (c.task is not None) for c in pool.children)


class TimedIO(MemoryIO):
    """Notes when the task began, by its child's report."""

    def __init__(self) -> None:
        super().__init__()
        self.began: float | None = None

    def started(self, at: float | None = None) -> None:
        super().started(at)
        self.began = time.time() if at is None else at


async def test_tasks_held_for_their_time_wait_in_the_children_and_start_then(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(2)
    at = time.time() + 1.0
    ios = [TimedIO() for _ in range(40)]
    runs = [
        asyncio.create_task(pool.run(payload("pid", n), io, order=(n,), start_at=at))
        for n, io in enumerate(ios)
    ]
    # Each child has its share in its pipe before their time; nothing has begun.
    await wait_until(lambda: placed(pool) == 40)
    assert time.time() < at and pool.waiting == 0
    assert sorted(len(c.queue) for c in pool.children) == [19, 19]
    assert all(io.started_count == 0 for io in ios)
    outcomes = await asyncio.gather(*runs)
    assert [o["status"] for o in outcomes] == ["succeeded"] * 40
    for io in ios:
        assert io.started_count == 1
        assert io.began is not None and at <= io.began < at + 1.0  # never before its time
    # Each run's log line reached its own io, though its child sent them in batches.
    pids = [logged_pid(io) for io in ios]
    assert set(pids) == {c.pid for c in pool.children}


async def test_a_cancelled_task_held_for_its_time_never_runs_and_its_child_lives(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(1)
    [child] = pool.children
    marker = tmp_path / "ran"
    io = TimedIO()
    held = asyncio.create_task(
        pool.run(payload("touch", path=str(marker)), io, start_at=time.time() + 0.4)
    )
    await wait_until(lambda: child.task is not None)
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    await asyncio.sleep(0.6)  # past its time
    assert not marker.exists() and io.started_count == 0
    # Revoked, not killed: the same process runs the next task at once.
    after = RecordingIO()
    assert (await pool.run(payload("pid"), after))["status"] == "succeeded"
    assert pool.children == [child] and logged_pid(after) == child.pid


async def test_a_held_task_that_has_not_begun_in_time_is_withdrawn_unstarted(
    make_pool: MakePool, tmp_path: Path
) -> None:
    """Its child is still on a longer task when it should have begun: it is revoked, never
    runs, and run() says so; the long task goes on in the same process."""
    pool = await make_pool(1)
    [child] = pool.children
    long = asyncio.create_task(pool.run(payload("sleep", s=1.5), RecordingIO()))
    await wait_until(lambda: child.task is not None)
    marker = tmp_path / "ran"
    io = TimedIO()
    began = time.monotonic()
    with pytest.raises(Withdrawn):
        await pool.run(
            payload("touch", path=str(marker)), io, start_at=time.time() + 0.2, withdraw_after=0.3
        )
    assert 0.5 <= time.monotonic() - began < 1.4  # at its deadline, not when the long one ended
    assert io.started_count == 0
    assert (await long)["status"] == "succeeded"
    assert not marker.exists() and pool.children == [child]


async def test_held_tasks_still_waiting_for_a_child_are_withdrawn_and_the_rest_keep_order(
    make_pool: MakePool, tmp_path: Path
) -> None:
    """Without pipelining, held tasks wait here while the child is busy: the withdrawn ones
    leave the queue, and one that may wait longer still runs, after the long task."""
    pool = await make_pool(1, pipeline=False)
    long = asyncio.create_task(pool.run(payload("sleep", s=1.0), RecordingIO()))
    await wait_until(lambda: pool.children[0].task is not None)
    marker = tmp_path / "ran"
    withdrawn = [
        asyncio.create_task(
            pool.run(
                payload("touch", n, path=str(marker)),
                TimedIO(),
                order=(n,),
                start_at=time.time() + 0.1,
                withdraw_after=0.1,
            )
        )
        for n in range(1, 4)
    ]
    patient = asyncio.create_task(
        pool.run(
            payload("touch", 9, path=str(marker)), TimedIO(), order=(9,), start_at=time.time() + 0.1
        )
    )
    for each in withdrawn:
        with pytest.raises(Withdrawn):
            await each
    assert not marker.exists() and pool.waiting == 1
    assert (await patient)["status"] == "succeeded" and (await long)["status"] == "succeeded"
    assert marker.read_text().split() == ["9"]


async def test_a_held_task_that_begins_in_time_is_not_withdrawn(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    io = TimedIO()
    outcome = await pool.run(
        payload("sleep", s=0.4), io, start_at=time.time() + 0.1, withdraw_after=0.1
    )
    assert outcome["status"] == "succeeded" and io.started_count == 1  # it ran past its deadline


class HeardIO(TimedIO):
    """Also notes when the parent heard that the task began."""

    def started(self, at: float | None = None) -> None:
        super().started(at)
        self.heard = time.time()


async def test_a_child_tells_nothing_until_it_has_begun_every_task_due_together(
    make_pool: MakePool,
) -> None:
    """Tasks due together that fill several reads of the child's pipe (~100 KB here, a read
    takes 64 KiB) all begin before the parent hears of any: it would otherwise handle their
    reports while the child still starts the rest, taking a core from it."""
    pool = await make_pool(1)
    ios = [HeardIO() for _ in range(50)]
    at = time.time() + 0.5

    async def run(n: int, io: HeardIO) -> dict[str, Any]:
        task = payload("pid", n, blob="x" * 2000)
        return await pool.run(task, io, order=(n,), start_at=at)

    outcomes = await asyncio.gather(*(run(n, io) for n, io in enumerate(ios)))
    assert [o["status"] for o in outcomes] == ["succeeded"] * 50
    assert all(io.began is not None and io.began >= at - 0.001 for io in ios)
    assert min(io.heard for io in ios) >= max(io.began for io in ios if io.began)


async def test_a_child_whose_reports_are_not_read_yet_is_not_taken_for_stuck(
    make_pool: MakePool,
) -> None:
    """Tasks held for one time, three on each child. This process is busy while they run, so
    it reads their reports late: the child read first is idle, the other still seems to be
    on its first task. Its reports are there to read: its queue is not revoked (each revoke
    of a task it has not begun would move that task, and start it late)."""
    pool = await make_pool(2)
    revoked: list[Any] = []
    revoke = pool._revoke
    pool._revoke = lambda task: (revoked.append(task), revoke(task))  # type: ignore[method-assign]
    ios = [TimedIO() for _ in range(6)]
    at = time.time() + 0.5
    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + (at - time.time()) - 0.02, time.sleep, 0.2)  # busy meanwhile
    outcomes = await asyncio.gather(
        *(pool.run(payload("pid", n), io, order=(n,), start_at=at) for n, io in enumerate(ios))
    )
    assert [o["status"] for o in outcomes] == ["succeeded"] * 6
    per_child: dict[int, int] = {}
    for io in ios:
        per_child[logged_pid(io)] = per_child.get(logged_pid(io), 0) + 1
    assert sorted(per_child.values()) == [3, 3]  # each child had two queued behind its first
    assert revoked == []


def test_a_child_coalescing_sends_what_it_kept_in_order_on_flush() -> None:
    parent, child_end = multiprocessing.Pipe()
    channel = _Channel(child_end)
    channel.coalesce()
    assert channel.take(1)
    channel.send(("began", 1, 0.0))
    channel.emit(("log", "INFO", "one"))
    channel.finish(("done", {}), 1)
    assert not parent.poll(0.05)  # kept
    channel.flush()
    assert [parent.recv() for _ in range(3)] == [
        ("began", 1, 0.0),
        ("log", "INFO", "one"),
        ("done", {}),
    ]
    channel.send(("log", "INFO", "after"))  # not coalescing: sent at once
    assert parent.poll(1.0) and parent.recv() == ("log", "INFO", "after")


def test_a_child_keeps_nothing_longer_than_the_coalescing_bound() -> None:
    parent, child_end = multiprocessing.Pipe()
    channel = _Channel(child_end)
    threading.Thread(target=channel.flush_forever, daemon=True).start()
    channel.coalesce()
    channel.send(("began", 1, 0.0))  # a task that runs long: its start is told all the same
    assert parent.poll(2.0) and parent.recv() == ("began", 1, 0.0)


async def test_the_parent_never_waits_on_a_child_that_does_not_read() -> None:
    """Hundreds of control messages (revokes) to a child busy writing its own answers: the
    parent keeps what the socket cannot take and writes it as the child reads."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    tasks_read, tasks_write = multiprocessing.Pipe(duplex=False)

    class Process:
        pid = os.getpid()

    child = ChildProcess(Process(), ours, tasks_write, loop)  # type: ignore[arg-type]
    try:
        began = time.monotonic()
        for n in range(20_000):
            child.send(("revoke", n))
        assert time.monotonic() - began < 5.0 and child.outbox  # nothing waited for the child
        buffer, received = bytearray(), []
        deadline = time.monotonic() + 30
        while len(received) < 20_000 and time.monotonic() < deadline:
            receive(theirs, buffer, 16)  # the child reads, and the parent writes the rest
            frames, used = complete_frames(buffer)
            del buffer[:used]
            received += [pickle.loads(data) for data in frames]
            await asyncio.sleep(0)
        assert received == [("revoke", n) for n in range(20_000)]
        assert not child.outbox
    finally:
        child.stop_writing()
        for end in (ours, theirs):
            end.close()
        tasks_read.close()
        tasks_write.close()


async def test_tasks_held_for_their_time_go_behind_a_child_not_running_a_long_task(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(2)
    long_io = RecordingIO()
    long = asyncio.create_task(pool.run(payload("sleep", s=1.5), long_io))
    await wait_until(lambda: long_io.started_count == 1)
    [busy] = [c for c in pool.children if c.task is not None]
    at = time.time() + 0.3
    ios = [TimedIO() for _ in range(10)]
    runs = [
        asyncio.create_task(pool.run(payload("pid", n), io, start_at=at))
        for n, io in enumerate(ios)
    ]
    [free] = [c for c in pool.children if c is not busy]
    await wait_until(lambda: placed(pool) == 11 and pool.waiting == 0)
    assert time.time() < at  # placed before their time: all with the free child
    assert not busy.queue and len(free.queue) == 9
    await asyncio.gather(*runs)
    assert all(io.began is not None and io.began < at + 0.5 for io in ios)  # not after the sleep
    assert busy.pid not in {logged_pid(io) for io in ios}
    await long


# -- starts ---------------------------------------------------------------------------------------


def test_a_start_given_up_halfway_still_sends_the_childs_ends_and_kills_what_it_started(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The event loop ends while a child's start is under way on its thread (asyncio.run
    cancels every task at its end, as a test's loop or a stopping service does). The request
    that start then sends to the fork server still carries the child's ends of its pipes:
    closed under it, they were sent as descriptors that no longer exist or by then were
    others, and multiprocessing's server exits on the first. The server goes on serving, and
    the process started for nobody is killed."""
    reached, go = threading.Event(), threading.Event()
    real_connect = multiprocessing.forkserver.connect_to_new_process
    handed: dict[str, list[tuple[int, int] | None]] = {}

    def identity(fd: int) -> tuple[int, int] | None:
        try:
            info = os.fstat(fd)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def held_connect(fds: list[int]) -> tuple[int, int]:
        """The start, its request ready (the child's ends are `fds`), held before it is sent."""
        handed["ready"] = [identity(fd) for fd in fds]
        reached.set()
        go.wait(30)
        handed["sent"] = [identity(fd) for fd in fds]
        return real_connect(fds)  # type: ignore[no-any-return]

    forkserver.start()
    server = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    before = set(multiprocessing.active_children())
    monkeypatch.setattr(multiprocessing.forkserver, "connect_to_new_process", held_connect)
    loop = asyncio.new_event_loop()
    pool = ProcessPool(1, sys_path=[ROOT])
    try:
        starting = loop.create_task(pool.start())
        assert loop.run_until_complete(asyncio.to_thread(reached.wait, 30))
        tasks = asyncio.all_tasks(loop)
        assert starting in tasks
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    finally:
        go.set()
        loop.run_until_complete(loop.shutdown_default_executor())  # the start is over
        loop.close()
    monkeypatch.undo()

    assert None not in handed["ready"] and handed["sent"] == handed["ready"]
    assert set(multiprocessing.active_children()) == before

    async def start_another() -> None:
        another = ProcessPool(1, sys_path=[ROOT])
        await another.start()
        io = MemoryIO()
        assert (await another.run(payload("pid"), io))["status"] == "succeeded"
        await another.close()

    asyncio.run(start_another())
    assert multiprocessing.forkserver._forkserver._forkserver_pid == server  # type: ignore[attr-defined]
    assert "fork server is gone" not in caplog.text


async def test_a_child_replaced_after_the_fork_server_was_killed_comes_from_a_new_one(
    make_pool: MakePool,
) -> None:
    """The fork server killed (an OOM killer, an operator's kill -9): the pool's next start
    waits for it to be gone and gets a new one; the work goes on."""
    pool = await make_pool(1)
    first = await pool.run(payload("pid"), before := MemoryIO())
    assert first["status"] == "succeeded"
    server = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    os.kill(server, signal.SIGKILL)
    [child] = pool.children
    child.kill()  # its replacement must come from a fork server
    await wait_until(
        lambda: [c.pid for c in pool.children if c.state == "idle"] not in ([], [child.pid]), 30
    )
    after = MemoryIO()
    outcome = await asyncio.wait_for(pool.run(payload("pid"), after), 30)
    assert outcome["status"] == "succeeded", outcome
    assert logged_pid(after) != logged_pid(before)
    assert multiprocessing.forkserver._forkserver._forkserver_pid != server  # type: ignore[attr-defined]
