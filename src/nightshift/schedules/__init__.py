"""Schedule maths: parse schedule text and compute fire times. Pure; never reads the clock."""

from nightshift.schedules.parse import parse_schedule, parse_timezone, preview
from nightshift.schedules.triggers import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    RebootSchedule,
    Schedule,
    ScheduleKind,
    iter_fires,
    next_fire,
)

__all__ = [
    "AtSchedule",
    "CronSchedule",
    "IntervalSchedule",
    "RebootSchedule",
    "Schedule",
    "ScheduleKind",
    "iter_fires",
    "next_fire",
    "parse_schedule",
    "parse_timezone",
    "preview",
]
