"""Parsing schedule text and timezones, error messages, and the next-fires preview."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from nightshift.errors import InvalidInput, InvalidSchedule
from nightshift.schedules import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    RebootSchedule,
    parse_schedule,
    parse_timezone,
    preview,
)

NY = ZoneInfo("America/New_York")


# --- forms -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "cron"),
    [
        ("*/5 * * * *", "*/5 * * * *"),
        ("0 9 * * 1", "0 9 * * 1"),
        ("0 9 1 1,4,7,10 *", "0 9 1 1,4,7,10 *"),
        ("0 9 * JAN mon-fri", "0 9 * JAN mon-fri"),
        ("0  9\t* * *", "0  9\t* * *"),
        ("0 0 L * *", "0 0 L * *"),
        ("0 0 * * MON#2", "0 0 * * MON#2"),
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
        ("9:00", "0 9 * * *"),
        ("09:30", "30 9 * * *"),
        ("0:00", "0 0 * * *"),
        ("23:59", "59 23 * * *"),
        ("*:00", "0 * * * *"),
        ("*:15", "15 * * * *"),
        ("8-19:00", "0 8-19 * * *"),
        ("8-19:30", "30 8-19 * * *"),
        ("08-09:05", "5 8-9 * * *"),
    ],
)
def test_cron_forms_translate_to_cron(expr: str, cron: str) -> None:
    schedule = parse_schedule(expr)
    assert isinstance(schedule, CronSchedule)
    assert schedule.kind == "cron"
    assert schedule.expr == expr
    assert schedule.cron == cron


def test_surrounding_whitespace_is_stripped() -> None:
    schedule = parse_schedule("  @daily \n")
    assert schedule.expr == "@daily"
    assert parse_schedule("\t*/5 * * * *  ").expr == "*/5 * * * *"


@pytest.mark.parametrize(
    ("expr", "seconds"),
    [
        ("every 30s", 30),
        ("every 5m", 300),
        ("every 2h", 7200),
        ("every 1d", 86400),
        ("every 1s", 1),
        ("every 90 seconds", 90),
        ("every 1 second", 1),
        ("every 10 minutes", 600),
        ("every 1 min", 60),
        ("every 3 hours", 10800),
        ("every 2 days", 172800),
        ("EVERY 5M", 300),
        ("Every 45Sec", 45),
        ("every 366d", 366 * 86400),
    ],
)
def test_interval_forms(expr: str, seconds: int) -> None:
    schedule = parse_schedule(expr)
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.kind == "interval"
    assert schedule.every == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("expr", "when"),
    [
        ("at 2026-12-01T09:00", datetime(2026, 12, 1, 9, 0)),
        ("at 2026-12-01 09:00", datetime(2026, 12, 1, 9, 0)),
        ("at 2026-12-01T09:00:30", datetime(2026, 12, 1, 9, 0, 30)),
        ("AT 2026-12-01t09:00", datetime(2026, 12, 1, 9, 0)),
        ("at 2026-12-01T09:00Z", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        ("at 2026-12-01T09:00z", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        ("at 2026-12-01T09:00+02:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
        ("at 2026-12-01T09:00:15-05:00", datetime(2026, 12, 1, 14, 0, 15, tzinfo=UTC)),
    ],
)
def test_at_forms(expr: str, when: datetime) -> None:
    schedule = parse_schedule(expr)
    assert isinstance(schedule, AtSchedule)
    assert schedule.kind == "at"
    assert schedule.when == when
    assert (schedule.when.tzinfo is None) == (when.tzinfo is None)


@pytest.mark.parametrize("expr", ["@reboot", "@REBOOT", " @reboot "])
def test_reboot(expr: str) -> None:
    schedule = parse_schedule(expr)
    assert isinstance(schedule, RebootSchedule)
    assert schedule.kind == "reboot"


def test_schedules_are_frozen_and_comparable() -> None:
    schedule = parse_schedule("every 5m")
    with pytest.raises(AttributeError):
        schedule.expr = "every 6m"  # type: ignore[misc]
    assert parse_schedule("every 5m") == schedule


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("", "schedule is empty"),
        ("   ", "schedule is empty"),
        ("61 * * * *", "minute field '61': 61 is out of range 0-59"),
        ("0 24 * * *", "hour field '24': 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field '0': 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month field '32': 32 is out of range 1-31"),
        ("0 0 * 13 *", "month field '13': 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field '8': 8 is out of range 0-7"),
        ("* * * * MON-FRX", "day-of-week field 'MON-FRX': 'FRX' is not a day name"),
        ("* * * JANX *", "month field 'JANX': 'JANX' is not a month name"),
        ("* * * * MON,FRX", "day-of-week field 'MON,FRX': 'FRX' is not a day name"),
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("*/0 * * * *", "minute field '*/0': step must be at least 1"),
        ("0 */0 * * *", "hour field '*/0': step must be at least 1"),
        ("*/x * * * *", "minute field '*/x': step 'x' is not a number"),
        ("5-3 * * * *", "minute field '5-3': range '5-3' goes backwards"),
        ("0 FRI-MON * * *", "hour field 'FRI-MON': 'FRI' is not a number"),
        ("* * * * FRI-MON", "day-of-week field 'FRI-MON': range 'FRI-MON' goes backwards"),
        ("1,,2 * * * *", "minute field '1,,2': empty item in the list"),
        ("1, * * * *", "minute field '1,': empty item in the list"),
        ("1,5-61 * * * *", "minute field '1,5-61': in '5-61', 61 is out of range 0-59"),
        ("0 0 ? * *", "day-of-month field '?': '?' is not a number"),
        ("0 0 15W * *", "day-of-month field '15W': '15W' is not a number"),
        ("0 0 * * MON#6", "day-of-week field 'MON#6': the week number after '#' must be 1-5"),
        ("0 0 * * 1-5L", "day-of-week field '1-5L': L needs a day number before it"),
        ("0 0 30 2 *", "day-of-month field '30': February has no day 30"),
        ("0 0 31 4,6 *", "day-of-month field '31': none of the months in month field '4,6'"),
        ("0 0 30-31 FEB *", "day-of-month field '30-31': February has no day 30"),
        ("0 0 * * * *", "got 6; a seconds field is not supported"),
        ("0 0 * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 7"),
        ("every 5x", "'every 5x': unknown unit 'x' (use s, m, h or d)"),
        ("every 5 fortnights", "unknown unit 'fortnights'"),
        ("every 0s", "'every 0s': the interval must be at least 1 second"),
        ("every 0 minutes", "the interval must be at least 1 second"),
        ("every 367d", "'every 367d': the interval must be at most 366 days"),
        ("every 1h30m", "'every 1h30m': expected one number and a unit"),
        ("every", "'every': expected one number and a unit"),
        ("every -5m", "'every -5m': expected one number and a unit"),
        ("every 1.5h", "'every 1.5h': expected one number and a unit"),
        ("25:00", "'25:00': hour 25 is out of range 0-23"),
        ("8-24:00", "'8-24:00': hour 24 is out of range 0-23"),
        ("9:60", "'9:60': minute 60 is out of range 0-59"),
        ("19-8:00", "'19-8:00': hour range 19-8 goes backwards"),
        ("9:5", "'9:5': the minute must have two digits"),
        ("9:00:00", "'9:00:00': expected hour:minute"),
        ("9:00 pm", "'9:00 pm': expected hour:minute"),
        ("*/2:00", "'*/2:00': expected hour:minute"),
        ("at 2026-13-01T09:00", "'at 2026-13-01T09:00': not a valid date and time (month"),
        ("at 2026-02-30T09:00", "'at 2026-02-30T09:00': not a valid date and time (day"),
        ("at 2026-12-01T25:00", "not a valid date and time"),
        ("at tomorrow", "'at tomorrow': expected a date and time such as"),
        ("at 2026-12-01", "'at 2026-12-01': expected a date and time such as"),
        ("at", "'at': expected a date and time"),
        ("@fortnightly", "'@fortnightly': unknown macro (use @hourly, @daily"),
        (
            "tomorrow",
            "'tomorrow': not a schedule; use cron ('*/5 * * * *'), 'every 5m', '9:00', "
            "'at 2026-12-01T09:00' or '@reboot'",
        ),
        ("run daily", "'run daily': not a schedule"),
        ("*/5", "expected 5 fields (minute hour day-of-month month day-of-week), got 1"),
    ],
)
def test_invalid_schedules_say_what_is_wrong(expr: str, expected: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        parse_schedule(expr)
    assert info.value.field == "schedule"
    assert expected in info.value.message
    assert str(info.value) == f"schedule: {info.value.message}"


def test_invalid_schedule_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        parse_schedule("nonsense")


@pytest.mark.parametrize(
    ("index", "name"),
    list(enumerate(["minute", "hour", "day-of-month", "month", "day-of-week"])),
)
def test_cron_errors_name_the_field_at_any_position(index: int, name: str) -> None:
    fields = ["1"] * 5
    fields[index] = "99"
    with pytest.raises(InvalidSchedule) as info:
        parse_schedule(" ".join(fields))
    assert info.value.message.startswith(f"{name} field '99': 99 is out of range")


# --- timezones ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["UTC", "America/New_York", "Europe/London", " Asia/Tokyo "])
def test_parse_timezone(name: str) -> None:
    assert parse_timezone(name) == ZoneInfo(name.strip())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Mars/Base", "unknown timezone 'Mars/Base'"),
        ("../../etc/passwd", "unknown timezone '../../etc/passwd'"),
        ("/etc/localtime", "unknown timezone '/etc/localtime'"),
        ("", "timezone is empty"),
    ],
)
def test_parse_timezone_refuses_unknown(name: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        parse_timezone(name)
    assert info.value.field == "timezone"
    assert info.value.message == message


# --- preview -----------------------------------------------------------------------------------


def test_preview_returns_local_times_with_offsets_across_dst() -> None:
    fires = preview("0 9 * * *", "America/New_York", 3, datetime(2026, 3, 6, 15, tzinfo=UTC))
    assert [f.isoformat() for f in fires] == [
        "2026-03-07T09:00:00-05:00",
        "2026-03-08T09:00:00-04:00",
        "2026-03-09T09:00:00-04:00",
    ]
    assert all(f.tzinfo == NY for f in fires)


def test_preview_dst_gap_and_repeat_in_local_time() -> None:
    start = datetime(2026, 3, 7, 12, tzinfo=NY)
    assert [f.isoformat() for f in preview("30 2 * * *", "America/New_York", 2, start)] == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]
    start = datetime(2026, 10, 31, 12, tzinfo=NY)
    assert [f.isoformat() for f in preview("0 * * * *", "America/New_York", 15, start)][-3:] == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]


def test_preview_interval_is_anchored_at_start() -> None:
    start = datetime(2026, 1, 1, 10, 0, 7, tzinfo=UTC)
    fires = preview("every 5m", "Europe/London", 3, start)
    assert fires == [start + timedelta(minutes=5 * k) for k in (1, 2, 3)]
    assert fires[0].tzinfo == ZoneInfo("Europe/London")


def test_preview_at() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    fires = preview("at 2026-12-01T09:00", "America/New_York", 5, start)
    assert [f.isoformat() for f in fires] == ["2026-12-01T09:00:00-05:00"]
    assert preview("at 2025-12-01T09:00", "America/New_York", 5, start) == []


def test_preview_reboot_has_no_fire_times() -> None:
    with pytest.raises(InvalidSchedule) as info:
        preview("@reboot", "UTC", 5, datetime(2026, 1, 1, tzinfo=UTC))
    assert info.value.field == "schedule"
    assert info.value.message == "@reboot fires once at each service start; it has no fire times"


@pytest.mark.parametrize("count", [0, -1, 1001, True])
def test_preview_count_bounds(count: int) -> None:
    with pytest.raises(InvalidInput) as info:
        preview("@daily", "UTC", count, datetime(2026, 1, 1, tzinfo=UTC))
    assert info.value.field == "count"
    assert not isinstance(info.value, InvalidSchedule)


def test_preview_count_limits_are_inclusive() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert len(preview("* * * * *", "UTC", 1, start)) == 1
    fires = preview("* * * * *", "UTC", 1000, start)
    assert len(fires) == 1000
    assert fires[-1] == datetime(2026, 1, 1, 16, 40, tzinfo=UTC)


def test_preview_errors_name_their_field() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidSchedule) as info:
        preview("@daily", "Mars/Base", 5, start)
    assert info.value.field == "timezone"
    with pytest.raises(InvalidSchedule) as info:
        preview("61 * * * *", "UTC", 5, start)
    assert info.value.field == "schedule"
    with pytest.raises(InvalidInput) as info:
        preview("@daily", "UTC", 5, datetime(2026, 1, 1))
    assert info.value.field == "start"
