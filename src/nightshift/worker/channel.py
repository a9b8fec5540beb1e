"""A run's side channel while it executes: logs, progress, checkpoints, children, stop requests.

Everything is buffered in memory and written by the worker's next sync, so a job that logs in
a tight loop costs the store one batched insert per heartbeat, not one commit per line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from nightshift.clock import Clock
from nightshift.domain.models import JSON, Job, Run
from nightshift.store.base import RunProgress

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EnqueueFn = Callable[[Run, str, JSON | None, bool], Awaitable[int]]


class RunChannel:
    def __init__(self, run: Run, job: Job, clock: Clock, enqueue: EnqueueFn) -> None:
        self.run = run
        self.job = job
        self._clock = clock
        self._enqueue = enqueue
        self._logs: list[tuple[datetime, str, str]] = []
        self._progress: float | None = run.progress
        self._progress_dirty = False
        self.state: Any = run.state
        self._state_dirty = False
        self._stopping = False
        self._stop: asyncio.Event | None = None  # made when someone waits: most runs never do
        self._on_stop: list[Callable[[], None]] = []
        self.kill_reason: str | None = None
        self.completing = False  # the outcome is being recorded
        self.exec_task: asyncio.Task[Any] | None = None  # while the executor runs
        self.supervisor: asyncio.Task[Any] | None = None  # the task that supervises it
        #: When the execution really began (a python run may first wait for a process).
        self.started_at: datetime | None = None
        self.early = False  # claimed before its time: held until then
        self._deadline: asyncio.TimerHandle | None = None

    # -- RunIO --------------------------------------------------------------------------------
    def log(self, level: str, message: str) -> None:
        level = level.upper()
        self._logs.append((self._clock.now(), level if level in LEVELS else "INFO", message))

    def progress(self, done: float, total: float | None = None) -> None:
        value = 100.0 * done / total if total else float(done)
        self._progress = max(0.0, min(100.0, value))
        self._progress_dirty = True

    def checkpoint(self, state: Any) -> None:
        self.state = state
        self._state_dirty = True

    async def enqueue(self, job: str, params: JSON | None, low_priority: bool) -> int:
        return await self._enqueue(self.run, job, params, low_priority)

    def started(self, at: float | None = None) -> None:
        if self.started_at is not None:
            return
        # The reported moment converted, not now minus how long ago: this thread may lose the
        # interpreter between two clock reads (a recorded start 2-11 ms late, session 16).
        self.started_at = self._clock.now() if at is None else self._clock.from_wall(at)
        if self.job.timeout_s:
            ago = 0.0 if at is None else max(0.0, time.time() - at)
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.job.timeout_s - ago, self.kill, "timeout")

    def should_stop(self) -> bool:
        return self._stopping

    @property
    def stop_event(self) -> asyncio.Event:
        if self._stop is None:
            self._stop = asyncio.Event()
            if self._stopping:
                self._stop.set()
        return self._stop

    # -- worker side --------------------------------------------------------------------------
    @property
    def progress_value(self) -> float | None:
        return self._progress

    def request_stop(self) -> None:
        self._stopping = True
        if self._stop is not None:
            self._stop.set()
        callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when a graceful stop is asked for (at once if it already was):
        the python pool relays it to the child running the job without polling."""
        if self._stopping:
            callback()
        else:
            self._on_stop.append(callback)

    def kill(self, reason: str) -> None:
        """End the execution now (timeout, force stop, replace, shutdown, lost lease)."""
        if self.kill_reason is not None:
            return  # already on its way out
        self.kill_reason = reason
        if self.exec_task is not None and not self.exec_task.done():
            self.exec_task.cancel()

    def finished(self) -> None:
        """The execution is over: its timeout no longer applies, nor do stop callbacks."""
        # The pool's callback holds its task, which holds this channel: a cycle per run that
        # only the cyclic collector would free.
        self._on_stop = []
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def drain(self) -> RunProgress:
        update = RunProgress(
            run_id=self.run.id,
            progress=self._progress if self._progress_dirty else None,
            state=self.state,
            state_changed=self._state_dirty,
            logs=self._logs,
        )
        self._logs = []
        self._progress_dirty = self._state_dirty = False
        return update

    def restore(self, update: RunProgress) -> None:
        """Put back what a failed sync could not write, so the next one carries it."""
        self._logs = update.logs + self._logs
        if update.progress is not None and not self._progress_dirty:
            self._progress_dirty = True
        if update.state_changed:
            self._state_dirty = True
