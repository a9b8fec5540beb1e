"""The scheduler's transaction: due jobs become runs and skipped records, timers advance."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, literal_column, or_, select, update
from sqlalchemy.exc import OperationalError

from nightshift.domain.misfire import FirePlan, Skip
from nightshift.domain.models import Job
from nightshift.domain.status import ACTIVE
from nightshift.store.base import NewRun, Planner
from nightshift.store.sql.catalog import CATALOG_VERSION, schedulable
from nightshift.store.sql.engine import Dialect, Transactions, insert_or_ignore
from nightshift.store.sql.job_cache import JobCache, read_jobs
from nightshift.store.sql.notify import RUNS, notify
from nightshift.store.sql.prepared import IN_INDEX_ORDER, Prepares
from nightshift.store.sql.runs import NEW_RUN_COLUMNS, run_values
from nightshift.store.tables import jobs, runs

# The statuses as constants of the text (our own, quoted): a prepared statement has no
# expanding IN, and the planner sees the same list as before.
_ACTIVE = [literal_column(f"'{s}'") for s in ACTIVE]


def _due(dialect: str) -> Any:
    # The definitions come from the JobCache: only what changes without a catalog bump, and
    # updated_at, which tells a definition changed under this statement (see _due_jobs).
    when = jobs.c.next_fire_at.type
    # Due by the horizon, and either due now or safe to fire ahead (FiringStore.fire_due).
    ahead = or_(
        jobs.c.next_fire_at <= bindparam("now", type_=when),
        jobs.c.overlap == literal_column("'allow'"),
        ~exists().where(runs.c.job_id == jobs.c.id, runs.c.status.in_(_ACTIVE)),
    )
    due = (
        select(jobs.c.id, jobs.c.next_fire_at, jobs.c.updated_at)
        .where(schedulable, jobs.c.next_fire_at <= bindparam("horizon", type_=when), ahead)
        .order_by(jobs.c.next_fire_at)
        .limit(bindparam("n"))
    )
    if dialect == "postgresql":
        # Several schedulers split the due jobs; a job another one holds is its to fire.
        # NO KEY UPDATE (key_share): the lock schedulers need among themselves, which does
        # not clash with the key-share lock of a transaction inserting a run of the job.
        due = due.with_for_update(skip_locked=True, key_share=True, of=jobs)
    taken = due.subquery("due")
    # Counted for the jobs taken only: in the same SELECT as the lock, PostgreSQL counted the
    # runs of every row it then skipped as another scheduler's (three schedulers: 69,050
    # counts for 11,001 fires, against 17,369 with one).
    active_runs = (
        select(func.count())
        .where(runs.c.job_id == taken.c.id, runs.c.status.in_(_ACTIVE))
        .scalar_subquery()
        .label("active_runs")
    )
    # No ORDER BY out here: a sort node for the batch (see _IN_ORDER); _due_jobs orders it.
    return select(
        taken.c.id, taken.c.next_fire_at, taken.c.updated_at, active_runs, CATALOG_VERSION
    )


def _inserting(*columns: str) -> Prepares:
    """INSERT of runs with these columns bound, ON CONFLICT DO NOTHING: the unique fire key
    makes a second insert of a slot a no-op."""
    values = {name: bindparam(name, type_=runs.c[name].type) for name in columns}
    return Prepares(lambda dialect: insert_or_ignore(dialect, runs).values(values))


# A tick of 1,000 due jobs spent most of its time in SQLAlchemy's per-row machinery (the
# executemany parameters), competing for the GIL with the worker at the very moment the runs
# it creates are due: these statements run on the driver (prepared.py).
_DUE = Prepares(_due)
_FIRE = _inserting(*NEW_RUN_COLUMNS)
# On PostgreSQL, before _DUE: the due jobs in jobs_due's order. Planned from statistics that
# expected a few due jobs, every batch of a big instant read and sorted all of them: 4,000 due
# together took 227-267 ms of due-job queries a tick, growing with the square of the instant
# (95-145 ms in order; 1,000 due: 23-31 against 13-23 ms). Its bitmap scan also never marks
# the dead index entries each timer update leaves, which piled up (~6,000 read per query).
_IN_ORDER = Prepares(select(IN_INDEX_ORDER))


class FiringStore:
    _tx: Transactions
    _dialect: Dialect
    _job_cache: JobCache

    def fire_due(
        self, now: datetime, planner: Planner, limit: int, horizon: datetime | None = None
    ) -> int:
        params = {"now": now, "horizon": max(now, horizon or now), "n": limit}
        with self._tx.write() as conn:
            if self._dialect.name == "postgresql":
                _IN_ORDER.rows(conn, {})
            due = self._due_jobs(conn, _DUE.rows(conn, params))
            plans = [(job, planner(job)) for job in due]
            if self._dialect.name == "postgresql":
                plans = _replaceable(conn, plans)
            fired = _advance_timers(conn, plans)
            new_runs = [values for job, plan in fired for values in _apply(conn, job, plan, now)]
            if new_runs:
                _FIRE.many(conn, new_runs)  # one executemany (psycopg pipelines it)
                notify(conn, RUNS)  # delivered at commit: workers wake as the runs appear
            return len(plans)

    def _due_jobs(self, conn: Connection, rows: list[dict[str, Any]]) -> list[Job]:
        """Each due job: its definition, with this statement's timer and count of active runs
        (on a copy: the cache's jobs are shared). On PostgreSQL a row locked after a concurrent
        update shows that update's columns, and the version the statement read before it: a
        changed `updated_at` says so, and that job is read again."""
        if not rows:
            return []
        rows.sort(key=lambda row: row["next_fire_at"])  # as taken; SQL does not promise it
        known = self._job_cache.read(conn, rows[0]["version"], [r["id"] for r in rows])
        changed = [r["id"] for r in rows if known[r["id"]].updated_at != r["updated_at"]]
        if changed:
            known = {**known, **read_jobs(conn, changed)}
        due = []
        for row in rows:
            job = copy.copy(known[row["id"]])
            job.next_fire_at, job.active_runs = row["next_fire_at"], row["active_runs"]
            job.enabled, job.hold = True, None  # as `schedulable` found it
            due.append(job)
        return due


# The runs a replacing fire stops or cancels, locked before anything is written, in the
# order every writer locks runs. NOWAIT: this transaction holds the job already, and a
# completion or a claim locks a run first, then its job's slot (leases.py).
_REPLACED = Prepares(
    select(runs.c.id)
    .where(runs.c.job_id == bindparam("job_id"), runs.c.status.in_(_ACTIVE))
    .order_by(runs.c.id)
    .with_for_update(nowait=True, key_share=True)
)
_LOCK_NOT_AVAILABLE = "55P03"


def _replaceable(conn: Connection, plans: list[tuple[Job, FirePlan]]) -> list[tuple[Job, FirePlan]]:
    """Drop the replacing plans whose runs another transaction holds; their jobs stay due for
    the next tick. Waiting for those runs while holding the job would close a cycle with a
    completion or claim waiting for the job: PostgreSQL would break it only after its
    deadlock_timeout (1 s), failing one of the two."""
    kept = []
    for job, plan in plans:
        if plan.replace_active:
            try:
                with conn.begin_nested():
                    _REPLACED.rows(conn, {"job_id": job.id})
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                    raise
                continue
        kept.append((job, plan))
    return kept


_ADVANCE = Prepares(
    update(jobs)
    .where(
        jobs.c.id == bindparam("b_id"),
        jobs.c.next_fire_at == bindparam("b_planned", type_=jobs.c.next_fire_at.type),
    )
    .values(next_fire_at=bindparam("b_next", type_=jobs.c.next_fire_at.type))
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
    if _ADVANCE.many(conn, params) == len(plans):
        batch.commit()
        return plans
    batch.rollback()
    return [
        (job, plan)
        for (job, plan), one in zip(plans, params, strict=True)
        if _ADVANCE.many(conn, [one]) == 1
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
            # A fire made ahead of its time is created, as the run shows it, at that time:
            # its waiting (created to started) is what it waited once due, as for any fire.
            max(now, scheduled_for),
        )
        for scheduled_for, run_at in plan.runs
    ]


_LATEST = Prepares(
    select(runs.c.id, runs.c.status, runs.c.reason)
    .where(runs.c.job_id == bindparam("job_id"))
    .order_by(runs.c.id.desc())
    .limit(1)
)
_GROW_SKIP = Prepares(
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values(
        skip_count=runs.c.skip_count + bindparam("count"),
        last_scheduled_for=bindparam("last", type_=runs.c.last_scheduled_for.type),
        finished_at=bindparam("now", type_=runs.c.finished_at.type),
    )
)
_INSERT_SKIP = _inserting(*NEW_RUN_COLUMNS, "last_scheduled_for")


def _record_skip(conn: Connection, job: Job, skip: Skip, now: datetime, job_row: dict) -> None:
    """Consecutive skips of one job for one reason grow one record instead of adding rows.
    (Every due job of an overloaded service may skip at each tick: on the driver too.)"""
    latest = _LATEST.first(conn, {"job_id": job.id})
    if latest is not None and latest["status"] == "skipped" and latest["reason"] == skip.reason:
        grow = {"run_id": latest["id"], "count": skip.count, "last": skip.last, "now": now}
        _GROW_SKIP.many(conn, [grow])
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
    _INSERT_SKIP.many(conn, [values])
