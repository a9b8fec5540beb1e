"""Execution under leases: claim, sync (heartbeat), complete, release, recover.

A claim writes an owner and an expiry; every write a worker makes afterwards is fenced by that
owner and an executing status, so a worker that was paused past its lease cannot overwrite the
attempt that replaced it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    column,
    exc,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from nightshift.domain.models import CLAIM_ORDER, JSON
from nightshift.domain.status import EXECUTING, RunStatus
from nightshift.errors import Refused
from nightshift.outage import one_line
from nightshift.store.base import (
    ClaimedRun,
    ClaimSlot,
    Completion,
    NewRun,
    RunProgress,
    SyncResult,
)
from nightshift.store.sql.catalog import CATALOG_VERSION
from nightshift.store.sql.codec import encode_job_changes, run_from_row
from nightshift.store.sql.engine import Dialect, Transactions
from nightshift.store.sql.job_cache import JobCache
from nightshift.store.sql.notify import RUNS, notify
from nightshift.store.sql.prepared import IN_INDEX_ORDER, Prepares, one_of
from nightshift.store.sql.runs import insert_run, run_query
from nightshift.store.tables import UtcDateTime, jobs, run_is_executing, run_logs, runs

_EXECUTING = [str(s) for s in EXECUTING]
#: A lease is renewed once this share of it has passed, not at every heartbeat: each renewal
#: rewrites the run's row (on PostgreSQL with a new entry in every index, `runs_lease` being
#: one), and 1,000 long runs beating twice a second made 2,000 such writes a second for
#: nothing. A worker that falls silent is still trusted for 90 % of the lease.
RENEW_AFTER = 0.1
_FINAL_FOR_PARENT = {"succeeded", "failed", "cancelled"}  # a stopped run may resume


# Prepared per dialect and run on the driver (see prepared.py): claiming and completing are
# the hottest paths, and SQLAlchemy's per-statement machinery costs more than running them.
def _candidates(dialect: str, *, ahead: bool = False) -> Any:
    when = runs.c.run_at.type
    now = bindparam("now", type_=when)
    if ahead:  # due after now, by the horizon: the worker holds them until their time
        due = and_(runs.c.run_at > now, runs.c.run_at <= bindparam("horizon", type_=when))
    else:
        due = runs.c.run_at <= now
    query = (
        select(runs.c.id, runs.c.job_id, runs.c.exclusive)
        .where(runs.c.status == "pending", due)
        .where(one_of(runs.c.kind, "kinds", dialect))
        .order_by(*(runs.c[column] for column in CLAIM_ORDER))
        .limit(bindparam("n"))
    )
    if dialect == "postgresql":
        # NO KEY UPDATE: workers exclude each other, not a transaction adding log lines.
        query = query.with_for_update(skip_locked=True, key_share=True)
    return query


def _take(dialect: str) -> Any:
    now = bindparam("now", type_=runs.c.started_at.type)
    return (
        update(runs)
        .where(one_of(runs.c.id, "ids", dialect))
        .values(
            status="running",
            # A run claimed ahead of its time starts at it (the worker then records when it
            # really did, with its outcome).
            started_at=case((runs.c.run_at > now, runs.c.run_at), else_=now),
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("expires", type_=runs.c.lease_expires_at.type),
        )
        .returning(*runs.c)
    )


def _held(dialect: str) -> Any:
    """The runs of a batch still leased to their owner. Their status is checked by the caller:
    given the statuses, PostgreSQL's custom plans read the partial index runs_lease (its
    predicate) instead of the primary key, walking the entries every finished run leaves there
    until vacuum (~4,000-5,000 a batch, 0.5 ms against 0.06 ms)."""
    query = (
        select(runs.c.id, runs.c.job_id, runs.c.parent_id, runs.c.exclusive, runs.c.status)
        .where(one_of(runs.c.id, "ids", dialect), runs.c.lease_owner == bindparam("owner"))
        .order_by(runs.c.id)  # one lock order for every writer: no deadlock between them
    )
    return query.with_for_update(key_share=True) if dialect == "postgresql" else query


_CANDIDATES = Prepares(_candidates)
_CANDIDATES_AHEAD = Prepares(lambda dialect: _candidates(dialect, ahead=True))


def _claim_start(dialect: str) -> Any:
    """The catalog's version (see JobCache), and on PostgreSQL in the same round trip: the
    claim order is runs_claim's order (IN_INDEX_ORDER). After a burst, the statistics still
    say hardly any run is pending, and the planner read and sorted the whole backlog for
    every claim (measured with 20,000 pending: 10-17 ms per claim of 64, against 0.1 ms)."""
    if dialect == "postgresql":
        return select(CATALOG_VERSION, IN_INDEX_ORDER)
    return select(CATALOG_VERSION)


_CLAIM_START = Prepares(_claim_start)
_TAKE = Prepares(_take)
_HELD = Prepares(_held)


class LeaseStore:
    _tx: Transactions
    _dialect: Dialect
    _job_cache: JobCache

    def claim(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        limit: int,
        kinds: Iterable[str],
        horizon: datetime | None = None,
    ) -> list[ClaimedRun]:
        return self.claim_slots(owner, now, lease_s, [(list(kinds), limit)], horizon)

    def claim_slots(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        slots: Sequence[ClaimSlot],
        horizon: datetime | None = None,
    ) -> list[ClaimedRun]:
        expires = now + timedelta(seconds=lease_s)
        with self._tx.write() as conn:
            (start,) = _CLAIM_START.rows(conn, {})
            chosen: list[int] = []
            for kinds, limit, *more in slots:
                params = {"now": now, "kinds": list(kinds), "n": limit}
                rows = _CANDIDATES.rows(conn, params) if limit > 0 else []
                ahead = more[0] if more and more[0] is not None else limit - len(rows)
                backlog = limit > 0 and len(rows) == limit  # served before any run ahead
                if horizon is not None and horizon > now and ahead > 0 and not backlog:
                    params.update(horizon=horizon, n=ahead)
                    rows += _CANDIDATES_AHEAD.rows(conn, params)
                for row in rows:
                    if row["exclusive"] and not _take_slot(conn, row["job_id"], row["id"]):
                        continue
                    chosen.append(row["id"])
            if not chosen:
                return []
            # The batch comes back in two statements whatever its size, in the order chosen.
            taken = {"ids": chosen, "owner": owner, "now": now, "expires": expires}
            by_run = {r["id"]: r for r in _TAKE.rows(conn, taken)}
            job_ids = {r["job_id"] for r in by_run.values()}
            by_job = self._job_cache.read(conn, start["version"], job_ids)
        claimed = []
        for run_id in chosen:
            row = by_run[run_id]
            job = by_job[row["job_id"]]
            row["job_name"] = job.name
            run = run_from_row(row)
            claimed.append(ClaimedRun(run=run, job=job))
        return claimed

    def sync(
        self, owner: str, now: datetime, lease_s: float, updates: Sequence[RunProgress]
    ) -> SyncResult:
        result = SyncResult()
        if not updates:
            return result
        ids = [u.run_id for u in updates]
        renew_below = now + timedelta(seconds=lease_s * (1 - RENEW_AFTER))
        with self._tx.write() as conn:
            mine = and_(runs.c.lease_owner == owner, runs.c.status.in_(_EXECUTING))
            conn.execute(
                update(runs)
                .where(runs.c.id.in_(ids), mine, runs.c.lease_expires_at < renew_below)
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
            rows = conn.execute(
                select(runs.c.id, runs.c.status, runs.c.kill_requested, runs.c.reason).where(
                    runs.c.id.in_(ids), mine
                )
            ).all()
            held = {r.id: r for r in rows}
            # A run no longer held (its completion committed first, or another attempt fenced it
            # out) still gets the log lines its own execution wrote: they belong to its row.
            # Progress and state stay fenced.
            gone = [u for u in updates if u.run_id not in held]
            existing = set()
            if any(u.logs for u in gone):
                wanted = [u.run_id for u in gone if u.logs]
                existing = set(conn.scalars(select(runs.c.id).where(runs.c.id.in_(wanted))))
            for upd in updates:
                row = held.get(upd.run_id)
                if row is None:
                    result.lost.add(upd.run_id)
                    if upd.run_id in existing:
                        _insert_logs(conn, upd.run_id, upd.logs)
                    continue
                if row.kill_requested:
                    result.kill[row.id] = row.reason or "force-stopped"
                elif row.status == "stopping":
                    result.stopping.add(row.id)
                _store_progress(conn, upd)
            return result

    def complete(self, completions: Sequence[Completion]) -> list[bool]:
        try:
            with self._tx.write() as conn:
                return _complete_many(conn, completions)
        except (exc.DataError, exc.IntegrityError, ValueError, TypeError) as error:
            raise Refused(one_line(error)) from error
        except exc.StatementError as error:  # a value no processor could encode
            if isinstance(error.orig, ValueError | TypeError):
                raise Refused(one_line(error)) from error
            raise

    def release(
        self,
        owner: str,
        run_ids: Sequence[int],
        states: dict[int, Any],
        now: datetime | None = None,
    ) -> int:
        count = 0
        stopping = runs.c.status == "stopping"
        with self._tx.write() as conn:
            for run_id in run_ids:
                # A run someone asked to stop ends stopped (resumable), never runs again by itself.
                values: JSON = {
                    "status": case((stopping, "stopped"), else_="pending"),
                    "started_at": case((stopping, runs.c.started_at), else_=None),
                    "finished_at": (
                        case((stopping, literal(now, runs.c.finished_at.type)), else_=None)
                        if now
                        else None
                    ),
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "kill_requested": False,
                }
                if run_id in states:
                    values["state"] = states[run_id]
                row = conn.execute(
                    update(runs)
                    .where(runs.c.id == run_id, runs.c.lease_owner == owner)
                    .where(runs.c.status.in_(_EXECUTING))
                    .values(values)
                    .returning(runs.c.job_id)
                ).first()
                if row is not None:
                    count += 1
                    _free_slot(conn, row.job_id, run_id)
            if count:
                notify(conn, RUNS)  # back to pending: another worker may take them now
        return count

    def recover_expired(self, now: datetime, max_lost: int) -> int:
        query = run_query().where(run_is_executing, runs.c.lease_expires_at < now)
        if self._dialect.skip_locked:
            query = query.with_for_update(skip_locked=True, key_share=True, of=runs)
        with self._tx.write() as conn:
            expired = [run_from_row(r) for r in conn.execute(query)]
            outcomes: list[Completion] = []
            for run in expired:
                lost = {"type": "WorkerLost", "message": "worker lost: its lease expired"}
                if run.status == RunStatus.STOPPING:
                    status, retry = "stopped", None
                elif run.lost_streak + 1 < max_lost:
                    status = "failed"
                    retry = NewRun(
                        job_id=run.job_id,
                        run_at=now,
                        params=run.params,
                        scheduled_for=run.scheduled_for,
                        low_priority=run.low_priority,
                        run_by=run.run_by,
                        parent_id=run.parent_id,
                        is_test=run.is_test,
                        attempt=run.attempt + 1,
                        retry_of=run.retry_of or run.id,
                        state=run.state,
                        lost_streak=run.lost_streak + 1,
                    )
                else:
                    status, retry = "failed", None
                    lost["message"] = f"worker lost {max_lost} times in a row"
                outcomes.append(
                    Completion(
                        run_id=run.id,
                        owner=run.lease_owner or "",
                        status=RunStatus(status),
                        finished_at=now,
                        error=lost if status == "failed" else None,
                        state=run.state,
                        progress=run.progress,
                        reason="worker lost",
                        retry=retry,
                    )
                )
            _complete_many(conn, outcomes, keep_state=True)
            return len(expired)

    def expire_leases(self, owners: Iterable[str], now: datetime) -> int:
        owners = list(owners)
        if not owners:
            return 0
        with self._tx.write() as conn:
            return conn.execute(
                update(runs)
                .where(runs.c.lease_owner.in_(owners), run_is_executing)
                .values(lease_expires_at=now - timedelta(microseconds=1))
            ).rowcount

    def held_runs(self, owner: str) -> list[int]:
        query = select(runs.c.id).where(runs.c.lease_owner == owner, run_is_executing)
        with self._tx.read() as conn:
            return list(conn.scalars(query))

    def lease_owners(self) -> list[str]:
        query = (
            select(runs.c.lease_owner)
            .where(run_is_executing, runs.c.lease_owner.is_not(None))
            .distinct()
        )
        with self._tx.read() as conn:
            return [r[0] for r in conn.execute(query)]


def _take_slot(conn: Connection, job_id: int, run_id: int) -> bool:
    """Compare-and-set on the job's exclusive slot: only one queue/replace run executes."""
    return (
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.active_run_id.is_(None))
            .values(active_run_id=run_id)
        ).rowcount
        == 1
    )


