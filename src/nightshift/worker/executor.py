"""The contract every job kind implements, and what a run sees of the worker while it executes.

A kind validates its `config` when a job is saved and executes one run when a worker claims it.
Timeouts and force-stops are uniform: the worker cancels the task running `execute`; a kind that
holds outside resources (a child process, a socket) releases them on `asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from nightshift.domain.models import JSON, Job, JobKind
from nightshift.domain.signals import Signal


@dataclass(slots=True)
class Task:
    """One run to execute, with what its job says about it."""

    run_id: int
    job: Job
    params: JSON
    attempt: int = 1
    state: Any = None  # the last checkpoint of this fire, when resuming
    is_test: bool = False
    #: Where the run stands among runs waiting for the same slots (smaller goes first): the
    #: claim order (low priority last, then fair-share rank, due time, id).
    order: tuple[Any, ...] = ()
    #: When the run may start (`time.time()`), for a kind with `starts_on_time` (the python
    #: pool's processes start it at its time themselves); None for the others, which the
    #: worker hands their runs at their time, and for runs due now.
    start_at: float | None = None
    #: For such a run: seconds after its time by which it must have begun, or it is withdrawn
    #: unstarted (`Withdrawn`) for another worker to take; None waits as long as it takes.
    withdraw_after: float | None = None


class Withdrawn(Exception):
    """A run held for its time had not begun when it should have (`Task.withdraw_after`):
    it never ran, and the worker gives it back."""


@dataclass(slots=True)
class Outcome:
    """What an execution produced; a pure policy turns it into the run's next status."""

    status: Literal["succeeded", "failed", "stopped"]
    result: Any = None
    error: JSON | None = None  # {"type", "message", "traceback"}
    permanent: bool = False  # a failure that retrying cannot mend
    signal: Signal | None = None  # python jobs: what the return value asks of the job
    deactivate: str | None = None  # a reason to disable the job (import error, bad return value)
    state: Any = None  # the last checkpoint, when the run saved one
    #: Seconds the job itself ran, when the kind measures it (the python kind's process):
    #: without the waits and hand-overs around it.
    took: float | None = None


class RunIO(Protocol):
    """The run's side channel to the worker; every call is cheap and never blocks on the store."""

    def log(self, level: str, message: str) -> None:
        """Append a line to the run's log (level: DEBUG, INFO, WARNING, ERROR, CRITICAL)."""

    def progress(self, done: float, total: float | None = None) -> None:
        """Report progress; with `total` it becomes a percentage, without it `done` is one."""

    def checkpoint(self, state: Any) -> None:
        """Save JSON-serialisable state that a resumed or recovered attempt starts from."""

    async def enqueue(self, job: str, params: JSON | None, low_priority: bool) -> int:
        """Create a child run of the named job in the same app; returns its id."""

    def started(self, at: float | None = None) -> None:
        """The execution really begins now, or began at `at` (`time.time()`, as another
        process reported it). A kind that waits for a slot, like the python process pool,
        calls this when the run gets one; timeouts count from here."""

    def should_stop(self) -> bool:
        """Whether a graceful stop was asked for."""

    @property
    def stop_event(self) -> asyncio.Event:
        """Set when a graceful stop is asked for, for kinds that wait on it."""


class Executor(Protocol):
    kind: JobKind
    #: True for kinds that call `RunIO.started()` themselves once a slot is free; for the
    #: others the worker calls it when `execute` begins.
    reports_start: bool

    def validate(self, config: JSON) -> JSON:
        """Return the normalised config, or raise InvalidInput naming the field (`config.url`)."""

    async def start(self) -> None:
        """Acquire long-lived resources (process pools, HTTP clients)."""

    async def close(self) -> None:
        """Release them; runs still executing are cancelled first by the worker."""

    async def execute(self, task: Task, io: RunIO) -> Outcome:
        """Run the task to an outcome. Exceptions of the kind itself become failed outcomes."""


def error_info(exc: BaseException, *, with_traceback: bool = True) -> JSON:
    import traceback

    return {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "traceback": "".join(traceback.format_exception(exc)) if with_traceback else None,
    }


@dataclass(slots=True)
class MemoryIO:
    """A RunIO that keeps everything in memory: for tests and the `test` operation's preview."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    progress_value: tuple[float, float | None] | None = None
    state: Any = None
    children: list[tuple[str, JSON | None, bool]] = field(default_factory=list)
    started_count: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def log(self, level: str, message: str) -> None:
        self.lines.append((level, message))

    def progress(self, done: float, total: float | None = None) -> None:
        self.progress_value = (done, total)

    def checkpoint(self, state: Any) -> None:
        self.state = state

    async def enqueue(self, job: str, params: JSON | None, low_priority: bool) -> int:
        self.children.append((job, params, low_priority))
        return len(self.children)

    def started(self, at: float | None = None) -> None:
        self.started_count += 1

    def should_stop(self) -> bool:
        return self._stop.is_set()

    @property
    def stop_event(self) -> asyncio.Event:
        return self._stop
