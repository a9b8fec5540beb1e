"""App management and the batch reads the API needs: create, retain, delete apps; runs by id."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError

from nightshift.domain.models import App, Run
from nightshift.errors import Conflict, NotFound
from nightshift.store.sql.catalog import _bump_version
from nightshift.store.sql.codec import app_from_row, run_from_row
from nightshift.store.sql.engine import Transactions
from nightshift.store.sql.runs import run_query
from nightshift.store.tables import apps, runs


class ManageStore:
    _tx: Transactions

    def create_app(self, name: str, now: datetime) -> App:
        with self._tx.write() as conn:
            try:
                with conn.begin_nested():
                    row = conn.execute(
                        insert(apps)
                        .values(name=name, schedules_enabled=True, created_at=now)
                        .returning(*apps.c)
                    ).one()
            except IntegrityError as exc:
                raise Conflict(f"app {name!r} exists already") from exc
            return app_from_row(row)

    def set_app_retention(self, name: str, days: int | None) -> App:
        with self._tx.write() as conn:
            row = conn.execute(
                update(apps)
                .where(apps.c.name == name)
                .values(retention_days=days)
                .returning(*apps.c)
            ).first()
        if row is None:
            raise NotFound("app", name)
        return app_from_row(row)

    def delete_app(self, name: str) -> None:
        # Foreign keys cascade: jobs -> runs -> run_logs, and the app's tokens and secrets.
        with self._tx.write() as conn:
            if conn.execute(delete(apps).where(apps.c.name == name)).rowcount == 0:
                raise NotFound("app", name)
            _bump_version(conn)

    def get_runs(self, run_ids: Iterable[int]) -> dict[int, Run]:
        ids = sorted(set(run_ids))
        if not ids:
            return {}
        with self._tx.read() as conn:
            rows = conn.execute(run_query().where(runs.c.id.in_(ids)))
            return {run.id: run for run in map(run_from_row, rows)}
