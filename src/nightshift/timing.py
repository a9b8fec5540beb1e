"""A job's timer from its schedule: first fire, following fires, fires after a SLEEP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from nightshift.domain.models import Job
from nightshift.domain.signals import SLEEP_SECONDS
from nightshift.schedules import Schedule, iter_fires, next_fire, parse_schedule, parse_timezone

_TICK = timedelta(microseconds=1)


@lru_cache(maxsize=4096)
def schedule_of(expr: str) -> Schedule:
    return parse_schedule(expr)


@lru_cache(maxsize=512)
def zone_of(name: str) -> ZoneInfo:
    return parse_timezone(name)


def is_reboot(job: Job) -> bool:
    return job.schedule is not None and schedule_of(job.schedule).kind == "reboot"


def fire_after(job: Job, after: datetime) -> datetime | None:
    """The job's first fire strictly after `after`, inside its active window."""
    if not job.schedule:
        return None
    return next_fire(
        schedule_of(job.schedule),
        tz=zone_of(job.timezone),
        after=after,
        anchor=job.anchor_at or after,
        start_at=job.start_at,
        end_at=job.end_at,
    )


def fires_from_timer(job: Job) -> Iterator[datetime]:
    """The job's due fire (its stored timer) and every fire after it."""
    if job.next_fire_at is None or not job.schedule:
        return iter(())
    rest = iter_fires(
        schedule_of(job.schedule),
        tz=zone_of(job.timezone),
        after=job.next_fire_at,
        anchor=job.anchor_at or job.next_fire_at,
        start_at=job.start_at,
        end_at=job.end_at,
    )
    return itertools.chain([job.next_fire_at], rest)


def fire_after_sleep(job: Job, run_started: datetime) -> datetime | None:
    """SLEEP: the first fire no sooner than 24 h after the run started."""
    return fire_after(job, run_started + timedelta(seconds=SLEEP_SECONDS) - _TICK)
