"""Alert rules, the scans that find what to alert about, and the deliveries queue.

Deliveries are claimed like runs: a conditional UPDATE under a lease (with SKIP LOCKED on
PostgreSQL), so several dispatchers never send one attempt twice; a dispatcher that dies
mid-send leaves a lease that expires, and the delivery is tried again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, delete, exists, func, insert, or_, select, update

from nightshift.domain.alerts import (
    AlertDelivery,
    AlertEvent,
    AlertRule,
    Channel,
    DeliveryStatus,
    NewDelivery,
)
from nightshift.domain.models import JSON, Run
from nightshift.errors import NotFound
from nightshift.store.sql.codec import run_from_row
from nightshift.store.sql.engine import Dialect, Transactions, insert_or_ignore
from nightshift.store.sql.runs import run_query
from nightshift.store.tables import (
    alert_deliveries,
    alert_rules,
    apps,
    delivery_is_undelivered,
    jobs,
    meta,
    run_is_executing,
    runs,
)

SCAN_CURSOR = "alert_scan_us"  # ns_meta: finished_at (µs since the epoch) the failure scan reached
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AlertStore:
    _tx: Transactions
    _dialect: Dialect

    # -- rules --------------------------------------------------------------------------------
    def create_alert_rule(self, rule: AlertRule) -> AlertRule:
        with self._tx.write() as conn:
            if conn.execute(select(apps.c.name).where(apps.c.name == rule.app)).first() is None:
                raise NotFound("app", rule.app)
            if rule.job_id is not None and (
                conn.execute(
                    select(jobs.c.id).where(jobs.c.id == rule.job_id, jobs.c.app == rule.app)
                ).first()
                is None
            ):
                raise NotFound("job", rule.job_id)
            values = _rule_values(rule)
            values.update(created_at=rule.created_at, updated_at=rule.updated_at)
            row = conn.execute(insert(alert_rules).values(values).returning(*alert_rules.c)).one()
            return _rule(row)

    def get_alert_rule(self, rule_id: int) -> AlertRule:
        with self._tx.read() as conn:
            row = conn.execute(select(alert_rules).where(alert_rules.c.id == rule_id)).first()
        if row is None:
            raise NotFound("alert", rule_id)
        return _rule(row)

    def list_alert_rules(
        self,
        *,
        app: str | None = None,
        job_id: int | None = None,
        enabled: bool | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[AlertRule]:
        query = select(alert_rules).order_by(alert_rules.c.id)
        if app is not None:
            query = query.where(alert_rules.c.app == app)
        if job_id is not None:
            query = query.where(alert_rules.c.job_id == job_id)
        if enabled is not None:
            query = query.where(alert_rules.c.enabled == enabled)
        if after_id is not None:
            query = query.where(alert_rules.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        with self._tx.read() as conn:
            return [_rule(r) for r in conn.execute(query)]

    def update_alert_rule(self, rule: AlertRule) -> AlertRule:
        with self._tx.write() as conn:
            if rule.job_id is not None and (
                conn.execute(
                    select(jobs.c.id).where(jobs.c.id == rule.job_id, jobs.c.app == rule.app)
                ).first()
                is None
            ):
                raise NotFound("job", rule.job_id)
            values = _rule_values(rule)
            values["updated_at"] = rule.updated_at
            row = conn.execute(
                update(alert_rules)
                .where(alert_rules.c.id == rule.id, alert_rules.c.app == rule.app)
                .values(values)
                .returning(*alert_rules.c)
            ).first()
        if row is None:
            raise NotFound("alert", rule.id)
        return _rule(row)

    def delete_alert_rule(self, rule_id: int) -> None:
        with self._tx.write() as conn:
            conn.execute(delete(alert_deliveries).where(alert_deliveries.c.rule_id == rule_id))
            if conn.execute(delete(alert_rules).where(alert_rules.c.id == rule_id)).rowcount == 0:
                raise NotFound("alert", rule_id)

    # -- scans --------------------------------------------------------------------------------
    def final_failures(
        self,
        apps: Sequence[str],
        since: datetime,
        after: tuple[datetime, int] | None = None,
        limit: int = 500,
    ) -> list[Run]:
        if not apps:
            return []
        later = runs.alias()
        retried = exists().where(
            later.c.retry_of == func.coalesce(runs.c.retry_of, runs.c.id),
            later.c.attempt > runs.c.attempt,
        )
        query = (
            run_query()
            .where(
                runs.c.status == "failed",
                runs.c.is_test.is_(False),
                runs.c.app.in_(list(apps)),
                runs.c.finished_at >= since,
                ~retried,
            )
            .order_by(runs.c.finished_at, runs.c.id)
            .limit(limit)
        )
        if after is not None:
            at, run_id = after
            query = query.where(
                or_(runs.c.finished_at > at, and_(runs.c.finished_at == at, runs.c.id > run_id))
            )
        with self._tx.read() as conn:
            return [run_from_row(r) for r in conn.execute(query)]

    def long_running(
        self, apps: Sequence[str], started_before: datetime, limit: int = 1000
    ) -> list[Run]:
        if not apps:
            return []
        # The executing runs' ids first, from runs_lease. Given `app IN (...)`, SQLite's planner
        # read every run of the apps through runs_app, and for the ids alone every entry of
        # runs_job_status (it holds status): the range on the lease (every executing run has
        # one) is what makes it read runs_lease.
        executing = (
            select(runs.c.id)
            .where(run_is_executing, runs.c.lease_expires_at.is_not(None))
            .correlate(None)
        )
        query = (
            run_query()
            .where(
                runs.c.id.in_(executing),
                runs.c.is_test.is_(False),
                runs.c.app.in_(list(apps)),
                runs.c.started_at <= started_before,
            )
            .order_by(runs.c.started_at, runs.c.id)
            .limit(limit)
        )
        with self._tx.read() as conn:
            return [run_from_row(r) for r in conn.execute(query)]

    def alert_keys(self, run_ids: Iterable[int]) -> set[tuple[int, int, str]]:
        ids = sorted(set(run_ids))
        found: set[tuple[int, int, str]] = set()
        with self._tx.read() as conn:
            for start in range(0, len(ids), 500):
                query = select(
                    alert_deliveries.c.rule_id, alert_deliveries.c.run_id, alert_deliveries.c.event
                ).where(alert_deliveries.c.run_id.in_(ids[start : start + 500]))
                found.update((r.rule_id, r.run_id, r.event) for r in conn.execute(query))
        return found

    def alert_scan_cursor(self) -> datetime | None:
        with self._tx.read() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == SCAN_CURSOR)).scalar()
        return None if value is None else _EPOCH + timedelta(microseconds=value)

    def advance_alert_scan_cursor(self, at: datetime) -> None:
        value = _micros(at)
        with self._tx.write() as conn:
            conn.execute(insert_or_ignore(conn, meta).values(key=SCAN_CURSOR, value=value))
            conn.execute(
                update(meta)
                .where(meta.c.key == SCAN_CURSOR, meta.c.value < value)
                .values(value=value)
            )

    # -- deliveries ---------------------------------------------------------------------------
    def add_alert_deliveries(self, new: Sequence[NewDelivery], now: datetime) -> int:
        if not new:
            return 0
        inserted = 0
        with self._tx.write() as conn:
            for item in new:
                row = conn.execute(
                    insert_or_ignore(conn, alert_deliveries)
                    .values(
                        rule_id=item.rule_id,
                        run_id=item.run_id,
                        event=str(item.event),
                        channel=str(item.channel),
                        status=str(DeliveryStatus.PENDING),
                        attempts=0,
                        next_attempt_at=now,
                        payload=item.payload,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(alert_deliveries.c.id)
                ).first()
                inserted += row is not None
        return inserted

    def claim_alert_deliveries(
        self, owner: str, now: datetime, lease_s: float, limit: int
    ) -> list[AlertDelivery]:
        d = alert_deliveries
        query = (
            select(d, alert_rules.c.webhook_url, alert_rules.c.emails)
            .join(alert_rules, alert_rules.c.id == d.c.rule_id)
            .where(
                alert_rules.c.enabled.is_(True),
                delivery_is_undelivered,
                or_(
                    and_(d.c.status == "pending", d.c.next_attempt_at <= now),
                    # a dispatcher died mid-send: its lease ran out
                    and_(d.c.status == "sending", d.c.lease_expires_at < now),
                ),
            )
            .order_by(d.c.next_attempt_at, d.c.id)
            .limit(limit)
        )
        if self._dialect.skip_locked:
            query = query.with_for_update(skip_locked=True, of=d)
        claimed: list[AlertDelivery] = []
        with self._tx.write() as conn:
            for row in conn.execute(query).all():
                taken = conn.execute(
                    update(d)
                    .where(d.c.id == row.id, d.c.status == row.status)
                    .where(or_(d.c.lease_owner.is_(None), d.c.lease_owner == row.lease_owner))
                    .values(
                        status=str(DeliveryStatus.SENDING),
                        attempts=d.c.attempts + 1,
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_s),
                        updated_at=now,
                    )
                    .returning(*d.c)
                ).first()
                if taken is not None:
                    delivery = _delivery(taken)
                    delivery.webhook_url = row.webhook_url
                    delivery.emails = list(row.emails or [])
                    claimed.append(delivery)
        return claimed

    def finish_alert_delivery(
        self,
        delivery_id: int,
        owner: str,
        now: datetime,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        if error is None:
            values: JSON = {"status": str(DeliveryStatus.DELIVERED), "delivered_at": now}
        elif retry_at is not None:
            values = {"status": str(DeliveryStatus.PENDING), "next_attempt_at": retry_at}
        else:
            values = {"status": str(DeliveryStatus.FAILED)}
        values.update(last_error=error, lease_owner=None, lease_expires_at=None, updated_at=now)
        with self._tx.write() as conn:
            return (
                conn.execute(
                    update(alert_deliveries)
                    .where(
                        alert_deliveries.c.id == delivery_id,
                        alert_deliveries.c.lease_owner == owner,
                        alert_deliveries.c.status == "sending",
                    )
                    .values(values)
                ).rowcount
                == 1
            )

    def list_alert_deliveries(
        self, rule_id: int, *, before_id: int | None = None, limit: int = 100
    ) -> list[AlertDelivery]:
        query = (
            select(alert_deliveries)
            .where(alert_deliveries.c.rule_id == rule_id)
            .order_by(alert_deliveries.c.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            query = query.where(alert_deliveries.c.id < before_id)
        with self._tx.read() as conn:
            return [_delivery(r) for r in conn.execute(query)]


def _micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _rule_values(rule: AlertRule) -> JSON:
    return {
        "app": rule.app,
        "job_id": rule.job_id,
        "on_failed": rule.on_failed,
        "on_long_running": rule.on_long_running,
        "max_duration_s": rule.max_duration_s,
        "webhook_url": rule.webhook_url,
        "emails": list(rule.emails),
        "enabled": rule.enabled,
    }


def _rule(row: Row[Any]) -> AlertRule:
    m = row._mapping
    return AlertRule(
        id=m["id"],
        app=m["app"],
        job_id=m["job_id"],
        on_failed=bool(m["on_failed"]),
        on_long_running=bool(m["on_long_running"]),
        max_duration_s=m["max_duration_s"],
        webhook_url=m["webhook_url"],
        emails=list(m["emails"] or []),
        enabled=bool(m["enabled"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _delivery(row: Row[Any]) -> AlertDelivery:
    m = row._mapping
    return AlertDelivery(
        id=m["id"],
        rule_id=m["rule_id"],
        run_id=m["run_id"],
        event=AlertEvent(m["event"]),
        channel=Channel(m["channel"]),
        status=DeliveryStatus(m["status"]),
        attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"],
        last_error=m["last_error"],
        payload=m["payload"] or {},
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        delivered_at=m["delivered_at"],
    )
