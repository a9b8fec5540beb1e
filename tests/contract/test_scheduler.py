"""The scheduler over a real store with a fake clock: timers, catch-up, overlap, pauses, reboot."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from nightshift.clock import FakeClock
from nightshift.config import Settings
from nightshift.domain.status import RunStatus
from nightshift.scheduler import LOCKED_RETRY_S, Scheduler
from nightshift.service import Service
from nightshift.store import Completion, SqlStore
from nightshift.store.tables import jobs
from nightshift.worker.kinds.registry import build_executors

S = RunStatus
FN = {"function": "tests.jobs_sample:echo"}


@pytest.fixture
def service(store: SqlStore, clock: FakeClock, settings: Settings) -> Service:
    return Service(store, clock, settings, build_executors(settings))


@pytest.fixture
def scheduler(store: SqlStore, clock: FakeClock, settings: Settings) -> Scheduler:
    return Scheduler(store, clock, settings)


def job(service: Service, name: str = "j", **fields):  # type: ignore[no-untyped-def]
    return service.create_job({"name": name, "kind": "python", "config": FN, **fields})


def scheduled(store: SqlStore, job_id: int) -> list:  # type: ignore[type-arg]
    return sorted(
        r.scheduled_for for r in store.list_runs(job_id=job_id, limit=1000) if r.status != S.SKIPPED
    )


def finish_all(store: SqlStore, clock: FakeClock) -> None:
    for c in store.claim("w", clock.now(), 60, 1000, ["python"]):
        store.complete([Completion(c.run.id, "w", S.SUCCEEDED, clock.now())])


def test_interval_fires_once_per_slot_from_the_job_start(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    start = clock.now()
    j = job(service, schedule="every 10s", overlap="allow")
    assert j.next_fire_at == start + timedelta(seconds=10)
    for _ in range(5):
        clock.advance(10)
        assert scheduler.tick() == 1
        assert scheduler.tick() == 0  # the same instant again: nothing new
    assert scheduled(store, j.id) == [start + timedelta(seconds=10 * i) for i in range(1, 6)]


def test_each_committed_batch_is_announced_before_the_next_is_fired(  # type: ignore[no-untyped-def]
    service, store, clock, settings
) -> None:
    """Runs of a big instant become claimable batch by batch, not when the last one commits."""
    scheduler = Scheduler(store, clock, settings.model_copy(update={"scheduler_batch": 2}))
    jobs = [job(service, f"j{i}", schedule="every 10s") for i in range(5)]
    clock.advance(10)
    visible: list[int] = []
    assert scheduler.tick(committed=lambda: visible.append(len(store.list_runs()))) == 5
    assert visible == [2, 4, 5]  # each announcement finds its batch committed
    assert sorted(r.job_id for r in store.list_runs()) == sorted(j.id for j in jobs)


def test_cron_in_a_timezone_across_spring_forward(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    clock.set(datetime(2026, 3, 7, 12, 0, tzinfo=UTC))
    j = job(service, schedule="30 2 * * *", timezone="America/New_York")
    # 02:30 does not exist on 2026-03-08 in New York: the fire runs right after the change.
    for day in (7, 8, 9):
        clock.set(datetime(2026, 3, day + 1, 12, 0, tzinfo=UTC))
        scheduler.tick()
        finish_all(store, clock)
    assert scheduled(store, j.id) == [
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # 03:00 EDT
        datetime(2026, 3, 9, 6, 30, tzinfo=UTC),
        datetime(2026, 3, 10, 6, 30, tzinfo=UTC),
    ]


def test_catch_up_latest_after_downtime_runs_once_and_records_the_misses(
    service, scheduler, store, clock
) -> None:  # type: ignore[no-untyped-def]
    j = job(service, schedule="every 1m")
    clock.advance(10 * 60 + 5)  # ten fires were due while nothing ran
    assert scheduler.tick() == 1
    runs = store.list_runs(job_id=j.id)
    assert [r.status for r in runs] == [S.PENDING, S.SKIPPED]
    assert runs[1].skip_count == 9 and runs[1].reason == "missed"
    assert runs[0].scheduled_for == clock.now() - timedelta(seconds=5)
    assert store.get_job(j.id).next_fire_at == runs[0].scheduled_for + timedelta(minutes=1)


def test_overlap_skip_records_consecutive_skips_as_one(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    j = job(service, schedule="every 1s")
    for _ in range(6):
        clock.advance(1)
        scheduler.tick()
    runs = store.list_runs(job_id=j.id)
    assert [(r.status, r.skip_count) for r in runs] == [(S.SKIPPED, 5), (S.PENDING, 0)]
    assert runs[0].reason == "overlap"


def test_editing_a_job_keeps_its_timer_but_a_new_schedule_resets_it(
    service, scheduler, store, clock
) -> None:  # type: ignore[no-untyped-def]
    j = job(service, schedule="every 120s")
    due = j.next_fire_at
    clock.advance(60)
    edited = service.update_job(
        j.id, {"description": "new text", "config": {**FN, "params": {"a": 1}}}
    )
    assert edited.next_fire_at == due  # 60 s into a 120 s interval: still fires 60 s later
    assert edited.description == "new text"
    changed = service.update_job(j.id, {"schedule": "every 30s"})
    assert changed.next_fire_at == clock.now() + timedelta(seconds=30)


def test_each_fire_follows_the_job_as_it_is_now(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    """Ticks read a job's definition once per change of the catalog: an edit shows in the next
    fire, and so does a row changed under a tick's statement (as a concurrent edit is on
    PostgreSQL), which its updated_at gives away."""
    j = job(service, schedule="every 10s", overlap="allow")

    def next_fire_params() -> dict:  # type: ignore[type-arg]
        clock.advance(10)
        assert scheduler.tick() == 1
        return store.list_runs(job_id=j.id, limit=1)[0].params

    assert next_fire_params() == {}
    service.update_job(j.id, {"config": {**FN, "params": {"n": 1}}})
    assert next_fire_params() == {"n": 1}
    assert next_fire_params() == {"n": 1}
    with store.engine.begin() as conn:  # a change the catalog's version does not show
        conn.execute(
            update(jobs)
            .where(jobs.c.id == j.id)
            .values(config={**FN, "params": {"n": 2}}, updated_at=clock.now())
        )
    assert next_fire_params() == {"n": 2}


def test_app_schedules_off_records_nothing_and_on_resumes_without_burst(
    service, scheduler, store, clock
) -> None:  # type: ignore[no-untyped-def]
    j = job(service, app="shop", schedule="every 1m")
    service.set_schedules_enabled("shop", False)
    clock.advance(3600)
    assert scheduler.tick() == 0
    service.set_schedules_enabled("shop", True)
    assert scheduler.tick() == 0
    assert store.list_runs(job_id=j.id) == []
    clock.advance(60)
    assert scheduler.tick() == 1
    assert len(store.list_runs(job_id=j.id)) == 1


def test_reboot_jobs_fire_at_start_only(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    j = job(service, schedule="@reboot", start_delay_s=5)
    assert j.next_fire_at is None
    clock.advance(3600)
    assert scheduler.tick() == 0  # a tick (and a reload) never fires @reboot
    assert scheduler.fire_reboot_jobs(clock.now()) == 1
    (run,) = store.list_runs(job_id=j.id)
    assert run.run_at == clock.now() + timedelta(seconds=5)


def test_one_off_at_fires_once(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    j = job(service, schedule="at 2026-03-02T10:00", timezone="Europe/London")
    assert j.next_fire_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    clock.advance(7200)
    assert scheduler.tick() == 1
    assert store.get_job(j.id).next_fire_at is None
    clock.advance(86400)
    assert scheduler.tick() == 0


def test_start_and_end_window(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    start = clock.now() + timedelta(hours=1)
    j = job(
        service,
        schedule="every 30m",
        start_at=start.isoformat(),
        end_at=(start + timedelta(hours=1)).isoformat(),
        overlap="allow",
    )
    assert j.next_fire_at == start
    for _ in range(8):
        clock.advance(1800)
        scheduler.tick()
    assert scheduled(store, j.id) == [
        start,
        start + timedelta(minutes=30),
        start + timedelta(hours=1),
    ]


def test_two_schedulers_never_fire_a_slot_twice(service, store, clock, settings) -> None:  # type: ignore[no-untyped-def]
    jobs = [job(service, f"j{i}", schedule="every 1s", overlap="allow") for i in range(20)]
    a, b = Scheduler(store, clock, settings), Scheduler(store, clock, settings)
    for _ in range(10):
        clock.advance(1)
        a.tick()
        b.tick()
    for j in jobs:
        slots = scheduled(store, j.id)
        assert len(slots) == len(set(slots)) == 10


def test_invalid_schedules_and_timezones_are_refused_naming_the_problem(service) -> None:  # type: ignore[no-untyped-def]
    from nightshift.errors import InvalidInput

    with pytest.raises(InvalidInput) as bad_cron:
        job(service, schedule="0 25 * * *")
    assert bad_cron.value.field == "schedule" and "hour" in bad_cron.value.message
    with pytest.raises(InvalidInput) as bad_tz:
        job(service, schedule="9:00", timezone="Mars/Base")
    assert bad_tz.value.field == "timezone"
    with pytest.raises(InvalidInput) as bad_fn:
        service.create_job({"name": "x", "kind": "python", "config": {"function": "no colon"}})
    assert bad_fn.value.field == "config.function"
    with pytest.raises(InvalidInput) as negative:
        job(service, schedule="9:00", timeout_s=-1)
    assert negative.value.field == "timeout_s"
    assert service.store.list_jobs() == []  # nothing half-written


def test_a_fire_is_made_ahead_of_its_time_for_its_time(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    """fire_ahead_s (0.5 s): the run exists before its time; it is due and claimable then."""
    start = clock.now()
    j = job(service, schedule="every 10s")
    clock.advance(9.4)  # 0.6 s before its time: not yet
    assert scheduler.tick() == 0
    clock.advance(0.2)  # 0.4 s before it
    assert scheduler.tick() == 1
    (run,) = store.list_runs(job_id=j.id)
    slot = start + timedelta(seconds=10)
    assert (run.status, run.scheduled_for, run.run_at) == (S.PENDING, slot, slot)
    # Created, as it shows, by its fire: it has waited nothing yet.
    assert run.created_at == slot and run.waiting_s(slot) == 0.0
    assert store.get_job(j.id).next_fire_at == slot + timedelta(seconds=10)
    assert scheduler.tick() == 0  # nothing more within the window
    # Not due yet; a worker claiming ahead takes it, to start at its time.
    assert store.claim("w", clock.now(), 60, 10, ["python"]) == []
    ahead = clock.now() + timedelta(seconds=0.5)
    (claimed,) = store.claim("w", clock.now(), 60, 10, ["python"], horizon=ahead)
    assert claimed.run.id == run.id
    assert store.get_run(run.id).started_at == slot  # shown as starting at its time


def test_a_job_whose_run_is_active_is_fired_at_its_time(service, scheduler, store, clock) -> None:  # type: ignore[no-untyped-def]
    """Fired ahead, `skip` would judge by a run that may end before the fire's time."""
    skips = job(service, "skips", schedule="every 10s")  # overlap skip
    allows = job(service, "allows", schedule="every 10s", overlap="allow")
    clock.advance(10)
    assert scheduler.tick() == 2  # each has a pending run now
    clock.advance(9.6)
    assert scheduler.tick() == 1  # allow does not look at active runs: fired ahead
    assert len(scheduled(store, allows.id)) == 2
    assert len(store.list_runs(job_id=skips.id)) == 1  # nothing decided for skip yet
    clock.advance(0.4)
    assert scheduler.tick() == 1  # at its time, its run still pending: skipped
    runs = store.list_runs(job_id=skips.id)
    assert [(r.status, r.reason) for r in runs] == [(S.SKIPPED, "overlap"), (S.PENDING, None)]