def _free_slot(conn: Connection, job_id: int, run_id: int) -> None:
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.active_run_id == run_id)
        .values(active_run_id=None)
    )


def _store_progress(conn: Connection, upd: RunProgress) -> None:
    values: JSON = {}
    if upd.progress is not None:
        values["progress"] = upd.progress
    if upd.state_changed:
        values["state"] = upd.state
    if values:
        conn.execute(update(runs).where(runs.c.id == upd.run_id).values(values))
    _insert_logs(conn, upd.run_id, upd.logs)


def _insert_logs(conn: Connection, run_id: int, logs: Sequence[tuple[datetime, str, str]]) -> None:
    if logs:
        conn.execute(
            insert(run_logs),
            [{"run_id": run_id, "at": at, "level": lvl, "message": msg} for at, lvl, msg in logs],
        )


#: What a completion writes per run. A `kept` value left out (None) keeps the column as it is.
_COMPLETED = (
    "status",
    "started_at",
    "finished_at",
    "result",
    "error",
    "state",
    "progress",
    "reason",
)
_KEPT = {"started_at", "progress", "reason"}
_TIMES = {name for name in _COMPLETED if isinstance(runs.c[name].type, UtcDateTime)}


def _completion_update(dialect: str, keep_state: bool) -> Any:
    """One statement for every completion of a batch.

    PostgreSQL: one UPDATE joined to the batch, sent as one JSON document (one `json.dumps`
    in C; psycopg would otherwise adapt every value of every run in Python, and the server
    would plan and run one statement per run). The recording thread's CPU per run falls by
    about half at a batch of 32 (bench/PROFILE.md). SQLite: one UPDATE per run through the
    driver's executemany, a loop in C over one prepared statement.
    """
    names = ("id", *_COMPLETED)
    if dialect == "postgresql":
        fields = [column(name, runs.c[name].type) for name in names]
        batch = (
            func.jsonb_to_recordset(bindparam("batch", type_=JSONB))
            .table_valued(*fields)
            .render_derived(name="batch", with_types=True)
        )
        value: dict[str, Any] = {name: batch.c[name] for name in names}
    else:
        value = {name: bindparam(name, type_=runs.c[name].type) for name in names}
    kept = _KEPT | ({"state"} if keep_state else set())
    values: dict[str, Any] = {
        name: func.coalesce(value[name], runs.c[name]) if name in kept else value[name]
        for name in _COMPLETED
    }
    values.update(lease_owner=None, lease_expires_at=None, kill_requested=False)
    statement = update(runs).where(runs.c.id == value["id"]).values(values)
    if dialect == "postgresql":
        # The rows to update, in a form the planner can use: it knows nothing of the rows the
        # function returns, and would hash-join them to a scan of the whole table.
        statement = statement.where(one_of(runs.c.id, "ids", dialect))
    return statement


