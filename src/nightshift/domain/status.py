"""Run statuses, their named groups and the transitions the operations may make."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


S = RunStatus

#: Runs that hold a place in the queue or a worker: the overlap policy looks at these.
ACTIVE: frozenset[RunStatus] = frozenset({S.PENDING, S.RUNNING, S.STOPPING})
#: Runs a worker executes right now (they carry a lease).
EXECUTING: frozenset[RunStatus] = frozenset({S.RUNNING, S.STOPPING})
#: Runs that will never change again.
TERMINAL: frozenset[RunStatus] = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.SKIPPED})
#: Ends of an execution, as statistics count them (a stopped run may be resumed later).
EXECUTED: frozenset[RunStatus] = frozenset({S.SUCCEEDED, S.FAILED, S.STOPPED})

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.STOPPING, S.PENDING}),
    S.STOPPING: frozenset({S.STOPPED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PENDING}),
    S.STOPPED: frozenset({S.PENDING, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.SKIPPED: frozenset(),
}


def can_transition(current: RunStatus, target: RunStatus) -> bool:
    return target in TRANSITIONS[current]
