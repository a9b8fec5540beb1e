"""GET /api/v1/stats: exact figures per bucket, usage per app, app-token isolation, and the
roll-up giving the same answer as live aggregation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from nightshift.clock import FakeClock
from nightshift.domain.histogram import bin_value, duration_bin
from nightshift.stats import StatsService, floor_time
from nightshift.store import open_store
from nightshift.store.sql.engine import ensure_sqlite_math
from nightshift.store.tables import run_stats_hourly
from tests.api.conftest import app_token
from tests.stats.conftest import add_job, add_run

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def seeded(api):  # type: ignore[no-untyped-def]
    """shop: a success (wait 10 s, 30 s), a failure (wait 40 s, 60 s), a pending run;
    blog: one success (wait 5 s, 2 s)."""
    store = api.store
    shop = add_job(store, "shop", "sync", T0)
    blog = add_job(store, "blog", "feed", T0)
    add_run(store, shop, at(10), at(20), at(50), "succeeded")
    add_run(store, shop, at(30), at(70), at(130), "failed")
    add_run(store, shop, at(65))
    add_run(store, blog, at(15), at(20), at(22), "succeeded")
    return api


MINUTE = {"bucket": "minute", "since": T0.isoformat(), "until": at(180).isoformat()}


def p95_of(seconds: float) -> float:
    return round(min(bin_value(duration_bin(seconds)), seconds), 3)


def test_minute_buckets_are_exact(seeded, admin) -> None:  # type: ignore[no-untyped-def]
    body = admin.get("/stats", params={**MINUTE, "app": "shop"}).json()
    first, second, third = body["buckets"]
    assert [b["start"][11:19] for b in body["buckets"]] == ["09:00:00", "09:01:00", "09:02:00"]
    assert first["created"] == 2 and first["succeeded"] == 1 and first["failed"] == 0
    assert first["waiting_s"] == {"avg": 10.0, "min": 10.0, "max": 10.0}
    assert first["duration_s"] == {"avg": 30.0, "p95": p95_of(30)}
    assert second["created"] == 1 and second["waiting_s"] == {"avg": 40.0, "min": 40.0, "max": 40.0}
    assert second["succeeded"] == second["failed"] == 0
    assert second["duration_s"] == {"avg": None, "p95": None}
    assert third["created"] == 0 and third["failed"] == 1
    assert third["duration_s"] == {"avg": 60.0, "p95": p95_of(60)}
    assert body["apps"] == [{"app": "shop", "executions": 2, "run_seconds": 90.0}]


def test_hour_bucket_and_usage_per_app(seeded, admin) -> None:  # type: ignore[no-untyped-def]
    params = {"bucket": "hour", "since": T0.isoformat(), "until": at(3600).isoformat()}
    body = admin.get("/stats", params=params).json()
    (hour,) = body["buckets"]
    assert hour["created"] == 4 and hour["succeeded"] == 2 and hour["failed"] == 1
    assert hour["waiting_s"] == {"avg": round(55 / 3, 3), "min": 5.0, "max": 40.0}
    assert hour["duration_s"]["avg"] == round(92 / 3, 3)
    assert abs(hour["duration_s"]["p95"] - 60) <= 60 * 0.09
    assert body["apps"] == [
        {"app": "blog", "executions": 1, "run_seconds": 2.0},
        {"app": "shop", "executions": 2, "run_seconds": 90.0},
    ]
    bad = admin.get("/stats", params={"bucket": "week"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "bucket"
    huge = admin.get("/stats", params={"bucket": "minute", "since": "2020-01-01T00:00:00Z"})
    assert huge.status_code == 422 and huge.json()["error"]["field"] == "since"


def test_app_token_sees_its_app_only(seeded, admin) -> None:  # type: ignore[no-untyped-def]
    token = app_token(admin, "blog")
    with seeded.client(token) as blog:
        mine = blog.get("/stats", params=MINUTE).json()
        assert mine["apps"] == [{"app": "blog", "executions": 1, "run_seconds": 2.0}]
        assert sum(b["created"] for b in mine["buckets"]) == 1
        assert blog.get("/stats", params={**MINUTE, "app": "blog"}).status_code == 200
        other = blog.get("/stats", params={**MINUTE, "app": "shop"})
        assert other.status_code == 404
    assert admin.get("/stats", params={**MINUTE, "app": "nope"}).status_code == 404


def test_roll_up_gives_the_live_figures(seeded, admin, settings) -> None:  # type: ignore[no-untyped-def]
    hour = {"bucket": "hour", "since": T0.isoformat(), "until": at(3600).isoformat()}
    queries = [MINUTE, {**MINUTE, "app": "shop"}, hour]
    live = [admin.get("/stats", params=q).json() for q in queries]
    assert all(body["rolled_up_until"] is None for body in live)

    # A first roll-up closes 09:00 only (lag 120 s at 09:03:30): the answer mixes both paths.
    service = StatsService(seeded.store, FakeClock(at(210)), settings)
    assert service.roll_up()["rolled_minutes"] == 1
    mixed = [admin.get("/stats", params=q).json() for q in queries]
    assert mixed[0]["rolled_up_until"].startswith("2026-03-02T09:01:00")
    # Then everything: the watermark passes the whole range.
    service.clock = FakeClock(at(7200))
    assert service.roll_up()["rolled_minutes"] == 117
    assert service.roll_up()["rolled_minutes"] == 0  # nothing new is closed
    rolled = [admin.get("/stats", params=q).json() for q in queries]
    for before, after in ((live, mixed), (live, rolled)):
        for a, b in zip(before, after, strict=True):
            a.pop("rolled_up_until", None), b.pop("rolled_up_until", None)
            assert a == b


def test_hourly_level_gives_the_live_figures(api, admin, settings) -> None:  # type: ignore[no-untyped-def]
    """Hour and day buckets read whole rolled-up hours from the hourly level and the minutes of
    the unfinished hour from minute rows: the same answer as live aggregation, at every step."""
    store = api.store
    shop = add_job(store, "shop", "sync", T0)
    blog = add_job(store, "blog", "feed", T0)
    for n in range(40):  # every ~17 min over 11 h, runs crossing minutes and hours
        base = n * 1013.0
        job = shop if n % 3 else blog
        status = "failed" if n % 7 == 0 else "succeeded"
        add_run(store, job, at(base), at(base + 5 + n), at(base + 70 + 31 * n), status)
    day_start = T0.replace(hour=0)
    until = at(13 * 3600).isoformat()
    hourly = {"bucket": "hour", "since": T0.isoformat(), "until": until}
    queries = [
        hourly,
        {**hourly, "app": "shop"},
        {"bucket": "day", "since": day_start.isoformat(), "until": until},
        {"bucket": "minute", "since": at(3 * 3600).isoformat(), "until": at(4 * 3600).isoformat()},
    ]
    live = [admin.get("/stats", params=q).json() for q in queries]
    assert sum(a["executions"] for a in live[2]["apps"]) == 40
    # Batches of 97 minutes: they end mid-hour and some close one hour, some two.
    batch = {"stats_rollup_batch_minutes": 97, "stats_rollup_budget_s": 0}  # one batch a call
    batched = settings.model_copy(update=batch)
    service = StatsService(store, FakeClock(at(13 * 3600)), batched)
    steps = 0
    while service.roll_up()["rolled_minutes"]:
        steps += 1
        for q, expected in zip(queries, live, strict=True):
            body = admin.get("/stats", params=q).json()
            body.pop("rolled_up_until"), expected.pop("rolled_up_until", None)
            assert body == expected
    assert steps > 5
    with store.engine.connect() as conn:
        hours = conn.execute(select(func.count()).select_from(run_stats_hourly)).scalar()
    assert hours > 0


def test_a_roll_up_takes_batches_until_caught_up_within_its_budget(api, settings) -> None:  # type: ignore[no-untyped-def]
    """After an upgrade onto a long history, one roll-up run takes batch after batch until it
    has caught up (or spent its time budget); what it writes is what batches one a call write."""
    store = api.store
    job = add_job(store, "shop", "sync", T0)
    for n in range(30):  # a run every ~8 h over 10 days
        add_run(store, job, at(n * 29_000), at(n * 29_000 + 3), at(n * 29_000 + 9), "succeeded")
    clock = FakeClock(at(11 * 86_400))
    daily = {"stats_rollup_batch_minutes": 1440}
    one = StatsService(
        store, clock, settings.model_copy(update={**daily, "stats_rollup_budget_s": 0})
    )
    first = one.roll_up()
    assert first["batches"] == 1 and first["rolled_minutes"] == 1440
    rest = StatsService(store, clock, settings.model_copy(update=daily)).roll_up()
    assert rest["batches"] == 10  # the other 10 days and the last, partial one
    assert first["rolled_minutes"] + rest["rolled_minutes"] == 11 * 1440 - 2
    assert rest["until"].startswith("2026-03-13T08:58:00")
    assert one.roll_up() == {"rolled_minutes": 0, "batches": 0, "rows": 0}
    figures = one.stats("day", since=T0, until=clock.now())
    assert sum(a["executions"] for a in figures["apps"]) == 30
    assert figures["rolled_up_until"] == clock.now() - timedelta(minutes=2)


def test_bins_counted_in_the_database_are_the_python_bins(api) -> None:  # type: ignore[no-untyped-def]
    """The store sums durations into histogram bins in SQL: each duration lands in the bin
    `duration_bin` gives, on both sides of every bin bound (to the microsecond), at zero and
    below it (a clock that went backwards), and the sums are exact."""
    check_bins(api.store)


def test_bins_on_a_sqlite_without_math_functions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A SQLite built without `ln` and `floor` gets Python's: the same bins."""
    store = open_store(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        event.listen(store.engine, "connect", lambda c, _r: ensure_sqlite_math(c, force=True))
        store.engine.dispose()  # every connection from now on has Python's functions
        check_bins(store)
    finally:
        store.close()


def check_bins(store) -> None:  # type: ignore[no-untyped-def]
    job = add_job(store, "shop", "sync", T0)
    durations = [0.0, 0.000001, 0.0005, 0.001, 0.001001, 0.5, 7200.25, 2 * 86_400.0]
    for k in range(1, 81):  # bounds from 1 ms to ~17 min
        bound_us = 1000 * 2 ** (k / 4)
        durations += [int(bound_us) / 1e6, (int(bound_us) + 1) / 1e6]
    ends = []
    for n, seconds in enumerate(durations):  # three days apart: one run per finishing minute
        started = at(3 * 86_400 * n)
        ends.append(started + timedelta(seconds=seconds))
        add_run(store, job, started, started, ends[-1], "succeeded")
    started = at(3 * 86_400 * len(durations))
    ends.append(started - timedelta(seconds=3))  # a clock that went backwards
    add_run(store, job, started, started, ends[-1], "failed")
    durations.append(0.0)

    rows, bins = store.run_figures(60, T0, started + timedelta(minutes=1))
    minutes = [floor_time(end, 60) for end in ends]
    got = {minute: index for _app, minute, index, _count in bins}
    assert got == {m: duration_bin(s) for m, s in zip(minutes, durations, strict=True)}
    assert all(count == 1 for *_, count in bins)
    longest = {row.start: row.duration_max for row in rows if row.executions}
    assert longest == dict(zip(minutes, durations, strict=True))
    assert sum(row.run_seconds for row in rows) == pytest.approx(sum(durations), abs=1e-6)
    assert sum(row.failed for row in rows) == 1
