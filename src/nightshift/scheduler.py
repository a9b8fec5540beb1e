"""The scheduler: `tick(now)` turns due timers into runs; `run()` sleeps until the next fire.

One transaction per batch of due jobs inserts their runs (or skipped records) and advances their
timers, so a crash between the two cannot lose or double a fire; the unique fire key covers a
second scheduler on the same database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from nightshift.clock import Clock
from nightshift.domain.misfire import FirePlan, plan_fires
from nightshift.domain.models import Job
from nightshift.outage import FailureStreak, one_line
from nightshift.store.base import NewRun, Store
from nightshift.timing import fire_after, fires_from_timer
from nightshift.worker.store_calls import StoreCalls

if TYPE_CHECKING:
    # Annotations only: the worker's fork server preloads this module for its store process,
    # and pydantic would add ~90 ms to its start and ~14 MB to every process forked from it.
    from nightshift.config import Settings

log = logging.getLogger("nightshift.scheduler")

#: Grace for catch_up=none: a fire later than this counts as missed during downtime.
MISFIRE_GRACE_S = 60.0
#: How soon to look again when due jobs are held by another scheduler's transaction.
LOCKED_RETRY_S = 0.05
#: `Store.fire_due`, wherever it runs: (now, planner, limit, horizon).
Fire = Callable[[datetime, "FirePlanner", int, datetime], int]


@dataclass(frozen=True)
class FirePlanner:
    """What to do with each due job at `now` (a value: it travels to a store process). A job
    fired ahead of its time is planned as at that time: its fire is then neither missed nor
    late, and only that one fire is made."""

    now: datetime
    catch_up_max: int

    def __call__(self, job: Job) -> FirePlan:
        at = self.now
        if job.next_fire_at is not None and job.next_fire_at > at:
            at = job.next_fire_at
        plan = plan_fires(
            job,
            at,
            fires_from_timer(job),
            catch_up_max=self.catch_up_max,
            misfire_grace_s=MISFIRE_GRACE_S,
        )
        if plan.next_fire_at is None:
            # Either the schedule ended, or an outage was too long to walk: re-time from now.
            plan.next_fire_at = fire_after(job, at)
        return plan


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        *,
        notified: Callable[[], bool] = lambda: False,
        calls: StoreCalls | None = None,
    ) -> None:
        self.store = store
        #: The worker's store process, when there is one: the ticks' transactions go there
        #: (see `run`).
        self.calls = calls if calls is not None and calls.separate_process else None
        self.clock = clock
        self.settings = settings
        #: True while job changes of other processes arrive as notifications (`wake()`).
        self.notified = notified
        self._wake = asyncio.Event()
        self.on_fired: list = []  # callbacks run after a tick created runs (wake local workers)

    # -- one step -------------------------------------------------------------------------------
    def tick(
        self,
        now: datetime | None = None,
        committed: Callable[[], None] | None = None,
        fire: Fire | None = None,
    ) -> int:
        """Fire every job due at `now`, and those due within fire_ahead_s that may be fired
        ahead (see Settings.fire_ahead_s), a batch per transaction; returns how many jobs were
        handled. `committed` is called after each batch that fired some: its runs can be
        claimed while the next batch is fired. `fire` is `Store.fire_due` by default."""
        now = now or self.clock.now()
        fire = fire or self.store.fire_due
        planner = FirePlanner(now, self.settings.catch_up_max)
        horizon = now + self.ahead
        total, size = 0, self.settings.scheduler_batch
        while True:
            handled = fire(now, planner, size, horizon)
            total += handled
            if handled and committed is not None:
                committed()
            if handled < size:
                return total

    def fire_reboot_jobs(self, started_at: datetime) -> int:
        """Enqueue one run of every `@reboot` job for this start of the service. Safe to call
        again with the same `started_at` after a failure: a job whose run for this start exists
        already is left alone."""
        count = 0
        for job in self.store.reboot_jobs():
            slot = started_at + timedelta(seconds=job.start_delay_s)
            latest = self.store.list_runs(job_id=job.id, limit=1)
            if latest and latest[0].scheduled_for == slot:
                continue
            new = NewRun(
                job_id=job.id,
                run_at=slot,
                scheduled_for=slot,
                params=dict(job.config.get("params") or {}),
                low_priority=job.low_priority,
            )
            self.store.enqueue(new, started_at)
            count += 1
        return count

    @property
    def ahead(self) -> timedelta:
        return timedelta(seconds=self.settings.fire_ahead_s)

    # -- the loop -------------------------------------------------------------------------------
    def wake(self) -> None:
        """Re-read the timers now (a job changed, here or in a process that sent a NOTIFY)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, reboot: bool = True) -> None:
        """Fire due jobs until `stop`. Database errors (an outage, a restart) are logged and
        retried every second; the loop itself never ends early."""
        started_at = self.clock.now() if reboot else None
        version: int | None = None
        failures = FailureStreak(log, "scheduler tick")
        loop = asyncio.get_running_loop()
        # Each committed batch wakes the local workers from the tick's thread, on our loop.
        announce = partial(loop.call_soon_threadsafe, self._notify)
        fire = self._fire_through(self.calls, loop) if self.calls is not None else None
        looked_again: datetime | None = None  # a fire in the window looked at once more
        while not stop.is_set():
            self._wake.clear()  # a change from here on wakes the sleep below at once
            try:
                if started_at is not None:
                    await asyncio.to_thread(self.fire_reboot_jobs, started_at)
                    started_at = None
                    self._notify()
                if version is None:
                    version = await asyncio.to_thread(self.store.schedule_version)
                fired = await asyncio.to_thread(self.tick, self.clock.now(), announce, fire)
                next_due = await asyncio.to_thread(self.store.next_fire_due)
            except Exception as exc:
                failures.failed(exc)
                await self._sleep(1.0, stop)
                continue
            failures.succeeded()
            if not fired and next_due is not None and next_due <= self.clock.now():
                # Due jobs that this tick could not take: another scheduler holds them (SKIP
                # LOCKED) and is firing them now, or a replacing fire found a run held by a
                # completion (firing.py). Look again shortly rather than spin.
                await self._sleep(LOCKED_RETRY_S, stop)
                continue
            now = self.clock.now()
            wake_at = next_due
            if next_due is not None and next_due - self.ahead > now:
                wake_at = next_due - self.ahead
            elif next_due is not None and next_due > now and next_due != looked_again:
                # A job within the window was not fired ahead. Another scheduler may hold it,
                # its batch not yet committed: then it is fired now, and waking at its time
                # would tick for nothing at the busiest moment (every instant, with three
                # schedulers: bench/PROFILE.md, session 16). Look once more shortly.
                wake_at = min(next_due, now + timedelta(seconds=LOCKED_RETRY_S))
                looked_again = next_due
            # Else its previous run is still active: it is fired at its time, not looked at
            # again and again until then.
            version = await self._idle(wake_at, version, stop)

    @staticmethod
    def _fire_through(calls: StoreCalls, loop: asyncio.AbstractEventLoop) -> Fire:
        """`fire_due` in the worker's store process, called from the tick's thread. There the
        planning and writing of a big instant take nothing from this process's interpreter,
        which the worker's loop needs to start the runs; and the worker's claims queue between
        the batches on the same lane (first start of 1,000 fires due at once: bench/PROFILE.md,
        session 7)."""

        def fire(now: datetime, planner: FirePlanner, limit: int, horizon: datetime) -> int:
            call = calls.call("claims", "fire_due", now, planner, limit, horizon)
            return asyncio.run_coroutine_threadsafe(call, loop).result()

        return fire

    async def _idle(self, next_due: datetime | None, version: int, stop: asyncio.Event) -> int:
        """Sleep until the earliest fire; wake early when a job changes here (the event), or in
        another process: a NOTIFY sets the same event, and the schedule version is polled as
        the fallback (every poll_s while notifications arrive, else every scheduler_poll_s)."""
        while not stop.is_set():
            poll = self.settings.poll_s if self.notified() else self.settings.scheduler_poll_s
            wait = poll
            if next_due is not None:
                wait = min(wait, max(0.0, (next_due - self.clock.now()).total_seconds()))
            if await self._sleep(wait, stop) or wait <= 0:
                break
            if next_due is not None and self.clock.now() >= next_due:
                break
            try:
                current = await asyncio.to_thread(self.store.schedule_version)
            except Exception as exc:
                log.warning("reading the schedule version failed: %s", one_line(exc))
                break  # the tick retries and backs off
            if current != version:
                return current
        return version

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> bool:
        """Wait up to `seconds`; True when woken by a change or a stop."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        stopper = asyncio.ensure_future(stop.wait())
        done, pending = await asyncio.wait(
            {sleeper, waker, stopper}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        return waker in done or stopper in done

    def _notify(self) -> None:
        for callback in self.on_fired:
            callback()
