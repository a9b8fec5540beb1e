"""Alert rules and their deliveries: what to watch, whom to tell, and what was sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from nightshift.domain.models import JSON


class AlertEvent(StrEnum):
    FAILED = "failed"  # a run failed for good: no further attempt will follow
    LONG_RUNNING = "long_running"  # a run has been executing longer than the rule's bound


class Channel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    SENDING = "sending"  # claimed by a dispatcher under a lease
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed, or a failure retrying cannot fix


@dataclass(slots=True)
class AlertRule:
    id: int
    app: str
    job_id: int | None  # None: every job of the app
    on_failed: bool
    on_long_running: bool
    max_duration_s: float | None
    webhook_url: str | None
    emails: list[str]
    enabled: bool
    created_at: datetime
    updated_at: datetime

    @property
    def events(self) -> list[AlertEvent]:
        out = []
        if self.on_failed:
            out.append(AlertEvent.FAILED)
        if self.on_long_running:
            out.append(AlertEvent.LONG_RUNNING)
        return out

    @property
    def channels(self) -> list[Channel]:
        out = []
        if self.webhook_url:
            out.append(Channel.WEBHOOK)
        if self.emails:
            out.append(Channel.EMAIL)
        return out


@dataclass(slots=True)
class NewDelivery:
    """One alert to send on one channel; (rule, run, event, channel) is sent at most once."""

    rule_id: int
    run_id: int
    event: AlertEvent
    channel: Channel
    payload: JSON  # what the alert says, secrets masked


@dataclass(slots=True)
class AlertDelivery:
    id: int
    rule_id: int
    run_id: int
    event: AlertEvent
    channel: Channel
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    payload: JSON
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None = None
    # Filled by a claim: where to send it, as the rule says now.
    webhook_url: str | None = None
    emails: list[str] = field(default_factory=list)
