"""What an execution's outcome means for the run and its job: status, retry, job changes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nightshift.domain.models import JSON, Job, Run
from nightshift.domain.signals import Signal
from nightshift.domain.status import RunStatus

MAX_BACKOFF_S = 24 * 3600.0


@dataclass(slots=True)
class RetryAt:
    attempt: int
    run_at: datetime


@dataclass(slots=True)
class Decision:
    status: RunStatus
    retry: RetryAt | None = None
    job_changes: JSON = field(default_factory=dict)
    reason: str | None = None


def backoff_delay(backoff_s: float, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff (backoff_s, 2x, 4x ...) with +/-25 % jitter so that a burst of failures
    does not retry in lockstep."""
    base = min(MAX_BACKOFF_S, backoff_s * 2 ** max(0, attempt - 1))
    spread = (rng or random).uniform(0.75, 1.25)
    return min(MAX_BACKOFF_S, base * spread)


def decide(
    run: Run,
    job: Job,
    *,
    status: str,
    permanent: bool,
    signal: Signal | None,
    deactivate: str | None,
    now: datetime,
    sleep_until_fire: datetime | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """Turn an outcome into the run's final status, an optional retry and job changes.

    `sleep_until_fire` is the job's first fire no sooner than 24 h after this run, computed by
    the caller from the schedule when the job returned SLEEP.
    """
    changes: JSON = {}
    if deactivate:
        changes = {"enabled": False, "deactivated_reason": deactivate, "next_fire_at": None}
    if status == "stopped":
        return Decision(RunStatus.STOPPED, job_changes=changes)
    if status == "succeeded":
        if signal == Signal.SLEEP:
            changes["next_fire_at"] = sleep_until_fire
        elif signal == Signal.STOP:
            changes["hold"] = "stop"
        elif signal == Signal.EXIT:
            changes.update(enabled=False, deactivated_reason="the job returned EXIT")
            changes["next_fire_at"] = None
        return Decision(RunStatus.SUCCEEDED, job_changes=changes)
    retries_left = job.retries.max - (run.attempt - 1 - run.lost_streak)
    if not permanent and not deactivate and retries_left > 0 and not run.is_test:
        delay = backoff_delay(job.retries.backoff_s, run.attempt, rng)
        retry = RetryAt(run.attempt + 1, now + timedelta(seconds=delay))
        return Decision(RunStatus.FAILED, retry=retry, job_changes=changes, reason="retrying")
    return Decision(RunStatus.FAILED, job_changes=changes)
