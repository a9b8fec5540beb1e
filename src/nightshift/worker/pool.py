"""The parent side of the python kind's process pool.

`size` child processes, forked by multiprocessing's fork server (the parent runs an event
loop and threads, so it never forks itself; the server is a fresh process that has imported
the child module, so a child that replaces a killed one starts in milliseconds). The pool is
also the queue of the runs that wait for a process: they are served smallest `order` first,
FIFO among equals (a heap), so a worker may hold many more runs than there are processes
without breaking fair share.

Everything runs on the event loop, in callbacks, with no thread per child and no task per run:

- each child's duplex pipe (a Unix socket pair) is read with `loop.add_reader` and
  non-blocking receives, every complete message at once; the framing is multiprocessing's
  (a signed 4-byte length, or -1 and an 8-byte length), so the child uses a plain Connection.
  Tasks go down a second, one-way pipe that the child's main thread reads itself (child.py);
- a child's exit is noticed through a pidfd (the process sentinel where there is none) or EOF
  on its pipe, and it is reaped with `waitpid(WNOHANG)`, retried on a timer, never blocking;
- a child that reports "done" takes the next task in the same callback;
- a graceful stop is a ("stop", n) message to the child, sent when the run's io reports a
  stop: through `io.on_stop(callback)` when the io has it, otherwise found by one pool-wide
  poll of `io.should_stop()` every STOP_POLL_S while tasks run.

Pipelining: while every child is busy, each may also hold up to `depth` (PIPELINE_DEPTH)
queued tasks in its task pipe, so that the next one starts the moment "done" leaves, without a
round trip through the parent. Their messages are small and counted: the bytes that may lie
unread in a child's pipe stay under `queue_limit`, so a write never waits for a busy child. A
busy child is given queued tasks when it has none (at most the best waiting one each time a
task arrives, so a task queued ahead of better ones that come later is the exception) or when
a "done" leaves it REFILL_AT or fewer: then the best waiting ones, up to `depth`. The tasks a
child is given at once (with the one an idle child takes) go in one write of their frames,
which the child reads through a buffer: several tasks cost the parent one write and the child
one read. A queued task has not started: it can be revoked, ("revoke", n) -> ("revoked", n,
ok), decided by the child under the lock its main thread takes a task with. Revoked are a
cancelled queued task, queued tasks of a child whose current task has run for HOL_S while
another child is idle (no waiting behind a long job), and queued tasks at a recycle.
`io.started()` is called when the task really starts: when it is handed to an idle child, or
when its predecessor's "done" arrives (or the answer that a revoked predecessor was skipped).
A child that dies before that gives its queued tasks back to the queue, in their places.

A task may start at a time of its own (`run(..., start_at=)`, a run claimed ahead of its
time): it goes to a child at once, and is queued behind the child with the fewest queued
(beyond `depth`, as far as the pipe's budget goes; task pipes are enlarged to TASK_PIPE_BYTES).
The child holds it until its time, then reports ("began", n, time), and `io.started()` is
called with that time. Until then it can be revoked like a queued task; so a cancelled one
never runs, and its child is not killed. At a big instant each child then starts its own runs,
with nothing left for this process to hand over (bench/PROFILE.md, session 14). One that has
not begun `withdraw_after` seconds after its time (its child is still on a longer task) is
revoked, and run() raises `Withdrawn`: the caller may give it to another worker rather than
wait here.

A cancelled waiting task just leaves the queue; a cancelled running task kills its child
(SIGKILL: a job in a CPU loop ignores everything else). A child that dies, busy or idle, is
replaced in the background. POSIX only (`add_reader` on file descriptors).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import heapq
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from nightshift.worker import child as child_module
from nightshift.worker import forkserver
from nightshift.worker.executor import RunIO, Withdrawn
from nightshift.worker.framing import HEADER, complete_frames, frame, receive

log = logging.getLogger(__name__)

ChildState = Literal["starting", "idle", "busy", "retired"]

#: How often the pool looks at `io.should_stop()` of running tasks whose io has no `on_stop`.
STOP_POLL_S = 0.05
#: How long a queued task may wait behind a running one while another child is idle.
HOL_S = 0.02
#: How many tasks a busy child may hold queued behind its running one (pipelining).
PIPELINE_DEPTH = 8
#: A "done" that leaves a child this many queued tasks or fewer tops its queue up.
REFILL_AT = 4
#: How long a child whose pipe was closed may take to exit before it is killed.
EXIT_GRACE_S = 5.0
#: The capacity asked for each child's task pipe (Linux allows up to 1 MiB unprivileged):
#: room for ~1,500 tasks held for their time, half of it.
TASK_PIPE_BYTES = 1 << 20
_MAX_READS = 16  # per readable callback, so that one chatty child cannot hog the loop


class PoolClosed(RuntimeError):
    """The pool was closed while a task waited for a child."""


class _Task:
    """One run on its way through the pool: waiting in the heap, then on a child."""

    __slots__ = (
        "at",
        "began",
        "big",
        "cancelled",
        "child",
        "enqueues",
        "future",
        "io",
        "n",
        "order",
        "payload",
        "revoking",
        "seq",
        "state",
        "stop",
        "withdrawing",
    )

    def __init__(
        self,
        payload: dict[str, Any],
        io: RunIO,
        order: tuple[Any, ...],
        seq: int,
        future: asyncio.Future[dict[str, Any]],
    ) -> None:
        self.payload = payload
        self.io = io
        self.order = order
        self.seq = seq  # FIFO among equal orders
        self.future = future
        self.state: Any = payload.get("state")  # the last checkpoint, for a died outcome
        self.at: float | None = payload.get("at")  # when it may start (time.time()), if held
        self.child: ChildProcess | None = None  # running on it, or queued behind its task
        self.n = 0  # its number on that child (the child's messages about it carry it)
        self.stop = False  # a stop was sent to the child
        self.began = False  # io.started() was called
        self.revoking = False  # a revoke was sent, not answered yet
        self.cancelled = False  # run() was cancelled while a child held it
        self.withdrawing = False  # held too long past its time: revoked, run() raises Withdrawn
        self.big = False  # too big to be queued behind a busy child
        self.enqueues: set[asyncio.Task[None]] | None = None


class ChildProcess:
    """One child process, as the parent sees it."""

    def __init__(
        self,
        process: BaseProcess,
        sock: socket.socket,
        tasks: Connection,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.process = process
        self.pid: int | None = process.pid  # kept: the process object is closed once reaped
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        #: Control messages not written yet: the socket was full (see `send`).
        self.outbox = bytearray()
        self.tasks = tasks  # the write end of the task pipe
        self.queue_limit = _queue_limit(tasks)
        self.buffer = bytearray()  # an incomplete message, received in part
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.ready: asyncio.Future[list[str] | None] = loop.create_future()
        self.state: ChildState = "starting"
        self.task: _Task | None = None  # the task it runs (or is about to: see revoking)
        self.queue: deque[_Task] = deque()  # the ones behind it in the task pipe, in order
        self.since = 0.0  # loop time when `task` started
        # The task messages that may lie unread in the pipe (revoked ones included): (n,
        # bytes), and their total, which stays under queue_limit so that writes never wait.
        self.piped: deque[tuple[int, int]] = deque()
        self.piped_bytes = 0
        self.sent = 0  # task messages sent (a task's `n`)
        self.generation = 0  # the pool's generation when it was started (see recycle)
        self.exit_fd: int | None = None  # a pidfd, or the process sentinel
        self.own_exit_fd = False  # the pidfd is ours to close; the sentinel is not
        self.reading = False
        self.reaping = False

    @property
    def dead(self) -> bool:
        return self.exited.done()

    def encode(self, task: _Task, n: int) -> tuple[bytes, bool]:
        """The task's message as this child's task `n`, and whether it says stop."""
        stop = task.io.should_stop()
        return _dumps(("task", n, task.payload, stop)), stop

    def write(self, data: bytes) -> None:
        """Write framed task messages: blocking, so only what fits in the pipe's budget (or
        to a child that reads)."""
        fd = self.tasks.fileno()
        written = os.write(fd, data)
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(fd, view) :]

    def sent_task(self, task: _Task, stop: bool, size: int) -> None:
        """Note a task written as the next message."""
        self.sent += 1
        task.n = self.sent
        task.stop = stop
        task.child = self
        self.piped.append((task.n, size))
        self.piped_bytes += size

    def consumed(self, n: int) -> None:
        """The child has read its task messages up to `n`."""
        piped = self.piped
        while piped and piped[0][0] <= n:
            self.piped_bytes -= piped.popleft()[1]

    def send(self, message: tuple[Any, ...]) -> None:
        """Frame and write one control message, without waiting: what the socket cannot take
        now is written when it can (a writer callback). The child's receiver thread may itself
        be waiting to write an answer while this process is busy sending (hundreds of revokes
        at once): a blocking write here would wait for it forever."""
        data = frame(_dumps(message))
        if not self.outbox:
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            self.loop.add_writer(self.fd, self._write_outbox)
        self.outbox += data

    def _write_outbox(self) -> None:
        try:
            sent = self.sock.send(self.outbox, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the child is gone: its exit is on its way
            sent = len(self.outbox)
        del self.outbox[:sent]
        if not self.outbox:
            self.loop.remove_writer(self.fd)

    def stop_writing(self) -> None:
        if self.outbox:
            self.outbox.clear()
            if not self.loop.is_closed():
                self.loop.remove_writer(self.fd)

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.process.kill()

    def __repr__(self) -> str:
        return f"<ChildProcess pid={self.pid} {self.state}>"


def _dumps(message: tuple[Any, ...]) -> bytes:
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def _queue_limit(tasks: Connection) -> int:
    """How many bytes of task messages may lie unread in a child's pipe (so also the largest
    that may be queued behind a busy child): half its capacity, less a margin."""
    capacity = 4096  # POSIX guarantees less, but every system in use has at least a page
    with contextlib.suppress(AttributeError, OSError):
        import fcntl

        capacity = fcntl.fcntl(tasks.fileno(), fcntl.F_GETPIPE_SZ)  # type: ignore[attr-defined]
    return capacity // 2 - 16


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class ProcessPool:
    def __init__(
        self,
        size: int,
        imports: Sequence[str] = (),
        sys_path: Sequence[str] = (),
        *,
        log_level: str | int = "INFO",
        grace_s: float = 2.0,
        pipeline: bool = True,
        depth: int = PIPELINE_DEPTH,
    ) -> None:
        """`pipeline`: let a busy child hold up to `depth` queued tasks (see the module's
        docstring)."""
        if size < 1:
            raise ValueError(f"a process pool needs at least one process, got {size}")
        if depth < 1:
            raise ValueError(f"a pipeline depth is at least 1, got {depth}")
        self.size = size
        self.pipeline = pipeline
        self.depth = depth if pipeline else 0
        self._imports = list(imports)
        self._sys_path = list(sys_path)
        self._log_level = log_level
        self._grace_s = grace_s
        self._mp = forkserver.context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: set[ChildProcess] = set()  # every child not known to have exited
        self._idle: deque[ChildProcess] = deque()
        self._waiting: list[tuple[tuple[Any, ...], int, _Task]] = []  # a heap: (order, seq)
        self._seq = itertools.count(1)
        self._polled: set[_Task] = set()  # running tasks whose io has no on_stop
        self._poll_timer: asyncio.TimerHandle | None = None
        self._hol_timer: asyncio.TimerHandle | None = None
        #: Held tasks by the loop time they must have begun by (`withdraw_after`): a heap.
        self._deadlines: list[tuple[float, int, _Task]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._spawning: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self._generation = 0  # bumped by recycle(): children of older generations retire

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the children and wait until each has imported the `imports` modules. A child
        that dies before it is ready is started again, as a replacement is (`_replace`)."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        atexit.register(self._kill_all)
        try:
            await asyncio.gather(*(self._replace() for _ in range(self.size)))
        except asyncio.CancelledError:  # the children that were ready go with the pool
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the children: a shutdown message, then SIGKILL after the grace period. Waiting
        tasks fail with PoolClosed; running ones end as if their process died."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        if self._spawning:
            await asyncio.gather(*self._spawning, return_exceptions=True)
        for timer in (self._poll_timer, self._hol_timer, self._deadline_timer):
            if timer is not None:
                timer.cancel()
        self._poll_timer = self._hol_timer = self._deadline_timer = None
        self._deadlines.clear()
        while self._waiting:
            _, _, waiting = heapq.heappop(self._waiting)
            _fail_closed(waiting)
        children = list(self._children)
        for child in children:
            if child.state == "idle":
                with contextlib.suppress(OSError, ValueError):
                    child.tasks.send_bytes(_dumps(("shutdown",)))
            else:
                child.kill()
        exits = [child.exited for child in children]
        if exits:
            await asyncio.wait(exits, timeout=self._grace_s)
            for child in children:
                if not child.dead:
                    child.kill()
            await asyncio.wait(exits, timeout=self._grace_s)
        for child in children:
            if not child.dead:  # never reported its exit: stop watching it at least
                self._unwatch(child)
        self._idle.clear()
        atexit.unregister(self._kill_all)

    async def recycle(self, timeout: float = 30.0) -> None:
        """Replace every child with a fresh one that imports the user's code anew (a reload).

        Idle children are replaced now; a busy child finishes its task, then retires (its
        queued tasks are revoked, to run on new code). Returns once the replacements are ready
        (or after `timeout`), so the next task runs new code.
        """
        if self._closed or not self._started:
            return
        self._generation += 1
        for child in list(self._idle):
            self._retire(child)
        for child in list(self._children):
            for queued in list(child.queue):
                self._revoke(queued)
        if self._spawning:
            await asyncio.wait(set(self._spawning), timeout=timeout)

    def _kill_all(self) -> None:
        for child in list(self._children):
            child.kill()

    @property
    def children(self) -> list[ChildProcess]:
        return list(self._children)

    @property
    def up(self) -> int:
        """How many children are ready for tasks (idle or busy): not those starting or retiring."""
        return sum(1 for child in self._children if child.state in ("idle", "busy"))

    @property
    def waiting(self) -> int:
        """How many tasks wait for a child (queued ones behind a busy child not counted)."""
        return len(self._waiting)

    # -- running a task -----------------------------------------------------------------------

    async def run(
        self,
        payload: dict[str, Any],
        io: RunIO,
        *,
        order: tuple[Any, ...] = (),
        start_at: float | None = None,
        withdraw_after: float | None = None,
    ) -> dict[str, Any]:
        """Run one task on a child, relaying its messages to `io`; returns the outcome dict.

        While every child is busy the task waits; waiting tasks go smallest `order` first
        (orders must compare with each other), FIFO among equals. `io.started()` is called when
        the task starts on a child. Cancelled before that, the task never runs (it leaves the
        queue, or is revoked from a child); cancelled while running, its child is killed (and
        replaced). CancelledError propagates.

        `start_at` (`time.time()`) still to come: the task starts then, not sooner (see the
        module's docstring); `io.started()` is then called with when it began. With
        `withdraw_after`, if it has not begun that many seconds after its time, it is revoked
        and `Withdrawn` is raised: it never ran.
        """
        if self._closed:
            raise PoolClosed("the python process pool is closed")
        start_in = 0.0 if start_at is None else start_at - time.time()
        if start_in > 0:
            payload = {**payload, "at": start_at}
        loop = self._loop or asyncio.get_running_loop()
        task = _Task(payload, io, order, next(self._seq), loop.create_future())
        heapq.heappush(self._waiting, (order, task.seq, task))
        if start_in > 0 and withdraw_after is not None:
            self._add_deadline(task, loop.time() + start_in + withdraw_after)
        self._pump()
        try:
            return await task.future
        except asyncio.CancelledError:
            self._cancel(task)
            raise

    def _pump(self, refill: ChildProcess | None = None) -> None:
        """Hand waiting tasks to idle children, best first; then queue them behind busy ones
        (behind `refill`, whose "done" just left, if it has REFILL_AT or fewer queued; behind
        the others, if they have none); or, with children idle and nothing waiting, pull back
        queued tasks stuck behind long ones."""
        waiting = self._waiting
        while waiting and self._idle:
            handed = []
            while waiting and self._idle:
                handed.append((self._idle.popleft(), heapq.heappop(waiting)[2]))
            for child, task in handed:  # each takes one before any takes more
                self._dispatch(child, task)
            # A payload that could not be pickled left its child idle: the loop goes on.
        if not self.depth:
            return
        if waiting:
            if waiting[0][2].at is not None:
                self._spread()
            if not waiting or waiting[0][2].at is not None:
                return
            if refill is not None and len(refill.queue) <= REFILL_AT and self._queueable(refill):
                self._fill(refill)
            for child in self._children:
                if not waiting:
                    return
                if not child.queue and self._queueable(child):
                    self._fill(child, 1)
        elif self._idle:
            self._unblock()

    def _spread(self) -> None:
        """Queue the best waiting tasks while they are held for a time of their own, each
        behind the child with the fewest queued, as far as the pipes' budgets go."""
        waiting = self._waiting
        children = [child for child in self._children if self._queueable(child)]
        while waiting and children:
            if waiting[0][2].at is None:
                return
            child = min(children, key=_spread_order)
            frames: list[bytes] = []
            batch = self._take(child, child.sent + 1, 1, 0, frames)
            if not batch:
                children.remove(child)  # its pipe is full (or the task too big to queue)
                continue
            try:
                child.write(b"".join(frames))
            except (OSError, ValueError):  # the child is gone: its exit is on its way
                task = batch[0][0]
                heapq.heappush(waiting, (task.order, task.seq, task))
                children.remove(child)
                continue
            self._queued(child, batch)

    def _queueable(self, child: ChildProcess) -> bool:
        task = child.task
        return (
            child.state == "busy"
            and task is not None
            and not task.revoking
            and child.generation == self._generation
        )

    def _dispatch(self, child: ChildProcess, task: _Task) -> None:
        """Hand a task to an idle child (it reads its pipe: the write does not wait), with
        queued tasks behind it in the same write if more wait than there are idle children."""
        n = child.sent + 1
        try:
            data, stop = child.encode(task, n)
        except Exception as exc:  # the payload cannot be pickled: fails this task only
            self._idle.appendleft(child)
            if not task.future.done():
                task.future.set_exception(exc)
            return
        size = len(data) + 4
        frames = [HEADER.pack(len(data)), data]
        batch: list[tuple[_Task, bool, int]] = []
        if size <= child.queue_limit and self.depth and len(self._waiting) > len(self._idle):
            batch = self._take(child, n + 1, self.depth, size, frames)
        try:
            if size > child.queue_limit:
                child.tasks.send_bytes(data)  # a big one: the child reads it as it goes
            else:
                child.write(b"".join(frames))
        except (OSError, ValueError):
            # The child is gone or going and never saw the tasks: they wait again, in place.
            for each in (task, *(queued for queued, _, _ in batch)):
                heapq.heappush(self._waiting, (each.order, each.seq, each))
            self._retire(child)
            return
        self._queued(child, batch, task, stop, size)

    def _fill(self, child: ChildProcess, most: int | None = None) -> None:
        """Queue the best waiting tasks behind a busy child, up to `depth` (or `most`) and as
        many as fit in its pipe's budget, in one write."""
        room = self.depth - len(child.queue)
        frames: list[bytes] = []
        batch = self._take(
            child, child.sent + 1, room if most is None else min(room, most), 0, frames
        )
        if not batch:
            return
        try:
            child.write(b"".join(frames))
        except (OSError, ValueError):  # the child is gone: its exit is on its way
            for task, _, _ in batch:
                heapq.heappush(self._waiting, (task.order, task.seq, task))
            return
        self._queued(child, batch)

    def _take(
        self, child: ChildProcess, n: int, room: int, taken: int, frames: list[bytes]
    ) -> list[tuple[_Task, bool, int]]:
        """Pop the best waiting tasks that may be queued behind a child as its tasks `n`,
        n + 1...: `room` at most, in the pipe's budget less `taken` bytes; their frames go on
        `frames`. Stops at a task too big to be queued."""
        waiting = self._waiting
        batch: list[tuple[_Task, bool, int]] = []
        budget = child.queue_limit - child.piped_bytes - taken
        while waiting and len(batch) < room:
            task = waiting[0][2]
            if task.big:
                break
            try:
                data, stop = child.encode(task, n)
            except Exception:
                task.big = True  # _dispatch reports it, to an idle child
                break
            size = len(data) + 4
            if size > budget:
                if size > child.queue_limit:
                    task.big = True
                break
            heapq.heappop(waiting)
            n += 1
            budget -= size
            frames.append(HEADER.pack(len(data)))
            frames.append(data)
            batch.append((task, stop, size))
        return batch

    def _queued(
        self,
        child: ChildProcess,
        batch: Sequence[tuple[_Task, bool, int]],
        task: _Task | None = None,
        stop: bool = False,
        size: int = 0,
    ) -> None:
        """`task` was handed to the idle `child` and the `batch` queued behind it (or behind
        the task it runs), written in this order."""
        if task is not None:
            child.sent_task(task, stop, size)
            child.state = "busy"
            child.task = task
            child.since = self._since(task)
            self._watch_stop(task)
            self._begin(task)
        for queued, queued_stop, queued_size in batch:
            child.sent_task(queued, queued_stop, queued_size)
            child.queue.append(queued)
            # A stop goes to it while it is queued: the child may start it before the parent
            # hears of it, and keeps a stop for a task it has not started yet.
            self._watch_stop(queued)

    def _since(self, task: _Task) -> float:
        """The loop time at which a child's new current task starts (a held one: its time)."""
        assert self._loop is not None
        now = self._loop.time()
        return now if task.at is None else now + max(0.0, task.at - time.time())

    def _begin(self, task: _Task, began: float | None = None) -> None:
        """The task starts now, or began at `began` (`time.time()`): io.started(). A task held
        for its time begins when its child says so ("began")."""
        if task.began or task.cancelled or (task.at is not None and began is None):
            return
        task.began = True
        io = task.io
        started = getattr(io, "started", None)
        if started is not None:
            try:
                started() if began is None else started(began)
            except Exception:
                log.exception("io.started() failed for a python job")
        if not task.stop and io.should_stop():  # asked while it was queued, before a poll
            self._stop(task)

    def _watch_stop(self, task: _Task) -> None:
        """From now on a graceful stop of the task's io reaches its child."""
        if task.stop:
            return
        on_stop = getattr(task.io, "on_stop", None)
        if on_stop is not None:
            try:
                on_stop(lambda: self._stop(task))
                return
            except Exception:
                log.exception("io.on_stop() failed for a python job")
        self._polled.add(task)
        if self._poll_timer is None:
            assert self._loop is not None
            self._poll_timer = self._loop.call_later(STOP_POLL_S, self._poll_stops)

    def _stop(self, task: _Task) -> None:
        """Pass a graceful stop on to the task's child (a no-op once the task has ended)."""
        child = task.child
        if child is None or task.stop or (child.task is not task and task not in child.queue):
            return
        task.stop = True
        self._polled.discard(task)
        with contextlib.suppress(OSError, ValueError):
            child.send(("stop", task.n))

    def _poll_stops(self) -> None:
        self._poll_timer = None
        for task in list(self._polled):
            if task.child is None:
                self._polled.discard(task)
            elif task.io.should_stop():
                self._stop(task)
        if self._polled and not self._closed:
            assert self._loop is not None
            self._poll_timer = self._loop.call_later(STOP_POLL_S, self._poll_stops)

    def _add_deadline(self, task: _Task, deadline: float) -> None:
        heapq.heappush(self._deadlines, (deadline, task.seq, task))
        if self._deadlines[0][2] is task:
            self._arm_deadlines()

    def _arm_deadlines(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._deadlines and not self._closed:
            assert self._loop is not None
            self._deadline_timer = self._loop.call_at(self._deadlines[0][0], self._on_deadline)

    def _on_deadline(self) -> None:
        """Held tasks that have not begun by their deadline are withdrawn: taken from the
        queue, or revoked from their child (whose answer decides: withdrawn, or it runs)."""
        self._deadline_timer = None
        assert self._loop is not None
        now = self._loop.time()
        deadlines, unqueued = self._deadlines, set()
        while deadlines and deadlines[0][0] <= now:
            task = heapq.heappop(deadlines)[2]
            if task.began or task.cancelled or task.future.done():
                continue
            if task.child is None:  # still waiting here for a child
                unqueued.add(task)
                task.future.set_exception(Withdrawn("it had not begun by its deadline"))
            else:
                task.withdrawing = True
                self._revoke(task)
        if unqueued:  # out of the heap at once: an instant's worth may be
            self._waiting = [entry for entry in self._waiting if entry[2] not in unqueued]
            heapq.heapify(self._waiting)
        self._arm_deadlines()

    def _unblock(self) -> None:
        """Children are idle and nothing waits: revoke queued tasks whose child has been on
        its current task for HOL_S (look again when the next one gets there)."""
        assert self._loop is not None
        now, later = self._loop.time(), None
        for child in self._children:
            if not child.queue or all(queued.revoking for queued in child.queue):
                continue
            due = child.since + HOL_S
            if child.task is not None and child.task.at is not None:
                # Working through tasks held for their time, it tells of them in batches
                # (child.COALESCE_S): what is known here of it may be that old.
                due += child_module.COALESCE_S
            if due <= now and _has_news(child):
                # It has told more than was read yet: not stuck, but not heard, while this
                # loop works through a big instant's reports. Look again once they are read
                # (revoked then, a burst's last tasks began 30-60 ms late elsewhere).
                due = now + HOL_S
            if due <= now:
                for queued in list(child.queue):
                    self._revoke(queued)
            elif later is None or due < later:
                later = due
        if later is not None and self._hol_timer is None:
            self._hol_timer = self._loop.call_at(later, self._on_hol_timer)

    def _on_hol_timer(self) -> None:
        self._hol_timer = None
        if self._idle and not self._waiting and not self._closed:
            self._unblock()

    def _revoke(self, task: _Task) -> None:
        child = task.child
        if child is None or task.revoking:
            return
        task.revoking = True
        with contextlib.suppress(OSError, ValueError):  # if it died, its exit settles it
            child.send(("revoke", task.n))

    def _on_revoked(self, child: ChildProcess, n: int, ok: bool) -> None:
        task = child.task
        if task is None or task.n != n:
            task = next((queued for queued in child.queue if queued.n == n), None)
            if task is None:
                return  # it ended meanwhile
        task.revoking = False
        if not ok:  # it had started: it runs (and a cancelled one is killed)
            task.withdrawing = False
            if task is child.task:
                if task.cancelled:
                    self._kill_running(child)
                else:
                    self._begin(task)
            return
        # Its message may lie in the pipe until the child reads past it (`piped` counts it).
        task.child = None
        if task is child.task:  # its predecessor was done: the child skips it, takes the next
            child.task = None
            self._requeue(task)
            self._next(child)
        else:
            child.queue.remove(task)
            self._requeue(task)
            self._pump()

    def _next(self, child: ChildProcess) -> None:
        """The child's task has ended: it has started its first queued one, or is free."""
        queue = child.queue
        if not queue:
            self._release(child)
            return
        # The child has started it already (unless a revoke got there first: the answer tells).
        task = child.task = queue.popleft()
        child.since = self._since(task)
        if not task.revoking:
            self._begin(task)
        if self._waiting:
            self._pump(child)

    def _requeue(self, task: _Task) -> None:
        """A task that never started goes back to waiting, in its place (or, withdrawn, to
        its caller)."""
        task.child = None
        if task.cancelled or task.future.done():
            return
        if task.withdrawing:
            task.future.set_exception(Withdrawn("it had not begun by its deadline"))
            return
        if self._closed:
            _fail_closed(task)
            return
        heapq.heappush(self._waiting, (task.order, task.seq, task))

    def _cancel(self, task: _Task) -> None:
        child = task.child
        if child is None:  # waiting (or finished already: then its child has moved on)
            self._unqueue(task)
            return
        task.cancelled = True
        if task is child.task and (task.began or task.at is None):
            self._kill_running(child)
        elif task is child.task:
            self._revoke(task)  # held for its time: revoked, it never runs (or it began: killed)
        elif task in child.queue:
            self._revoke(task)  # its answer decides: dropped, or killed if it started

    def _kill_running(self, child: ChildProcess) -> None:
        """Kill a child mid-task (its task was cancelled); its queued tasks wait again."""
        task, queued = child.task, list(child.queue)
        child.task = None
        child.queue.clear()
        if task is not None:
            self._end(task)
        for each in queued:
            self._requeue(each)
        self._retire(child)
        self._pump()

    def _unqueue(self, task: _Task) -> None:
        for index, entry in enumerate(self._waiting):
            if entry[2] is task:
                self._waiting[index] = self._waiting[-1]
                self._waiting.pop()
                heapq.heapify(self._waiting)
                return

    def _end(self, task: _Task, outcome: dict[str, Any] | None = None) -> None:
        """Detach a task from its child and resolve it (unless it was cancelled)."""
        task.child = None
        self._polled.discard(task)
        if task.enqueues:
            for pending in list(task.enqueues):
                pending.cancel()
        if outcome is not None and not task.future.done():
            task.future.set_result(outcome)

    def _on_message(self, child: ChildProcess, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == "revoked":
            self._on_revoked(child, message[1], message[2])
            return
        task = child.task
        if task is None:
            if tag == "ready" and not child.ready.done():
                child.ready.set_result(message[1])
            return  # a stale message of a task that was cancelled
        if tag == "began":  # a task held for its time has started (its child's clock)
            if task.n == message[1]:
                self._begin(task, min(message[2], time.time()))
            return
        if not task.began and not task.cancelled:
            self._begin(task, time.time())  # a revoke was on its way, too late: it runs
        if tag == "done":
            outcome: dict[str, Any] = message[1]
            outcome.setdefault("state", task.state)
            child.consumed(task.n)  # it has read its pipe up to this task
            child.task = None
            self._end(task, outcome)
            self._next(child)
            return
        if task.cancelled:
            return
        io = task.io
        try:
            if tag == "log":
                io.log(message[1], message[2])
            elif tag == "progress":
                io.progress(message[1], message[2])
            elif tag == "checkpoint":
                task.state = message[1]
                io.checkpoint(message[1])
            elif tag == "enqueue":
                pending = asyncio.ensure_future(self._enqueue(child, task, *message[1:]))
                if task.enqueues is None:
                    task.enqueues = set()
                task.enqueues.add(pending)
                pending.add_done_callback(task.enqueues.discard)
        except Exception:
            log.exception("could not relay %r from a python job", tag)

    @staticmethod
    async def _enqueue(
        child: ChildProcess,
        task: _Task,
        request_id: int,
        job: str,
        params: dict[str, Any] | None,
        low_priority: bool,
    ) -> None:
        try:
            run_id = await task.io.enqueue(job, params, low_priority)
            reply: tuple[Any, ...] = ("reply", request_id, int(run_id), None)
        except Exception as exc:
            reply = ("reply", request_id, None, str(exc) or type(exc).__name__)
        if child.task is task:
            with contextlib.suppress(OSError, ValueError):
                child.send(reply)

    # -- children -----------------------------------------------------------------------------

    def _release(self, child: ChildProcess) -> None:
        """A child is free: it takes the best waiting task, or goes idle."""
        if child.dead or child.state == "retired":
            return
        if self._closed:
            child.state = "idle"  # close() is under way and shuts it down
            return
        if child.generation != self._generation:
            self._retire(child)  # started before a recycle: its code may be stale
            return
        child.state = "idle"
        self._idle.append(child)
        self._pump()

    def _retire(self, child: ChildProcess) -> None:
        """Take a child out of service for good (killing it if needed) and start a new one."""
        if child.state == "retired":
            return
        child.state = "retired"
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        if not child.dead:
            child.kill()
        if not self._closed:
            assert self._loop is not None
            task = self._loop.create_task(self._replace())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _replace(self) -> None:
        """Start a child, again until one is ready (or the pool closes), and put it to work."""
        delay = 0.5
        while not self._closed:
            try:
                child = await self._spawn()
            except Exception:
                log.exception("could not start a python worker process; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._release(child)
            return

    async def _spawn(self) -> ChildProcess:
        loop = asyncio.get_running_loop()
        generation = self._generation
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        task_reader, task_writer = self._mp.Pipe(duplex=False)
        with contextlib.suppress(AttributeError, OSError):  # else the default (64 KiB)
            import fcntl

            fcntl.fcntl(task_writer.fileno(), fcntl.F_SETPIPE_SZ, TASK_PIPE_BYTES)  # type: ignore[attr-defined]
        process = self._mp.Process(
            target=child_module.main,
            args=(child_conn, task_reader, self._imports, self._sys_path, self._log_level),
            name="nightshift-python",
        )
        await forkserver.start_process(
            process, handed=(child_conn, task_reader), kept=(parent_conn, task_writer)
        )
        # The parent talks through a socket object of its own: recv(MSG_DONTWAIT) reads
        # without blocking and without making the shared descriptor non-blocking.
        try:
            sock = socket.socket(fileno=os.dup(parent_conn.fileno()))
        finally:
            parent_conn.close()
        sock.setblocking(True)
        child = ChildProcess(process, sock, task_writer, loop)
        child.generation = generation
        self._children.add(child)
        self._watch(child)
        try:
            errors = await child.ready
        except asyncio.CancelledError:
            child.state = "retired"
            child.kill()
            raise
        if errors is None:
            child.state = "retired"
            child.kill()
            exitcode = child.exited.result() if child.dead else None
            raise RuntimeError(
                f"a python worker process ended before it was ready ({describe_exit(exitcode)})"
            )
        for error in errors:
            log.warning("python worker process could not import %s", error)
        return child

    # -- the event-loop side of a child's pipe and exit ----------------------------------------

    def _watch(self, child: ChildProcess) -> None:
        assert self._loop is not None and child.pid is not None
        try:
            child.exit_fd = os.pidfd_open(child.pid)  # exact: readable once the process ended
            child.own_exit_fd = True
        except (AttributeError, OSError):
            child.exit_fd = child.process.sentinel
        self._loop.add_reader(child.fd, self._on_readable, child)
        self._loop.add_reader(child.exit_fd, self._on_exit, child)
        child.reading = True

    def _unwatch(self, child: ChildProcess) -> None:
        child.stop_writing()
        loop = self._loop if self._loop is not None and not self._loop.is_closed() else None
        if child.reading:
            child.reading = False
            if loop is not None:
                loop.remove_reader(child.fd)
        if child.exit_fd is not None:
            if loop is not None:
                loop.remove_reader(child.exit_fd)
            if child.own_exit_fd:
                with contextlib.suppress(OSError):
                    os.close(child.exit_fd)
            child.exit_fd = None

    def _on_readable(self, child: ChildProcess) -> None:
        self._read(child, _MAX_READS)

    def _read(self, child: ChildProcess, reads: int) -> None:
        """Receive what is there (up to `reads` chunks) and handle every complete message."""
        eof = receive(child.sock, child.buffer, reads)
        frames, used = complete_frames(child.buffer)
        for data in frames:
            try:
                message = pickle.loads(data)
            except Exception:
                log.exception("unreadable message from python worker process %s", child.pid)
                continue
            try:
                self._on_message(child, message)
            except Exception:
                log.exception("could not handle %r from a python worker process", message[0])
        del child.buffer[:used]
        if eof and child.reading:
            # The child closed its end: it is exiting (or its process is gone already).
            child.reading = False
            assert self._loop is not None
            self._loop.remove_reader(child.fd)
            self._reap(child, 0.0)

    def _on_exit(self, child: ChildProcess) -> None:
        assert self._loop is not None and child.exit_fd is not None
        self._loop.remove_reader(child.exit_fd)
        if child.reading:
            self._read(child, 1 << 30)  # whatever it sent before it ended comes first
        self._reap(child, 0.0)

    def _reap(self, child: ChildProcess, waited: float) -> None:
        """Collect the exit status without blocking; retried on a timer until there is one."""
        if child.dead or (waited == 0.0 and child.reaping):
            return
        child.reaping = True
        exitcode = child.process.exitcode  # waitpid(WNOHANG)
        if exitcode is None:
            if waited >= EXIT_GRACE_S:
                child.kill()  # the pipe closed but the process lingers
            delay = min(0.1, max(0.001, waited))
            assert self._loop is not None
            self._loop.call_later(delay, self._reap, child, waited + delay)
            return
        self._exited(child, exitcode)

    def _exited(self, child: ChildProcess, exitcode: int) -> None:
        if child.reading:
            self._read(child, 1 << 30)
        self._unwatch(child)
        with contextlib.suppress(OSError):
            child.sock.close()
        with contextlib.suppress(OSError):
            child.tasks.close()
        with contextlib.suppress(Exception):
            child.process.join(0)  # reaped already: just leaves multiprocessing's bookkeeping
            child.process.close()
        self._children.discard(child)
        child.exited.set_result(exitcode)
        if not child.ready.done():
            child.ready.set_result(None)
        task, queued = child.task, list(child.queue)
        child.task = None
        child.queue.clear()
        if task is not None:
            message = f"the worker process running the job died ({describe_exit(exitcode)})"
            died = {
                "status": "failed",
                "error": {"type": "WorkerProcessDied", "message": message, "traceback": None},
                "permanent": False,
                "state": task.state,
            }
            self._end(task, died)
        elif child.state == "idle" and not self._closed:
            log.warning(
                "idle python worker process %s died (%s)", child.pid, describe_exit(exitcode)
            )
        for each in queued:  # its predecessor never finished: it never started
            self._requeue(each)
        if child.state in ("idle", "busy"):
            self._retire(child)
        if queued and not self._closed:
            self._pump()


def _has_news(child: ChildProcess) -> bool:
    """Whether the child has sent what this process has not read yet."""
    try:
        return bool(select.select([child.fd], [], [], 0)[0])
    except (OSError, ValueError):  # closed: its exit says the rest
        return False


def _spread_order(child: ChildProcess) -> tuple[bool, int]:
    """Where a task held for its time goes first: behind a child that is not running a task of
    unknown length (it is itself waiting for a time, or between tasks), then the fewest."""
    task = child.task
    return (task is not None and (task.at is None or task.began), len(child.queue))


def _fail_closed(task: _Task) -> None:
    if not task.future.done():
        task.future.set_exception(PoolClosed("the python process pool is closed"))
