"""The alert dispatcher: scan the database, record each alert once, send with retries.

`tick(now)` is one step (tests call it with a fake clock); `run(stop)` repeats it every
NIGHTSHIFT_ALERT_POLL_S in processes with the scheduler role. The database is the only shared
state: several dispatchers on PostgreSQL record each (rule, run, event, channel) once through a
unique key and claim deliveries under leases, so each attempt is made by one of them.

Failures are found by a cursor on finished_at that is persisted and rescanned with an overlap
(a run's finished_at comes from its worker's clock and commits a little after it); the unique
key makes the rescan harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets as token_source
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import make_url

from nightshift.access import AccessService
from nightshift.alerts.deliver import EmailSender, SendResult, WebhookSender, backoff_s
from nightshift.alerts.detect import (
    Trigger,
    alert_payload,
    failed_triggers,
    long_running_triggers,
    longest_bound_needed,
)
from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.access import SecretKind
from nightshift.domain.alerts import AlertDelivery, AlertRule, Channel, NewDelivery
from nightshift.store.base import Store
from nightshift.worker.netguard import AddressPolicy, Resolver

log = logging.getLogger("nightshift.alerts")

#: How far back each failure scan reaches behind its cursor.
OVERLAP = timedelta(minutes=2)
PAGE = 500
BATCH = 50  # deliveries sent per tick, concurrently

#: The values of an app's secrets (to mask), or None when they cannot be read.
SecretValues = Callable[[str], "list[str] | None"]


def app_secret_values(access: AccessService) -> SecretValues:
    """Secret values of an app, and its data sources' URLs and passwords, from the secrets
    store. None when the app has secrets but this process cannot decrypt them (no key here:
    a key is never generated for this)."""

    def values(app: str) -> list[str] | None:
        entries = [
            (kind, entry.name)
            for kind in (SecretKind.SECRET, SecretKind.SOURCE)
            for entry in access.store.list_secrets(app, kind)
        ]
        if not entries:
            return []
        settings = access.settings
        if not settings.secret_key and not Path(settings.secret_key_file).is_file():
            return None
        out: list[str] = []
        for kind, name in entries:
            value = access.reveal(app, kind, name)
            out.append(value)
            if kind == SecretKind.SOURCE:
                with contextlib.suppress(Exception):
                    password = make_url(value).password
                    if password:
                        out.append(str(password))
        return out

    return values


class AlertDispatcher:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        *,
        secret_values: SecretValues | None = None,
        owner: str | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.owner = owner or (
            f"alerts-{socket.gethostname()}-{os.getpid()}-{token_source.token_hex(3)}"
        )
        policy = AddressPolicy.from_strings(settings.http_allow_private, settings.http_allow_hosts)
        self.webhook = WebhookSender(policy, settings.alert_timeout_s, resolver=resolver)
        self.email = EmailSender(settings)
        self._secret_values = secret_values or (lambda app: [])
        self.base_url = settings.public_url or f"http://{settings.host}:{settings.port}"
        # An attempt ends within alert_timeout_s (connect, TLS, SMTP dialogue each bounded).
        self.lease_s = max(60.0, 4 * settings.alert_timeout_s)

    # -- one step -----------------------------------------------------------------------------
    async def tick(self, now: datetime | None = None) -> int:
        """Detect new alerts at `now`, then make every due delivery attempt (one batch).
        Returns the number of attempts made."""
        now = now or self.clock.now()
        await asyncio.to_thread(self.detect, now)
        return await self.deliver(now)

    def detect(self, now: datetime) -> int:
        """Record deliveries for rules that fire at `now`; returns how many were new."""
        rules = self.store.list_alert_rules(enabled=True)
        rules = [r for r in rules if r.channels]
        if not rules:
            return 0
        triggers = self._failures(rules, now) + self._long_runs(rules, now)
        if not triggers:
            return 0
        known = self.store.alert_keys({t.run.id for t in triggers})
        fresh = [t for t in triggers if t.key not in known]
        new = self._deliveries(fresh, now)
        added = self.store.add_alert_deliveries(new, now)
        if added:
            log.info("alerts: %d new deliveries", added)
        return added

    def _failures(self, rules: Sequence[AlertRule], now: datetime) -> list[Trigger]:
        watching = [r for r in rules if r.on_failed]
        if not watching:
            return []
        apps = sorted({r.app for r in watching})
        since = min(r.created_at for r in watching)
        cursor = self.store.alert_scan_cursor()
        if cursor is not None:
            since = max(since, cursor - OVERLAP)
        triggers: list[Trigger] = []
        after: tuple[datetime, int] | None = None
        newest: datetime | None = None
        while True:
            page = self.store.final_failures(apps, since, after, PAGE)
            triggers += failed_triggers(watching, page)
            if page:
                last = page[-1]
                assert last.finished_at is not None
                after = (last.finished_at, last.id)
                newest = last.finished_at
            if len(page) < PAGE:
                break
        if newest is not None:
            # Never past now: a worker's clock ahead of ours must not make us skip runs.
            self.store.advance_alert_scan_cursor(min(newest, now))
        return triggers

    def _long_runs(self, rules: Sequence[AlertRule], now: datetime) -> list[Trigger]:
        bound = longest_bound_needed(rules)
        if bound is None:
            return []
        apps = sorted({r.app for r in rules if r.on_long_running and r.max_duration_s})
        executing = self.store.long_running(apps, now - timedelta(seconds=bound))
        return long_running_triggers(rules, executing, now)

    def _deliveries(self, triggers: Sequence[Trigger], now: datetime) -> list[NewDelivery]:
        masks: dict[str, list[str] | None] = {}
        out = []
        for trigger in triggers:
            app = trigger.run.app
            if app not in masks:
                masks[app] = self._secrets_of(app)
            payload = alert_payload(trigger, now, self.base_url, masks[app])
            for channel in trigger.rule.channels:
                out.append(
                    NewDelivery(trigger.rule.id, trigger.run.id, trigger.event, channel, payload)
                )
        return out

    def _secrets_of(self, app: str) -> list[str] | None:
        try:
            return self._secret_values(app)
        except Exception as exc:  # a bad key must not stop alerts: their messages are withheld
            log.warning("alerts: cannot read the secrets of app %s to mask alerts: %s", app, exc)
            return None

    async def deliver(self, now: datetime) -> int:
        """Claim the due deliveries and make one attempt at each; returns how many."""
        claimed = await asyncio.to_thread(
            self.store.claim_alert_deliveries, self.owner, now, self.lease_s, BATCH
        )
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._attempt(d) for d in claimed))
        for delivery, result in zip(claimed, results, strict=True):
            await asyncio.to_thread(self._record, delivery, result, now)
        return len(claimed)

    async def _attempt(self, delivery: AlertDelivery) -> SendResult:
        try:
            if delivery.channel == Channel.WEBHOOK:
                if not delivery.webhook_url:
                    return SendResult("the rule has no webhook_url any more", permanent=True)
                return await self.webhook.send(delivery.webhook_url, delivery.payload)
            return await self.email.send(delivery.emails, delivery.payload)
        except Exception as exc:  # a sender bug must not lose the delivery's bookkeeping
            log.exception("alerts: delivery %d failed unexpectedly", delivery.id)
            return SendResult(f"internal error: {type(exc).__name__}")

    def _record(self, delivery: AlertDelivery, result: SendResult, now: datetime) -> None:
        retry_at = None
        retrying = not result.ok and not result.permanent
        if retrying and delivery.attempts < self.settings.alert_attempts:
            delay = backoff_s(delivery.attempts, self.settings.alert_backoff_s)
            retry_at = now + timedelta(seconds=delay)
        if not result.ok:
            log.warning(
                "alerts: %s alert %d (run %d) attempt %d failed: %s%s",
                delivery.channel,
                delivery.id,
                delivery.run_id,
                delivery.attempts,
                result.error,
                "" if retry_at else " (giving up)",
            )
        self.store.finish_alert_delivery(
            delivery.id, self.owner, now, error=result.error, retry_at=retry_at
        )

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Tick every alert_poll_s until `stop` is set."""
        try:
            while not stop.is_set():
                try:
                    await self.tick(self.clock.now())
                except Exception:
                    log.exception("alerts: dispatcher step failed; trying again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.alert_poll_s)
        finally:
            await self.close()

    async def close(self) -> None:
        await self.webhook.close()
