"""The records the store keeps: apps, jobs, runs and log lines, as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any

from nightshift.domain.status import RunStatus

JSON = dict[str, Any]


class JobKind(StrEnum):
    HTTP = "http"
    PYTHON = "python"
    SQL = "sql"
    WORKFLOW = "workflow"
    SYSTEM = "system"  # internal: Nightshift's own jobs (nightshift.system_jobs), never a user's


class Overlap(StrEnum):
    SKIP = "skip"  # a fire while a run is active is recorded as skipped
    QUEUE = "queue"  # it waits for the active run to end
    ALLOW = "allow"  # it runs in parallel
    REPLACE = "replace"  # the active run is stopped and the new one runs


class CatchUp(StrEnum):
    NONE = "none"  # fires missed during downtime are recorded as skipped
    LATEST = "latest"  # one run for all missed fires
    ALL = "all"  # every missed fire runs, up to a bound


class JobHold(StrEnum):
    """Why an enabled job does not fire for now."""

    STOP = "stop"  # the job returned STOP: it waits for a reload


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max: int = 0
    backoff_s: float = 10.0

    def as_dict(self) -> JSON:
        return {"max": self.max, "backoff_s": self.backoff_s}

    def __reduce__(self) -> tuple[Any, ...]:
        # Each claimed run's job carries one: the default pickling of a slotted dataclass
        # walks its fields() on both sides (bench/PROFILE.md, session 10).
        return RetryPolicy, (self.max, self.backoff_s)


@dataclass(slots=True)
class App:
    name: str
    schedules_enabled: bool = True
    created_at: datetime | None = None
    retention_days: int | None = None


@dataclass(slots=True)
class Job:
    id: int
    app: str
    name: str
    kind: JobKind
    config: JSON
    description: str = ""
    tags: list[str] = field(default_factory=list)
    schedule: str | None = None
    timezone: str = "UTC"
    enabled: bool = True
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.LATEST
    max_lateness_s: float | None = None
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float | None = None
    low_priority: bool = False
    start_at: datetime | None = None
    end_at: datetime | None = None
    start_delay_s: float = 0.0
    jitter_s: float = 0.0
    next_fire_at: datetime | None = None
    deactivated_reason: str | None = None
    hold: JobHold | None = None
    declared: bool = False
    system: bool = False
    anchor_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_run_id: int | None = None
    last_skip_run_id: int | None = None
    active_runs: int = 0  # filled by the scheduler's due query only

    def __reduce__(self) -> tuple[Any, ...]:
        # Positional, as Run: a claim of runs of many jobs sends a job with each run from the
        # worker's store process (round trip 15 -> 9 us a job, bench/PROFILE.md session 10).
        return Job, _job_values(self)


_job_values = attrgetter(*(f.name for f in fields(Job)))


#: The order in which due runs are taken (smaller first): normal before low priority, then
#: fair share between roots (rank), then oldest due. The store's claim query and the python
#: pool's waiting line both follow it.
CLAIM_ORDER = ("low_priority", "rank", "run_at", "id")
_claim_key = attrgetter(*CLAIM_ORDER)  # per run on the worker's hot path


@dataclass(slots=True)
class Run:
    id: int
    job_id: int
    app: str
    kind: JobKind
    status: RunStatus
    created_at: datetime
    run_at: datetime
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 1
    retry_of: int | None = None
    error: JSON | None = None
    low_priority: bool = False
    run_by: str | None = None
    progress: float | None = None
    parent_id: int | None = None
    root_id: int | None = None
    rank: int = 0
    params: JSON = field(default_factory=dict)
    result: Any = None
    state: Any = None
    reason: str | None = None
    skip_count: int = 0
    last_scheduled_for: datetime | None = None
    exclusive: bool = False
    is_test: bool = False
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    lost_streak: int = 0
    children_total: int = 0
    children_finished: int = 0
    children_failed: int = 0
    job_name: str | None = None

    @property
    def claim_order(self) -> tuple[Any, ...]:
        return _claim_key(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        # Positional: less than half the default's cost to load, for runs that cross to the
        # worker from its store process by the hundred.
        return Run, _run_values(self)

    def waiting_s(self, now: datetime) -> float | None:
        """Created to started (seed 002); grows while the run is pending, None if it never ran."""
        end = self.started_at or (now if self.status == RunStatus.PENDING else None)
        if end is None:
            return None
        return max(0.0, (end - self.created_at).total_seconds())

    def duration_s(self, now: datetime) -> float | None:
        """Started to finished; grows while the run executes."""
        if self.started_at is None:
            return None
        end = self.finished_at or now
        return max(0.0, (end - self.started_at).total_seconds())


_run_values = attrgetter(*(f.name for f in fields(Run)))


@dataclass(frozen=True, slots=True)
class LogLine:
    run_id: int
    at: datetime
    level: str
    message: str
    id: int | None = None
