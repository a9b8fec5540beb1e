"""Schedulers killed while firing: no fire lost, none doubled.

Firing one job is one transaction: the timer moves by compare-and-set and the runs are inserted
together, so a scheduler killed half-way leaves neither. Schedulers running together split the
due jobs (FOR UPDATE SKIP LOCKED), and the unique fire key (job_id, scheduled_for, attempt)
refuses a second run of a slot whatever path might lead to one.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest
from bench.exactly_once import run as exactly_once
from sqlalchemy import insert, select, update

from nightshift.store import NewRun, open_store
from nightshift.store.sql.runs import run_values
from nightshift.store.tables import jobs, runs
from tests.conftest import PG_URL
from tests.faults.conftest import Fleet, PgDatabase, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.timeout(150)
def test_three_schedulers_killed_at_random_fire_each_slot_exactly_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The bench's experiment, shortened: 100 jobs every second, 3 schedulers, ~25 s of
    SIGKILLs at random moments (`bench/exactly_once.py` runs 500 jobs for 5 minutes)."""
    fig = exactly_once(
        PG_URL, jobs=100, seconds=25, schedulers=3, kill_every=(1.0, 3.0), logdir=tmp_path
    )
    print(
        f"exactly once: {fig.fires_checked} fires checked, {fig.duplicates} duplicates, "
        f"{fig.missed} missed, {fig.kills} kills ({fig.kills_mid_transaction} inside a "
        f"transaction), lateness {fig.lateness_ms} ms"
    )
    assert fig.kills >= 5
    assert fig.fires_checked >= 100 * 20
    assert fig.unexpected_exits == 0
    assert (fig.duplicates, fig.missed, fig.skipped_records) == (0, 0, 0), fig.missing_examples


@pytest.mark.timeout(120)
def test_a_scheduler_killed_inside_its_fire_transaction_leaves_neither_run_nor_timer(
    fleet: Fleet, fresh_pg: PgDatabase, outsider_factory
) -> None:  # type: ignore[no-untyped-def]
    store, service = outsider_factory(fresh_pg.url())
    store.migrate()
    now = datetime.now(UTC).replace(microsecond=0)
    slots = {}
    for name, ago in (("first", 2), ("second", 1)):
        job = service.create_job(
            {
                "name": name,
                "kind": "python",
                "config": {"function": "tests.faults.jobs:noop"},
                "schedule": "every 1h",
                "overlap": "allow",
                "catch_up": "all",
            }
        )
        slots[job.id] = now - timedelta(seconds=ago)
    first_id, second_id = slots
    for job_id, slot in slots.items():
        store.update_job(job_id, {"anchor_at": slot, "next_fire_at": slot})

    # Hold the second job's fire key in an open transaction: the scheduler's insert of that run
    # has to wait for us, with both timers already moved and the first job's run inserted.
    blocker = open_store(fresh_pg.url(), migrate=False)
    conn = blocker.engine.connect()
    tx = conn.begin()
    job_row = conn.execute(select(jobs).where(jobs.c.id == second_id)).one()._mapping
    new = NewRun(job_id=second_id, run_at=slots[second_id], scheduled_for=slots[second_id])
    conn.execute(insert(runs).values(run_values(new, job_row, now)))
    try:
        doomed = fleet.add("doomed", "scheduler")
        doomed.start()
        waiting = wait_until(
            lambda: fresh_pg.sql(
                "SELECT pid, query FROM pg_stat_activity WHERE application_name = 'doomed' "
                "AND wait_event_type = 'Lock'"
            ),
            timeout=30,
            what="the scheduler blocks inside its fire transaction",
        )
        assert waiting[0][1].lstrip().upper().startswith("INSERT INTO RUNS"), waiting
        doomed.signal(signal.SIGKILL)
        doomed.wait()
    finally:
        tx.rollback()
        conn.close()
        blocker.close()
    wait_until(
        lambda: (
            not fresh_pg.sql("SELECT 1 FROM pg_stat_activity WHERE application_name = 'doomed'")
        ),
        timeout=30,
        what="the killed scheduler's sessions end",
    )
    # Killed half-way: nothing of its transaction remains, neither runs nor moved timers.
    assert sum(store.count_runs(job_id=j) for j in slots) == 0
    assert {j: store.get_job(j).next_fire_at for j in slots} == slots

    survivor = fleet.add("survivor", "scheduler")
    survivor.start()

    def fired() -> bool:
        return all(store.count_runs(job_id=j) == 1 for j in slots)

    wait_until(fired, timeout=30, what="a fresh scheduler fires both slots")
    for job_id, slot in slots.items():
        (only,) = store.list_runs(job_id=job_id)
        assert (only.scheduled_for, only.attempt) == (slot, 1)
        assert store.get_job(job_id).next_fire_at == slot + timedelta(hours=1)

    # The unique key is the last line: put a timer back to a slot that has its run already (as a
    # scheduler with a stale view would) and the slot is fired again, without a second run.
    with store.engine.begin() as db:
        db.execute(update(jobs).where(jobs.c.id == first_id).values(next_fire_at=slots[first_id]))
    store.update_job(first_id, {"description": "wake the scheduler"})
    wait_until(
        lambda: store.get_job(first_id).next_fire_at == slots[first_id] + timedelta(hours=1),
        timeout=30,
        what="the scheduler fires the re-armed slot",
    )
    assert [r.scheduled_for for r in store.list_runs(job_id=first_id)] == [slots[first_id]]
