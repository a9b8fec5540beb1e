"""Pure detection and formatting: no database, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nightshift.alerts.deliver import backoff_s, subject, text_body
from nightshift.alerts.detect import (
    Trigger,
    alert_payload,
    failed_triggers,
    long_running_triggers,
    mask,
)
from nightshift.domain.alerts import AlertEvent, AlertRule
from nightshift.domain.models import JobKind, Run
from nightshift.domain.status import RunStatus

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def rule(**fields) -> AlertRule:  # type: ignore[no-untyped-def]
    values = {
        "id": 1,
        "app": "shop",
        "job_id": None,
        "on_failed": True,
        "on_long_running": False,
        "max_duration_s": None,
        "webhook_url": "https://hooks.example/x",
        "emails": [],
        "enabled": True,
        "created_at": T0,
        "updated_at": T0,
        **fields,
    }
    return AlertRule(**values)


def run(**fields) -> Run:  # type: ignore[no-untyped-def]
    values = {
        "id": 42,
        "job_id": 7,
        "app": "shop",
        "kind": JobKind.HTTP,
        "status": RunStatus.FAILED,
        "created_at": T0,
        "run_at": T0,
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=3.5),
        "attempt": 1,
        "params": {"token": "hunter2-secret"},
        "error": {"type": "HTTPError", "message": "bad hunter2-secret", "traceback": "tb"},
        "job_name": "daily_report",
        **fields,
    }
    return Run(**values)


def test_failed_rules_match_app_job_and_creation_time() -> None:
    app_rule, job_rule = rule(id=1), rule(id=2, job_id=7)
    other_job, other_app = rule(id=3, job_id=8), rule(id=4, app="else")
    later, disabled = rule(id=5, created_at=T0 + timedelta(hours=1)), rule(id=6, enabled=False)
    rules = [app_rule, job_rule, other_job, other_app, later, disabled]
    assert [t.rule.id for t in failed_triggers(rules, [run()])] == [1, 2]
    assert failed_triggers(rules, [run(is_test=True)]) == []
    assert failed_triggers(rules, [run(status=RunStatus.SKIPPED)]) == []


def test_long_running_needs_more_than_the_bound() -> None:
    r = rule(on_failed=False, on_long_running=True, max_duration_s=60)
    running = run(status=RunStatus.RUNNING, finished_at=None, started_at=T0)
    assert long_running_triggers([r], [running], T0 + timedelta(seconds=60)) == []
    (trigger,) = long_running_triggers([r], [running], T0 + timedelta(seconds=61))
    assert trigger.event == AlertEvent.LONG_RUNNING
    assert long_running_triggers([rule()], [running], T0 + timedelta(hours=1)) == []
    ended = run(status=RunStatus.SUCCEEDED)
    assert long_running_triggers([r], [ended], T0 + timedelta(hours=1)) == []


def test_mask_replaces_longest_values_first_and_ignores_tiny_ones() -> None:
    assert mask("a hunter2-secret b hunter2", ["hunter2", "hunter2-secret", "ab", ""]) == (
        "a *** b ***"
    )
    assert mask("on and 1", ["on", "1"]) == "on and 1"


def test_payload_has_no_params_results_or_traceback() -> None:
    payload = alert_payload(
        Trigger(rule(), run(result={"x": 1}), AlertEvent.FAILED),
        T0 + timedelta(seconds=10),
        "https://ns.example/",
        ["hunter2-secret"],
    )
    assert payload["run"]["error"] == {"type": "HTTPError", "message": "bad ***"}
    assert payload["run"]["duration_s"] == 2.5
    assert payload["url"] == "https://ns.example/api/v1/runs/42"
    assert "hunter2" not in str(payload)
    assert "params" not in str(payload) and "traceback" not in str(payload)
    assert subject(payload) == "[nightshift] shop/daily_report failed (run 42)"
    body = text_body(payload)
    assert "Error:     HTTPError: bad ***" in body
    assert "Duration:  2.5 s" in body


def test_long_running_subject_names_the_bound() -> None:
    trigger = Trigger(
        rule(on_long_running=True, max_duration_s=600),
        run(status=RunStatus.RUNNING, finished_at=None),
        AlertEvent.LONG_RUNNING,
    )
    payload = alert_payload(trigger, T0 + timedelta(minutes=11), "http://h", [])
    assert payload["run"]["error"] is None
    assert subject(payload) == "[nightshift] shop/daily_report running longer than 600 s (run 42)"


def test_subject_has_no_line_breaks() -> None:
    payload = alert_payload(
        Trigger(rule(), run(job_name="evil\r\nBcc: x@y.z"), AlertEvent.FAILED), T0, "http://h", []
    )
    assert "\n" not in subject(payload) and "\r" not in subject(payload)


def test_backoff_doubles() -> None:
    assert [backoff_s(n, 15) for n in (1, 2, 3, 4)] == [15, 30, 60, 120]
