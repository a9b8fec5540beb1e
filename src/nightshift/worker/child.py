"""The child process of the python kind: imports user code, then runs one task at a time.

Started by `worker/pool.py` with the "spawn" start method. Messages are tuples over one duplex
pipe; payloads are JSON-safe.

child -> parent: ("ready", [import errors]), ("log", level, message), ("progress", done, total),
("checkpoint", state), ("enqueue", request_id, job, params, low_priority), ("done", outcome).
parent -> child: ("task", payload), ("reply", request_id, run_id | None, error | None),
("shutdown",).

A receiver thread reads the pipe, so the job's thread never does; a lock serialises writes, and
nothing about a task is sent after its "done".
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
import queue
import reprlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from nightshift.context import Context
from nightshift.domain.signals import Signal
from nightshift.worker.executor import error_info

PROGRESS_INTERVAL_S = 0.1
_INTERNAL_FILES = (os.path.abspath(__file__), os.path.dirname(os.path.abspath(asyncio.__file__)))


def main(
    conn: Connection,
    stop_event: Any,
    imports: list[str],
    sys_path: list[str],
    log_level: str | int = "INFO",
) -> None:
    """The child's entry point (the target of the spawned process)."""
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
    channel.send(("ready", errors))
    level = logging.getLevelName(log_level) if isinstance(log_level, str) else log_level
    if not isinstance(level, int):
        level = logging.INFO
    while True:
        message = channel.tasks.get()
        if message[0] == "shutdown":
            break
        if message[0] == "task":
            _run_task(message[1], channel, stop_event, level)


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
        self._active = False
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self.tasks: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)

    def begin(self) -> None:
        with self._lock:
            self._active = True

    def emit(self, message: tuple[Any, ...]) -> None:
        """Send a message about the current task; dropped once the task is done."""
        with self._lock:
            if self._active:
                self._conn.send(message)

    def finish(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)
            self._active = False
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.resolve(None, "the run has ended")

    def enqueue(self, job: str, params: dict[str, Any] | None, low_priority: bool) -> int:
        waiter = _Pending()
        with self._lock:
            if not self._active:
                raise LookupError("the run has ended")
            request_id = next(self._ids)
            self._pending[request_id] = waiter
            self._conn.send(("enqueue", request_id, job, params, low_priority))
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
                if self._active:
                    os._exit(1)
                self.tasks.put(("shutdown",))
                return
            if message[0] == "reply":
                with self._lock:
                    waiter = self._pending.pop(message[1], None)
                if waiter is not None:
                    waiter.resolve(message[2], message[3])
            else:
                self.tasks.put(message)


class _Backend:
    """The context's backend in a worker: messages to the parent, throttled progress."""

    def __init__(self, channel: _Channel, stop_event: Any) -> None:
        self._channel = channel
        self._stop_event = stop_event
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
        return self._stop_event.is_set()


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


@contextlib.contextmanager
def _capture(channel: _Channel, level: int) -> Iterator[None]:
    """During a task: root-logger records and print() output become the run's log lines."""
    root = logging.getLogger()
    handler = _ForwardHandler(channel, level)
    old_level = root.level
    old_stdout, old_stderr = sys.stdout, sys.stderr
    stdout, stderr = _LineWriter(channel, "INFO"), _LineWriter(channel, "WARNING")
    root.addHandler(handler)
    root.setLevel(level)
    sys.stdout, sys.stderr = stdout, stderr
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_stdout, old_stderr
        stdout.drain()
        stderr.drain()
        root.removeHandler(handler)
        root.setLevel(old_level)


def _run_task(payload: dict[str, Any], channel: _Channel, stop_event: Any, level: int) -> None:
    backend = _Backend(channel, stop_event)
    ctx = Context(
        params=payload.get("params") or {},
        app=payload.get("app", "default"),
        run_id=payload.get("run_id", 0),
        job=payload.get("job", "job"),
        attempt=payload.get("attempt", 1),
        state=payload.get("state"),
        backend=backend,
    )
    channel.begin()
    try:
        with _capture(channel, level):
            outcome = _call(payload["function"], ctx, stop_event)
        backend.flush()
    except BaseException as exc:  # a failure of ours: report it rather than hang the parent
        outcome = {"status": "failed", "error": error_info(exc), "permanent": False}
    outcome["state"] = ctx.state
    channel.finish(("done", outcome))


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


def _call(reference: str, ctx: Context, stop_event: Any) -> dict[str, Any]:
    try:
        function = resolve(reference)
    except (ImportError, AttributeError, SyntaxError) as exc:
        return _cannot_import(reference, exc)
    except BaseException as exc:  # the module raised something else while importing
        return {"status": "failed", "error": error_info(_user_frames(exc)), "permanent": False}
    if not callable(function):
        return _cannot_import(reference, TypeError(f"{function!r} is not a function"))

    try:
        value = function(ctx)
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
        "status": "stopped" if stop_event.is_set() else "succeeded",
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
