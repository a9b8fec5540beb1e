"""The worker: claim due runs under a lease, execute them by kind, record their outcomes.

`run_once()` claims one batch and waits until it is recorded (for tests); `run(stop)` keeps the
slots full, waking on local enqueues, on completions, at the next due run, or on a slow poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.models import JSON, JobKind, Run
from nightshift.domain.policy import decide
from nightshift.domain.status import RunStatus
from nightshift.outage import FailureStreak
from nightshift.store.base import ClaimedRun, Completion, NewRun, Store
from nightshift.timing import fire_after_sleep
from nightshift.worker.channel import RunChannel
from nightshift.worker.executor import Executor, Outcome, Task, error_info
from nightshift.worker.owner import is_dead, make_owner

log = logging.getLogger("nightshift.worker")

#: How often an idle worker looks for runs of other processes when no notifications arrive.
POLL_S = 1.0
_PROCESS_KINDS = frozenset({JobKind.PYTHON})  # kinds that need a process slot


class Worker:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        executors: dict[JobKind, Executor],
        *,
        owner: str | None = None,
        notified: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.executors = executors
        self.owner = owner or make_owner()
        #: True while runs added by other processes arrive as notifications (`wake()`).
        self.notified = notified
        self._inflight: dict[int, RunChannel] = {}
        self._supervisors: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._completions: asyncio.Queue[tuple[Completion, asyncio.Future[bool]]] = asyncio.Queue()
        self._background: list[asyncio.Task[None]] = []
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        for executor in self.executors.values():
            await executor.start()
        self._background = [
            asyncio.create_task(self._completer(), name="completer"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        await self.recover_at_start()

    async def close(self, grace_s: float | None = None) -> None:
        """Stop claiming; let executing runs finish within the grace period, then return the
        rest to pending with their checkpoints."""
        self._closing = True
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._supervisors:
            await asyncio.wait(set(self._supervisors), timeout=grace)
        for chan in list(self._inflight.values()):
            chan.kill("shutdown")
        if self._supervisors:
            await asyncio.wait(set(self._supervisors))
        await self._completions.join()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for executor in self.executors.values():
            await executor.close()

    async def recover_at_start(self) -> int:
        """Runs held by a dead predecessor on this host go back now, without waiting for leases."""
        owners = await asyncio.to_thread(self.store.lease_owners)
        dead = [o for o in owners if is_dead(o, self.owner)]
        now = self.clock.now()
        if dead:
            await asyncio.to_thread(self.store.expire_leases, dead, now)
            log.warning("recovering runs of %d dead worker(s): %s", len(dead), ", ".join(dead))
        return await asyncio.to_thread(
            self.store.recover_expired, now, self.settings.max_lost_attempts
        )

    # -- stepping -------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run_once(self) -> bool:
        """Claim one batch, execute it and wait until every outcome is recorded."""
        started = await self._claim_and_start()
        if started:
            await asyncio.wait(started)
            await self._completions.join()
        return bool(started)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the slots full until `stop`. Idle, it waits for a wake (a local enqueue or
        completion, a NOTIFY from another process), for the next run that becomes due, or for
        the poll interval: poll_s while notifications arrive, POLL_S otherwise. Database errors
        are logged and retried; the loop itself never ends early."""
        failures = FailureStreak(log, "claiming")
        while not stop.is_set() and not self._closing:
            self._wake.clear()
            try:
                started = await self._claim_and_start()
                failures.succeeded()
                if started and self._free_slots():
                    continue
                next_due = await asyncio.to_thread(self.store.next_run_due, self.clock.now())
            except Exception as exc:
                failures.failed(exc)
                await _wait_any(asyncio.Event(), stop, timeout=POLL_S)
                continue
            wait = self.settings.poll_s if self.notified() else POLL_S
            if next_due is not None:
                wait = min(wait, max(0.0, (next_due - self.clock.now()).total_seconds()))
            await _wait_any(self._wake, stop, timeout=wait)

    # -- claiming -------------------------------------------------------------------------------
    def _free_slots(self) -> dict[str, int]:
        in_process = sum(1 for c in self._inflight.values() if c.job.kind in _PROCESS_KINDS)
        in_loop = len(self._inflight) - in_process
        free = {}
        process_kinds = [str(k) for k in self.executors if k in _PROCESS_KINDS]
        loop_kinds = [str(k) for k in self.executors if k not in _PROCESS_KINDS]
        if process_kinds and self.settings.worker_processes > in_process:
            free[",".join(process_kinds)] = self.settings.worker_processes - in_process
        if loop_kinds and self.settings.worker_concurrency > in_loop:
            free[",".join(loop_kinds)] = self.settings.worker_concurrency - in_loop
        return free

    async def _claim_and_start(self) -> set[asyncio.Task[None]]:
        started: set[asyncio.Task[None]] = set()
        if self._closing:
            return started
        for kinds, limit in self._free_slots().items():
            claimed = await asyncio.to_thread(
                self.store.claim,
                self.owner,
                self.clock.now(),
                self.settings.lease_s,
                limit,
                kinds.split(","),
            )
            for item in claimed:
                started.add(self._start(item))
        return started

    def _start(self, claimed: ClaimedRun) -> asyncio.Task[None]:
        chan = RunChannel(claimed.run, claimed.job, self.clock, self._enqueue_child)
        self._inflight[claimed.run.id] = chan
        task = asyncio.create_task(self._supervise(chan), name=f"run-{claimed.run.id}")
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)
        return task

    # -- executing ------------------------------------------------------------------------------
    async def _supervise(self, chan: RunChannel) -> None:
        run, job = chan.run, chan.job
        try:
            outcome = await self._execute(chan)
            if chan.kill_reason in ("shutdown", "lost"):
                return  # released below / owned by another attempt now
            completion = self._completion(chan, outcome)
            chan.completing = True  # its lease ends with the completion: not "lost" after it
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            await self._completions.put((completion, future))
            if not await future:
                log.warning("run %s: result discarded, another attempt holds it", run.id)
        except Exception:
            log.exception("run %s of job %s: could not record its outcome", run.id, job.name)
        finally:
            self._inflight.pop(run.id, None)
            if chan.kill_reason == "shutdown":
                await asyncio.to_thread(
                    self.store.release, self.owner, [run.id], {run.id: chan.state}, self.clock.now()
                )
            self._wake.set()

    async def _execute(self, chan: RunChannel) -> Outcome:
        run, job = chan.run, chan.job
        task = Task(run.id, job, dict(run.params), run.attempt, run.state, run.is_test)
        executor = self.executors[job.kind]
        chan.exec_task = asyncio.create_task(executor.execute(task, chan))
        try:
            done, _ = await asyncio.wait({chan.exec_task}, timeout=job.timeout_s)
        except asyncio.CancelledError:
            chan.kill("shutdown")
            raise
        if not done:
            chan.kill("timeout")
        try:
            return await chan.exec_task
        except asyncio.CancelledError:
            if chan.kill_reason == "timeout":
                message = f"timed out after {job.timeout_s:g} s"
                return Outcome("failed", error={"type": "Timeout", "message": message})
            return Outcome("stopped", state=chan.state)
        except Exception as exc:
            return Outcome("failed", error=error_info(exc), state=chan.state)

    def _completion(self, chan: RunChannel, outcome: Outcome) -> Completion:
        run, job = chan.run, chan.job
        now = self.clock.now()
        state = outcome.state if outcome.state is not None else chan.state
        update = chan.drain()
        completion = Completion(
            run_id=run.id,
            owner=self.owner,
            status=RunStatus.FAILED,
            finished_at=now,
            result=outcome.result,
            error=outcome.error,
            state=state,
            progress=chan.progress_value,
            logs=update.logs,
        )
        if chan.kill_reason == "replaced":
            completion.status, completion.reason = RunStatus.CANCELLED, "replaced"
            return completion
        if chan.kill_reason == "force-stopped":
            completion.status, completion.reason = RunStatus.STOPPED, "force-stopped"
            return completion
        sleep_fire = None
        if outcome.signal is not None and outcome.signal.value == "SLEEP":
            sleep_fire = fire_after_sleep(job, run.started_at or now)
        decision = decide(
            run,
            job,
            status=outcome.status,
            permanent=outcome.permanent,
            signal=outcome.signal,
            deactivate=outcome.deactivate,
            now=now,
            sleep_until_fire=sleep_fire,
        )
        completion.status, completion.job_changes = decision.status, decision.job_changes
        if decision.status == RunStatus.SUCCEEDED and completion.progress is not None:
            completion.progress = 100.0
        if outcome.error:
            completion.logs.append(
                (now, "ERROR", f"{outcome.error['type']}: {outcome.error['message']}")
            )
        if outcome.deactivate:
            completion.logs.append((now, "ERROR", f"job deactivated: {outcome.deactivate}"))
        if decision.retry is not None:
            completion.retry = NewRun(
                job_id=run.job_id,
                run_at=decision.retry.run_at,
                params=run.params,
                scheduled_for=run.scheduled_for,
                low_priority=run.low_priority,
                run_by=run.run_by,
                parent_id=run.parent_id,
                attempt=decision.retry.attempt,
                retry_of=run.retry_of or run.id,
                state=state,
            )
            completion.logs.append(
                (
                    now,
                    "WARNING",
                    f"attempt {run.attempt} failed; attempt {decision.retry.attempt}"
                    f" of {job.retries.max + 1} at {decision.retry.run_at.isoformat()}",
                )
            )
        return completion

    async def _enqueue_child(
        self, parent: Run, job_name: str, params: JSON | None, low_priority: bool
    ) -> int:
        target = await asyncio.to_thread(self.store.find_job, parent.app, job_name)
        if target is None:
            raise LookupError(f"no job named {job_name!r} in app {parent.app!r}")
        now = self.clock.now()
        new = NewRun(
            job_id=target.id,
            run_at=now,
            params=dict(params or {}),
            low_priority=low_priority,
            parent_id=parent.id,
        )
        child = await asyncio.to_thread(self.store.enqueue, new, now)
        self._wake.set()
        return child.id

    # -- background: recording and heartbeats ---------------------------------------------------
    async def _completer(self) -> None:
        """Group commit: every completion waiting when the store is free goes in one transaction."""
        while True:
            batch = [await self._completions.get()]
            while not self._completions.empty():
                batch.append(self._completions.get_nowait())
            failures = FailureStreak(log, f"recording {len(batch)} outcome(s)")
            while True:
                try:
                    results = await asyncio.to_thread(self.store.complete, [c for c, _ in batch])
                    break
                except Exception as exc:
                    failures.failed(exc)
                    await asyncio.sleep(0.5)
            failures.succeeded()
            for (_, future), ok in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(ok)
                self._completions.task_done()

    async def _heartbeat(self) -> None:
        last_recovery = self.clock.monotonic()
        failures = FailureStreak(log, "heartbeat (leases are renewed on the next one)")
        while True:
            await self.clock.sleep(self.settings.heartbeat_s)
            # Only a beat that reached the database ends a failure streak.
            touched = any(c.kill_reason is None for c in self._inflight.values())
            try:
                await self.sync()
                if self.clock.monotonic() - last_recovery >= self.settings.lease_s / 3:
                    last_recovery = self.clock.monotonic()
                    touched = True
                    await asyncio.to_thread(
                        self.store.recover_expired,
                        self.clock.now(),
                        self.settings.max_lost_attempts,
                    )
            except Exception as exc:
                failures.failed(exc)
            else:
                if touched:
                    failures.succeeded()

    async def sync(self) -> None:
        """Renew leases, write progress and logs, and act on stop / kill requests."""
        channels = [c for c in self._inflight.values() if c.kill_reason is None]
        if not channels:
            return
        updates = [c.drain() for c in channels]
        try:
            result = await asyncio.to_thread(
                self.store.sync, self.owner, self.clock.now(), self.settings.lease_s, updates
            )
        except Exception:
            for chan, update in zip(channels, updates, strict=True):
                chan.restore(update)
            raise
        for run_id in result.stopping:
            if (chan := self._inflight.get(run_id)) is not None:
                chan.request_stop()
        for run_id, reason in result.kill.items():
            if (chan := self._inflight.get(run_id)) is not None:
                chan.kill("replaced" if reason == "replaced" else "force-stopped")
        for run_id in result.lost:
            if (chan := self._inflight.get(run_id)) is not None and not chan.completing:
                log.warning("run %s: lease lost, abandoning it", run_id)
                chan.kill("lost")

    @property
    def inflight(self) -> dict[int, Any]:
        return dict(self._inflight)


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    _, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


def lease_deadline(now: datetime, lease_s: float) -> datetime:
    return now + timedelta(seconds=lease_s)
