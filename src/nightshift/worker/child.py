"""The child process of the python kind: imports user code, then runs one task at a time.

Started by `worker/pool.py` through multiprocessing's fork server. Messages are pickled tuples of
JSON-safe data (multiprocessing's framing), over two pipes:

- the duplex `conn`: child -> parent ("ready", [import errors]), ("log", level, message),
  ("progress", done, total), ("checkpoint", state), ("enqueue", request_id, job, params,
  low_priority), ("done", outcome), ("revoked", n, ok); parent -> child ("stop", n),
  ("revoke", n), ("reply", request_id, run_id | None, error | None). A receiver thread reads
  it, so the job's thread never does;
- the one-way `tasks`: ("task", n, payload, stop) and ("shutdown",), read by the main thread
  itself between tasks, so a task costs no hand-over from the receiver thread. `n` counts the
  task messages this process was sent. The parent may queue tasks behind a running one, and
  write several in one go: the main thread reads the pipe through a buffer (`_Frames`), so
  the tasks that lie there cost one read. A payload with "at" (time.time()) is held until
  then (or until it is revoked), and reported ("began", n, time) when it starts.

While it works through tasks held for a time that has come (a big instant), what it sends is
kept and written in one go once no such task is next (in the pipe too, read without
waiting), or after COALESCE_S: the parent then handles those messages
after the instant's starts rather than taking a core from them (bench/PROFILE.md, sessions 14
and 16). Everything it sends goes through that one buffer, in order.

A lock serialises writes, and nothing about a task is sent after its "done". A graceful stop
names its task's `n` (it may arrive just before its task), so a late one never reaches the
next task. A revoke of task n succeeds if the main thread has not taken it yet: both are
decided under the lock, so the parent learns for sure whether a queued task will run. If the
parent goes away the pipes close: the process ends (at once mid-task).

What a task costs beyond the job itself is kept small: the log capture (a root handler and
two line writers) is installed once per process and forwards only while a task is active;
resolved functions are cached by 'module:qualname' (only successes: an import error is tried
again by the next run, and deactivates the job); the "done" outcome leaves the state out, as
the parent knows the last checkpoint already.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import io
import itertools
import logging
import os
import pickle
import reprlib
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from nightshift.context import Context
from nightshift.domain.signals import Signal
from nightshift.worker.executor import error_info
from nightshift.worker.framing import complete_frames, frame

PROGRESS_INTERVAL_S = 0.1
#: The longest a message is kept while the process works through tasks due together.
COALESCE_S = 0.02
_READ_SIZE = 1 << 16
_INTERNAL_FILES = (os.path.abspath(__file__), os.path.dirname(os.path.abspath(asyncio.__file__)))


def main(
    conn: Connection,
    tasks: Connection,
    imports: list[str],
    sys_path: list[str],
    log_level: str | int = "INFO",
) -> None:
    """The child's entry point (the target of the started process)."""
    # Ctrl-C in a terminal, or a service manager's SIGTERM, may reach the whole process group:
    # the parent decides when we end (it asks jobs to stop first), and if the parent dies, the
    # receiver thread sees the pipe close and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for path in reversed(sys_path):
        if path not in sys.path:
            sys.path.insert(0, path)
    errors = []
    for name in imports:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    channel = _Channel(conn)
    threading.Thread(
        target=channel.receive_forever, name="nightshift-receiver", daemon=True
    ).start()
    threading.Thread(target=channel.flush_forever, name="nightshift-flusher", daemon=True).start()
    level = logging.getLevelName(log_level) if isinstance(log_level, str) else log_level
    if not isinstance(level, int):
        level = logging.INFO
    capture = _Capture(channel, level)
    frames = _Frames(tasks.fileno())
    channel.send(("ready", errors))
    while True:
        if channel.coalescing and not _due_next(frames):
            channel.flush()  # nothing due to start next: the parent hears everything now
        try:
            message = frames.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if message[0] == "shutdown" or channel.orphaned:
            break
        if message[0] != "task":
            continue
        n, payload = message[1], message[2]
        at = payload.get("at")
        if at is not None:
            channel.hold(n, at)
        if channel.take(n):
            if at is not None:
                channel.coalesce()
                channel.send(("began", n, time.time()))
            _run_task(n, payload, message[3], channel, capture)


def _due_next(frames: _Frames) -> bool:
    """Whether the next task is one held for a time that has come (the runs of an instant
    share one: `Clock.wall`). What lies in the pipe is read for it without waiting: a big
    instant's tasks take several reads, and the parent would otherwise hear of the first ones
    while the children still start the rest."""
    message = frames.peek()
    if message is None and frames.fill():
        message = frames.peek()
    if message is None or message[0] != "task":
        return False
    at = message[2].get("at")
    return at is not None and at <= time.time()


