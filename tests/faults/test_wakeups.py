"""LISTEN/NOTIFY between real processes: workers start runs within milliseconds of their
creation, a lost notification costs at most one poll, a killed LISTEN connection comes back, and
a scheduler hears about a new job from another process at once."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from nightshift.store import NewRun
from nightshift.store.sql.notify import APPLICATION_NAME
from nightshift.store.sql.runs import run_values
from nightshift.store.tables import jobs, runs
from tests.faults.conftest import Fleet, PgDatabase, alive, tail, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(150)]
POLL_S = 3.0


def _listener_pids(db: PgDatabase, pid: int) -> list[int]:
    rows = db.sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        [f"{APPLICATION_NAME}:{pid}"],
    )
    return [r[0] for r in rows]


def test_workers_wake_on_notify_and_fall_back_to_the_poll(
    fleet: Fleet, fresh_pg: PgDatabase, outsider_factory
) -> None:  # type: ignore[no-untyped-def]
    worker = fleet.add("worker", "worker", NIGHTSHIFT_POLL_S=str(POLL_S))
    worker.start()
    assert worker.proc is not None
    wait_until(lambda: _listener_pids(fresh_pg, worker.proc.pid), 30, "the worker LISTENs")
    store, service = outsider_factory(fresh_pg.url())
    job = service.create_job(
        {"name": "quick", "kind": "python", "config": {"function": "tests.faults.jobs:noop"}}
    )

    def waited(run_id: int) -> float:
        done = wait_until(
            lambda: (r := store.get_run(run_id)).finished_at and r, 30, f"run {run_id} ends"
        )
        time.sleep(0.2)  # no completion wake pending when the next run comes
        return (done.started_at - done.created_at).total_seconds()

    def silently() -> int:
        """A run that appears without any NOTIFY: what a lost notification looks like."""
        now = datetime.now(UTC)
        with store.engine.begin() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job.id)).one()._mapping
            values = run_values(NewRun(job_id=job.id, run_at=now), row, now)
            return conn.execute(insert(runs).values(values).returning(runs.c.id)).scalar_one()

    waited(service.run_now(job.id).id)  # the pool's first start is not what we measure
    notified = [waited(service.run_now(job.id).id) for _ in range(15)]
    polled = [waited(silently()) for _ in range(4)]

    # Cut the worker's LISTEN connection: it reconnects and looks again at once.
    (first_listener,) = _listener_pids(fresh_pg, worker.proc.pid)
    fresh_pg.sql("SELECT pg_terminate_backend(%s)", [first_listener])
    after_cut = waited(silently())
    wait_until(
        lambda: [p for p in _listener_pids(fresh_pg, worker.proc.pid) if p != first_listener],
        30,
        "the worker LISTENs again",
    )
    renotified = [waited(service.run_now(job.id).id) for _ in range(5)]

    ms = lambda xs: f"median {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms"  # noqa: E731
    print(
        f"created -> started: NOTIFY {ms(notified)} ({len(notified)} runs); without a "
        f"notification (poll every {POLL_S:g} s) {ms(polled)} ({len(polled)} runs); "
        f"after the LISTEN connection was cut {after_cut * 1000:.0f} ms; "
        f"NOTIFY after reconnecting {ms(renotified)}"
    )
    assert statistics.median(notified) < 0.5 and max(notified) < POLL_S
    assert max(polled) < POLL_S + 3.0  # found by the poll, with room for a loaded machine
    assert after_cut < POLL_S + 3.0
    assert statistics.median(renotified) < 0.5
    assert "LISTEN: connection lost" in tail(worker, 100_000)
    assert alive(worker), tail(worker)


def test_a_scheduler_hears_of_a_new_job_from_another_process_at_once(
    fleet: Fleet, fresh_pg: PgDatabase, outsider_factory
) -> None:  # type: ignore[no-untyped-def]
    """With no jobs the scheduler sleeps a whole poll (30 s here); a job created elsewhere must
    still fire on time, because the change arrives as a NOTIFY."""
    scheduler = fleet.add("scheduler", "scheduler", NIGHTSHIFT_POLL_S="30")
    scheduler.start()
    assert scheduler.proc is not None
    wait_until(lambda: _listener_pids(fresh_pg, scheduler.proc.pid), 30, "the scheduler LISTENs")
    time.sleep(0.5)  # let it settle into its long sleep
    store, service = outsider_factory(fresh_pg.url())
    job = service.create_job(
        {
            "name": "soon",
            "kind": "python",
            "config": {"function": "tests.faults.jobs:noop"},
            "schedule": "every 2s",
        }
    )
    first = wait_until(lambda: store.list_runs(job_id=job.id), 15, "the first fire")[-1]
    late = (first.created_at - first.scheduled_for).total_seconds()
    print(f"scheduler woken by NOTIFY: first fire {late * 1000:.0f} ms after its time")
    assert first.scheduled_for == job.next_fire_at
    assert late < 1.5