def record_ticks(store: SqlStore) -> list[datetime]:
    """The `now` of every tick from here on, noted once the tick has read when the next fire
    is due (its last query)."""
    ticks: list[datetime] = []
    real_fire, real_next = store.fire_due, store.next_fire_due
    current: list[datetime] = []

    def fire_due(now, planner, limit, horizon=None):  # type: ignore[no-untyped-def]
        current[:] = [now]
        return real_fire(now, planner, limit, horizon)

    def next_fire_due():  # type: ignore[no-untyped-def]
        due = real_next()
        ticks.extend(current)
        current.clear()
        return due

    store.fire_due = fire_due  # type: ignore[method-assign]
    store.next_fire_due = next_fire_due  # type: ignore[method-assign]
    return ticks


async def test_a_job_held_for_its_time_is_looked_at_once_more_then_not_until_then(  # type: ignore[no-untyped-def]
    service, scheduler, store, clock
) -> None:
    j = job(service, schedule="every 10s")
    service.run_now(j.id)  # active: its next fire is not made ahead
    clock.advance(9.6)
    start = clock.now()
    ticks = record_ticks(store)
    stop = asyncio.Event()
    loop = asyncio.create_task(scheduler.run(stop, reboot=False))
    await until(lambda: len(ticks) == 1 and clock.sleeping > 0)
    clock.advance(LOCKED_RETRY_S)
    await until(lambda: len(ticks) == 2)  # once more: another scheduler could have held it
    await until(lambda: clock.sleeping > 0)
    clock.advance(0.2)
    await asyncio.sleep(0.1)
    assert len(ticks) == 2  # still active: asleep until the fire's time
    await until(lambda: clock.sleeping > 0)
    clock.advance(0.15)
    await until(lambda: len(store.list_runs(job_id=j.id)) == 2)  # fired then: skipped
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert ticks == [
        start,
        start + timedelta(seconds=LOCKED_RETRY_S),
        start + timedelta(seconds=10 - 9.6),
    ]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_scheduler_that_finds_the_instant_held_by_another_does_not_wake_at_it(  # type: ignore[no-untyped-def]
    service, scheduler, store, clock
) -> None:
    """Another scheduler is firing the jobs due within fire_ahead_s (its transaction holds
    them): this one fires nothing, and once that fire is committed it sleeps until the next
    window, rather than waking at the instant (the busiest moment) to find nothing to do."""
    j = job(service, schedule="every 10s", overlap="allow")
    clock.advance(9.6)
    start = clock.now()
    ticks = record_ticks(store)
    stop = asyncio.Event()
    with store.engine.connect() as other:
        held = other.begin()  # the other scheduler's batch: the job's row, locked
        other.execute(select(jobs.c.id).where(jobs.c.id == j.id).with_for_update(key_share=True))
        loop = asyncio.create_task(scheduler.run(stop, reboot=False))
        await until(lambda: len(ticks) == 1)
        assert store.list_runs(job_id=j.id) == []  # nothing fired: it is the other's
        later = start + timedelta(seconds=20)  # the other fired it, and its timer moved
        other.execute(update(jobs).where(jobs.c.id == j.id).values(next_fire_at=later))
        held.commit()
    await until(lambda: clock.sleeping > 0)
    clock.advance(LOCKED_RETRY_S)
    await until(lambda: len(ticks) == 2)  # the look once more: the next fire is in 10 s
    await until(lambda: clock.sleeping > 0)
    clock.advance(0.5)  # the instant itself
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert ticks == [start, start + timedelta(seconds=LOCKED_RETRY_S)]


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)
