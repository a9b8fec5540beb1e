"""The worker's store calls in a process of their own.

The service's Python runs under one interpreter lock: the event loop (the pool's messages, the
API, the scheduler) and the threads that claim runs and record outcomes take turns, and a
drain of short runs costs about as much in the store's Python as on the loop. In a process of
its own, the store's half runs on the other core (bench/PROFILE.md, session 6).

The process is forked from the python pool's fork server (worker/forkserver.py, which has
imported the store) and opens its own connection(s) to the database. Each lane is a socket
pair: the parent writes (method name, arguments) and reads the replies in order, in callbacks
on its event loop; the process serves each lane on a thread of its own, one call at a time,
each call its own transaction(s) as in the service process. Nothing is held between calls.

If the process dies (killed, out of memory), the calls waiting on it fail with
`StoreProcessGone` and the next call starts a new one: the worker retries what failed as it
retries through a database outage. A call that was under way when the process died either
committed or did not, as a transaction cut by a crash: an outcome recorded twice is found
fenced out the second time, and the worker hands back at once the runs of a claim whose reply
was lost (Worker._release_strays). If the service process dies, the store process sees its
sockets close and exits (a call under way there is rolled back, or commits first and is then
recovered like any run of a dead worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import threading
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from nightshift.outage import one_line
from nightshift.worker import forkserver
from nightshift.worker.framing import complete_frames, frame, receive
from nightshift.worker.store_calls import LANES, Lane, StoreCalls, ThreadCalls, separate_lanes

if TYPE_CHECKING:
    # Annotations only: the fork server preloads this module, and pydantic would add ~90 ms
    # to its start and ~14 MB to every process forked from it (the pool's children too).
    from nightshift.config import Settings

log = logging.getLogger(__name__)

_MAX_READS = 16  # chunks per readable callback
#: How long the process may take to exit once its sockets are closed.
EXIT_GRACE_S = 5.0


def store_calls(store: Any, settings: Settings) -> StoreCalls:
    """Where the worker's store calls run, as `settings.worker_store_calls` says: "auto" is a
    process on SQLite (the service's Python is the bottleneck there: +10-25 % drain) and
    threads on PostgreSQL (where the process measured no faster). A database in memory is
    the service process's own: threads."""
    choice = settings.worker_store_calls
    if choice == "auto":
        choice = "process" if store.dialect == "sqlite" else "threads"
    if choice == "process" and make_url(store.url).database in (None, "", ":memory:"):
        log.warning("an in-memory database is this process's own: store calls run on threads")
        choice = "threads"
    if choice == "process":
        return StoreProcess(
            store.url, store.dialect, sqlite_synchronous=settings.sqlite_synchronous
        )
    return ThreadCalls(store)


class StoreProcessGone(ConnectionError):
    """The store process ended (or never started) while a call waited for its reply."""


class StoreCallFailed(RuntimeError):
    """A call raised an error in the store process that could not be sent as it was."""


class StoreProcess:
    """The parent's side: starts the process, sends calls, matches replies to callers."""

    separate_process = True

    def __init__(self, url: str, dialect: str, *, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = url
        self.sqlite_synchronous = sqlite_synchronous
        self._lanes = 2 if separate_lanes(dialect) else 1
        self._mp = forkserver.context()
        self._process: BaseProcess | None = None
        self._socks: list[socket.socket] = []
        self._buffers: list[bytearray] = []
        self._waiting: list[deque[asyncio.Future[Any]]] = []
        self._sending: list[asyncio.Lock] = []
        self._ready: asyncio.Future[None] | None = None
        self._starting = asyncio.Lock()
        self._closed = False
        self._reaping: set[asyncio.Future[None]] = set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        async with self._starting:
            if self._socks:
                return
            if self._closed:
                raise StoreProcessGone("the store process was closed")
            await self._spawn()

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        pairs = [self._mp.Pipe(duplex=True) for _ in range(self._lanes)]
        process = self._mp.Process(
            target=serve,
            args=(self.url, self.sqlite_synchronous, [child for _, child in pairs]),
            name="nightshift-store",
        )
        await forkserver.start_process(
            process,
            handed=[child for _, child in pairs],
            kept=[parent for parent, _ in pairs],
        )
        self._process = process
        self._ready = loop.create_future()
        for lane, (parent, _) in enumerate(pairs):
            # A socket object of our own, non-blocking: the loop never waits on a write.
            sock = socket.socket(fileno=os.dup(parent.fileno()))
            parent.close()
            sock.setblocking(False)
            self._socks.append(sock)
            self._buffers.append(bytearray())
            self._waiting.append(deque())
            self._sending.append(asyncio.Lock())
            loop.add_reader(sock.fileno(), self._on_readable, lane)
        try:
            await self._ready
        except BaseException:
            self._lost("the store process could not start")
            raise
        log.info("worker store calls: process %s", process.pid)

    async def call(self, lane: Lane, name: str, *args: Any) -> Any:
        if not self._socks:
            await self.start()
        index = LANES.index(lane) % self._lanes
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request = frame(pickle.dumps((name, args), pickle.HIGHEST_PROTOCOL))
        socks, waiting, sending = self._socks, self._waiting, self._sending
        async with sending[index]:
            if self._socks is not socks:  # it went away while we queued to send
                raise StoreProcessGone("the store process ended")
            waiting[index].append(future)
            try:
                await asyncio.get_running_loop().sock_sendall(socks[index], request)
            except OSError as exc:
                self._lost(f"could not write to the store process: {exc}")
        return await future

    def _on_readable(self, lane: int) -> None:
        buffer = self._buffers[lane]
        eof = receive(self._socks[lane], buffer, _MAX_READS)
        messages, used = complete_frames(buffer)
        for message in messages:
            try:
                reply = pickle.loads(message)
            except Exception as exc:  # replies and callers no longer pair up: start afresh
                self._lost(f"an unreadable reply from the store process: {one_line(exc)}")
                return
            self._on_reply(lane, reply)
        del buffer[:used]
        if eof:
            self._lost(f"the store process ended{_how_it_ended(self._process)}")

    def _on_reply(self, lane: int, reply: tuple[Any, ...]) -> None:
        kind = reply[0]
        if kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        if kind == "failed":  # could not open the store
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(StoreProcessGone(reply[1]))
            return
        future = self._waiting[lane].popleft()
        if future.done():  # its caller was cancelled
            return
        if kind == "ok":
            future.set_result(reply[1])
        elif kind == "raise":
            future.set_exception(reply[1])
        else:
            future.set_exception(StoreCallFailed(reply[1]))

    def _gone(self, why: str) -> BaseProcess | None:
        """Forget the process: fail what waits on it; the next call starts another. Returns
        the process, for the caller to reap."""
        if not self._socks:
            return None
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        for waiting in self._waiting:
            while waiting:
                future = waiting.popleft()
                if not future.done():
                    future.set_exception(StoreProcessGone(why))
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(StoreProcessGone(why))
        self._socks, self._buffers, self._waiting, self._sending = [], [], [], []
        process, self._process = self._process, None
        return process

    def _lost(self, why: str) -> None:
        """The process ended under us, or its socket broke: forget it and reap it."""
        process = self._gone(why)
        if process is not None:
            log.error("%s; the next store call starts another", why)
            reaping = asyncio.ensure_future(asyncio.to_thread(_reap, process))
            self._reaping.add(reaping)
            reaping.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        """Close the sockets: the process ends once its calls under way are done."""
        self._closed = True
        async with self._starting:
            process = self._gone("the store process was closed")
            if process is not None:
                await asyncio.to_thread(_reap, process)


def _reap(process: BaseProcess) -> None:
    process.join(EXIT_GRACE_S)
    if process.exitcode is None:
        process.kill()
        process.join()
    with contextlib.suppress(ValueError):
        process.close()


def _how_it_ended(process: BaseProcess | None) -> str:
    """How the process ended, when that is known yet: " (killed by signal 9)"."""
    code = process.exitcode if process is not None else None
    if code is None:
        return ""
    return f" (exit status {code})" if code >= 0 else f" (killed by signal {-code})"


# -- the store process ---------------------------------------------------------------------------


def serve(url: str, sqlite_synchronous: str, lanes: list[Connection]) -> None:
    """The store process's entry point: serve each lane until the service closes it."""
    # The service decides when we end (its own SIGINT / SIGTERM reach the process group too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from nightshift.store import open_store

    try:
        store = open_store(url, sqlite_synchronous=sqlite_synchronous, migrate=False)
    except Exception as exc:
        lanes[0].send(("failed", f"could not open the store: {one_line(exc)}"))
        return
    lanes[0].send(("ready",))
    for conn in lanes[1:]:
        threading.Thread(target=_serve_lane, args=(store, conn), daemon=True).start()
    _serve_lane(store, lanes[0])


def _serve_lane(store: Any, conn: Connection) -> None:
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the service closed its lanes (all its calls answered), or is gone
        try:
            reply: bytes = _dumps(("ok", getattr(store, name)(*args)))
        except Exception as exc:
            reply = _error(exc)
        try:
            conn.send_bytes(reply)
        except OSError:
            os._exit(0)


def _error(exc: Exception) -> bytes:
    """The error as it was raised when it survives pickling, else its type and message."""
    try:
        reply = _dumps(("raise", exc))
        pickle.loads(reply)
    except Exception:
        return _dumps(("error", f"{type(exc).__name__}: {one_line(exc)}"))
    return reply


def _dumps(message: tuple[Any, ...]) -> bytes:
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