class _Frames:
    """The task pipe's messages (multiprocessing's framing, worker/framing.py), read through a
    buffer: whatever lies in the pipe comes in one read, and every message it completes is
    kept for the next calls."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._ready: deque[bytearray] = deque()
        self._peeked: Any = None
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def peek(self) -> Any:
        """The next message if it has been read already (it stays next), else None."""
        if self._peeked is None and self._ready:
            self._peeked = pickle.loads(self._ready.popleft())
        return self._peeked

    def recv(self) -> Any:
        """The next message (blocking); EOFError once the pipe is closed."""
        if self._peeked is not None:
            message, self._peeked = self._peeked, None
            return message
        while not self._ready:
            self._read()
        return pickle.loads(self._ready.popleft())

    def fill(self) -> bool:
        """Read what lies in the pipe now, without waiting; whether a message came of it."""
        with contextlib.suppress(EOFError):  # the next recv says so
            while not self._ready and self._poll.poll(0):
                self._read()
        return bool(self._ready)

    def _read(self) -> None:
        # A pipe gives at most _READ_SIZE per read, whatever its capacity (up to 1 MiB).
        chunk = os.read(self._fd, _READ_SIZE)
        if not chunk:
            raise EOFError
        self._buffer += chunk
        messages, used = complete_frames(self._buffer)
        if used:
            del self._buffer[:used]
            self._ready.extend(messages)


class _Pending:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: int | None = None
        self.error: str | None = None

    def resolve(self, value: int | None, error: str | None) -> None:
        self.value, self.error = value, error
        self.event.set()


class _Channel:
    """The child's end of the pipe, safe to use from any thread of the job."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a revoke, the parent went, a hold
        self._held: list[bytes] | None = None  # messages kept while coalescing (see flush)
        self._held_since = 0.0
        self._active = False
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self.orphaned = False  # the parent closed the pipe
        self._taken = 0  # the last task the main thread took
        self._revoked: set[int] = set()
        #: The tasks (`n`) asked to stop (a set, written by the receiver thread; a stop may
        #: arrive just before its task starts, or just after it ended).
        self.stops: set[int] = set()

    @property
    def active(self) -> bool:
        return self._active

    @property
    def coalescing(self) -> bool:
        """Messages are being kept (only the main thread starts keeping them)."""
        return self._held is not None

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._write(_dumps(message))

    def _write(self, data: bytes) -> None:
        """Send a message, or keep it while coalescing (under the lock)."""
        if self._held is None:
            self._conn.send_bytes(data)
        else:
            self._held.append(data)

    def coalesce(self) -> None:
        """Keep what is sent from now on until `flush`, or COALESCE_S at most (the flusher
        thread: a task that runs long has its messages sent all the same)."""
        with self._lock:
            if self._held is None:
                self._held = []
                self._held_since = time.monotonic()
                self._changed.notify_all()

    def flush(self) -> None:
        if self._held is None:  # only this thread starts keeping: nothing to send
            return
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held:
            fd = self._conn.fileno()
            view = memoryview(b"".join(frame(data) for data in held))
            while view:
                view = view[os.write(fd, view) :]

    def flush_forever(self) -> None:
        """The flusher thread: what is kept longer than COALESCE_S goes."""
        with self._changed:
            while True:
                if self._held is None:
                    self._changed.wait()
                    continue
                left = self._held_since + COALESCE_S - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                with contextlib.suppress(OSError):  # the parent is gone: the receiver says so
                    self._flush()

    def take(self, n: int) -> bool:
        """The main thread starts task n now, unless it was revoked."""
        with self._lock:
            if n in self._revoked:
                self._revoked.discard(n)
                return False
            if self.orphaned:
                os._exit(1)
            self._taken = n
            self._active = True
            return True

    def hold(self, n: int, at: float) -> None:
        """The main thread: wait for task n's time (time.time() `at`), unless it is revoked
        meanwhile (then `take` skips it)."""
        with self._changed:
            while n not in self._revoked and not self.orphaned:
                left = at - time.time()
                if left <= 0:
                    return
                self._changed.wait(left)

    def revoke(self, n: int) -> None:
        """The receiver thread: answer whether task n will not run."""
        with self._lock:
            ok = n > self._taken
            if ok:
                self._revoked.add(n)
                self._changed.notify_all()
            with contextlib.suppress(OSError):  # the parent is gone: the next recv says so
                self._write(_dumps(("revoked", n, ok)))

    def emit(self, message: tuple[Any, ...]) -> None:
        """Send a message about the current task; dropped once the task is done."""
        with self._lock:
            if self._active:
                self._write(_dumps(message))

    def finish(self, message: tuple[Any, ...], n: int) -> None:
        with self._lock:
            self._write(_dumps(message))
            self._active = False
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.resolve(None, "the run has ended")
        if self.stops:  # in place: the receiver thread may be adding the next task's stop
            for old in [s for s in list(self.stops) if s <= n]:
                self.stops.discard(old)

    def enqueue(self, job: str, params: dict[str, Any] | None, low_priority: bool) -> int:
        waiter = _Pending()
        with self._lock:
            if not self._active:
                raise LookupError("the run has ended")
            request_id = next(self._ids)
            self._pending[request_id] = waiter
            self._write(_dumps(("enqueue", request_id, job, params, low_priority)))
            self._flush()  # it waits for the answer
        waiter.event.wait()
        if waiter.error is not None or waiter.value is None:
            raise LookupError(waiter.error or "no run was created")
        return waiter.value

    def receive_forever(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                # The parent is gone: nobody can take an outcome any more.
                with self._lock:
                    self.orphaned = True
                    if self._active:
                        os._exit(1)
                    self._changed.notify_all()
                return
            if message[0] == "reply":
                with self._lock:
                    waiter = self._pending.pop(message[1], None)
                if waiter is not None:
                    waiter.resolve(message[2], message[3])
            elif message[0] == "stop":
                self.stops.add(message[1])
            elif message[0] == "revoke":
                self.revoke(message[1])


def _dumps(message: tuple[Any, ...]) -> bytes:
    # Plain pickle: multiprocessing's ForkingPickler copies its reducer table on every call.
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


class _Backend:
    """The context's backend in a worker: messages to the parent, throttled progress."""

    def __init__(self, channel: _Channel, n: int) -> None:
        self._channel = channel
        self._n = n
        self._lock = threading.Lock()
        self._last_sent = float("-inf")
        self._pending: tuple[float, float | None] | None = None
        self._timer: threading.Timer | None = None

    def progress(self, done: float, total: float | None) -> None:
        with self._lock:
            now = time.monotonic()
            wait = PROGRESS_INTERVAL_S - (now - self._last_sent)
            if wait <= 0 and self._timer is None:
                self._send_progress((done, total), now)
                return
            self._pending = (done, total)
            if self._timer is None:
                self._timer = threading.Timer(max(wait, 0.0), self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending is not None:
                self._send_progress(self._pending, time.monotonic())

    def _send_progress(self, value: tuple[float, float | None], now: float) -> None:
        self._pending = None
        self._last_sent = now
        self._channel.emit(("progress", value[0], value[1]))

    def flush(self) -> None:
        """Deliver the last throttled progress value now (before "done")."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._pending is not None:
                self._send_progress(self._pending, time.monotonic())

    def checkpoint(self, state: Any) -> None:
        self._channel.emit(("checkpoint", state))

    def enqueue(self, job: str, params: dict[str, Any] | None, low_priority: bool) -> int:
        return self._channel.enqueue(job, params, low_priority)

    def should_stop(self) -> bool:
        return self._n in self._channel.stops


def _level_name(levelno: int) -> str:
    for level, name in (
        (logging.CRITICAL, "CRITICAL"),
        (logging.ERROR, "ERROR"),
        (logging.WARNING, "WARNING"),
        (logging.INFO, "INFO"),
    ):
        if levelno >= level:
            return name
    return "DEBUG"


class _ForwardHandler(logging.Handler):
    """Sends every record (message and exception text) to the parent as a log line."""

    def __init__(self, channel: _Channel, level: int) -> None:
        super().__init__(level)
        self._channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not self._channel.active:
            # Between tasks (a job's leftover thread): where it went before the handler was
            # permanent, the last-resort handler (stderr, warnings and up).
            last_resort = logging.lastResort
            if last_resort is not None and record.levelno >= last_resort.level:
                last_resort.handle(record)
            return
        try:
            self._channel.emit(("log", _level_name(record.levelno), self.format(record)))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _LineWriter(io.TextIOBase):
    """A text stream whose complete lines become log lines (print() inside a job)."""

    def __init__(self, channel: _Channel, level: str) -> None:
        super().__init__()
        self._channel = channel
        self._level = level
        self._buffer = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._buffer += text
            if "\n" not in self._buffer:
                return len(text)
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def drain(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._line(rest)

    def _line(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.strip():
            self._channel.emit(("log", self._level, line))


class _Capture:
    """During a task: root-logger records and print() output become the run's log lines.

    Installed once per process: a handler per task cost a Handler (registered under logging's
    lock), a flush of every logger's level cache and two new streams, on every run.
    """

    def __init__(self, channel: _Channel, level: int) -> None:
        self._level = level
        self._handler = _ForwardHandler(channel, level)
        self._stdout = _LineWriter(channel, "INFO")
        self._stderr = _LineWriter(channel, "WARNING")
        self._saved: tuple[Any, Any] = (sys.stdout, sys.stderr)
        root = logging.getLogger()
        root.addHandler(self._handler)
        root.setLevel(level)

    def begin(self) -> None:
        root = logging.root
        # A job may have changed the root logger (level, basicConfig(force=True)): repaired
        # here, cheaply, rather than set up anew.
        if root.level != self._level:
            root.setLevel(self._level)
        if self._handler not in root.handlers:
            root.addHandler(self._handler)
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self._stdout, self._stderr

    def end(self) -> None:
        sys.stdout, sys.stderr = self._saved
        self._stdout.drain()
        self._stderr.drain()


def _run_task(
    n: int, payload: dict[str, Any], stop: bool, channel: _Channel, capture: _Capture
) -> None:
    """Run task n (taken: the channel is active) and send its "done"."""
    if stop:  # asked before the task even reached this process
        channel.stops.add(n)
    backend = _Backend(channel, n)
    try:
        ctx = Context(
            params=payload.get("params") or {},
            app=payload.get("app", "default"),
            run_id=payload.get("run_id", 0),
            job=payload.get("job", "job"),
            attempt=payload.get("attempt", 1),
            state=payload.get("state"),
            backend=backend,
        )
        capture.begin()
        began = time.perf_counter()
        try:
            outcome = _call(payload["function"], ctx, backend)
        finally:
            capture.end()
        outcome["took"] = time.perf_counter() - began
        backend.flush()
    except BaseException as exc:  # a failure of ours: report it rather than hang the parent
        outcome = {"status": "failed", "error": error_info(exc), "permanent": False}
    channel.finish(("done", outcome), n)


#: Resolved job functions of this process, by 'module:qualname' (a recycle starts new
#: processes, so reloaded code is seen).
_functions: dict[str, Callable[..., Any]] = {}


def resolve(reference: str) -> Any:
    """Import 'module:qualname' and return the object (ImportError, AttributeError...)."""
    module_name, sep, qualname = reference.partition(":")
    if not sep or not module_name or not qualname:
        raise ImportError(f"{reference!r} is not of the form 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError:
        importlib.invalidate_caches()  # a module created after this process started
        target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


_INVALID_RETURN = "invalid return value {} (expected nightshift.OK, SLEEP, STOP, EXIT or None)"


def _call(reference: str, ctx: Context, backend: _Backend) -> dict[str, Any]:
    function = _functions.get(reference)
    if function is None:
        try:
            target = resolve(reference)
        except (ImportError, AttributeError, SyntaxError) as exc:
            return _cannot_import(reference, exc)
        except BaseException as exc:  # the module raised something else while importing
            return {"status": "failed", "error": error_info(_user_frames(exc)), "permanent": False}
        if not callable(target):
            return _cannot_import(reference, TypeError(f"{target!r} is not a function"))
        function = _functions[reference] = target

    try:
        value = function(ctx)
        if value is not None:
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
            elif inspect.isawaitable(value):
                value = asyncio.run(_await(value))
    except BaseException as exc:
        return {"status": "failed", "error": error_info(_user_frames(exc)), "permanent": False}

    returned = _signal(value)
    if returned is None:
        message = _INVALID_RETURN.format(reprlib.repr(value))
        return {
            "status": "failed",
            "error": {"type": "InvalidReturnValue", "message": message, "traceback": None},
            "permanent": True,
            "deactivate": message,
        }
    return {
        "status": "stopped" if backend.should_stop() else "succeeded",
        "result": {"returned": returned.value},
        "signal": returned.value,
    }


def _cannot_import(reference: str, exc: BaseException) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": error_info(exc),
        "permanent": True,
        "deactivate": f"cannot import {reference!r}: {exc}",
    }


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _signal(value: Any) -> Signal | None:
    if value is None:
        return Signal.OK
    if isinstance(value, Signal):
        return value
    if isinstance(value, str) and value in Signal._value2member_map_:
        return Signal(value)
    return None


def _user_frames(exc: BaseException) -> BaseException:
    """Drop the leading frames of this module and asyncio from the traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_INTERNAL_FILES):
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb
    return exc
