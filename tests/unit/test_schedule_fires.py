"""Fire times: cron maths, DST, intervals, one-offs, @reboot and the active window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from nightshift.schedules import iter_fires, next_fire, parse_schedule

NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # DST moves by 30 minutes
Z_UTC = ZoneInfo("UTC")


def u(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(
    expr: str,
    after: datetime,
    n: int,
    tz: ZoneInfo = Z_UTC,
    anchor: datetime | None = None,
    **window: datetime,
) -> list[datetime]:
    schedule = parse_schedule(expr)
    found = iter_fires(schedule, tz=tz, after=after, anchor=anchor or after, **window)
    return list(islice(found, n))


def assert_utc_increasing(times: list[datetime]) -> None:
    assert all(t.tzinfo is UTC for t in times)
    assert all(a < b for a, b in pairwise(times))


# --- cron --------------------------------------------------------------------------------------


def test_every_five_minutes() -> None:
    assert fires("*/5 * * * *", u(2026, 1, 1, 10, 2, 30), 3) == [
        u(2026, 1, 1, 10, 5),
        u(2026, 1, 1, 10, 10),
        u(2026, 1, 1, 10, 15),
    ]


def test_fire_is_strictly_after() -> None:
    schedule = parse_schedule("*/5 * * * *")
    at = u(2026, 1, 1, 10, 5)
    assert next_fire(schedule, tz=Z_UTC, after=at, anchor=at) == u(2026, 1, 1, 10, 10)
    just_before = at - timedelta(microseconds=1)
    assert next_fire(schedule, tz=Z_UTC, after=just_before, anchor=at) == at
    just_after = at + timedelta(microseconds=500_000)
    assert next_fire(schedule, tz=Z_UTC, after=just_after, anchor=at) == u(2026, 1, 1, 10, 10)


def test_weekly_in_local_time_returns_utc() -> None:
    # 2026-01-01 is a Thursday; the next Monday is 2026-01-05, 09:00 EST = 14:00 UTC.
    assert fires("0 9 * * 1", u(2026, 1, 1), 2, NY) == [u(2026, 1, 5, 14), u(2026, 1, 12, 14)]


def test_quarterly_list_of_months() -> None:
    assert fires("0 9 1 1,4,7,10 *", u(2026, 2, 1), 3) == [
        u(2026, 4, 1, 9),
        u(2026, 7, 1, 9),
        u(2026, 10, 1, 9),
    ]


def test_month_and_day_names_any_case() -> None:
    expected = [u(2027, 1, 1, 9), u(2027, 1, 4, 9)]  # Fri 1 Jan, then Monday
    assert fires("0 9 * JAN mon-fri", u(2026, 2, 1), 2) == expected
    assert fires("0 9 * jan MON-FRI", u(2026, 2, 1), 2) == expected


def test_macros() -> None:
    start = u(2026, 1, 7, 10, 30)  # a Wednesday
    assert fires("@hourly", start, 1) == [u(2026, 1, 7, 11)]
    assert fires("@daily", start, 1) == [u(2026, 1, 8)]
    assert fires("@midnight", start, 1) == [u(2026, 1, 8)]
    assert fires("@weekly", start, 1) == [u(2026, 1, 11)]  # Sunday
    assert fires("@monthly", start, 1) == [u(2026, 2, 1)]
    assert fires("@yearly", start, 1) == [u(2027, 1, 1)]
    assert fires("@annually", start, 1) == [u(2027, 1, 1)]


def test_feb_29_waits_for_a_leap_year() -> None:
    assert fires("0 0 29 2 *", u(2026, 1, 1), 2) == [u(2028, 2, 29), u(2032, 2, 29)]


def test_day_31_skips_shorter_months() -> None:
    assert fires("0 0 31 * *", u(2026, 4, 1), 5) == [
        u(2026, 5, 31),
        u(2026, 7, 31),
        u(2026, 8, 31),
        u(2026, 10, 31),
        u(2026, 12, 31),
    ]


def test_last_day_of_month() -> None:
    assert fires("0 0 L * *", u(2026, 1, 15), 4) == [
        u(2026, 1, 31),
        u(2026, 2, 28),
        u(2026, 3, 31),
        u(2026, 4, 30),
    ]
    assert fires("0 0 L 2 *", u(2027, 3, 1), 1) == [u(2028, 2, 29)]


def test_nth_and_last_weekday_of_month() -> None:
    assert fires("0 0 * * MON#2", u(2026, 1, 1), 2) == [u(2026, 1, 12), u(2026, 2, 9)]
    assert fires("0 0 * * 5L", u(2026, 1, 1), 1) == [u(2026, 1, 30)]


def test_hour_range_daily_time_fires_twelve_times_a_day() -> None:
    day = fires("8-19:00", datetime(2026, 6, 15, tzinfo=NY), 13, NY)
    local = [f.astimezone(NY) for f in day]
    assert [t.hour for t in local[:12]] == list(range(8, 20))
    assert all(t.date() == local[0].date() and t.minute == 0 for t in local[:12])
    assert local[12] == datetime(2026, 6, 16, 8, tzinfo=NY)
    assert fires("8-19:30", datetime(2026, 6, 15, tzinfo=NY), 1, NY) == [u(2026, 6, 15, 12, 30)]


def test_every_hour_at_quarter_past() -> None:
    day = fires("*:15", u(2026, 6, 15), 24)
    assert day == [u(2026, 6, 15, h, 15) for h in range(24)]


def test_daily_time_in_local_time() -> None:
    assert fires("9:00", u(2026, 6, 15), 1, LONDON) == [u(2026, 6, 15, 8)]  # 09:00 BST


# --- daylight-saving time ----------------------------------------------------------------------


def test_ny_spring_forward_skipped_fire_runs_once_right_after() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist; it runs at 03:00 EDT (07:00 UTC).
    got = fires("30 2 * * *", datetime(2026, 3, 6, 12, tzinfo=NY), 3, NY)
    assert got == [u(2026, 3, 7, 7, 30), u(2026, 3, 8, 7), u(2026, 3, 9, 6, 30)]
    assert_utc_increasing(got)


def test_ny_spring_forward_fires_inside_the_gap_collapse_into_one() -> None:
    got = fires("*/15 2 * * *", datetime(2026, 3, 8, tzinfo=NY), 2, NY)
    assert got == [u(2026, 3, 8, 7), u(2026, 3, 9, 6)]


def test_ny_spring_forward_stepped_hours_keep_the_skipped_fire() -> None:
    got = fires("0 */2 * * *", datetime(2026, 3, 7, 23, tzinfo=NY), 3, NY)
    assert [g.astimezone(NY).isoformat() for g in got] == [
        "2026-03-08T00:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T04:00:00-04:00",
    ]


def test_ny_fall_back_repeated_fire_runs_once() -> None:
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:00 happens twice; it runs at the first (05:00 UTC).
    got = fires("0 1 * * *", datetime(2026, 10, 31, 12, tzinfo=NY), 2, NY)
    assert got == [u(2026, 11, 1, 5), u(2026, 11, 2, 6)]
    got = fires("*/30 1 * * *", datetime(2026, 11, 1, tzinfo=NY), 3, NY)
    assert got == [u(2026, 11, 1, 5), u(2026, 11, 1, 5, 30), u(2026, 11, 2, 6)]


def test_ny_fall_back_asking_from_the_second_occurrence_does_not_repeat() -> None:
    schedule = parse_schedule("30 1 * * *")
    second_0110 = datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=NY)  # 06:10 UTC, after 01:30 EDT
    assert second_0110.astimezone(UTC) == u(2026, 11, 1, 6, 10)
    got = next_fire(schedule, tz=NY, after=second_0110, anchor=second_0110)
    assert got == u(2026, 11, 2, 6, 30)


def test_ny_every_hour_follows_real_time_across_both_changes() -> None:
    spring = fires("0 * * * *", u(2026, 3, 8, 4, 30), 5, NY)
    assert spring == [u(2026, 3, 8, h) for h in range(5, 10)]  # no real hour lost
    fall = fires("0 * * * *", u(2026, 11, 1, 3, 30), 4, NY)
    assert fall == [u(2026, 11, 1, h) for h in range(4, 8)]
    # Both real 01:00 hours fire: they are different hours.
    assert [f.astimezone(NY).strftime("%H:%M%z") for f in fall] == [
        "00:00-0400",
        "01:00-0400",
        "01:00-0500",
        "02:00-0500",
    ]


def test_london_spring_forward() -> None:
    # 2026-03-29 01:00 GMT -> 02:00 BST: 01:30 does not exist; it runs at 02:00 BST (01:00 UTC).
    got = fires("30 1 * * *", u(2026, 3, 28), 3, LONDON)
    assert got == [u(2026, 3, 28, 1, 30), u(2026, 3, 29, 1), u(2026, 3, 30, 0, 30)]
    assert_utc_increasing(got)


def test_london_fall_back() -> None:
    # 2026-10-25 02:00 BST -> 01:00 GMT: 01:30 happens twice; it runs once, at 01:30 BST.
    got = fires("30 1 * * *", u(2026, 10, 24), 3, LONDON)
    assert got == [u(2026, 10, 24, 0, 30), u(2026, 10, 25, 0, 30), u(2026, 10, 26, 1, 30)]
    assert_utc_increasing(got)


def test_half_hour_dst_change() -> None:
    # Lord Howe: 2026-10-04 02:00 -> 02:30. Fires in the gap collapse into 02:30.
    got = fires("*/20 2 * * *", u(2026, 10, 3), 3, LORD_HOWE)
    local = [g.astimezone(LORD_HOWE).strftime("%m-%d %H:%M") for g in got]
    assert local == ["10-04 02:30", "10-04 02:40", "10-05 02:00"]


@pytest.mark.parametrize(
    ("tz", "start"),
    [
        (NY, u(2026, 3, 7)),
        (NY, u(2026, 10, 31)),
        (LONDON, u(2026, 3, 28)),
        (LONDON, u(2026, 10, 24)),
    ],
)
@pytest.mark.parametrize(
    "expr", ["*/20 * * * *", "0 * * * *", "*/30 0-3 * * *", "0 1,2 * * *", "15 */2 * * *"]
)
def test_fires_are_utc_and_strictly_increasing_across_changes(
    tz: ZoneInfo, start: datetime, expr: str
) -> None:
    got = fires(expr, start, 200, tz)
    assert_utc_increasing(got)
    assert got[-1] > start + timedelta(days=2)


def test_every_twenty_minutes_is_steady_in_real_time() -> None:
    got = fires("*/20 * * * *", u(2026, 11, 1), 3 * 24, NY)
    assert {b - a for a, b in pairwise(got)} == {timedelta(minutes=20)}


# --- intervals ---------------------------------------------------------------------------------


def test_interval_counts_from_the_anchor_with_subseconds() -> None:
    schedule = parse_schedule("every 1s")
    anchor = u(2026, 1, 1, 10) + timedelta(microseconds=500_000)
    got = list(islice(iter_fires(schedule, tz=Z_UTC, after=anchor, anchor=anchor), 3))
    assert got == [anchor + timedelta(seconds=k) for k in (1, 2, 3)]


def test_interval_anchor_itself_is_a_fire() -> None:
    schedule = parse_schedule("every 5m")
    anchor = u(2026, 1, 1, 10)
    assert next_fire(schedule, tz=Z_UTC, after=u(2026, 1, 1, 9), anchor=anchor) == anchor
    assert next_fire(schedule, tz=Z_UTC, after=anchor, anchor=anchor) == u(2026, 1, 1, 10, 5)


def test_interval_aligns_to_an_anchor_in_the_past() -> None:
    schedule = parse_schedule("every 5m")
    anchor = u(2026, 1, 1, 0, 0, 7)
    after = u(2026, 3, 1, 12, 1)
    assert next_fire(schedule, tz=Z_UTC, after=after, anchor=anchor) == u(2026, 3, 1, 12, 5, 7)
    on_a_fire = u(2026, 3, 1, 12, 5, 7)
    assert next_fire(schedule, tz=Z_UTC, after=on_a_fire, anchor=anchor) == u(2026, 3, 1, 12, 10, 7)


def test_interval_keeps_its_phase_over_reloads() -> None:
    # PRODUCT.md: 60 s into a 120 s interval still fires 60 s later.
    schedule = parse_schedule("every 2m")
    anchor = u(2026, 1, 1, 10)
    now = anchor + timedelta(minutes=10, seconds=60)
    assert next_fire(schedule, tz=Z_UTC, after=now, anchor=anchor) == now + timedelta(seconds=60)


def test_interval_of_a_day_is_24_real_hours_across_dst() -> None:
    anchor = datetime(2026, 3, 7, 9, tzinfo=NY)
    got = fires("every 1d", anchor, 2, NY, anchor=anchor)
    assert [g.astimezone(NY).hour for g in got] == [10, 10]  # 09:00 EST + 24 h = 10:00 EDT


def test_interval_anchor_in_another_timezone() -> None:
    anchor = datetime(2026, 1, 1, 11, tzinfo=ZoneInfo("Europe/Paris"))
    assert fires("every 1h", u(2026, 1, 1, 10, 30), 1, anchor=anchor) == [u(2026, 1, 1, 11)]


# --- one-off and @reboot -----------------------------------------------------------------------


def test_at_local_time_fires_once() -> None:
    got = fires("at 2026-12-01T09:00", u(2026, 1, 1), 5, NY)
    assert got == [u(2026, 12, 1, 14)]


def test_at_in_the_past_or_exactly_now_is_none() -> None:
    schedule = parse_schedule("at 2026-12-01T09:00")
    when = u(2026, 12, 1, 9)
    assert next_fire(schedule, tz=Z_UTC, after=u(2027, 1, 1), anchor=when) is None
    assert next_fire(schedule, tz=Z_UTC, after=when, anchor=when) is None
    before = when - timedelta(microseconds=1)
    assert next_fire(schedule, tz=Z_UTC, after=before, anchor=when) == when


def test_at_with_offset_ignores_the_job_timezone() -> None:
    assert fires("at 2026-12-01T09:00+02:00", u(2026, 1, 1), 1, NY) == [u(2026, 12, 1, 7)]
    assert fires("at 2026-12-01T09:00Z", u(2026, 1, 1), 1, NY) == [u(2026, 12, 1, 9)]


def test_at_in_a_dst_gap_fires_right_after_it() -> None:
    assert fires("at 2026-03-08T02:30", u(2026, 1, 1), 1, NY) == [u(2026, 3, 8, 7)]
    assert fires("at 2026-03-29 01:15:30", u(2026, 1, 1), 1, LONDON) == [u(2026, 3, 29, 1)]
    got = fires("at 2026-10-04T02:10", u(2026, 1, 1), 1, LORD_HOWE)
    assert got[0].astimezone(LORD_HOWE).strftime("%H:%M") == "02:30"


def test_at_in_a_repeated_hour_fires_at_the_first_occurrence() -> None:
    assert fires("at 2026-11-01T01:30", u(2026, 1, 1), 1, NY) == [u(2026, 11, 1, 5, 30)]


def test_reboot_has_no_fire_times() -> None:
    schedule = parse_schedule("@reboot")
    now = u(2026, 1, 1)
    assert schedule.next_after(now, tz=Z_UTC, anchor=now) is None
    assert next_fire(schedule, tz=Z_UTC, after=now, anchor=now) is None
    assert list(iter_fires(schedule, tz=Z_UTC, after=now, anchor=now)) == []


# --- the active window -------------------------------------------------------------------------


def test_start_at_is_inclusive() -> None:
    got = fires("0 * * * *", u(2026, 1, 1), 2, start_at=u(2026, 1, 1, 5))
    assert got == [u(2026, 1, 1, 5), u(2026, 1, 1, 6)]


def test_start_at_in_the_past_changes_nothing() -> None:
    got = fires("0 * * * *", u(2026, 1, 1, 5), 1, start_at=u(2025, 1, 1))
    assert got == [u(2026, 1, 1, 6)]


def test_end_at_is_inclusive_and_stops_iteration() -> None:
    got = fires("0 * * * *", u(2026, 1, 1), 100, start_at=u(2026, 1, 1, 5), end_at=u(2026, 1, 1, 7))
    assert got == [u(2026, 1, 1, 5), u(2026, 1, 1, 6), u(2026, 1, 1, 7)]


def test_nothing_left_in_the_window() -> None:
    schedule = parse_schedule("0 0 * * *")
    now = u(2026, 1, 1, 1)
    assert next_fire(schedule, tz=Z_UTC, after=now, anchor=now, end_at=u(2026, 1, 1, 23)) is None
    assert next_fire(schedule, tz=Z_UTC, after=now, anchor=now, end_at=u(2025, 1, 1)) is None


def test_interval_window_keeps_the_anchor_phase() -> None:
    anchor = u(2026, 1, 1, 0, 0, 10)
    got = fires(
        "every 10m",
        u(2026, 1, 1),
        10,
        anchor=anchor,
        start_at=u(2026, 1, 1, 1),
        end_at=u(2026, 1, 1, 1, 30, 10),
    )
    assert got == [u(2026, 1, 1, 1, m, 10) for m in (0, 10, 20, 30)]


def test_window_bounds_in_other_timezones() -> None:
    start_at = datetime(2026, 1, 1, 9, tzinfo=NY)  # 14:00 UTC
    got = fires("0 * * * *", u(2026, 1, 1), 1, start_at=start_at)
    assert got == [u(2026, 1, 1, 14)]


def test_naive_datetimes_are_refused() -> None:
    schedule = parse_schedule("@daily")
    with pytest.raises(ValueError, match="naive"):
        next_fire(schedule, tz=Z_UTC, after=datetime(2026, 1, 1), anchor=u(2026, 1, 1))
