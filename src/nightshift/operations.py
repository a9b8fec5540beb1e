"""Run operations, shared by the API and the CLI: stop, resume, force stop, cancel, restart and
low priority.

What an operation does to a run is decided by `plan()`, a pure function of the operation and
the run's status (the status machine of `nightshift.domain.status`); the store applies the
decision as one compare-and-set transaction. When a worker changed the status in between, the
operation looks again, so an answer always reflects the status it acted on. An operation that
does not apply to the status raises `Conflict` saying why (the API answers 409); a run of
another app raises `NotFound`, exactly like a missing one.

Force stop applies to a `stopping` run, and also to a `running` one (it is stopped and killed
in one step, as Sidekiq's and Hangfire's operators expect); a worker kills it at its next
heartbeat and records it as `stopped` with the reason "force-stopped", resumable from its last
checkpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from nightshift.clock import Clock
from nightshift.domain.models import Run
from nightshift.domain.status import TERMINAL, RunStatus, can_transition
from nightshift.errors import Conflict, NotFound
from nightshift.store.base import NewRun, RunChange, Store

log = logging.getLogger("nightshift.operations")

S = RunStatus
STOP, RESUME, FORCE_STOP, CANCEL, RESTART = "stop", "resume", "force-stop", "cancel", "restart"
OPERATIONS = (STOP, RESUME, FORCE_STOP, CANCEL, RESTART)
#: A finished run may be restarted: a stopped one is started over (and cancelled).
RESTARTABLE: frozenset[RunStatus] = TERMINAL | {S.STOPPED}
_ATTEMPTS = 3  # looks at a run whose status keeps changing under the operation
_RESTART_REASON = re.compile(r"^restart of run (\d+)$")


@dataclass(frozen=True, slots=True)
class _Rule:
    target: RunStatus
    kill: bool = False
    reason: str | None = None


#: operation -> status it applies to -> what it makes of it.
RULES: dict[str, dict[RunStatus, _Rule]] = {
    STOP: {S.RUNNING: _Rule(S.STOPPING)},
    RESUME: {S.STOPPED: _Rule(S.PENDING, reason="resumed")},
    FORCE_STOP: {
        S.RUNNING: _Rule(S.STOPPING, kill=True, reason="force-stopped"),
        S.STOPPING: _Rule(S.STOPPING, kill=True, reason="force-stopped"),
    },
    CANCEL: {
        S.PENDING: _Rule(S.CANCELLED, reason="cancelled"),
        S.STOPPED: _Rule(S.CANCELLED, reason="cancelled"),
    },
}

#: Why an operation does not apply, by (operation, status); `_refusal` covers the rest.
_WHY: dict[tuple[str, RunStatus], str] = {
    (STOP, S.PENDING): "it has not started: cancel it instead",
    (STOP, S.STOPPING): "it is stopping already: force-stop it to end it now",
    (STOP, S.STOPPED): "it is stopped already",
    (RESUME, S.PENDING): "it is waiting to run already",
    (RESUME, S.RUNNING): "it is running: only a stopped run can be resumed",
    (RESUME, S.STOPPING): "it is still stopping: resume it once it is stopped",
    (FORCE_STOP, S.PENDING): "it has not started: cancel it instead",
    (FORCE_STOP, S.STOPPED): "it is stopped already",
    (CANCEL, S.RUNNING): "it is running: stop it first",
    (CANCEL, S.STOPPING): "it is stopping: wait until it is stopped, or force-stop it first",
    (RESTART, S.PENDING): "it has not run yet",
    (RESTART, S.RUNNING): "it is running: only a finished run can be restarted",
    (RESTART, S.STOPPING): "it is stopping: only a finished run can be restarted",
}


def plan(operation: str, run: Run, who: str | None = None) -> RunChange:
    """What `operation` does to `run` in its current status; Conflict when it does not apply."""
    rule = RULES[operation].get(run.status)
    if rule is None:
        raise Conflict(_refusal(operation, run))
    assert rule.target == run.status or can_transition(run.status, rule.target)
    by = f" by {who}" if who else ""
    # A restarted run keeps its link (its reason) through stops, resumes and cancels.
    reason = rule.reason if restarted_from(run) is None else None
    return RunChange(
        expected=run.status,
        status=rule.target,
        reason=reason,
        kill=rule.kill,
        log=f"{operation} requested{by}",
    )


def restarted_from(run: Run) -> int | None:
    """The run this one restarts, or None (the link is kept in the new run's reason)."""
    found = _RESTART_REASON.match(run.reason or "")
    return int(found.group(1)) if found else None


def _refusal(operation: str, run: Run) -> str:
    why = _WHY.get((operation, run.status))
    if why is None:
        why = f"it has finished ({run.status})"
        if operation in (CANCEL, RESUME):
            why += ": restart it to run its job again"
    return f"cannot {operation} run {run.id}: {why}"


class Operations:
    """The operations as use cases: each call is one transaction on the store.

    `app` limits the caller to one app's runs (an app token); `who` is the caller's name,
    recorded in the run's log and as `run_by` of a restart."""

    def __init__(
        self, store: Store, clock: Clock, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.store = store
        self.clock = clock
        self._on_change = on_change  # wakes an in-process worker (resume, restart)

    def stop(self, run_id: int, *, app: str | None = None, who: str | None = None) -> Run:
        """Ask a running run to halt gracefully: running -> stopping -> (the job) stopped."""
        return self._apply(STOP, run_id, app, who)

    def resume(self, run_id: int, *, app: str | None = None, who: str | None = None) -> Run:
        """A stopped run is due again, same run, from its checkpoint: stopped -> pending."""
        return self._apply(RESUME, run_id, app, who)

    def force_stop(self, run_id: int, *, app: str | None = None, who: str | None = None) -> Run:
        """End a stopping (or running) run now: its worker kills it at the next heartbeat."""
        return self._apply(FORCE_STOP, run_id, app, who)

    def cancel(self, run_id: int, *, app: str | None = None, who: str | None = None) -> Run:
        """Discard a pending or stopped run for good: -> cancelled."""
        return self._apply(CANCEL, run_id, app, who)

    def restart(self, run_id: int, *, app: str | None = None, who: str | None = None) -> Run:
        """Run a finished run's job again with the same params: returns the new pending run,
        whose reason is "restart of run N"."""
        for _ in range(_ATTEMPTS):
            run = self._visible(run_id, app)
            if run.status not in RESTARTABLE:
                raise Conflict(_refusal(RESTART, run))
            now = self.clock.now()
            new = NewRun(
                job_id=run.job_id,
                run_at=now,
                params=dict(run.params),
                low_priority=run.low_priority,
                run_by=who,
                reason=f"restart of run {run.id}",
            )
            created = self.store.restart_run(run.id, run.status, new, now)
            if created is not None:
                log.info("run %s restarted as run %s by %s", run.id, created.id, who or "-")
                self._on_change()
                return created
        raise Conflict(f"cannot restart run {run_id}: its status keeps changing; try again")

    def set_low_priority(self, run_id: int, low_priority: bool, *, app: str | None = None) -> Run:
        """Set or clear the flag, whatever the status; claims read it while the run waits."""
        self._visible(run_id, app)
        return self.store.set_run_low_priority(run_id, low_priority)

    def _apply(self, operation: str, run_id: int, app: str | None, who: str | None) -> Run:
        for _ in range(_ATTEMPTS):
            run = self._visible(run_id, app)
            changed = self.store.change_run(run_id, plan(operation, run, who), self.clock.now())
            if changed is not None:
                log.info("run %s: %s by %s -> %s", run_id, operation, who or "-", changed.status)
                if changed.status == S.PENDING:
                    self._on_change()
                return changed
        raise Conflict(f"cannot {operation} run {run_id}: its status keeps changing; try again")

    def _visible(self, run_id: int, app: str | None) -> Run:
        run = self.store.get_run(run_id)
        if app is not None and run.app != app:
            raise NotFound("run", run_id)
        return run
