"""Execution under leases: claim, sync (heartbeat), complete, release, recover.

A claim writes an owner and an expiry; every write a worker makes afterwards is fenced by that
owner and an executing status, so a worker that was paused past its lease cannot overwrite the
attempt that replaced it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, insert, literal, select, update

from nightshift.domain.models import JSON
from nightshift.domain.status import EXECUTING, RunStatus
from nightshift.store.base import ClaimedRun, Completion, NewRun, RunProgress, SyncResult
from nightshift.store.sql.catalog import JOB_COLUMNS
from nightshift.store.sql.codec import encode_job_changes, job_from_row, run_from_row
from nightshift.store.sql.engine import Dialect, Transactions
from nightshift.store.sql.notify import RUNS, notify
from nightshift.store.sql.runs import insert_run, run_query
from nightshift.store.tables import jobs, run_logs, runs

_EXECUTING = [str(s) for s in EXECUTING]
_FINAL_FOR_PARENT = {"succeeded", "failed", "cancelled"}  # a stopped run may resume


class LeaseStore:
    _tx: Transactions
    _dialect: Dialect

    def claim(
        self, owner: str, now: datetime, lease_s: float, limit: int, kinds: Iterable[str]
    ) -> list[ClaimedRun]:
        candidates = (
            select(runs.c.id, runs.c.job_id, runs.c.exclusive)
            .where(runs.c.status == "pending", runs.c.run_at <= now, runs.c.kind.in_(list(kinds)))
            .order_by(runs.c.low_priority, runs.c.rank, runs.c.run_at, runs.c.id)
            .limit(limit)
        )
        if self._dialect.skip_locked:
            # NO KEY UPDATE: workers exclude each other, not a transaction adding log lines.
            candidates = candidates.with_for_update(skip_locked=True, key_share=True)
        expires = now + timedelta(seconds=lease_s)
        with self._tx.write() as conn:
            chosen: list[int] = []
            for row in conn.execute(candidates).all():
                if row.exclusive and not _take_slot(conn, row.job_id, row.id):
                    continue
                chosen.append(row.id)
            if not chosen:
                return []
            conn.execute(
                update(runs)
                .where(runs.c.id.in_(chosen))
                .values(
                    status="running", started_at=now, lease_owner=owner, lease_expires_at=expires
                )
            )
            # The batch comes back in two statements whatever its size, in the order chosen.
            rows = conn.execute(run_query().where(runs.c.id.in_(chosen)))
            by_run = {r.id: r for r in map(run_from_row, rows)}
            job_rows = conn.execute(
                select(*JOB_COLUMNS).where(jobs.c.id.in_({r.job_id for r in by_run.values()}))
            )
            by_job = {j.id: j for j in map(job_from_row, job_rows)}
            return [ClaimedRun(run=by_run[i], job=by_job[by_run[i].job_id]) for i in chosen]

    def sync(
        self, owner: str, now: datetime, lease_s: float, updates: Sequence[RunProgress]
    ) -> SyncResult:
        result = SyncResult()
        if not updates:
            return result
        ids = [u.run_id for u in updates]
        with self._tx.write() as conn:
            mine = and_(runs.c.lease_owner == owner, runs.c.status.in_(_EXECUTING))
            conn.execute(
                update(runs)
                .where(runs.c.id.in_(ids), mine)
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
        done: list[bool] = []
        with self._tx.write() as conn:
            for c in completions:
                done.append(_complete_one(conn, c))
        return done

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
        query = run_query().where(runs.c.status.in_(_EXECUTING), runs.c.lease_expires_at < now)
        if self._dialect.skip_locked:
            query = query.with_for_update(skip_locked=True, key_share=True, of=runs)
        with self._tx.write() as conn:
            expired = [run_from_row(r) for r in conn.execute(query)]
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
                _complete_one(
                    conn,
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
                    ),
                    keep_state=True,
                )
            return len(expired)

    def expire_leases(self, owners: Iterable[str], now: datetime) -> int:
        owners = list(owners)
        if not owners:
            return 0
        with self._tx.write() as conn:
            return conn.execute(
                update(runs)
                .where(runs.c.lease_owner.in_(owners), runs.c.status.in_(_EXECUTING))
                .values(lease_expires_at=now - timedelta(microseconds=1))
            ).rowcount

    def lease_owners(self) -> list[str]:
        query = (
            select(runs.c.lease_owner)
            .where(runs.c.status.in_(_EXECUTING), runs.c.lease_owner.is_not(None))
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


def _complete_one(conn: Connection, c: Completion, *, keep_state: bool = False) -> bool:
    values: JSON = {
        "status": str(c.status),
        "finished_at": c.finished_at,
        "result": c.result,
        "error": c.error,
        "lease_owner": None,
        "lease_expires_at": None,
        "kill_requested": False,
    }
    if c.state is not None or not keep_state:
        values["state"] = c.state
    if c.progress is not None:
        values["progress"] = c.progress
    if c.reason is not None:
        values["reason"] = c.reason
    row = conn.execute(
        update(runs)
        .where(runs.c.id == c.run_id, runs.c.lease_owner == c.owner)
        .where(runs.c.status.in_(_EXECUTING))
        .values(values)
        .returning(runs.c.job_id, runs.c.parent_id, runs.c.exclusive)
    ).first()
    if row is None:
        return False  # fenced out: another attempt owns this fire now
    _insert_logs(conn, c.run_id, c.logs)
    if row.exclusive:
        _free_slot(conn, row.job_id, c.run_id)
    if row.exclusive or c.retry is not None:
        notify(conn, RUNS)  # a queued run may take the freed slot; a retry waits to be claimed
    if c.job_changes:
        conn.execute(
            update(jobs).where(jobs.c.id == row.job_id).values(encode_job_changes(c.job_changes))
        )
    if c.retry is not None:
        job_row = conn.execute(select(jobs).where(jobs.c.id == row.job_id)).one()
        insert_run(conn, c.retry, job_row._mapping, c.finished_at)
    elif row.parent_id is not None and str(c.status) in _FINAL_FOR_PARENT:
        failed = 1 if c.status == RunStatus.FAILED else 0
        conn.execute(
            update(runs)
            .where(runs.c.id == row.parent_id)
            .values(
                children_finished=runs.c.children_finished + 1,
                children_failed=runs.c.children_failed + failed,
            )
        )
    return True
