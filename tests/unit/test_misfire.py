"""Catch-up, lateness and overlap decisions, as pure functions of the job and the due fires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nightshift.domain.misfire import plan_fires
from nightshift.domain.models import CatchUp, Overlap
from tests.factories import make_job

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def minutes(start: datetime):  # type: ignore[no-untyped-def]
    t = start
    while True:
        yield t
        t += MIN


def plan(job, now, **kw):  # type: ignore[no-untyped-def]
    return plan_fires(
        job,
        now,
        minutes(job.next_fire_at),
        catch_up_max=kw.get("catch_up_max", 100),
        misfire_grace_s=kw.get("grace", 60),
    )


def test_an_on_time_fire_runs_and_the_timer_moves_on() -> None:
    job = make_job(T0, next_fire_at=T0)
    p = plan(job, T0 + timedelta(milliseconds=3))
    assert p.runs == [(T0, T0)] and p.skips == [] and p.next_fire_at == T0 + MIN


@pytest.mark.parametrize(
    ("catch_up", "ran", "missed"),
    [
        (CatchUp.LATEST, [9], 9),  # one run for all missed fires: the latest
        (CatchUp.NONE, [], 10),  # every fire is later than the grace period
        (CatchUp.ALL, list(range(10)), 0),
    ],
)
def test_catch_up_after_ten_minutes_down(catch_up: CatchUp, ran: list[int], missed: int) -> None:
    job = make_job(T0, next_fire_at=T0, catch_up=catch_up)
    now = T0 + 9 * MIN + timedelta(seconds=45)  # fires 09:00..09:09 are due, the last 45 s late
    p = plan(job, now, grace=30)
    assert [int((s - T0) / MIN) for s, _ in p.runs] == ran
    assert sum(s.count for s in p.skips) == missed
    assert all(s.reason == "missed" for s in p.skips)
    assert p.next_fire_at == T0 + 10 * MIN


def test_catch_up_none_still_runs_a_fire_within_grace() -> None:
    job = make_job(T0, next_fire_at=T0, catch_up=CatchUp.NONE)
    p = plan(job, T0 + MIN + timedelta(seconds=5))
    assert [s for s, _ in p.runs] == [T0 + MIN]
    assert [(s.reason, s.first, s.count) for s in p.skips] == [("missed", T0, 1)]


def test_catch_up_all_is_bounded() -> None:
    job = make_job(T0, next_fire_at=T0, catch_up=CatchUp.ALL)
    p = plan(job, T0 + 9 * MIN, catch_up_max=3)
    assert [s for s, _ in p.runs] == [T0 + 7 * MIN, T0 + 8 * MIN, T0 + 9 * MIN]
    assert [(s.reason, s.first, s.last, s.count) for s in p.skips] == [
        ("missed", T0, T0 + 6 * MIN, 7)
    ]


def test_a_fire_later_than_max_lateness_is_skipped_as_too_late() -> None:
    job = make_job(T0, next_fire_at=T0, max_lateness_s=30)
    p = plan(job, T0 + timedelta(seconds=31))
    assert p.runs == []
    assert [(s.reason, s.count) for s in p.skips] == [("too_late", 1)]


@pytest.mark.parametrize(
    ("overlap", "runs", "skip_reason", "replace"),
    [
        (Overlap.SKIP, 0, "overlap", False),
        (Overlap.QUEUE, 1, None, False),
        (Overlap.ALLOW, 1, None, False),
        (Overlap.REPLACE, 1, None, True),
    ],
)
def test_overlap_policies_with_a_run_still_active(overlap, runs, skip_reason, replace) -> None:  # type: ignore[no-untyped-def]
    job = make_job(T0, next_fire_at=T0, overlap=overlap, active_runs=1)
    p = plan(job, T0)
    assert len(p.runs) == runs
    assert [s.reason for s in p.skips] == ([skip_reason] if skip_reason else [])
    assert p.replace_active is replace


def test_jitter_delays_the_start_but_not_the_slot_and_is_stable() -> None:
    job = make_job(T0, id=7, next_fire_at=T0, jitter_s=30)
    ((slot, run_at),) = plan(job, T0).runs
    assert slot == T0 and T0 <= run_at < T0 + timedelta(seconds=30)
    assert plan(job, T0).runs[0][1] == run_at  # two schedulers agree


def test_a_long_outage_of_a_frequent_schedule_is_walked_in_bounded_time() -> None:
    job = make_job(T0, next_fire_at=T0)
    every_second = (T0 + timedelta(seconds=i) for i in range(10**7))
    p = plan_fires(job, T0 + timedelta(days=3), every_second, catch_up_max=100, misfire_grace_s=60)
    assert len(p.runs) == 1
    assert p.skips[0].count >= 100_000