_COMPLETE = {
    keep: Prepares(lambda dialect, keep=keep: _completion_update(dialect, keep))
    for keep in (False, True)
}


def _completed(conn: Connection, completions: Sequence[Completion], keep_state: bool) -> None:
    """Write the outcome of each of `completions` (held by their owners) to its run."""
    rows = []
    for c in completions:
        row = {"id": c.run_id, **{name: getattr(c, name) for name in _COMPLETED}}
        row["status"] = str(c.status)
        rows.append(row)
    statement = _COMPLETE[keep_state]
    if conn.dialect.name != "postgresql":
        statement.many(conn, rows)
        return
    for row in rows:
        for name in _TIMES:  # checked as the column's type checks them, then as JSON text
            at = runs.c[name].type.process_bind_param(row[name], conn.dialect)
            row[name] = None if at is None else at.isoformat()
    statement.rows(conn, {"batch": rows, "ids": [c.run_id for c in completions]})


def _complete_many(
    conn: Connection, completions: Sequence[Completion], *, keep_state: bool = False
) -> list[bool]:
    """Record a batch of outcomes in a few statements whatever its size: lock the rows still
    held by their owners, one UPDATE of the batch, one INSERT of all log lines, then only the
    extras some runs need (a freed exclusive slot, a retry, job changes, a parent's counters).
    Returns, per completion, whether it was recorded (False: fenced out)."""
    if not completions:
        return []
    held: dict[int, Any] = {}
    for owner in {c.owner for c in completions}:
        ids = [c.run_id for c in completions if c.owner == owner]
        rows = _HELD.rows(conn, {"ids": ids, "owner": owner})
        held.update((row["id"], row) for row in rows if row["status"] in _EXECUTING)
    mine = [c for c in completions if c.run_id in held]
    if not mine:
        return [False] * len(completions)
    _completed(conn, mine, keep_state)
    lines = [
        {"run_id": c.run_id, "at": at, "level": level, "message": message}
        for c in mine
        for at, level, message in c.logs
    ]
    if lines:
        conn.execute(insert(run_logs), lines)
    # Run rows first, job rows last, in the order a claim takes them (a pending run, then its
    # job's slot): a claim holding a pending parent and wanting a job's slot never waits for
    # a completion that holds the slot and wants the parent.
    parents: dict[int, list[int]] = {}
    wake = False
    for c in mine:
        row = held[c.run_id]
        if c.retry is not None:
            job_row = conn.execute(select(jobs).where(jobs.c.id == row["job_id"])).one()
            insert_run(conn, c.retry, job_row._mapping, c.finished_at)
            wake = True  # a retry waits to be claimed
        elif row["parent_id"] is not None and str(c.status) in _FINAL_FOR_PARENT:
            counts = parents.setdefault(row["parent_id"], [0, 0])
            counts[0] += 1
            counts[1] += 1 if c.status == RunStatus.FAILED else 0
    for parent_id, (finished, failed) in sorted(parents.items()):
        conn.execute(
            update(runs)
            .where(runs.c.id == parent_id)
            .values(
                children_finished=runs.c.children_finished + finished,
                children_failed=runs.c.children_failed + failed,
            )
        )
    for c in mine:
        row = held[c.run_id]
        if row["exclusive"]:
            _free_slot(conn, row["job_id"], c.run_id)
            wake = True  # a queued run may take the freed slot
        if c.job_changes:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == row["job_id"])
                .values(encode_job_changes(c.job_changes))
            )
    if wake:
        notify(conn, RUNS)
    return [c.run_id in held for c in completions]
