"""Run control: the operations' compare-and-set status changes, restarts, priority, bulk enqueue.

Every change is a conditional `UPDATE … WHERE id = ? AND status = ?`: an operation decided on
a status that a worker (or another operator) changed in the meantime changes nothing, and the
caller looks again. Workers learn of stops and kills at their next `sync`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from nightshift.domain.models import JSON, Run
from nightshift.domain.status import RunStatus
from nightshift.errors import NotFound
from nightshift.store.base import NewRun, RunChange
from nightshift.store.sql.engine import Transactions
from nightshift.store.sql.notify import RUNS, notify
from nightshift.store.sql.runs import get_run, insert_run, run_values
from nightshift.store.tables import jobs, run_logs, runs


class ControlStore:
    _tx: Transactions

    def change_run(self, run_id: int, change: RunChange, now: datetime) -> Run | None:
        values: JSON = {"status": str(change.status)}
        if change.reason is not None:
            values["reason"] = change.reason
        if change.kill:
            values["kill_requested"] = True
        if change.status == RunStatus.PENDING:  # resume: due now, the checkpoint stays
            values.update(
                run_at=now,
                finished_at=None,
                lease_owner=None,
                lease_expires_at=None,
                kill_requested=False,
            )
        elif change.status == RunStatus.CANCELLED:
            values.update(finished_at=now, kill_requested=False)
        with self._tx.write() as conn:
            row = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == str(change.expected))
                .values(values)
                .returning(runs.c.parent_id)
            ).first()
            if row is None:
                get_run(conn, run_id)  # NotFound when missing
                return None
            if change.status == RunStatus.CANCELLED and row.parent_id is not None:
                _count_finished(conn, row.parent_id)
            if change.status == RunStatus.PENDING:
                notify(conn, RUNS)
            if change.log:
                _log(conn, run_id, now, change.log)
            return get_run(conn, run_id)

    def restart_run(
        self, run_id: int, expected: RunStatus, new: NewRun, now: datetime
    ) -> Run | None:
        with self._tx.write() as conn:
            # Locked (PostgreSQL; SQLite writers are serial): the status read is the one we change.
            old = conn.execute(
                select(runs.c.status, runs.c.parent_id).where(runs.c.id == run_id).with_for_update()
            ).first()
            if old is None:
                raise NotFound("run", run_id)
            if old.status != str(expected):
                return None
            job_row = conn.execute(select(jobs).where(jobs.c.id == new.job_id)).first()
            if job_row is None:
                raise NotFound("job", new.job_id)
            new_id = insert_run(conn, new, job_row._mapping, now)
            if expected == RunStatus.STOPPED:
                # Started over: the stopped run must not also be resumed.
                conn.execute(
                    update(runs)
                    .where(runs.c.id == run_id)
                    .values(
                        status="cancelled", finished_at=now, reason=f"restarted as run {new_id}"
                    )
                )
                if old.parent_id is not None:
                    _count_finished(conn, old.parent_id)
            _log(conn, run_id, now, f"restarted as run {new_id}")
            _log(conn, new_id, now, f"restart of run {run_id}" + _by(new.run_by))
            notify(conn, RUNS)
            return get_run(conn, new_id)

    def set_run_low_priority(self, run_id: int, low_priority: bool) -> Run:
        with self._tx.write() as conn:
            changed = conn.execute(
                update(runs).where(runs.c.id == run_id).values(low_priority=low_priority)
            ).rowcount
            if changed != 1:
                raise NotFound("run", run_id)
            return get_run(conn, run_id)

    def enqueue_many(self, news: Sequence[NewRun], now: datetime) -> int:
        if not news:
            return 0
        with self._tx.write() as conn:
            job_ids = {n.job_id for n in news}
            job_rows = {
                r.id: r._mapping for r in conn.execute(select(jobs).where(jobs.c.id.in_(job_ids)))
            }
            for job_id in job_ids - job_rows.keys():
                raise NotFound("job", job_id)
            ranks = _reserve_ranks(conn, news)
            rows: list[dict[str, Any]] = []
            for i, new in enumerate(news):
                values = run_values(new, job_rows[new.job_id], now)
                values.update(ranks.get(i, {"root_id": None, "rank": 0}))
                rows.append(values)
            conn.execute(insert(runs), rows)
            notify(conn, RUNS)
            return len(rows)


def _reserve_ranks(conn: Connection, news: Sequence[NewRun]) -> dict[int, dict[str, Any]]:
    """Roots and consecutive ranks for the children among `news` (by index), as `insert_run`
    gives them one by one; the parents' and roots' counters grow once per parent."""
    by_parent: dict[int, list[int]] = {}
    for i, new in enumerate(news):
        if new.parent_id is not None:
            by_parent.setdefault(new.parent_id, []).append(i)
    out: dict[int, dict[str, Any]] = {}
    for parent_id, indexes in by_parent.items():
        parent = conn.execute(
            select(runs.c.id, runs.c.root_id).where(runs.c.id == parent_id)
        ).first()
        if parent is None:
            raise NotFound("run", parent_id)
        root_id = parent.root_id or parent.id
        first = [i for i in indexes if news[i].attempt == 1]
        top = conn.execute(
            update(runs)
            .where(runs.c.id == root_id)
            .values(descendants=runs.c.descendants + len(first))
            .returning(runs.c.descendants)
        ).scalar_one()
        conn.execute(
            update(runs)
            .where(runs.c.id == parent_id)
            .values(children_total=runs.c.children_total + len(first))
        )
        for offset, i in enumerate(first):
            out[i] = {"root_id": root_id, "rank": top - len(first) + 1 + offset}
        for i in indexes:
            out.setdefault(i, {"root_id": root_id, "rank": 0})
    return out


def _count_finished(conn: Connection, parent_id: int) -> None:
    conn.execute(
        update(runs)
        .where(runs.c.id == parent_id)
        .values(children_finished=runs.c.children_finished + 1)
    )


def _log(conn: Connection, run_id: int, at: datetime, message: str) -> None:
    conn.execute(insert(run_logs).values(run_id=run_id, at=at, level="INFO", message=message))


def _by(who: str | None) -> str:
    return f" by {who}" if who else ""
