"""Statistics, system jobs and metrics through the real service (`serve`) on every backend.

Runs are inserted with known timestamps straight into the store, so every figure is exact."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update

from nightshift.domain.models import JobKind
from nightshift.store.base import NewRun
from nightshift.store.tables import run_logs, runs
from tests.api.conftest import admin, api, serve  # noqa: F401
from tests.factories import make_job


def add_job(store, app: str, name: str, now: datetime) -> int:  # type: ignore[no-untyped-def]
    store.ensure_app(app, now)
    job = make_job(now, app=app, name=name, kind=JobKind.HTTP, config={"url": "http://x"})
    return store.create_job(job).id


def add_run(  # type: ignore[no-untyped-def]
    store,
    job_id: int,
    created: datetime,
    started: datetime | None = None,
    finished: datetime | None = None,
    status: str = "pending",
    logs: int = 0,
) -> int:
    run = store.enqueue(NewRun(job_id=job_id, run_at=created), created)
    with store.engine.begin() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.id == run.id)
            .values(status=status, started_at=started, finished_at=finished)
        )
        for n in range(logs):
            conn.execute(
                insert(run_logs).values(run_id=run.id, at=created, level="INFO", message=f"l{n}")
            )
    return run.id
