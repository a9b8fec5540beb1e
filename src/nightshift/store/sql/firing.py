"""The scheduler's transaction: due jobs become runs and skipped records, timers advance."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, bindparam, func, select, update

from nightshift.domain.misfire import FirePlan, Skip
from nightshift.domain.models import Job
from nightshift.domain.status import ACTIVE
from nightshift.store.base import NewRun, Planner
from nightshift.store.sql.catalog import JOB_COLUMNS, schedulable
from nightshift.store.sql.codec import job_from_row
from nightshift.store.sql.engine import Dialect, Transactions, insert_or_ignore
from nightshift.store.sql.notify import RUNS, notify
from nightshift.store.sql.runs import run_values
from nightshift.store.tables import jobs, runs

_active_runs = (
    select(func.count())
    .where(runs.c.job_id == jobs.c.id, runs.c.status.in_([str(s) for s in ACTIVE]))
    .scalar_subquery()
    .label("active_runs")
)


class FiringStore:
    _tx: Transactions
    _dialect: Dialect

    def fire_due(self, now: datetime, planner: Planner, limit: int) -> int:
        query = (
            select(*JOB_COLUMNS, _active_runs)
            .where(schedulable, jobs.c.next_fire_at <= now)
            .order_by(jobs.c.next_fire_at)
            .limit(limit)
        )
        if self._dialect.skip_locked:
            # Several schedulers split the due jobs; a job another one holds is its to fire.
            # NO KEY UPDATE (key_share): the lock schedulers need among themselves, which does
            # not clash with the key-share lock of a transaction inserting a run of the job.
            query = query.with_for_update(skip_locked=True, key_share=True, of=jobs)
        with self._tx.write() as conn:
            due = [job_from_row(r) for r in conn.execute(query)]
            fired = _advance_timers(conn, [(job, planner(job)) for job in due])
            new_runs = [values for job, plan in fired for values in _apply(conn, job, plan, now)]
            if new_runs:
                # ON CONFLICT DO NOTHING: the unique fire key makes a second insert of a slot a
                # no-op. One statement for the batch (psycopg pipelines it).
                conn.execute(insert_or_ignore(conn, runs), new_runs)
                notify(conn, RUNS)  # delivered at commit: workers wake as the runs appear
            return len(due)


_ADVANCE = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.next_fire_at == bindparam("b_planned"))
    .values(next_fire_at=bindparam("b_next"))
)


def _advance_timers(
    conn: Connection, plans: list[tuple[Job, FirePlan]]
) -> list[tuple[Job, FirePlan]]:
    """Move each job's timer by compare-and-set from the value its plan was made for; return the
    plans whose timer moved. Only the transaction that moves a timer owns the fires up to its
    new value: the runs are inserted in the same transaction, so a scheduler killed in between
    leaves neither, and a plan whose timer moved meanwhile is dropped whole.

    One statement moves the whole batch. Under PostgreSQL's row lock (and SQLite's single
    writer) it always moves every timer; if it ever does not, it is undone and redone job by
    job, to learn which plans still hold."""
    if not plans:
        return []
    params = [
        {"b_id": job.id, "b_planned": job.next_fire_at, "b_next": plan.next_fire_at}
        for job, plan in plans
    ]
    batch = conn.begin_nested()
    if conn.execute(_ADVANCE, params).rowcount == len(plans):
        batch.commit()
        return plans
    batch.rollback()
    return [
        (job, plan)
        for (job, plan), one in zip(plans, params, strict=True)
        if conn.execute(_ADVANCE, [one]).rowcount == 1
    ]


def _apply(conn: Connection, job: Job, plan: FirePlan, now: datetime) -> list[dict]:
    """Carry out one job's plan but its runs: stop what it replaces, record what it skips.
    Returns the rows of the runs to insert (`fire_due` inserts the batch's in one go)."""
    job_row = {"app": job.app, "kind": str(job.kind), "overlap": str(job.overlap)}
    if plan.replace_active:
        conn.execute(
            update(runs)
            .where(runs.c.job_id == job.id, runs.c.status.in_(["running", "stopping"]))
            .values(status="stopping", kill_requested=True, reason="replaced")
        )
        conn.execute(
            update(runs)
            .where(runs.c.job_id == job.id, runs.c.status == "pending")
            .values(status="cancelled", reason="replaced", finished_at=now)
        )
    for skip in plan.skips:
        _record_skip(conn, job, skip, now, job_row)
    params = job.config.get("params") or {}
    return [
        run_values(
            NewRun(
                job_id=job.id,
                run_at=run_at,
                scheduled_for=scheduled_for,
                params=dict(params),
                low_priority=job.low_priority,
            ),
            job_row,
            now,
        )
        for scheduled_for, run_at in plan.runs
    ]


def _record_skip(conn: Connection, job: Job, skip: Skip, now: datetime, job_row: dict) -> None:
    """Consecutive skips of one job for one reason grow one record instead of adding rows."""
    latest = conn.execute(
        select(runs.c.id, runs.c.status, runs.c.reason)
        .where(runs.c.job_id == job.id)
        .order_by(runs.c.id.desc())
        .limit(1)
    ).first()
    if latest is not None and latest.status == "skipped" and latest.reason == skip.reason:
        conn.execute(
            update(runs)
            .where(runs.c.id == latest.id)
            .values(
                skip_count=runs.c.skip_count + skip.count,
                last_scheduled_for=skip.last,
                finished_at=now,
            )
        )
        return
    new = NewRun(
        job_id=job.id,
        run_at=skip.first,
        scheduled_for=skip.first,
        status="skipped",  # type: ignore[arg-type]
        reason=skip.reason,
    )
    values = run_values(new, job_row, now)
    values.update(skip_count=skip.count, last_scheduled_for=skip.last, exclusive=False)
    conn.execute(insert_or_ignore(conn, runs).values(values))
