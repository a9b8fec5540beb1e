"""Which due fires run and which are recorded as skipped: catch-up, lateness and overlap.

Pure: the scheduler hands in the job, the due fire times and `now`; nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nightshift.domain.models import CatchUp, Job, Overlap

# Enumerating missed fires stops here: after a long outage an `every 1s` job would otherwise
# make the scheduler walk millions of slots. The rest are jumped over and counted as one gap.
MAX_ENUMERATED = 100_000


class SkipReason:
    OVERLAP = "overlap"  # the previous run was still active (overlap=skip)
    MISSED = "missed"  # missed while nothing was scheduling, beyond what catch_up runs
    TOO_LATE = "too_late"  # later than max_lateness_s


@dataclass(slots=True)
class Skip:
    reason: str
    first: datetime
    last: datetime
    count: int


@dataclass(slots=True)
class FirePlan:
    runs: list[tuple[datetime, datetime]] = field(default_factory=list)  # (scheduled_for, run_at)
    skips: list[Skip] = field(default_factory=list)
    next_fire_at: datetime | None = None
    replace_active: bool = False


def jitter_delay(job_id: int, slot: datetime, jitter_s: float) -> timedelta:
    """A delay in [0, jitter_s) that is the same for a slot wherever it is computed, so that
    several schedulers agree on it."""
    if jitter_s <= 0:
        return timedelta(0)
    digest = hashlib.blake2b(f"{job_id}:{slot.isoformat()}".encode(), digest_size=8).digest()
    fraction = int.from_bytes(digest, "big") / 2**64
    return timedelta(seconds=fraction * jitter_s)


def plan_fires(
    job: Job,
    now: datetime,
    fires: Iterator[datetime],
    *,
    catch_up_max: int,
    misfire_grace_s: float,
) -> FirePlan:
    """Plan one due job. `fires` yields the job's fire times from its `next_fire_at` on."""
    due: list[datetime] = []
    jumped = 0
    next_fire: datetime | None = None
    for slot in fires:
        if slot > now:
            next_fire = slot
            break
        if len(due) < MAX_ENUMERATED:
            due.append(slot)
        else:
            jumped += 1
            if jumped > MAX_ENUMERATED:
                next_fire = None  # caller re-times from `now`
                break
    plan = FirePlan(next_fire_at=next_fire)
    if not due:
        return plan

    missed: list[datetime]
    if job.catch_up == CatchUp.LATEST:
        to_run, missed = due[-1:], due[:-1]
    elif job.catch_up == CatchUp.ALL:
        to_run, missed = due[-catch_up_max:], due[:-catch_up_max]
    else:
        grace = timedelta(seconds=misfire_grace_s)
        to_run = [s for s in due if now - s <= grace][-1:]
        missed = [s for s in due if s not in to_run]

    late: list[datetime] = []
    if job.max_lateness_s is not None:
        limit = timedelta(seconds=job.max_lateness_s)
        late = [s for s in to_run if now - s > limit]
        to_run = [s for s in to_run if now - s <= limit]

    overlapped: list[datetime] = []
    if job.overlap == Overlap.SKIP:
        # One run at a time: with a run still active nothing starts; otherwise only the newest.
        keep = [] if job.active_runs else to_run[-1:]
        overlapped = [s for s in to_run if s not in keep]
        to_run = keep
    elif job.overlap == Overlap.REPLACE and to_run:
        plan.replace_active = job.active_runs > 0
        missed += to_run[:-1]
        to_run = to_run[-1:]

    plan.runs = [(s, s + jitter_delay(job.id, s, job.jitter_s)) for s in to_run]
    for reason, slots, extra in (
        (SkipReason.MISSED, sorted(missed), jumped),
        (SkipReason.TOO_LATE, late, 0),
        (SkipReason.OVERLAP, overlapped, 0),
    ):
        if slots:
            plan.skips.append(Skip(reason, slots[0], slots[-1], len(slots) + extra))
    return plan
