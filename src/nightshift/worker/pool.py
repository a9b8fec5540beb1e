"""The parent side of the python kind's process pool.

`size` child processes, started with "spawn" (the parent runs an event loop and threads, so
never fork). Each child runs one task at a time; a task waits, FIFO, for an idle child. Each
child has its own duplex pipe, read by a dedicated thread that hands messages to the event loop,
and its own `multiprocessing.Event` for graceful stops.

A cancelled task kills its child (SIGKILL: a job in a CPU loop ignores everything else); a
child that dies, busy or idle, is replaced in the background.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import signal
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


class PoolClosed(RuntimeError):
    """The pool was closed while a task waited for a child."""


class ChildProcess:
    """One child process, as the parent sees it."""

    def __init__(
        self,
        process: BaseProcess,
        conn: Connection,
        stop_event: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.process = process
        self.conn = conn
        self.stop_event = stop_event
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.state: ChildState = "starting"
        self.reader: threading.Thread | None = None
        self.generation = 0  # the pool's generation when it was started (see recycle)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def dead(self) -> bool:
        return self.exited.done()

    def send(self, message: tuple[Any, ...]) -> None:
        self.conn.send(message)

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.process.kill()

    def __repr__(self) -> str:
        return f"<ChildProcess pid={self.pid} {self.state}>"


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
    ) -> None:
        if size < 1:
            raise ValueError(f"a process pool needs at least one process, got {size}")
        self.size = size
        self._imports = list(imports)
        self._sys_path = list(sys_path)
        self._log_level = log_level
        self._grace_s = grace_s
        self._mp = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: set[ChildProcess] = set()  # every child not known to have exited
        self._idle: deque[ChildProcess] = deque()
        self._waiters: deque[asyncio.Future[ChildProcess]] = deque()
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
        """Stop the children: a shutdown message, then SIGKILL after the grace period."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        if self._spawning:
            await asyncio.gather(*self._spawning, return_exceptions=True)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed("the python process pool is closed"))
        children = list(self._children)
        for child in children:
            if child.state == "idle":
                with contextlib.suppress(OSError, ValueError):
                    child.send(("shutdown",))
            else:
                child.kill()
        exits = [child.exited for child in children]
        if exits:
            await asyncio.wait(exits, timeout=self._grace_s)
            for child in children:
                if not child.dead:
                    child.kill()
            await asyncio.wait(exits, timeout=self._grace_s)
        self._idle.clear()
        atexit.unregister(self._kill_all)

    async def recycle(self, timeout: float = 30.0) -> None:
        """Replace every child with a fresh one that imports the user's code anew (a reload).

        Idle children are replaced now; a busy child finishes its task, then retires. Returns
        once the replacements are ready (or after `timeout`), so the next task runs new code.
        """
        if self._closed or not self._started:
            return
        self._generation += 1
        for child in list(self._idle):
            self._retire(child)
        if self._spawning:
            await asyncio.wait(set(self._spawning), timeout=timeout)

    def _kill_all(self) -> None:
        for child in list(self._children):
            child.kill()

    @property
    def children(self) -> list[ChildProcess]:
        return list(self._children)

    # -- running a task -----------------------------------------------------------------------

    async def run(self, payload: dict[str, Any], io: RunIO) -> dict[str, Any]:
        """Run one task on a free child, relaying its messages to `io`; returns the outcome dict.

        On cancellation the child is killed (and replaced) and CancelledError propagates.
        """
        child = await self._acquire()
        last_state = payload.get("state")
        enqueues: set[asyncio.Task[None]] = set()
        watcher: asyncio.Task[None] | None = None
        sent = False
        try:
            child.stop_event.clear()
            if io.should_stop():
                child.stop_event.set()
            watcher = asyncio.create_task(self._watch_stop(io, child))
            try:
                child.send(("task", payload))
            except (OSError, ValueError):
                await child.exited  # the reader thread reports the exit soon
                return self._died(child, last_state)
            sent = True
            while True:
                message = await child.inbox.get()
                tag = message[0]
                if tag == "done":
                    outcome: dict[str, Any] = message[1]
                    break
                if tag == "exit":
                    return self._died(child, last_state)
                if tag == "checkpoint":
                    last_state = message[1]
                if tag == "enqueue":
                    task = asyncio.create_task(self._enqueue(child, io, *message[1:]))
                    enqueues.add(task)
                    task.add_done_callback(enqueues.discard)
                else:
                    _relay(io, message)
        except BaseException:
            if sent:
                child.kill()
                self._retire(child)
            else:
                self._release(child)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            for task in list(enqueues):
                task.cancel()
        self._release(child)
        return outcome

    def _died(self, child: ChildProcess, state: Any) -> dict[str, Any]:
        exitcode = child.exited.result() if child.dead else child.process.exitcode
        self._retire(child)
        message = f"the worker process running the job died ({describe_exit(exitcode)})"
        return {
            "status": "failed",
            "error": {"type": "WorkerProcessDied", "message": message, "traceback": None},
            "permanent": False,
            "state": state,
        }

    @staticmethod
    async def _watch_stop(io: RunIO, child: ChildProcess) -> None:
        await io.stop_event.wait()
        child.stop_event.set()

    @staticmethod
    async def _enqueue(
        child: ChildProcess,
        io: RunIO,
        request_id: int,
        job: str,
        params: dict[str, Any] | None,
        low_priority: bool,
    ) -> None:
        try:
            run_id = await io.enqueue(job, params, low_priority)
            reply: tuple[Any, ...] = ("reply", request_id, int(run_id), None)
        except Exception as exc:
            reply = ("reply", request_id, None, str(exc) or type(exc).__name__)
        if child.state == "busy":
            with contextlib.suppress(OSError, ValueError):
                child.send(reply)

    # -- children -----------------------------------------------------------------------------

    async def _acquire(self) -> ChildProcess:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise PoolClosed("the python process pool is closed")
            if self._idle and not self._waiters:
                child = self._idle.popleft()
            else:
                waiter: asyncio.Future[ChildProcess] = loop.create_future()
                self._waiters.append(waiter)
                try:
                    child = await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                        self._release(waiter.result())
                    else:
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(waiter)
                    raise
            while not child.inbox.empty():  # nothing is left over from a previous task
                child.inbox.get_nowait()
            if not child.dead:
                child.state = "busy"
                return child
            self._retire(child)

    def _release(self, child: ChildProcess) -> None:
        if child.generation != self._generation and not child.dead and not self._closed:
            self._retire(child)  # started before a recycle: its code may be stale
            return
        if child.dead or self._closed:
            if child.dead:
                self._retire(child)
            else:
                child.state = "idle"  # close() is under way and shuts it down
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                child.state = "busy"
                waiter.set_result(child)
                return
        child.state = "idle"
        self._idle.append(child)

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
            task = asyncio.get_running_loop().create_task(self._replace())
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
        stop_event = self._mp.Event()
        process = self._mp.Process(
            target=child_module.main,
            args=(child_conn, stop_event, self._imports, self._sys_path, self._log_level),
            name="nightshift-python",
        )
        starting = asyncio.ensure_future(asyncio.to_thread(self._start_process, process))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(lambda future: _abandon(process, future))
            raise
        finally:
            child_conn.close()
        child = ChildProcess(process, parent_conn, stop_event, loop)
        child.generation = generation
        self._children.add(child)
        child.reader = threading.Thread(
            target=self._read, args=(child,), name=f"nightshift-pool-{process.pid}", daemon=True
        )
        child.reader.start()
        try:
            message = await child.inbox.get()
        except asyncio.CancelledError:
            child.kill()
            child.state = "retired"
            raise
        if message[0] != "ready":
            child.state = "retired"
            child.kill()
            raise RuntimeError(
                "a python worker process ended before it was ready "
                f"({describe_exit(child.process.exitcode)})"
            )
        for error in message[1]:
            log.warning("python worker process could not import %s", error)
        return child

    def _start_process(self, process: BaseProcess) -> None:
        with self._start_lock:
            process.start()

    def _read(self, child: ChildProcess) -> None:
        """The reader thread: pipe -> event loop, then the exit status once the pipe closes."""
        while True:
            try:
                message = child.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:
                log.exception("unreadable message from python worker process %s", child.pid)
                continue
            if not self._post(child, message):
                return
        process = child.process
        process.join(timeout=5)
        if process.exitcode is None:
            _kill_quietly(process)
            process.join(timeout=5)
        self._post(child, ("exit", process.exitcode))

    def _post(self, child: ChildProcess, message: tuple[Any, ...]) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, child, message)
        except RuntimeError:  # the event loop is closed
            return False
        return True

    def _deliver(self, child: ChildProcess, message: tuple[Any, ...]) -> None:
        if message[0] == "exit":
            self._children.discard(child)
            with contextlib.suppress(OSError):
                child.conn.close()
            if not child.exited.done():
                child.exited.set_result(message[1])
            if child.state == "idle" and not self._closed:
                log.warning(
                    "idle python worker process %s died (%s)",
                    child.pid,
                    describe_exit(message[1]),
                )
                self._retire(child)
                return
        if child.state != "retired":
            child.inbox.put_nowait(message)


def _relay(io: RunIO, message: tuple[Any, ...]) -> None:
    tag = message[0]
    try:
        if tag == "log":
            io.log(message[1], message[2])
        elif tag == "progress":
            io.progress(message[1], message[2])
        elif tag == "checkpoint":
            io.checkpoint(message[1])
    except Exception:
        log.exception("could not relay %r from a python job", tag)


def _kill_quietly(process: BaseProcess) -> None:
    with contextlib.suppress(Exception):
        process.kill()


def _abandon(process: BaseProcess, started: asyncio.Future[None]) -> None:
    """Kill a process whose start was cancelled, and reap it off the event loop."""
    if (not started.cancelled() and started.exception() is not None) or process.pid is None:
        return
    _kill_quietly(process)
    threading.Thread(target=process.join, args=(5,), daemon=True).start()
