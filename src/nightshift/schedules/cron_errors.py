"""Validation of 5-field cron text, for error messages only.

cronsim decides what is valid (and does all the maths); when it refuses an expression it only
says "Bad minute". This module finds the field and the token at fault and says why, so a user
reading a 422 or a CLI line can fix it. It never accepts anything cronsim refuses.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from nightshift.errors import InvalidSchedule

FIELD_ORDER = "minute hour day-of-month month day-of-week"
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# A fixed probe start: validation must not read the clock.
_PROBE_START = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: tuple[str, ...] = ()  # symbolic names, index + offset = value
    name_offset: int = 0
    noun: str = ""  # "day" / "month", for "'FRX' is not a day name"


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1, "month"),
    _Field("day-of-week", 0, 7, _DAYS, 0, "day"),
)


def _cronsim_accepts(cron: str) -> bool:
    try:
        CronSim(cron, _PROBE_START)
    except CronSimError:
        return False
    return True


def validate_cron(cron: str) -> None:
    """Raise InvalidSchedule(field="schedule") unless `cron` is a 5-field cron that can fire."""
    parts = cron.split()
    if len(parts) != 5:
        message = f"expected 5 fields ({FIELD_ORDER}), got {len(parts)}"
        if len(parts) == 6:
            message += "; a seconds field is not supported (use 'every 30s' for seconds)"
        raise InvalidSchedule(message, field="schedule")
    if not _cronsim_accepts(cron):
        raise InvalidSchedule(_explain(parts), field="schedule")
    try:
        next(CronSim(cron, _PROBE_START))
    except StopIteration:
        # cronsim gives up after 50 years without a match.
        raise InvalidSchedule(
            f"'{cron}': this cron expression never fires", field="schedule"
        ) from None


def _explain(parts: list[str]) -> str:
    """Say which field of a cronsim-refused expression is wrong, and why."""
    for index, spec in enumerate(_FIELDS):
        alone = ["*"] * 5
        alone[index] = parts[index]
        if not _cronsim_accepts(" ".join(alone)):
            reason = _field_problem(spec, parts[index]) or "not a valid value"
            return f"{spec.name} field '{parts[index]}': {reason}"
    # Every field is fine alone: cronsim refused the day-of-month/month combination.
    return _impossible_date(parts[2], parts[3])


def _impossible_date(dom: str, month: str) -> str:
    days = _values(_FIELDS[2], dom)
    months = _values(_FIELDS[3], month)
    if not days or not months:
        return f"'{' '.join([dom, month])}': day-of-month and month never match"
    day = min(days)
    if len(months) == 1:
        name = calendar.month_name[next(iter(months))]
        return f"day-of-month field '{dom}': {name} has no day {day}, so this never fires"
    return (
        f"day-of-month field '{dom}': none of the months in month field '{month}' "
        f"has a day {day}, so this never fires"
    )


def _field_problem(spec: _Field, text: str) -> str | None:
    """The first reason a field's text is wrong, or None if this checker sees nothing wrong."""
    for term in text.split(","):
        if term == "":
            return "empty item in the list (two commas or a trailing comma)"
        problem = _term_problem(spec, term)
        if problem:
            # Name the item when the field is a list, so the user sees which one is wrong.
            return problem if term == text or term in problem else f"in '{term}', {problem}"
    return None


def _term_problem(spec: _Field, term: str) -> str | None:
    upper = term.upper()
    if spec.name == "day-of-month" and upper in ("L", "LW"):
        return None
    if spec.name == "day-of-week":
        if upper.endswith("L"):
            base = term[:-1]
            if not base.isdigit():
                return "L needs a day number before it, e.g. '5L' (last Friday)"
            return _value_problem(spec, base)
        if "#" in term:
            base, nth = term.split("#", 1)
            if not nth.isdigit() or not 1 <= int(nth) <= 5:
                return "the week number after '#' must be 1-5"
            return _value_problem(spec, base)
    if "/" in term:
        base, step = term.split("/", 1)
        if not step.isdigit():
            return f"step '{step}' is not a number"
        if int(step) == 0:
            return "step must be at least 1"
        if base == "*":
            return None
        return _range_problem(spec, base)
    if term == "*":
        return None
    return _range_problem(spec, term)


def _range_problem(spec: _Field, term: str) -> str | None:
    if "-" not in term:
        return _value_problem(spec, term)
    start, end = term.split("-", 1)
    problem = _value_problem(spec, start) or _value_problem(spec, end)
    if problem:
        return problem
    if _value(spec, start) > _value(spec, end):
        return f"range '{term}' goes backwards (the start must not be after the end)"
    return None


def _value_problem(spec: _Field, token: str) -> str | None:
    if token == "":
        return "a number is missing"
    if token.isdigit():
        if not spec.lo <= int(token) <= spec.hi:
            return f"{int(token)} is out of range {spec.lo}-{spec.hi}"
        return None
    if spec.names:
        if token.upper() in spec.names:
            return None
        if token.isalpha():
            return f"'{token}' is not a {spec.noun} name"
        return f"'{token}' is not a {spec.noun} number or name"
    return f"'{token}' is not a number"


def _value(spec: _Field, token: str) -> int:
    if token.isdigit():
        return int(token)
    return spec.names.index(token.upper()) + spec.name_offset


def _values(spec: _Field, text: str) -> set[int]:
    """Plain numbers, names and ranges of a field (enough for the impossible-date message)."""
    found: set[int] = set()
    for term in text.split(","):
        base, _, step = term.partition("/")
        if base == "*":
            base = f"{spec.lo}-{spec.hi}"
        start, _, end = base.partition("-")
        try:
            lo = _value(spec, start)
            hi = _value(spec, end) if end else (spec.hi if step else lo)
        except ValueError:
            continue
        found.update(range(lo, hi + 1, int(step) if step.isdigit() and int(step) else 1))
    return found
