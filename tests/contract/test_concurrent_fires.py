"""Several schedulers on one database, ticking at the same instant: each fire exactly once.

Each scheduler has a store (an engine, a connection pool) of its own, as separate processes do;
they meet only in the database. PostgreSQL splits the due jobs with FOR UPDATE SKIP LOCKED;
SQLite takes one writer at a time. Either way the timer's compare-and-set and the unique fire
key leave one run per (job, scheduled time).
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from nightshift.clock import FakeClock
from nightshift.config import Settings
from nightshift.domain.misfire import FirePlan
from nightshift.domain.models import Job, Run
from nightshift.scheduler import Scheduler
from nightshift.service import Service
from nightshift.store import SqlStore, open_store
from nightshift.store.tables import jobs, runs
from nightshift.worker.kinds.registry import build_executors

pytestmark = pytest.mark.timeout(120)

SCHEDULERS = 4
JOBS = 40


def test_schedulers_ticking_together_fire_each_slot_once(
    store: SqlStore, database_url: str, clock: FakeClock, settings: Settings
) -> None:
    service = Service(store, clock, settings, build_executors(settings))
    config = {"function": "tests.jobs_sample:echo"}
    made = [
        service.create_job(
            {
                "name": f"every-second-{i}",
                "kind": "python",
                "config": config,
                "schedule": "every 1s",
                "overlap": "allow",
                "catch_up": "all",
            }
        )
        for i in range(JOBS)
    ]
    start = clock.now()
    with store.engine.begin() as conn:  # every job on the same phase: they all race each second
        first = start + timedelta(seconds=1)
        mine = jobs.c.id.in_([j.id for j in made])
        conn.execute(update(jobs).where(mine).values(anchor_at=start, next_fire_at=first))

    # Small batches, so that one tick takes several transactions and schedulers interleave.
    small = settings.model_copy(update={"scheduler_batch": 7})
    stores = [open_store(database_url, migrate=False) for _ in range(SCHEDULERS)]
    schedulers = [Scheduler(s, clock, small) for s in stores]
    errors: list[BaseException] = []
    try:
        # Each round all schedulers tick at one instant; some rounds skip seconds (a catch-up).
        for step in [1, 1, 2, 1, 3, 1, 1, 1, 5, 1, 1, 2, 1, 1]:
            now = clock.advance(step)
            barrier = threading.Barrier(SCHEDULERS)

            def tick(scheduler: Scheduler, at=now, gate=barrier) -> None:  # type: ignore[no-untyped-def]
                try:
                    gate.wait()
                    scheduler.tick(at)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        end = clock.now()
    finally:
        for s in stores:
            s.close()
    assert not errors, errors

    seconds = int((end - start).total_seconds())
    expected = {start + timedelta(seconds=k) for k in range(1, seconds + 1)}
    for job in made:
        fired = Counter(
            (r.scheduled_for, r.attempt)
            for r in store.list_runs(job_id=job.id, limit=1000)
            if r.status != "skipped"
        )
        assert all(n == 1 for n in fired.values())  # no doubles
        assert {slot for slot, _ in fired} == expected  # none missed
        assert store.get_job(job.id).next_fire_at == end + timedelta(seconds=1)


def test_a_plan_made_for_a_timer_that_moved_is_dropped_whole(
    store: SqlStore, clock: FakeClock, settings: Settings
) -> None:
    """The compare-and-set on the timer: a plan made from a stale view of a job (its timer is not
    what the plan assumed) writes nothing, while the rest of the batch fires."""
    service = Service(store, clock, settings, build_executors(settings))
    config = {"function": "tests.jobs_sample:echo"}
    fresh, stale = (
        service.create_job(
            {"name": name, "kind": "python", "config": config, "schedule": "every 1h"}
        )
        for name in ("fresh", "stale")
    )
    now = clock.advance(3600)
    due = store.get_job(fresh.id).next_fire_at
    assert due == store.get_job(stale.id).next_fire_at <= now
    later = due + timedelta(hours=1)

    def planner(job):  # type: ignore[no-untyped-def]
        if job.id == stale.id:
            job.next_fire_at = due - timedelta(hours=1)  # as read by a scheduler long ago
        return FirePlan(runs=[(due, due)], next_fire_at=later)

    assert store.fire_due(now, planner, 10) == 2
    assert [r.scheduled_for for r in store.list_runs(job_id=fresh.id)] == [due]
    assert store.get_job(fresh.id).next_fire_at == later
    assert store.list_runs(job_id=stale.id) == []
    assert store.get_job(stale.id).next_fire_at == due


def _replacing_job_due(
    store: SqlStore, clock: FakeClock, settings: Settings, *, claimed: bool
) -> tuple[Job, Run, datetime]:
    """A job with overlap `replace`, due now, and its run from a second ago: pending, or
    `claimed` by a worker (then it holds the job's slot)."""
    service = Service(store, clock, settings, build_executors(settings))
    job = service.create_job(
        {
            "name": "replacer",
            "kind": "python",
            "config": {"function": "tests.jobs_sample:echo"},
            "schedule": "every 1s",
            "overlap": "replace",
        }
    )
    run = service.run_now(job.id)
    if claimed:
        [claim] = store.claim("worker-1", clock.now(), 30, 10, ["python"])
        assert claim.run.id == run.id and claim.run.exclusive
    now = clock.advance(1)
    store.update_job(job.id, {"next_fire_at": now})
    return job, run, now


def _tick_beside(scheduler: Scheduler, now: datetime) -> int:
    """A tick on a thread of its own, while this thread's transaction holds a run."""
    ticked: list[int] = []
    fire = threading.Thread(target=lambda: ticked.append(scheduler.tick(now)))
    fire.start()
    fire.join(30)
    assert not fire.is_alive(), "the fire waits for the run while it holds the job"
    return ticked[0]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_replacing_fire_leaves_a_run_being_completed_alone_rather_than_deadlock(
    store: SqlStore, database_url: str, clock: FakeClock, settings: Settings
) -> None:
    """A completion locks its run, then frees its job's slot; a replacing fire holds the job
    and wants its runs. Had the fire waited for the run, the two would deadlock, and one of
    them would fail when PostgreSQL noticed, a second later. The fire leaves the job due for
    the next tick instead, and the completion commits."""
    job, run, now = _replacing_job_due(store, clock, settings, claimed=True)
    scheduler = Scheduler(store, clock, settings)
    other = open_store(database_url, migrate=False)
    try:
        with other.engine.connect() as conn, conn.begin():
            # The completion's statements, in its order: the run's row first (as it is locked
            # to check that the worker still holds it) ...
            held = select(runs.c.id).where(runs.c.id == run.id).with_for_update(key_share=True)
            conn.execute(held)
            assert _tick_beside(scheduler, now) == 0  # nothing fired while the run was held
            # ... the job's slot last.
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.active_run_id == run.id)
                .values(active_run_id=None)
            )
            conn.execute(
                update(runs)
                .where(runs.c.id == run.id)
                .values(status="succeeded", finished_at=now, lease_owner=None)
            )
    finally:
        other.close()
    assert scheduler.tick(now) == 1
    fired = [r for r in store.list_runs(job_id=job.id) if r.scheduled_for == now]
    assert [r.status for r in fired] == ["pending"]
    assert store.get_run(run.id).status == "succeeded"  # the completion stands


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_replacing_fire_leaves_a_run_being_claimed_alone_rather_than_deadlock(
    store: SqlStore, database_url: str, clock: FakeClock, settings: Settings
) -> None:
    """A claim locks a pending run, then takes its job's slot: the same cycle. The claim
    commits, and the next tick replaces the run it started."""
    job, run, now = _replacing_job_due(store, clock, settings, claimed=False)
    scheduler = Scheduler(store, clock, settings)
    other = open_store(database_url, migrate=False)
    try:
        with other.engine.connect() as conn, conn.begin():
            # The claim's statements, in its order: the pending run first ...
            pending = select(runs.c.id).where(runs.c.id == run.id)
            conn.execute(pending.with_for_update(key_share=True, skip_locked=True))
            assert _tick_beside(scheduler, now) == 0
            # ... then the job's slot, and the run is taken.
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.active_run_id.is_(None))
                .values(active_run_id=run.id)
            )
            conn.execute(
                update(runs)
                .where(runs.c.id == run.id)
                .values(
                    status="running",
                    started_at=now,
                    lease_owner="worker-1",
                    lease_expires_at=now + timedelta(seconds=30),
                )
            )
    finally:
        other.close()
    assert scheduler.tick(now) == 1
    replaced = store.get_run(run.id)
    assert (replaced.status, replaced.reason) == ("stopping", "replaced")  # its worker stops it
    fired = [r for r in store.list_runs(job_id=job.id) if r.scheduled_for == now]
    assert [r.status for r in fired] == ["pending"]
