"""The worker: claim due runs under a lease, execute them by kind, record their outcomes.

`run_once()` claims one batch and waits until it is recorded (for tests); `run(stop)` keeps the
slots full, waking on local enqueues, on completions, at the next due run, or on a slow poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.models import JSON, JobKind, Run
from nightshift.domain.policy import decide
from nightshift.domain.status import RunStatus
from nightshift.errors import Refused
from nightshift.outage import FailureStreak
from nightshift.store.base import ClaimedRun, Completion, NewRun, Store
from nightshift.timing import fire_after_sleep
from nightshift.worker.channel import RunChannel
from nightshift.worker.executor import Executor, Outcome, Task, Withdrawn, error_info
from nightshift.worker.owner import is_dead, make_owner
from nightshift.worker.store_calls import StoreCalls, ThreadCalls

log = logging.getLogger("nightshift.worker")

#: How often an idle worker looks for runs of other processes when no notifications arrive.
POLL_S = 1.0
#: How long before its time a run claimed ahead goes to a kind that starts it on time itself
#: (`starts_on_time`: the python pool's processes). Handing over 1,000 runs due together
#: takes this process ~50 ms; until their time they keep the processes from due runs.
HANDOFF_S = 0.2
#: What a python run is taken to last before one has ended here, to hold runs for their time
#: (`_ahead_room`): a short job's. Held runs of longer ones are given back after fire_ahead_s.
COLD_RUN_S = 0.0005
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
        calls: StoreCalls | None = None,
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
        #: Groups of kinds whose last claim found nothing due: a completion does not make them
        #: worth another claim; `wake()`, the poll and the next due run do.
        self._dry: set[str] = set()
        self._urgent = False  # new work was announced: claim it now, whatever the batch size
        self._wakes = 0  # wake() calls so far: tells a claim whether one came while it ran
        self._run_s: float | None = None  # recent python execution time (moving average)
        self._withdrawn = 0  # runs given back unstarted since the last report
        self.withdrawn_total = 0  # and since the start (a metric)
        self._giving_back: dict[int, Any] | None = None  # withdrawn runs to release, states
        self._given_back: asyncio.Future[None] | None = None  # their release
        #: Groups of kinds whose last claim may have left runs due within fire_ahead_s: it held
        #: all it may (`_ahead_room`). Then the next due run is looked for from now, not from
        #: the horizon.
        self._ahead_left: set[str] = set()
        self._completions: asyncio.Queue[tuple[Completion, RunChannel]] = asyncio.Queue()
        self._background: list[asyncio.Task[None]] = []
        self._closing = False
        self._claims_done = asyncio.Event()  # no claim under way (close() waits for one)
        self._claims_done.set()
        #: The start of the kinds with processes (`start()`); their runs are claimed once done.
        self._processes_ready: asyncio.Task[None] | None = None
        #: Where the store calls run: threads of this process unless the runtime gives a
        #: process of their own (store_process.py).
        self.calls: StoreCalls = calls or ThreadCalls(store)

    async def _call(self, name: str, *args: Any) -> Any:
        """A store call of the claiming side (claims, lookups, recovery)."""
        return await self.calls.call("claims", name, *args)

    async def _record(self, name: str, *args: Any) -> Any:
        """A store call of the recording side (outcomes, heartbeats, releases)."""
        return await self.calls.call("records", name, *args)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the store calls, the kinds and the start-up recovery. The kinds with processes
        start in the background: their processes import the user's modules, which can take
        seconds, and meanwhile the other kinds' runs (and, in `nightshift up`, the API) need
        not wait. Their runs are claimed once the processes are ready (`_free_slots`)."""
        calls = asyncio.ensure_future(self.calls.start())  # meanwhile the executors start
        try:
            for kind, executor in self.executors.items():
                if kind not in _PROCESS_KINDS:
                    await executor.start()
        finally:
            await calls
        processes = [e for k, e in self.executors.items() if k in _PROCESS_KINDS]
        if processes:
            self._processes_ready = asyncio.create_task(
                self._start_processes(processes), name="processes"
            )
        self._background = [
            asyncio.create_task(self._completer(), name="completer"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        await self.recover_at_start()

    async def _start_processes(self, executors: list[Executor]) -> None:
        """Start the kinds with processes, then look for their runs. A process that fails to
        start is started again by its pool: their runs stay pending meanwhile, for any worker."""
        began = self.clock.monotonic()
        try:
            for executor in executors:
                await executor.start()
        except Exception:  # their runs are claimed all the same, and start them on first use
            log.exception("could not start the python processes")
        else:
            took = self.clock.monotonic() - began
            log.info("%d python worker process(es) ready in %.2f s", self.processes_up, took)
        self.wake()

    async def processes_ready(self) -> None:
        """Return once the kinds with processes have started (at once when `start()` was not
        called: they start on their first run then)."""
        if self._processes_ready is not None:
            await asyncio.shield(self._processes_ready)

    async def close(self, grace_s: float | None = None) -> None:
        """Stop claiming; let executing runs finish within the grace period, then return the
        rest to pending with their checkpoints."""
        self._closing = True
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._processes_ready is not None and not self._processes_ready.done():
            self._processes_ready.cancel()  # no run of theirs was claimed: nothing waits
            await asyncio.gather(self._processes_ready, return_exceptions=True)
        # A claim under way: its runs are released when it answers (`_claim_and_start`).
        # Bounded: a claim that does not answer (the database is gone) leaves its runs to the
        # next start's recovery.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._claims_done.wait(), timeout=max(grace, 1.0))
        for chan in list(self._inflight.values()):
            if chan.started_at is None:
                chan.kill("shutdown")  # still waiting for a process: back to pending at once
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
        await self.calls.close()

    async def recover_at_start(self) -> int:
        """Runs held by a dead predecessor on this host go back now, without waiting for leases."""
        owners = await self._call("lease_owners")
        dead = [o for o in owners if is_dead(o, self.owner)]
        now = self.clock.now()
        if dead:
            await self._call("expire_leases", dead, now)
            log.warning("recovering runs of %d dead worker(s): %s", len(dead), ", ".join(dead))
        return await self._call("recover_expired", now, self.settings.max_lost_attempts)

    # -- stepping -------------------------------------------------------------------------------
    def wake(self) -> None:
        """New runs may be due (a local enqueue, a NOTIFY): look for every kind again."""
        self._dry.clear()
        self._urgent = True
        self._wakes += 1
        self._wake.set()

    async def run_once(self) -> bool:
        """Claim one batch, execute it and wait until every outcome is recorded."""
        await self.processes_ready()
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
        next_due: datetime | None = None
        while not stop.is_set() and not self._closing:
            self._wake.clear()
            try:
                if self._free_slots():
                    dry = set(self._dry)
                    started = await self._claim_and_start()
                    failures.succeeded()
                    if started and self._free_slots():
                        continue
                    if self._dry - dry:  # a kind found nothing due: when will it?
                        next_due = await self._call("next_run_due", self._claimed_until())
            except Exception as exc:
                failures.failed(exc)
                await _wait_any(asyncio.Event(), stop, timeout=POLL_S)
                with contextlib.suppress(Exception):  # the next failure says why
                    await self._release_strays()
                continue
            wait = self.settings.poll_s if self.notified() else POLL_S
            if next_due is not None:  # claimed that long before its time (0 or fire_ahead_s)
                now = self.clock.now()
                lead = self._claimed_until() - now
                wait = min(wait, max(0.0, (next_due - lead - now).total_seconds()))
            await _wait_any(self._wake, stop, timeout=wait)
            if not self._wake.is_set():  # the poll interval, or the next due run: look again
                self._dry.clear()
                next_due = None

    async def _release_strays(self) -> None:
        """Hand back the runs held under this worker's lease that it never received: a claim
        can commit and then lose its reply (its store process or connection went away).
        Back to pending now, rather than failed as lost when their leases expire."""
        held = await self._call("held_runs", self.owner)
        strays = [run_id for run_id in held if run_id not in self._inflight]
        if strays:
            count = await self._record("release", self.owner, strays, {}, self.clock.now())
            log.warning("%d claimed run(s) whose claim went unanswered: back to pending", count)

    # -- claiming -------------------------------------------------------------------------------
    @property
    def ahead(self) -> timedelta:
        """How long before their time runs are claimed (they start at it: `_execute`)."""
        return timedelta(seconds=self.settings.fire_ahead_s)

    def _claimed_until(self) -> datetime:
        """Runs due by then were claimed (or are another worker's): now + fire_ahead_s, or now
        when the last claim held as many ahead as it may."""
        now = self.clock.now()
        return now if self._ahead_left else now + self.ahead

    def _free_slots(self) -> dict[str, tuple[int, int | None]]:
        """Kinds to claim, with how many due runs and how many ahead of their time. Python
        runs are claimed ahead of the processes (see `_prefetch`; they wait in claim order for
        one), and only once a share of that room is free, a process would otherwise idle, or
        new work was announced: claims then come in batches without keeping a new run waiting
        behind the ones held here. Runs held for their time (`_ahead_room`) take no process
        until it comes; event-loop runs held for theirs share the loop's slots. No python run
        is claimed while the processes start (`start()`)."""
        # A run whose outcome is being recorded no longer needs a process or a loop slot. One
        # held for its time takes none until the time comes; from then on it takes one (or
        # waits for one) like a due run, though its process may not have reported it begun.
        now = self.clock.now()
        in_process = in_loop = held = 0
        for chan in self._inflight.values():
            if chan.completing:
                continue
            if chan.job.kind not in _PROCESS_KINDS:
                in_loop += 1
            elif chan.early and chan.started_at is None and chan.run.run_at > now:
                held += 1
            else:
                in_process += 1
        free: dict[str, tuple[int, int | None]] = {}
        starting = self._processes_ready is not None and not self._processes_ready.done()
        process_kinds = [] if starting else [str(k) for k in self.executors if k in _PROCESS_KINDS]
        loop_kinds = [str(k) for k in self.executors if k not in _PROCESS_KINDS]
        processes, prefetch = self.settings.worker_processes, self._prefetch()
        room = processes + prefetch - in_process
        # With a store process a claim costs the loop little (its work runs beside it): claim
        # once a quarter of the room is free. With threads, once half is: fewer, bigger claims
        # take fewer turns at the interpreter (each measured, bench/PROFILE.md, session 6).
        share = 4 if self.calls.separate_process else 2
        batch = in_process < processes or share * room >= prefetch or self._urgent
        if process_kinds and room > 0 and batch:
            # Runs ahead come with a claim of due ones: one that finds none is what says the
            # kinds are dry (`_claim_and_start`).
            free[",".join(process_kinds)] = (room, max(0, self._ahead_room() - held))
        if loop_kinds and self.settings.worker_concurrency > in_loop:
            free[",".join(loop_kinds)] = (self.settings.worker_concurrency - in_loop, None)
        return {group: n for group, n in free.items() if group not in self._dry}

    def _ahead_room(self) -> int:
        """How many python runs to hold for their time (Settings.fire_ahead_s): as many as the
        processes start in that long at the recent run time (COLD_RUN_S before a run ended),
        so that a big instant is held whole while long runs are not hoarded away from other
        workers. A guess that was wrong costs at most fire_ahead_s: a held run that has not
        begun that long after its time goes back to pending (`_execute`)."""
        if not self.settings.fire_ahead_s:
            return 0
        work = self.settings.worker_processes * self.settings.fire_ahead_s
        run_s = COLD_RUN_S if self._run_s is None else self._run_s
        return int(work / max(run_s, 1e-4))

    def _count_withdrawn(self) -> None:
        """One log line a second for runs given back unstarted (`Task.withdraw_after`)."""
        self._withdrawn += 1
        self.withdrawn_total += 1
        if self._withdrawn == 1:
            asyncio.get_running_loop().call_later(1.0, self._report_withdrawn)

    def _report_withdrawn(self) -> None:
        count, self._withdrawn = self._withdrawn, 0
        log.info(
            "%d run(s) held for their time had not begun %g s after it (the runs before them "
            "took longer than expected): back to pending, for any worker",
            count,
            self.settings.fire_ahead_s,
        )

    def _prefetch(self) -> int:
        """How many python runs to hold beyond the processes: about worker_prefetch_window_s of
        their work at the recent run time, at most worker_prefetch; none before a run ended.
        Many short runs then go in batches; long ones are not hoarded."""
        if self._run_s is None:
            return 0
        work = self.settings.worker_processes * self.settings.worker_prefetch_window_s
        return min(self.settings.worker_prefetch, int(work / max(self._run_s, 1e-4)))

    def _ran(self, chan: RunChannel, outcome: Outcome) -> None:
        if chan.job.kind not in _PROCESS_KINDS or chan.started_at is None:
            return
        seconds = outcome.took
        if seconds is None:
            seconds = max(0.0, (self.clock.now() - chan.started_at).total_seconds())
        self._run_s = seconds if self._run_s is None else 0.8 * self._run_s + 0.2 * seconds

    async def _claim_and_start(self) -> set[asyncio.Task[None]]:
        started: set[asyncio.Task[None]] = set()
        groups = self._free_slots()
        if self._closing or not groups:
            return started
        slots = [(kinds.split(","), limit, ahead) for kinds, (limit, ahead) in groups.items()]
        self._urgent = False
        wakes = self._wakes
        now = self.clock.now()
        self._claims_done.clear()
        try:
            claimed = await self._call(
                "claim_slots", self.owner, now, self.settings.lease_s, slots, now + self.ahead
            )
            if self._closing and claimed:  # close() began meanwhile: back, never started
                ids = [item.run.id for item in claimed]
                await self._record("release", self.owner, ids, {}, self.clock.now())
                return started
        finally:
            self._claims_done.set()
        got = {str(item.run.kind) for item in claimed}
        early = [item.run.run_at > now for item in claimed]  # claimed ahead of their time
        for group, (_, ahead) in groups.items():
            if ahead is None:
                continue
            kinds = group.split(",")
            held = sum(e for item, e in zip(claimed, early, strict=True) if item.run.kind in kinds)
            if held >= ahead:
                self._ahead_left.add(group)
            else:
                self._ahead_left.discard(group)
        for group in groups:
            if not got.isdisjoint(group.split(",")):
                self._dry.discard(group)
            elif self._wakes == wakes:
                self._dry.add(group)  # nothing due: not again until a wake or the next due run
            # else new runs were announced while the claim ran (a scheduler's batch committed
            # after its snapshot): its "nothing due" is already out of date, look again.
        for item, is_early in zip(claimed, early, strict=True):
            started.add(self._start(item, is_early))
        return started

    def _start(self, claimed: ClaimedRun, early: bool) -> asyncio.Task[None]:
        chan = RunChannel(claimed.run, claimed.job, self.clock, self._enqueue_child)
        chan.early = early
        self._inflight[claimed.run.id] = chan
        task = chan.supervisor = asyncio.create_task(
            self._supervise(chan), name=f"run-{claimed.run.id}"
        )
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)
        return task

    # -- executing ------------------------------------------------------------------------------
    async def _supervise(self, chan: RunChannel) -> None:
        """Execute a run and hand its outcome to the completer, which records it and then
        lets the run go (`_recorded`); a run that ends otherwise is let go here."""
        run, job = chan.run, chan.job
        handed = False
        try:
            outcome = await self._execute(chan)
            self._ran(chan, outcome)
            if self._urgent:
                self._wake.set()  # its process is free for the new work announced
            # Shut down or withdrawn: released below; lost: another attempt owns it now.
            if chan.kill_reason not in ("shutdown", "withdrawn", "lost"):
                completion = self._completion(chan, outcome)
                chan.completing = True  # its lease ends with the completion: not "lost" after it
                self._completions.put_nowait((completion, chan))
                handed = True
                if self.calls.separate_process:
                    # Its process is free: claim now, while the outcome is recorded. The store
                    # process has time for both (+5 % drain); with threads the claim would
                    # take the interpreter from the loop (-4 to -10 %, bench/PROFILE.md).
                    self._wake.set()
        except Exception:
            log.exception("run %s of job %s: could not record its outcome", run.id, job.name)
        finally:
            if not handed:
                try:
                    if chan.kill_reason == "withdrawn":
                        await self._give_back(chan)
                    elif chan.kill_reason == "shutdown":
                        await self._record(
                            "release",
                            self.owner,
                            [run.id],
                            {run.id: chan.state},
                            self.clock.now(),
                        )
                finally:
                    # Known until released: not a stray (see _release_strays).
                    self._inflight.pop(run.id, None)
                if run.exclusive or chan.kill_reason == "withdrawn":
                    self.wake()  # a freed job slot, or a run due again: new work to claim
                else:
                    self._wake.set()  # a free slot: claim more of what is still due

    async def _give_back(self, chan: RunChannel) -> None:
        """Release a withdrawn run to pending in one transaction with the others withdrawn
        at the same moment: a whole instant's may be."""
        if self._giving_back is None:
            self._giving_back = {}
            self._given_back = asyncio.ensure_future(self._release_given_back())
        self._giving_back[chan.run.id] = chan.state
        assert self._given_back is not None
        await asyncio.shield(self._given_back)

    async def _release_given_back(self) -> None:
        await asyncio.sleep(0)  # the runs withdrawn with the first one join it meanwhile
        states, self._giving_back = self._giving_back or {}, None
        await self._record("release", self.owner, list(states), states, self.clock.now())

    def _recorded(self, completion: Completion, chan: RunChannel, recorded: bool) -> None:
        """The completer recorded a run's outcome (or found it fenced out): the run is over."""
        run_id = completion.run_id
        if not recorded:
            # Fenced out: another attempt holds it, or this outcome was recorded by a call
            # whose reply was lost (its store process or connection went away).
            log.warning("run %s: outcome not recorded, the run is no longer held here", run_id)
        self._inflight.pop(run_id, None)
        if chan.run.exclusive or completion.retry is not None:
            self.wake()  # a freed exclusive slot, or a retry: both are new work to claim
        else:
            self._wake.set()  # a free slot: claim more of what is still due

    async def _execute(self, chan: RunChannel) -> Outcome:
        """Run the executor in this task: `chan.kill` cancels it (a timeout armed when the run
        really starts, a force stop, a lost lease, the shutdown)."""
        run, job = chan.run, chan.job
        task = Task(
            run.id, job, dict(run.params), run.attempt, run.state, run.is_test, run.claim_order
        )
        executor = self.executors[job.kind]
        current = chan.supervisor  # this task (asyncio.current_task() costs more, in 3.11)
        assert current is not None
        chan.exec_task = current
        try:
            if chan.early:  # claimed ahead of its time (Settings.fire_ahead_s): it starts at it
                handoff = HANDOFF_S if getattr(executor, "starts_on_time", False) else 0.0
                early = (run.run_at - self.clock.now()).total_seconds()
                if early > handoff:
                    await self.clock.sleep(early - handoff)
                    early = (run.run_at - self.clock.now()).total_seconds()
                if early > 0 and handoff:
                    task.start_at = self.clock.wall(run.run_at)
                    # Held behind a run longer than thought: another worker may start it.
                    task.withdraw_after = self.settings.fire_ahead_s
            if not getattr(executor, "reports_start", False):
                chan.started()
            return await executor.execute(task, chan)
        except Withdrawn:
            if chan.kill_reason is None:
                chan.kill_reason = "withdrawn"
                self._count_withdrawn()
            return Outcome("stopped", state=chan.state)
        except asyncio.CancelledError:
            if chan.kill_reason is None:  # cancelled from outside: the worker is going away
                chan.kill_reason = "shutdown"
                raise
            current.uncancel()
            if chan.kill_reason == "timeout":
                message = f"timed out after {job.timeout_s:g} s"
                return Outcome("failed", error={"type": "Timeout", "message": message})
            return Outcome("stopped", state=chan.state)
        except Exception as exc:
            return Outcome("failed", error=error_info(exc), state=chan.state)
        finally:
            chan.exec_task = None
            chan.finished()

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
            started_at=chan.started_at,
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
        target = await self._call("find_job", parent.app, job_name)
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
        child = await self._call("enqueue", new, now)
        self.wake()
        return child.id

    # -- background: recording and heartbeats ---------------------------------------------------
    async def _completer(self) -> None:
        """Group commit: every completion waiting when the store is free goes in one transaction."""
        while True:
            batch = [await self._completions.get()]
            while not self._completions.empty():
                batch.append(self._completions.get_nowait())
            results = await self._store_outcomes([c for c, _ in batch])
            for (completion, chan), ok in zip(batch, results, strict=True):
                try:
                    self._recorded(completion, chan, ok)
                finally:
                    self._completions.task_done()

    async def _store_outcomes(self, completions: list[Completion]) -> list[bool]:
        """Record outcomes, retrying while the database cannot be reached. Outcomes it refuses
        are recorded one by one, and one that is refused alone becomes a failure saying why:
        one outcome never holds back the others, and no run waits forever."""
        failures = FailureStreak(log, f"recording {len(completions)} outcome(s)")
        replaced = False  # the outcome is already the bare failure that says why
        while True:
            try:
                results = await self._record("complete", completions)
            except Refused as exc:
                if len(completions) > 1:
                    failures.succeeded()
                    return [ok for c in completions for ok in await self._store_outcomes([c])]
                if replaced:  # even the bare failure is refused: keep trying, as for an outage
                    failures.failed(exc)
                    await asyncio.sleep(0.5)
                    continue
                log.error(
                    "run %s: the database refused its outcome: %s", completions[0].run_id, exc
                )
                completions, replaced = [_unstorable(completions[0], str(exc))], True
            except Exception as exc:
                failures.failed(exc)
                await asyncio.sleep(0.5)
            else:
                failures.succeeded()
                return results

    async def _heartbeat(self) -> None:
        last_recovery = self.clock.monotonic()
        failures = FailureStreak(log, "heartbeat (leases are renewed on the next one)")
        while True:
            await self.clock.sleep(self.settings.heartbeat_s)
            # Only a beat that reached the database ends a failure streak.
            touched = any(
                c.kill_reason is None and not c.completing for c in self._inflight.values()
            )
            try:
                await self.sync()
                if self.clock.monotonic() - last_recovery >= self.settings.lease_s / 3:
                    last_recovery = self.clock.monotonic()
                    touched = True
                    await self._record(
                        "recover_expired",
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
        # A run whose outcome is being recorded is the completer's: renewing it too would only
        # report it lost once recorded, and on PostgreSQL lock its row against the completion.
        channels = [
            c for c in self._inflight.values() if c.kill_reason is None and not c.completing
        ]
        if not channels:
            return
        updates = [c.drain() for c in channels]
        try:
            result = await self._record(
                "sync", self.owner, self.clock.now(), self.settings.lease_s, updates
            )
        except Exception:
            for chan, update in zip(channels, updates, strict=True):
                chan.restore(update)
            raise
        for run_id in result.stopping:
            if (chan := self._inflight.get(run_id)) is None:
                continue
            if chan.started_at is None:
                chan.kill("stopped")  # still waiting for a process: it ends stopped, unstarted
            else:
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

    @property
    def processes_up(self) -> int:
        """Processes of the kinds that need one ready for runs (a metric)."""
        return sum(getattr(e, "processes_up", 0) for e in self.executors.values())


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    _, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


def lease_deadline(now: datetime, lease_s: float) -> datetime:
    return now + timedelta(seconds=lease_s)


def _unstorable(completion: Completion, reason: str) -> Completion:
    """What is recorded instead of an outcome the database refused: a failure that says why,
    without the values (result, state, logs) that were refused. Not retried: the same
    execution would produce the same values."""
    message = f"the outcome could not be stored: {reason}"
    return Completion(
        run_id=completion.run_id,
        owner=completion.owner,
        status=RunStatus.FAILED,
        finished_at=completion.finished_at,
        error={"type": "UnstorableOutcome", "message": message, "traceback": None},
        started_at=completion.started_at,
    )
