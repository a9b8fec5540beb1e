"""Pure detection: which rules fire for which runs, and what an alert says.

Nothing here reads the clock or the database: the dispatcher passes `now`, the candidate runs
(the store decides "failed for good") and the app's secret values to mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from nightshift.domain.alerts import AlertEvent, AlertRule
from nightshift.domain.models import JSON, Run
from nightshift.domain.status import EXECUTING, RunStatus

MASK = "***"
#: Shorter secret values are not masked: "***" for every "on" or "1" in a message would hide
#: the message and protect nothing.
MIN_MASKED_LENGTH = 4
MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Trigger:
    rule: AlertRule
    run: Run
    event: AlertEvent

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.rule.id, self.run.id, str(self.event))


def covers(rule: AlertRule, run: Run) -> bool:
    return rule.app == run.app and (rule.job_id is None or rule.job_id == run.job_id)


def failed_triggers(rules: Sequence[AlertRule], final_failures: Iterable[Run]) -> list[Trigger]:
    """Rules watching `failed` for runs that failed for good after the rule was created."""
    out = []
    watching = [r for r in rules if r.enabled and r.on_failed]
    for run in final_failures:
        if run.status != RunStatus.FAILED or run.is_test or run.finished_at is None:
            continue
        for rule in watching:
            if covers(rule, run) and run.finished_at >= rule.created_at:
                out.append(Trigger(rule, run, AlertEvent.FAILED))
    return out


def long_running_triggers(
    rules: Sequence[AlertRule], executing: Iterable[Run], now: datetime
) -> list[Trigger]:
    """Rules watching `long_running` for runs executing longer than the rule's bound."""
    out = []
    watching = [r for r in rules if r.enabled and r.on_long_running and r.max_duration_s]
    for run in executing:
        if run.status not in EXECUTING or run.is_test or run.started_at is None:
            continue
        elapsed = (now - run.started_at).total_seconds()
        for rule in watching:
            assert rule.max_duration_s is not None
            if covers(rule, run) and elapsed > rule.max_duration_s:
                out.append(Trigger(rule, run, AlertEvent.LONG_RUNNING))
    return out


def longest_bound_needed(rules: Sequence[AlertRule]) -> float | None:
    """The smallest max_duration_s among rules watching long runs (the scan's bound)."""
    bounds = [
        r.max_duration_s for r in rules if r.enabled and r.on_long_running and r.max_duration_s
    ]
    return min(bounds) if bounds else None


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret value replaced by ***, longest first."""
    values = sorted(
        {s for s in secrets if s and len(s) >= MIN_MASKED_LENGTH}, key=len, reverse=True
    )
    for value in values:
        text = text.replace(value, MASK)
    return text


def alert_payload(
    trigger: Trigger, now: datetime, base_url: str, secrets: Sequence[str] | None
) -> JSON:
    """The alert: event, app, job, run summary and a link. Never params, results, headers or
    tracebacks; the error's type and message only, with the app's secret values masked.
    `secrets` None means they could not be read: the message is then withheld."""
    run = trigger.run
    started, finished = run.started_at, run.finished_at
    duration = None
    if started is not None:
        duration = round(((finished or now) - started).total_seconds(), 3)
    error = None
    if trigger.event == AlertEvent.FAILED:
        error = _error(run.error, secrets)
    return {
        "event": str(trigger.event),
        "app": run.app,
        "job": {"id": run.job_id, "name": run.job_name},
        "run": {
            "id": run.id,
            "status": str(run.status),
            "attempt": run.attempt,
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "duration_s": duration,
            "error": error,
        },
        "rule": {"id": trigger.rule.id, "max_duration_s": trigger.rule.max_duration_s},
        "url": f"{base_url.rstrip('/')}/api/v1/runs/{run.id}",
    }


def _error(error: JSON | None, secrets: Sequence[str] | None) -> JSON | None:
    if not error:
        return None
    kind = str(error.get("type") or "Error")
    message = str(error.get("message") or "")
    if secrets is None:
        message = "(withheld: the app's secrets could not be read to mask them)"
    else:
        kind, message = mask(kind, secrets), mask(message, secrets)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return {"type": kind, "message": message}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
