"""The parent side of the python kind's process pool.

`size` child processes, started with "spawn" (the parent runs an event loop and threads, so
never fork). The pool is also the queue of the runs that wait for a process: they are served
smallest `order` first, FIFO among equals (a heap), so a worker may hold many more runs than
there are processes without breaking fair share.

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

Pipelining: while every child is busy, each may also hold one queued task in its task pipe (a
small one: the write must never wait for a busy child), so that it starts the moment "done"
leaves, without a round trip through the parent. A queued task has not started: it can be
revoked, ("revoke", n) -> ("revoked", n, ok), decided by the child under the lock its main
thread takes a task with. Revoked are a cancelled queued task, queued tasks of a child whose
current task has run for HOL_S while another child is idle (no waiting behind a long job), and
queued tasks at a recycle. `io.started()` is called when the task really starts: when it is
handed to an idle child, or when its predecessor's "done" arrives. A child that dies before
that gives its queued task back to the queue.

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
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from nightshift.worker import child as child_module
from nightshift.worker.executor import RunIO

log = logging.getLogger(__name__)

ChildState = Literal["starting", "idle", "busy", "retired"]

#: How often the pool looks at `io.should_stop()` of running tasks whose io has no `on_stop`.
STOP_POLL_S = 0.05
#: How long a queued task may wait behind a running one while another child is idle.
HOL_S = 0.02
#: How long a child whose pipe was closed may take to exit before it is killed.
EXIT_GRACE_S = 5.0
_RECV_SIZE = 1 << 16
_MAX_READS = 16  # per readable callback, so that one chatty child cannot hog the loop
_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")


class PoolClosed(RuntimeError):
    """The pool was closed while a task waited for a child."""


class _Task:
    """One run on its way through the pool: waiting in the heap, then on a child."""

    __slots__ = (
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
        self.child: ChildProcess | None = None  # running on it, or queued behind its task
        self.n = 0  # its number on that child (the child's messages about it carry it)
        self.stop = False  # a stop was sent to the child
        self.began = False  # io.started() was called
        self.revoking = False  # a revoke was sent, not answered yet
        self.cancelled = False  # run() was cancelled while a child held it
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
        self.tasks = tasks  # the write end of the task pipe
        self.queue_limit = _queue_limit(tasks)
        self.buffer = bytearray()  # an incomplete message, received in part
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.ready: asyncio.Future[list[str] | None] = loop.create_future()
        self.state: ChildState = "starting"
        self.task: _Task | None = None  # the task it runs (or is about to: see revoking)
        self.queued: _Task | None = None  # the one behind it in the task pipe
        self.since = 0.0  # loop time when `task` started
        self.stale = False  # a revoked task may lie unread in its pipe, behind `task`
        self.sent = 0  # task messages sent (a task's `n`)
        self.generation = 0  # the pool's generation when it was started (see recycle)
        self.exit_fd: int | None = None  # a pidfd, or the process sentinel
        self.own_exit_fd = False  # the pidfd is ours to close; the sentinel is not
        self.reading = False
        self.reaping = False

    @property
    def dead(self) -> bool:
        return self.exited.done()

    def encode(self, task: _Task) -> tuple[bytes, bool]:
        """The task's message as this child's next one, and whether it says stop."""
        stop = task.io.should_stop()
        return _dumps(("task", self.sent + 1, task.payload, stop)), stop

    def send_task(self, task: _Task, data: bytes, stop: bool) -> None:
        """Write an encoded task: blocking, so only to a child that reads, or a small one."""
        self.tasks.send_bytes(data)
        self.sent += 1
        task.n = self.sent
        task.stop = stop

    def send(self, message: tuple[Any, ...]) -> None:
        """Frame and write one control message (the child's receiver thread always reads)."""
        data = _dumps(message)
        if len(data) > 0x7FFFFFFF:
            self.sock.sendall(_HEADER.pack(-1) + _LONG_HEADER.pack(len(data)))
            self.sock.sendall(data)
        else:
            self.sock.sendall(_HEADER.pack(len(data)) + data)

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.process.kill()

    def __repr__(self) -> str:
        return f"<ChildProcess pid={self.pid} {self.state}>"


def _dumps(message: tuple[Any, ...]) -> bytes:
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def _queue_limit(tasks: Connection) -> int:
    """The largest task message that may wait in a busy child's pipe: half its capacity, as
    one revoked message may lie there unread too."""
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
    ) -> None:
        """`pipeline`: let a busy child hold one queued task (see the module's docstring)."""
        if size < 1:
            raise ValueError(f"a process pool needs at least one process, got {size}")
        self.size = size
        self.pipeline = pipeline
        self._imports = list(imports)
        self._sys_path = list(sys_path)
        self._log_level = log_level
        self._grace_s = grace_s
        self._mp = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: set[ChildProcess] = set()  # every child not known to have exited
        self._idle: deque[ChildProcess] = deque()
        self._waiting: list[tuple[tuple[Any, ...], int, _Task]] = []  # a heap: (order, seq)
        self._seq = itertools.count(1)
        self._polled: set[_Task] = set()  # running tasks whose io has no on_stop
        self._poll_timer: asyncio.TimerHandle | None = None
        self._hol_timer: asyncio.TimerHandle | None = None
        self._spawning: set[asyncio.Task[None]] = set()
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._generation = 0  # bumped by recycle(): children of older generations retire

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the children and wait until each has imported the `imports` modules."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        atexit.register(self._kill_all)
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self.size)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for result in results:
            if isinstance(result, ChildProcess):
                self._release(result)
        if errors:
            await self.close()
            raise errors[0]

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
        for timer in (self._poll_timer, self._hol_timer):
            if timer is not None:
                timer.cancel()
        self._poll_timer = self._hol_timer = None
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
        queued task is revoked, to run on new code). Returns once the replacements are ready
        (or after `timeout`), so the next task runs new code.
        """
        if self._closed or not self._started:
            return
        self._generation += 1
        for child in list(self._idle):
            self._retire(child)
        for child in list(self._children):
            if child.queued is not None:
                self._revoke(child.queued)
        if self._spawning:
            await asyncio.wait(set(self._spawning), timeout=timeout)

    def _kill_all(self) -> None:
        for child in list(self._children):
            child.kill()

    @property
    def children(self) -> list[ChildProcess]:
        return list(self._children)

    @property
    def waiting(self) -> int:
        """How many tasks wait for a child (queued ones behind a busy child not counted)."""
        return len(self._waiting)

    # -- running a task -----------------------------------------------------------------------

    async def run(
        self, payload: dict[str, Any], io: RunIO, *, order: tuple[Any, ...] = ()
    ) -> dict[str, Any]:
        """Run one task on a child, relaying its messages to `io`; returns the outcome dict.

        While every child is busy the task waits; waiting tasks go smallest `order` first
        (orders must compare with each other), FIFO among equals. `io.started()` is called when
        the task starts on a child. Cancelled before that, the task never runs (it leaves the
        queue, or is revoked from a child); cancelled while running, its child is killed (and
        replaced). CancelledError propagates.
        """
        if self._closed:
            raise PoolClosed("the python process pool is closed")
        loop = self._loop or asyncio.get_running_loop()
        task = _Task(payload, io, order, next(self._seq), loop.create_future())
        heapq.heappush(self._waiting, (order, task.seq, task))
        self._pump()
        try:
            return await task.future
        except asyncio.CancelledError:
            self._cancel(task)
            raise

    def _pump(self) -> None:
        """Hand waiting tasks to idle children, best first; then queue them behind busy ones;
        or, with children idle and nothing waiting, pull back queued tasks stuck behind long
        ones."""
        waiting = self._waiting
        while waiting and self._idle:
            child = self._idle.popleft()
            _, _, task = heapq.heappop(waiting)
            self._dispatch(child, task)
        if not self.pipeline:
            return
        if waiting:
            for child in self._children:
                if not waiting:
                    return
                if (
                    child.state == "busy"
                    and child.queued is None
                    and not child.stale
                    and child.task is not None
                    and not child.task.revoking
                    and child.generation == self._generation
                ):
                    self._queue(child)
        elif self._idle:
            self._unblock()

    def _dispatch(self, child: ChildProcess, task: _Task) -> None:
        """Hand a task to an idle child (it reads its pipe: the write does not wait)."""
        try:
            data, stop = child.encode(task)
        except Exception as exc:  # the payload cannot be pickled: fails this task only
            self._idle.appendleft(child)
            if not task.future.done():
                task.future.set_exception(exc)
            return
        try:
            child.send_task(task, data, stop)
        except (OSError, ValueError):
            # The child is gone or going and never saw the task: it waits again, in its place.
            heapq.heappush(self._waiting, (task.order, task.seq, task))
            self._retire(child)
            return
        child.state = "busy"
        child.task = task
        task.child = child
        assert self._loop is not None
        child.since = self._loop.time()
        self._watch_stop(task)
        self._begin(task)

    def _queue(self, child: ChildProcess) -> None:
        """Put the best waiting task in a busy child's pipe, if the message is small enough
        to lie there without the write waiting for the child."""
        _, _, task = self._waiting[0]
        if task.big:
            return
        try:
            data, stop = child.encode(task)
        except Exception:
            task.big = True  # _dispatch reports it, to an idle child
            return
        if len(data) > child.queue_limit:
            task.big = True
            return
        heapq.heappop(self._waiting)
        try:
            child.send_task(task, data, stop)
        except (OSError, ValueError):  # the child is gone: its exit is on its way
            heapq.heappush(self._waiting, (task.order, task.seq, task))
            return
        child.queued = task
        task.child = child
        # A stop goes to it while it is queued: the child may start it before the parent
        # hears of it, and keeps a stop for a task it has not started yet.
        self._watch_stop(task)

    def _begin(self, task: _Task) -> None:
        """The task starts now: io.started()."""
        if task.began or task.cancelled:
            return
        task.began = True
        io = task.io
        started = getattr(io, "started", None)
        if started is not None:
            try:
                started()
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
        if child is None or task.stop or (child.task is not task and child.queued is not task):
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

    def _unblock(self) -> None:
        """Children are idle and nothing waits: revoke queued tasks whose child has been on
        its current task for HOL_S (look again when the next one gets there)."""
        assert self._loop is not None
        now, later = self._loop.time(), None
        for child in self._children:
            queued = child.queued
            if queued is None or queued.revoking:
                continue
            due = child.since + HOL_S
            if due <= now:
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
        if child.queued is not None and child.queued.n == n:
            task = child.queued
        elif child.task is not None and child.task.n == n:
            task = child.task
        else:
            return  # it ended meanwhile
        task.revoking = False
        if not ok:  # it had started: it runs (and a cancelled one is killed)
            if task is child.task:
                if task.cancelled:
                    self._kill_running(child)
                else:
                    self._begin(task)
            return
        task.child = None
        if task is child.queued:
            child.queued = None
            child.stale = True  # its message lies in the pipe until the child reads past it
        else:  # its predecessor was done: the child read it, skipped it and waits
            child.task = None
        self._requeue(task)
        if child.task is None:
            self._release(child)
        else:
            self._pump()

    def _requeue(self, task: _Task) -> None:
        """A task that never started goes back to waiting, in its place."""
        task.child = None
        if task.cancelled or task.future.done():
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
        if task is child.queued:
            self._revoke(task)  # its answer decides: dropped, or killed if it started
        elif task is child.task:
            self._kill_running(child)

    def _kill_running(self, child: ChildProcess) -> None:
        """Kill a child mid-task (its task was cancelled); its queued task waits again."""
        task, queued = child.task, child.queued
        child.task = child.queued = None
        if task is not None:
            self._end(task)
        if queued is not None:
            self._requeue(queued)
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
        if not task.began and not task.cancelled:
            self._begin(task)  # a revoke was on its way, too late: it runs
        if tag == "done":
            outcome: dict[str, Any] = message[1]
            outcome.setdefault("state", task.state)
            child.stale = False  # it has read its pipe up to its next task
            child.task = None
            self._end(task, outcome)
            queued = child.queued
            if queued is None:
                self._release(child)
                return
            # The child has started the queued task already (unless a revoke got there first:
            # then the answer tells).
            child.queued = None
            child.task = queued
            assert self._loop is not None
            child.since = self._loop.time()
            if not queued.revoking:
                self._begin(queued)
            if self._waiting:
                self._pump()
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
        process = self._mp.Process(
            target=child_module.main,
            args=(child_conn, task_reader, self._imports, self._sys_path, self._log_level),
            name="nightshift-python",
        )
        starting = asyncio.ensure_future(asyncio.to_thread(self._start_process, process))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            parent_conn.close()
            task_writer.close()
            starting.add_done_callback(lambda future: _abandon(process, future))
            raise
        except BaseException:
            parent_conn.close()
            task_writer.close()
            raise
        finally:
            child_conn.close()
            task_reader.close()
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

    def _start_process(self, process: BaseProcess) -> None:
        with self._start_lock:
            process.start()

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
        eof = False
        for _ in range(reads):
            try:
                data = child.sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                eof = True
                break
            child.buffer += data
            if len(data) < _RECV_SIZE:
                break
        buffer = child.buffer
        end, pos = len(buffer), 0
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buffer, pos)
            start = pos + 4
            if size == -1:
                if end - pos < 12:
                    break
                (size,) = _LONG_HEADER.unpack_from(buffer, start)
                start += 8
            if end - start < size:
                break
            pos = start + size
            try:
                message = pickle.loads(buffer[start:pos])
            except Exception:
                log.exception("unreadable message from python worker process %s", child.pid)
                continue
            try:
                self._on_message(child, message)
            except Exception:
                log.exception("could not handle %r from a python worker process", message[0])
        if pos:
            del buffer[:pos]
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
        task, queued = child.task, child.queued
        child.task = child.queued = None
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
        if queued is not None:  # its predecessor never finished: it never started
            self._requeue(queued)
        if child.state in ("idle", "busy"):
            self._retire(child)
        if queued is not None and not self._closed:
            self._pump()


def _fail_closed(task: _Task) -> None:
    if not task.future.done():
        task.future.set_exception(PoolClosed("the python process pool is closed"))


def _kill_quietly(process: BaseProcess) -> None:
    with contextlib.suppress(Exception):
        process.kill()


def _abandon(process: BaseProcess, started: asyncio.Future[None]) -> None:
    """Kill a process whose start was cancelled, and reap it off the event loop."""
    if (not started.cancelled() and started.exception() is not None) or process.pid is None:
        return
    _kill_quietly(process)
    threading.Thread(target=process.join, args=(5,), daemon=True).start()
