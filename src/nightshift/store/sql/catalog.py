"""Apps and jobs: the definitions the scheduler reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from nightshift.domain.models import JSON, App, Job
from nightshift.errors import Conflict, NotFound
from nightshift.store.base import Retimer
from nightshift.store.sql.codec import app_from_row, encode_job_changes, job_from_row, job_values
from nightshift.store.sql.engine import (
    Dialect,
    Transactions,
    bulk_insert,
    encode_rows,
    insert_or_ignore,
    reserve_ids,
)
from nightshift.store.sql.notify import JOBS, notify
from nightshift.store.sql.prepared import Prepares
from nightshift.store.tables import apps, jobs, meta, runs

SCHEDULE_VERSION = "schedule_version"
# The catalog's version: every change to a job's definition bumps it (_bump_version). Schedulers
# poll it; the job cache (store.sql.job_cache) reads it as a column of its own statements, in
# the same snapshot as the rows it vouches for.
_VERSION = select(meta.c.value).where(meta.c.key == SCHEDULE_VERSION)
CATALOG_VERSION = _VERSION.scalar_subquery().label("version")

_last_run = (
    select(func.max(runs.c.id))
    .where(runs.c.job_id == jobs.c.id, runs.c.status != "skipped")
    .scalar_subquery()
    .label("last_run_id")
)
JOB_COLUMNS = [*jobs.c, _last_run]

schedulable = and_(
    jobs.c.enabled,
    jobs.c.hold.is_(None),
    jobs.c.next_fire_at.is_not(None),
    exists().where(apps.c.name == jobs.c.app, apps.c.schedules_enabled),
)


class CatalogStore:
    _tx: Transactions
    _dialect: Dialect

    # -- apps ---------------------------------------------------------------------------------
    def ensure_app(self, name: str, now: datetime) -> App:
        with self._tx.write() as conn:
            return _ensure_app(conn, name, now)

    def get_app(self, name: str) -> App:
        with self._tx.read() as conn:
            row = conn.execute(select(apps).where(apps.c.name == name)).first()
        if row is None:
            raise NotFound("app", name)
        return app_from_row(row)

    def list_apps(self) -> list[App]:
        with self._tx.read() as conn:
            return [app_from_row(r) for r in conn.execute(select(apps).order_by(apps.c.name))]

    def set_app_schedules(self, name: str, enabled: bool, retime: Retimer) -> App:
        with self._tx.write() as conn:
            row = conn.execute(
                update(apps)
                .where(apps.c.name == name)
                .values(schedules_enabled=enabled)
                .returning(*apps.c)
            ).first()
            if row is None:
                raise NotFound("app", name)
            if enabled:
                query = select(*JOB_COLUMNS).where(jobs.c.app == name, jobs.c.enabled)
                for job in [job_from_row(r) for r in conn.execute(query)]:
                    _set_timer(conn, job.id, retime(job))
            _bump_version(conn)
            return app_from_row(row)

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, job: Job) -> Job:
        with self._tx.write() as conn:
            _ensure_app(conn, job.app, job.created_at or job.anchor_at)  # type: ignore[arg-type]
            try:
                with conn.begin_nested():
                    job_id = conn.execute(
                        insert(jobs).values(job_values(job)).returning(jobs.c.id)
                    ).scalar_one()
            except IntegrityError as exc:
                raise Conflict(f"app {job.app!r} already has a job named {job.name!r}") from exc
            _bump_version(conn)
            return read_job(conn, job_id)

    def create_jobs(self, new: Sequence[Job]) -> list[int]:
        if not new:
            return []
        dialect = self._tx.engine.dialect
        # SQLite: encoded before its write lock is taken; PostgreSQL: while COPY sends them.
        lazy = not self._dialect.is_sqlite
        rows = encode_rows(dialect, jobs, map(job_values, new), key="id", lazy=lazy)
        with self._tx.write() as conn:
            for app in dict.fromkeys(job.app for job in new):
                _ensure_app(conn, app, new[0].created_at or new[0].anchor_at)  # type: ignore[arg-type]
            ids = reserve_ids(conn, jobs, len(new))  # no reading back which row got which id
            try:
                with conn.begin_nested():
                    bulk_insert(conn, rows, ids)
            except conn.dialect.loaded_dbapi.IntegrityError as exc:  # type: ignore[attr-defined]
                conflict = _name_taken(conn, new)
                if conflict is None:
                    raise  # not a name: a bug, not the caller's input
                raise conflict from exc
            _bump_version(conn)
        return ids

    def get_job(self, job_id: int) -> Job:
        with self._tx.read() as conn:
            return read_job(conn, job_id)

    def find_job(self, app: str, name: str) -> Job | None:
        with self._tx.read() as conn:
            row = conn.execute(
                select(*JOB_COLUMNS).where(jobs.c.app == app, jobs.c.name == name)
            ).first()
        return job_from_row(row) if row else None

    def list_jobs(
        self,
        *,
        app: str | None = None,
        tag: str | None = None,
        kind: str | None = None,
        enabled: bool | None = None,
        system: bool | None = False,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        query = select(*JOB_COLUMNS).order_by(jobs.c.id)
        if app is not None:
            query = query.where(jobs.c.app == app)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        if enabled is not None:
            query = query.where(jobs.c.enabled == enabled)
        if system is not None:
            query = query.where(jobs.c.system == system)
        if after_id is not None:
            query = query.where(jobs.c.id > after_id)
        with self._tx.read() as conn:
            found = [job_from_row(r) for r in conn.execute(query)]
        if tag is not None:
            # Tags are a JSON list; filtering in Python keeps one statement for both dialects.
            found = [j for j in found if tag in j.tags]
        return found[:limit] if limit is not None else found

    def update_job(self, job_id: int, changes: JSON) -> Job:
        with self._tx.write() as conn:
            values = encode_job_changes(changes)
            try:
                with conn.begin_nested():
                    count = conn.execute(
                        update(jobs).where(jobs.c.id == job_id).values(values)
                    ).rowcount
            except IntegrityError as exc:
                raise Conflict(f"another job of this app is named {changes.get('name')!r}") from exc
            if count == 0:
                raise NotFound("job", job_id)
            _bump_version(conn)
            return read_job(conn, job_id)

    def delete_job(self, job_id: int) -> None:
        with self._tx.write() as conn:
            if conn.execute(delete(jobs).where(jobs.c.id == job_id)).rowcount == 0:
                raise NotFound("job", job_id)
            _bump_version(conn)

    def next_fire_due(self) -> datetime | None:
        # ORDER BY … LIMIT 1 rather than min(): PostgreSQL does not turn a min() under the
        # apps EXISTS into an index scan, and reads every idle schedule instead.
        query = (
            select(jobs.c.next_fire_at).where(schedulable).order_by(jobs.c.next_fire_at).limit(1)
        )
        with self._tx.read() as conn:
            return conn.execute(query).scalar()

    def reboot_jobs(self) -> list[Job]:
        query = select(*JOB_COLUMNS).where(
            jobs.c.enabled,
            func.lower(jobs.c.schedule) == "@reboot",
            exists().where(apps.c.name == jobs.c.app, apps.c.schedules_enabled),
        )
        with self._tx.read() as conn:
            return [job_from_row(r) for r in conn.execute(query)]

    def release_holds(self, retime: Retimer) -> int:
        with self._tx.write() as conn:
            held = [
                job_from_row(r)
                for r in conn.execute(select(*JOB_COLUMNS).where(jobs.c.hold.is_not(None)))
            ]
            for job in held:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job.id)
                    .values(hold=None, next_fire_at=retime(job))
                )
            _bump_version(conn)
            return len(held)

    def schedule_version(self) -> int:
        with self._tx.read() as conn:
            value = conn.execute(_VERSION).scalar()
        return int(value or 0)


def _name_taken(conn: Connection, new: Sequence[Job]) -> Conflict | None:
    """The Conflict of a bulk insert that broke the (app, name) key: the first job whose name
    its app has already, or that an earlier job of the batch has too; None when no name
    clashes."""
    keys = [(job.app, job.name) for job in new]
    taken: set[tuple[str, str]] = set()
    for k in range(0, len(keys), 500):
        chunk = keys[k : k + 500]
        query = select(jobs.c.app, jobs.c.name).where(tuple_(jobs.c.app, jobs.c.name).in_(chunk))
        taken.update((app, name) for app, name in conn.execute(query))
    seen: set[tuple[str, str]] = set()
    for i, key in enumerate(keys):
        if key in taken or key in seen:
            return Conflict(
                f"app {key[0]!r} already has a job named {key[1]!r}", field=f"jobs[{i}].name"
            )
        seen.add(key)
    return None


# Run on the driver (prepared.py): every enqueue by hand reads its job first.
_GET_JOB = Prepares(select(*JOB_COLUMNS).where(jobs.c.id == bindparam("job_id")))


def read_job(conn: Connection, job_id: int) -> Job:
    row = _GET_JOB.first(conn, {"job_id": job_id})
    if row is None:
        raise NotFound("job", job_id)
    return job_from_row(row)


def _ensure_app(conn: Connection, name: str, now: datetime) -> App:
    row = conn.execute(select(apps).where(apps.c.name == name)).first()
    if row is None:
        conn.execute(
            insert_or_ignore(conn, apps).values(name=name, schedules_enabled=True, created_at=now)
        )
        row = conn.execute(select(apps).where(apps.c.name == name)).one()
    return app_from_row(row)


def _set_timer(conn: Connection, job_id: int, when: datetime | None) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(next_fire_at=when))


def _bump_version(conn: Connection) -> None:
    notify(conn, JOBS)  # schedulers LISTENing re-read the timers; others poll the version
    updated = conn.execute(
        update(meta).where(meta.c.key == SCHEDULE_VERSION).values(value=meta.c.value + 1)
    ).rowcount
    if not updated:
        conn.execute(insert_or_ignore(conn, meta).values(key=SCHEDULE_VERSION, value=1))
