"""Schedule text -> Schedule, timezone names, and the next-fires preview."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nightshift.errors import InvalidInput, InvalidSchedule
from nightshift.schedules.cron_errors import validate_cron
from nightshift.schedules.triggers import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    RebootSchedule,
    Schedule,
    iter_fires,
)

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}
# An upper bound keeps the arithmetic far from datetime's limits; nobody means "every 10 years".
MAX_INTERVAL = timedelta(days=366)
MAX_PREVIEW = 1000

_INTERVAL_RE = re.compile(r"every\s+(\d+)\s*([a-z]+)", re.IGNORECASE)
_DAILY_RE = re.compile(r"(\*|\d{1,2}|\d{1,2}-\d{1,2}):(\d{1,2})")
_AT_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?", re.IGNORECASE
)
_HINT = "use cron ('*/5 * * * *'), 'every 5m', '9:00', 'at 2026-12-01T09:00' or '@reboot'"


def _invalid(message: str) -> InvalidSchedule:
    return InvalidSchedule(message, field="schedule")


def parse_schedule(expr: str) -> Schedule:
    """Parse any form of PRODUCT.md "Schedules"; raises InvalidSchedule(field="schedule")."""
    text = expr.strip()
    if not text:
        raise _invalid("schedule is empty")
    lower = text.lower()
    if lower.startswith("@"):
        return _parse_macro(text)
    first = lower.split()[0]
    if first == "every":
        return IntervalSchedule(text, _parse_interval(text))
    if first == "at":
        return AtSchedule(text, _parse_at(text))
    if ":" in text:
        return _checked_cron(text, _parse_daily(text))
    parts = text.split()
    # Looks like cron: the right field count, or starts like a cron minute field.
    if len(parts) in (5, 6) or text[0] in "0123456789*":
        return _checked_cron(text, text)
    raise _invalid(f"'{text}': not a schedule; {_HINT}")


def _checked_cron(text: str, cron: str) -> CronSchedule:
    validate_cron(cron)
    return CronSchedule(text, cron)


def _parse_macro(text: str) -> Schedule:
    lower = text.lower()
    if lower == "@reboot":
        return RebootSchedule(text)
    if lower in MACROS:
        return CronSchedule(text, MACROS[lower])
    names = ", ".join(MACROS)
    raise _invalid(f"'{text}': unknown macro (use {names} or @reboot)")


def _parse_interval(text: str) -> timedelta:
    match = _INTERVAL_RE.fullmatch(text)
    if match is None:
        raise _invalid(
            f"'{text}': expected one number and a unit, e.g. 'every 30s', 'every 5m', "
            "'every 2h' or 'every 1d' (combinations such as '1h30m' are not supported: "
            "use 'every 90m')"
        )
    number, unit = int(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise _invalid(f"'{text}': unknown unit '{match.group(2)}' (use s, m, h or d)")
    if number == 0:
        raise _invalid(f"'{text}': the interval must be at least 1 second")
    seconds = number * _UNITS[unit]
    if seconds > MAX_INTERVAL.total_seconds():
        raise _invalid(f"'{text}': the interval must be at most 366 days")
    return timedelta(seconds=seconds)


def _parse_daily(text: str) -> str:
    """`9:00`, `*:15`, `8-19:30` -> the equivalent cron expression."""
    match = _DAILY_RE.fullmatch(text)
    if match is None:
        raise _invalid(
            f"'{text}': expected hour:minute, where the hour is a number, a range or '*', "
            "e.g. '9:00', '*:15' or '8-19:30'"
        )
    hours, minute_text = match.groups()
    if len(minute_text) != 2:
        raise _invalid(f"'{text}': the minute must have two digits, e.g. '9:05'")
    minute = int(minute_text)
    if minute > 59:
        raise _invalid(f"'{text}': minute {minute} is out of range 0-59")
    if hours != "*":
        bounds = [int(h) for h in hours.split("-")]
        for hour in bounds:
            if hour > 23:
                raise _invalid(f"'{text}': hour {hour} is out of range 0-23")
        if bounds[0] > bounds[-1]:
            raise _invalid(
                f"'{text}': hour range {bounds[0]}-{bounds[-1]} goes backwards "
                "(the start must not be after the end)"
            )
        hours = "-".join(str(h) for h in bounds)
    return f"{minute} {hours} * * *"


def _parse_at(text: str) -> datetime:
    """`at 2026-12-01T09:00` (local) or with an offset / `Z` (that instant)."""
    value = text[2:].strip()
    if not _AT_RE.fullmatch(value):
        raise _invalid(
            f"'{text}': expected a date and time such as 'at 2026-12-01T09:00' "
            "(seconds and a UTC offset like '+02:00' or 'Z' are optional)"
        )
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise _invalid(f"'{text}': not a valid date and time ({exc})") from None


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA timezone; raises InvalidSchedule(field="timezone")."""
    key = name.strip()
    if not key:
        raise InvalidSchedule("timezone is empty", field="timezone")
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError/OSError: keys that are not names at all, e.g. absolute or '..' paths.
        raise InvalidSchedule(f"unknown timezone '{key}'", field="timezone") from None


def preview(expr: str, timezone: str, count: int, start: datetime) -> list[datetime]:
    """The next `count` fires after `start`, as aware datetimes in the job's timezone.

    The anchor is `start`, so an interval previews as start + k * interval.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PREVIEW:
        raise InvalidInput(f"count must be between 1 and {MAX_PREVIEW}", field="count")
    if start.tzinfo is None:
        raise InvalidInput("start must include a timezone", field="start")
    schedule = parse_schedule(expr)
    tz = parse_timezone(timezone)
    if schedule.kind == "reboot":
        raise _invalid("@reboot fires once at each service start; it has no fire times")
    fires = iter_fires(schedule, tz=tz, after=start, anchor=start)
    return [fire.astimezone(tz) for _, fire in zip(range(count), fires, strict=False)]
