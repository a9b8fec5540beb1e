"""Use cases for alert rules: create, change, list, delete, and a rule's deliveries.

Who may touch which app is the API's business (an app token sees its app only); here every
rule is checked whole, whoever asks: at least one event and one channel, a bound for
`long_running`, a webhook URL the address policy of http jobs lets through, valid addresses.
"""

from __future__ import annotations

import re
from dataclasses import replace

import httpx

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.alerts import AlertDelivery, AlertEvent, AlertRule
from nightshift.domain.models import JSON
from nightshift.errors import InvalidInput, NotFound
from nightshift.store.base import Store
from nightshift.worker.netguard import AddressPolicy, BlockedAddress, check_host_now

ADDRESS = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]{2,}$")
MAX_ADDRESSES = 20
MAX_URL_CHARS = 2048
EDITABLE = ("job_id", "on", "max_duration_s", "webhook_url", "email", "enabled")


class AlertRules:
    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.policy = AddressPolicy.from_strings(
            settings.http_allow_private, settings.http_allow_hosts
        )

    def create(self, app: str, data: JSON) -> AlertRule:
        """A new rule of `app` from the API's fields (`on`, `email`, ...)."""
        try:
            self.store.get_app(app)
        except NotFound:
            raise InvalidInput(f"no app named {app!r}", field="app") from None
        now = self.clock.now()
        draft = AlertRule(
            id=0,
            app=app,
            job_id=None,
            on_failed=True,
            on_long_running=False,
            max_duration_s=None,
            webhook_url=None,
            emails=[],
            enabled=True,
            created_at=now,
            updated_at=now,
        )
        rule = self._apply(draft, data)
        try:
            return self.store.create_alert_rule(rule)
        except NotFound as exc:  # the job went away meanwhile
            raise InvalidInput(f"no job {rule.job_id} in app {app!r}", field="job_id") from exc

    def get(self, rule_id: int) -> AlertRule:
        return self.store.get_alert_rule(rule_id)

    def list_rules(
        self, app: str | None, job_id: int | None, after_id: int | None, limit: int
    ) -> list[AlertRule]:
        return self.store.list_alert_rules(app=app, job_id=job_id, after_id=after_id, limit=limit)

    def update(self, rule_id: int, changes: JSON) -> AlertRule:
        current = self.store.get_alert_rule(rule_id)
        rule = self._apply(current, changes)
        rule.updated_at = self.clock.now()
        try:
            return self.store.update_alert_rule(rule)
        except NotFound as exc:
            if exc.what == "job":
                raise InvalidInput(
                    f"no job {rule.job_id} in app {rule.app!r}", field="job_id"
                ) from exc
            raise

    def delete(self, rule_id: int) -> None:
        self.store.delete_alert_rule(rule_id)

    def deliveries(self, rule_id: int, before_id: int | None, limit: int) -> list[AlertDelivery]:
        self.store.get_alert_rule(rule_id)
        return self.store.list_alert_deliveries(rule_id, before_id=before_id, limit=limit)

    # -- checks -------------------------------------------------------------------------------
    def _apply(self, rule: AlertRule, data: JSON) -> AlertRule:
        """`rule` with the given fields changed, checked as a whole."""
        unknown = set(data) - set(EDITABLE)
        if unknown:
            raise InvalidInput("is not a field that can be changed", field=sorted(unknown)[0])
        rule = replace(rule, emails=list(rule.emails))
        if "job_id" in data:
            rule.job_id = self._job_of(rule.app, data["job_id"])
        if "on" in data:
            events = _events(data["on"])
            rule.on_failed = AlertEvent.FAILED in events
            rule.on_long_running = AlertEvent.LONG_RUNNING in events
        if "max_duration_s" in data:
            rule.max_duration_s = _bound(data["max_duration_s"])
        if "webhook_url" in data:
            rule.webhook_url = self._webhook(data["webhook_url"])
        if "email" in data:
            rule.emails = _addresses(data["email"])
        if "enabled" in data:
            if not isinstance(data["enabled"], bool):
                raise InvalidInput("must be true or false", field="enabled")
            rule.enabled = data["enabled"]
        if rule.on_long_running and rule.max_duration_s is None:
            raise InvalidInput("is required when `on` includes long_running", "max_duration_s")
        if not rule.webhook_url and not rule.emails:
            raise InvalidInput(
                "a rule needs a channel: a webhook_url, an email address, or both", "webhook_url"
            )
        return rule

    def _job_of(self, app: str, job_id: object) -> int | None:
        if job_id is None:
            return None
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise InvalidInput("must be a job id or null (every job of the app)", "job_id")
        try:
            job = self.store.get_job(job_id)
        except NotFound:
            job = None
        if job is None or job.app != app:  # another app's job is "no such job" here
            raise InvalidInput(f"no job {job_id} in app {app!r}", field="job_id")
        return job_id

    def _webhook(self, url: object) -> str | None:
        if url is None or url == "":
            return None
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
            raise InvalidInput(
                f"must be an http(s) URL of {MAX_URL_CHARS} characters at most", "webhook_url"
            )
        try:
            parsed = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError):
            raise InvalidInput("is not a URL", field="webhook_url") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidInput("must be an http:// or https:// URL with a host", "webhook_url")
        try:
            check_host_now(self.policy, parsed.host)
        except BlockedAddress as exc:
            raise InvalidInput(str(exc), field="webhook_url") from None
        return str(parsed)


def _events(value: object) -> set[AlertEvent]:
    known = ", ".join(str(e) for e in AlertEvent)
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"must be a non-empty list of: {known}", field="on")
    events = set()
    for item in value:
        try:
            events.add(AlertEvent(item))
        except ValueError:
            raise InvalidInput(f"unknown event {item!r}; one of {known}", field="on") from None
    return events


def _bound(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput("must be a number of seconds above 0", field="max_duration_s")
    return float(value)


def _addresses(value: object) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidInput("must be an address or a list of addresses", field="email")
    out: list[str] = []
    for item in items:
        address = item.strip()
        if len(address) > 254 or not ADDRESS.match(address):
            raise InvalidInput(f"{item!r} is not an e-mail address", field="email")
        if address not in out:
            out.append(address)
    if len(out) > MAX_ADDRESSES:
        raise InvalidInput(f"at most {MAX_ADDRESSES} addresses", field="email")
    return out
