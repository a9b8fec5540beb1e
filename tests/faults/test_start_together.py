"""Every role as its own process, started at the same instant on an empty database."""

from __future__ import annotations

import pytest

from tests.faults.conftest import Fleet, PgDatabase, alive, tail, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(150)]


def test_processes_started_together_migrate_once_and_all_run(
    fleet: Fleet, fresh_pg: PgDatabase, outsider_factory
) -> None:  # type: ignore[no-untyped-def]
    procs = [
        fleet.add("up-1", "up"),
        fleet.add("up-2", "up"),
        fleet.add("scheduler-1", "scheduler"),
        fleet.add("scheduler-2", "scheduler"),
        fleet.add("worker-1", "worker"),
        fleet.add("api-1", "api"),
    ]
    fleet.start_together(procs, timeout=90)

    # One schema, at the newest revision, created by exactly one of them (the advisory lock
    # made the others wait, then find nothing to do).
    tables = {
        r[0]
        for r in fresh_pg.sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [fresh_pg.schema],
        )
    }
    assert {"ns_alembic_version", "jobs", "runs", "apps"} <= tables
    versions = fresh_pg.sql(f"SELECT version_num FROM {fresh_pg.schema}.ns_alembic_version")
    assert len(versions) == 1

    # And the fleet works as one service: a job fires and its runs succeed.
    store, service = outsider_factory(fresh_pg.url())
    job = service.create_job(
        {
            "name": "tick",
            "kind": "python",
            "schedule": "every 1s",
            "config": {"function": "tests.faults.jobs:noop"},
        }
    )
    wait_until(
        lambda: store.count_runs(job_id=job.id, status=["succeeded"]) >= 3,
        timeout=30,
        what="three fires of a new job succeed",
    )
    for proc in procs:
        assert alive(proc), tail(proc)
        assert "Traceback" not in tail(proc, 100_000), tail(proc)
