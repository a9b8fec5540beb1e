"""Runs as records: enqueueing, reading, listing, and their logs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, or_, select, update

from nightshift.domain.models import Job, LogLine, Overlap, Run
from nightshift.errors import NotFound
from nightshift.store.base import NewRun
from nightshift.store.sql.catalog import read_job
from nightshift.store.sql.codec import log_from_row, run_from_row
from nightshift.store.sql.engine import Transactions
from nightshift.store.sql.notify import RUNS, notification
from nightshift.store.sql.prepared import Prepares
from nightshift.store.tables import jobs, run_is_open, run_is_unsuccessful, run_logs, runs

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
#: Statuses few runs have at once (as many as the workers execute, and those stopped by hand):
#: a list of only these reads runs_open, where SQLite walked every run from the newest back
#: (the running runs at 1,000,000 runs: 68 ms). Not pending: a backlog may hold millions, and
#: its newest are found first from the newest run.
_FEW = frozenset({"running", "stopping", "stopped"})
#: Final statuses most runs do not end in: a list of only these reads runs_unsuccessful.
_UNSUCCESSFUL = frozenset({"failed", "cancelled", "skipped"})

RUN_COLUMNS = [*runs.c, jobs.c.name.label("job_name")]


def run_query():  # type: ignore[no-untyped-def]
    return select(*RUN_COLUMNS).join(jobs, jobs.c.id == runs.c.job_id)


# Built once and run on the driver (prepared.py): enqueueing is a hot path, and SQLAlchemy's
# per-statement machinery costs more than running them.
_JOB_OF_RUN = Prepares(
    select(jobs.c.app, jobs.c.kind, jobs.c.overlap, jobs.c.name).where(
        jobs.c.id == bindparam("job_id")
    )
)
#: The columns a new run is inserted with (run_values, and its place in a tree); the others
#: take their server defaults.
NEW_RUN_COLUMNS = (
    "job_id",
    "app",
    "kind",
    "status",
    "created_at",
    "run_at",
    "scheduled_for",
    "attempt",
    "retry_of",
    "low_priority",
    "run_by",
    "parent_id",
    "root_id",
    "rank",
    "params",
    "state",
    "reason",
    "skip_count",
    "exclusive",
    "is_test",
    "lost_streak",
    "finished_at",
)
_INSERT = (
    insert(runs)
    .values({name: bindparam(name, type_=runs.c[name].type) for name in NEW_RUN_COLUMNS})
    .returning(*runs.c)
)
_INSERT_RUN = Prepares(_INSERT)


def _insert_announced(dialect: str) -> Any:
    """The insert, telling the workers in the same statement on PostgreSQL (one round trip of
    the few an enqueue makes); SQLite has no listeners to tell."""
    if dialect != "postgresql":
        return _INSERT
    new = _INSERT.cte("new")
    return select(*new.c, notification(RUNS).label("announced")).select_from(new)


_INSERT_ANNOUNCED = Prepares(_insert_announced)


class RunStore:
    _tx: Transactions

    def enqueue(self, new: NewRun, now: datetime) -> Run:
        with self._tx.write() as conn:
            job = _JOB_OF_RUN.first(conn, {"job_id": new.job_id})
            if job is None:
                raise NotFound("job", new.job_id)
            return _enqueue(conn, new, job, now)

    def enqueue_job(self, job_id: int, make: Callable[[Job], NewRun], now: datetime) -> Run:
        with self._tx.write() as conn:
            job = read_job(conn, job_id)
            row = {"app": job.app, "kind": str(job.kind), "overlap": str(job.overlap)}
            return _enqueue(conn, make(job), {**row, "name": job.name}, now)

    def get_run(self, run_id: int) -> Run:
        with self._tx.read() as conn:
            return get_run(conn, run_id)

    def list_runs(
        self,
        *,
        job_id: int | None = None,
        app: str | None = None,
        status: Sequence[str] | None = None,
        root_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        system: bool | None = False,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Run]:
        query = run_query().order_by(runs.c.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(runs.c.job_id == job_id)
        if app is not None:
            query = query.where(runs.c.app == app)
        if status:
            query = query.where(runs.c.status.in_(list(status)))
            if _FEW.issuperset(status):
                query = query.where(run_is_open)  # see _FEW
            elif _UNSUCCESSFUL.issuperset(status):
                query = query.where(run_is_unsuccessful)
        if root_id is not None:
            query = query.where(or_(runs.c.root_id == root_id, runs.c.id == root_id))
        if since is not None:
            query = query.where(runs.c.created_at >= since)
        if until is not None:
            query = query.where(runs.c.created_at < until)
        if system is not None:
            query = query.where(jobs.c.system == system)
        if before_id is not None:
            query = query.where(runs.c.id < before_id)
        with self._tx.read() as conn:
            return [run_from_row(r) for r in conn.execute(query)]

    def count_runs(self, *, job_id: int | None = None, status: Sequence[str] | None = None) -> int:
        query = select(func.count()).select_from(runs)
        if job_id is not None:
            query = query.where(runs.c.job_id == job_id)
        if status:
            query = query.where(runs.c.status.in_(list(status)))
        with self._tx.read() as conn:
            return int(conn.execute(query).scalar_one())

    def next_run_due(self, now: datetime) -> datetime | None:
        query = select(func.min(runs.c.run_at)).where(
            runs.c.status == "pending", runs.c.run_at > now
        )
        with self._tx.read() as conn:
            return conn.execute(query).scalar()

    def get_logs(
        self,
        run_id: int,
        *,
        q: str | None = None,
        level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[LogLine]:
        query = select(run_logs).where(run_logs.c.run_id == run_id).order_by(run_logs.c.id)
        if q:
            escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(run_logs.c.message.ilike(f"%{escaped}%", escape="\\"))
        if level:
            wanted = LEVELS.get(level.upper(), 0)
            query = query.where(run_logs.c.level.in_([n for n, v in LEVELS.items() if v >= wanted]))
        if since is not None:
            query = query.where(run_logs.c.at >= since)
        if until is not None:
            query = query.where(run_logs.c.at < until)
        with self._tx.read() as conn:
            return [log_from_row(r) for r in conn.execute(query.limit(limit))]


def get_run(conn: Connection, run_id: int) -> Run:
    row = conn.execute(run_query().where(runs.c.id == run_id)).first()
    if row is None:
        raise NotFound("run", run_id)
    return run_from_row(row)


def _enqueue(conn: Connection, new: NewRun, job: Mapping[str, Any], now: datetime) -> Run:
    """Insert a pending run of `job` (app, kind, overlap, name) and tell the workers."""
    row = _insert_run_row(conn, new, job, now, announce=True)
    row["job_name"] = job["name"]
    return run_from_row(row)


def insert_run(conn: Connection, new: NewRun, job: Any, now: datetime) -> int:
    """Insert one run of `job` (a row mapping of jobs); children update their parent and root."""
    return int(_insert_run_row(conn, new, job, now)["id"])


def _insert_run_row(
    conn: Connection, new: NewRun, job: Any, now: datetime, *, announce: bool = False
) -> dict[str, Any]:
    root_id: int | None = None
    rank = 0
    if new.parent_id is not None:
        parent = conn.execute(
            select(runs.c.id, runs.c.root_id).where(runs.c.id == new.parent_id)
        ).first()
        if parent is None:
            raise NotFound("run", new.parent_id)
        root_id = parent.root_id or parent.id
        if new.attempt == 1:
            rank = conn.execute(
                update(runs)
                .where(runs.c.id == root_id)
                .values(descendants=runs.c.descendants + 1)
                .returning(runs.c.descendants)
            ).scalar_one()
            conn.execute(
                update(runs)
                .where(runs.c.id == new.parent_id)
                .values(children_total=runs.c.children_total + 1)
            )
    values = run_values(new, job, now)
    values.update(root_id=root_id, rank=rank)
    (row,) = (_INSERT_ANNOUNCED if announce else _INSERT_RUN).rows(conn, values)
    return row


def run_values(new: NewRun, job: Any, now: datetime) -> dict[str, Any]:
    return {
        "job_id": new.job_id,
        "app": job["app"],
        "kind": job["kind"],
        "status": str(new.status),
        "created_at": now,
        "run_at": new.run_at,
        "scheduled_for": new.scheduled_for,
        "attempt": new.attempt,
        "retry_of": new.retry_of,
        "low_priority": new.low_priority,
        "run_by": new.run_by,
        "parent_id": new.parent_id,
        "root_id": None,
        "rank": 0,
        "params": new.params,
        "state": new.state,
        "reason": new.reason,
        "skip_count": 1 if new.status == "skipped" else 0,
        "exclusive": is_exclusive(job) and not new.is_test,
        "is_test": new.is_test,
        "lost_streak": new.lost_streak,
        "finished_at": now if new.status == "skipped" else None,
    }


def is_exclusive(job: Any) -> bool:
    """Runs of queue / replace jobs take the job's single execution slot."""
    overlap = job.overlap if isinstance(job, Job) else job["overlap"]
    return overlap in (Overlap.QUEUE, Overlap.REPLACE)
