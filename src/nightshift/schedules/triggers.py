"""Parsed schedules and their fire times. Pure: every instant comes in as an argument.

Daylight-saving time (PRODUCT.md "Schedules"), for cron and daily-time schedules:

* A schedule whose hour field is `*` (every hour: `0 * * * *`, `*/5 * * * *`, `*:15`, `@hourly`)
  follows real time: it fires in every real hour, so on a fall-back day it fires in both real
  01:00 hours (they are different hours), and on a spring-forward day the missing wall-clock hour
  simply does not exist, no real hour is lost.
* Any other cron (fixed hours, ranges, lists, steps such as `*/2`) follows the wall clock:
  a fire in a skipped local hour runs once, right after the change (02:30 -> 03:00 new time; all
  fires inside the gap collapse into that one), and a fire in a repeated local hour runs once, in
  its first occurrence.

cronsim does the cron maths (on naive wall-clock times for the second kind); this module only
maps wall-clock times to instants.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from cronsim import CronSim

from nightshift.clock import utc

ScheduleKind = Literal["cron", "interval", "at", "reboot"]

# Fires at or before `after` can come back only from a repeated local hour (at most one per
# minute of it); this bounds the loop that drops them.
_MAX_STALE_FIRES = 10_000
_ONE_MICROSECOND = timedelta(microseconds=1)


class Schedule(Protocol):
    """A parsed schedule; implementations are frozen dataclasses."""

    @property
    def expr(self) -> str:
        """The original text."""
        ...

    @property
    def kind(self) -> ScheduleKind: ...

    def next_after(self, after: datetime, *, tz: ZoneInfo, anchor: datetime) -> datetime | None:
        """First fire strictly after `after` (aware, any tz), as an aware UTC datetime.

        None means never again. `anchor` (aware) is the job's start time: intervals count from it.
        """
        ...


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression; macros and daily times (`9:00`) are stored translated in `cron`."""

    expr: str
    cron: str
    kind: Literal["cron"] = field(default="cron", init=False)

    @property
    def follows_real_time(self) -> bool:
        # Only "every hour" follows real time; see the module docstring.
        return self.cron.split()[1] in ("*", "*/1")

    def next_after(self, after: datetime, *, tz: ZoneInfo, anchor: datetime) -> datetime | None:
        after = utc(after)
        if self.follows_real_time:
            fires = (f.astimezone(UTC) for f in CronSim(self.cron, after.astimezone(tz)))
        else:
            wall = after.astimezone(tz).replace(tzinfo=None)
            fires = (wall_to_utc(f, tz) for f in CronSim(self.cron, wall))
        for _, fire in zip(range(_MAX_STALE_FIRES), fires, strict=False):
            # A fire in the first occurrence of a repeated hour can be before `after`.
            if fire > after:
                return fire
        return None  # cronsim found nothing within 50 years


@dataclass(frozen=True)
class IntervalSchedule:
    """Every `every`, counted from the anchor: fires at anchor + k * every (k >= 0).

    An interval is a duration in real time: `every 1d` is 24 real hours, so across a DST change
    it moves by an hour on the wall clock. For a daily fire at a local time use `9:00`.
    """

    expr: str
    every: timedelta
    kind: Literal["interval"] = field(default="interval", init=False)

    def next_after(self, after: datetime, *, tz: ZoneInfo, anchor: datetime) -> datetime | None:
        after, anchor = utc(after), utc(anchor)
        if after < anchor:
            return anchor
        # timedelta // timedelta is exact integer arithmetic, so no float drift over time.
        steps = (after - anchor) // self.every + 1
        try:
            return anchor + steps * self.every
        except OverflowError:
            return None  # beyond year 9999


@dataclass(frozen=True)
class AtSchedule:
    """Once, at `when`: naive means local time in the job's timezone, aware means that instant.

    A local time in a DST gap fires at the first instant after the gap (02:30 on a
    spring-forward day -> 03:00 new time); a repeated local time fires at its first occurrence.
    """

    expr: str
    when: datetime
    kind: Literal["at"] = field(default="at", init=False)

    def instant(self, tz: ZoneInfo) -> datetime:
        if self.when.tzinfo is not None:
            return self.when.astimezone(UTC)
        return wall_to_utc(self.when, tz)

    def next_after(self, after: datetime, *, tz: ZoneInfo, anchor: datetime) -> datetime | None:
        fire = self.instant(tz)
        return fire if fire > utc(after) else None


@dataclass(frozen=True)
class RebootSchedule:
    """`@reboot`: the scheduler runs it at each service start; it has no fire times."""

    expr: str
    kind: Literal["reboot"] = field(default="reboot", init=False)

    def next_after(self, after: datetime, *, tz: ZoneInfo, anchor: datetime) -> datetime | None:
        return None


def wall_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant of a naive local time: first occurrence if repeated, gap end if skipped."""
    first = wall.replace(tzinfo=tz, fold=0)
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
        return first.astimezone(UTC)
    # In a gap, fold=1 reads the wall time with the offset after the change and fold=0 with the
    # offset before, so the change lies between the two instants: search for it.
    a = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    b = int(first.timestamp())
    lo, hi = min(a, b), max(a, b)
    after_offset = datetime.fromtimestamp(hi, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def next_fire(
    schedule: Schedule,
    *,
    tz: ZoneInfo,
    after: datetime,
    anchor: datetime,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> datetime | None:
    """The first fire strictly after `after` inside [start_at, end_at]; None when none remains.

    For kind "reboot" always None (the scheduler fires @reboot jobs itself at service start).
    """
    if schedule.kind == "reboot":
        return None
    after = utc(after)
    if start_at is not None:
        # Just before start_at, so that a fire exactly at start_at counts (the window is closed).
        after = max(after, utc(start_at) - _ONE_MICROSECOND)
    fire = schedule.next_after(after, tz=tz, anchor=anchor)
    if fire is None or (end_at is not None and fire > utc(end_at)):
        return None
    return fire


def iter_fires(
    schedule: Schedule,
    *,
    tz: ZoneInfo,
    after: datetime,
    anchor: datetime,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> Iterator[datetime]:
    """Successive fires (UTC aware), strictly increasing; stops at end_at or when none remains."""
    current: datetime | None = after
    while current is not None:
        current = next_fire(
            schedule, tz=tz, after=current, anchor=anchor, start_at=start_at, end_at=end_at
        )
        if current is not None:
            yield current
