"""The dispatcher against a real database (SQLite and PostgreSQL), a loopback webhook receiver
and a real SMTP server, stepped with tick(now)."""

from __future__ import annotations

import email
from datetime import timedelta
from email import policy

from nightshift.access import AccessService
from nightshift.alerts.deliver import WebhookSender
from nightshift.alerts.dispatcher import AlertDispatcher
from nightshift.alerts.rules import AlertRules
from nightshift.clock import FakeClock
from nightshift.domain.status import RunStatus
from nightshift.store import SqlStore
from nightshift.store.base import Completion, NewRun
from nightshift.worker.netguard import AddressPolicy
from tests.alerts.conftest import (
    OWNER,
    T0,
    Hook,
    Mailbox,
    add_job,
    claim_next,
    fail_run,
    start_run,
)

SECRET = "tok-9f8e7d6c5b4a3921"


def rules(store: SqlStore, settings) -> AlertRules:  # type: ignore[no-untyped-def]
    return AlertRules(store, FakeClock(T0), settings)


async def test_failed_run_is_posted_to_the_webhook_with_a_link_and_no_secrets(
    store: SqlStore, dispatcher: AlertDispatcher, access: AccessService, hook: Hook
) -> None:
    job = add_job(store)
    access.put_secret("shop", "API_KEY", SECRET)
    rule = rules(store, dispatcher.settings).create("shop", {"webhook_url": hook.url})
    run = start_run(store, job, T0 + timedelta(seconds=5), params={"key": SECRET})
    fail_run(
        store,
        run,
        T0 + timedelta(seconds=9),
        message=f"GET https://api.example/v1?key={SECRET} -> 401",
        traceback=f'Traceback (most recent call last):\n  token = "{SECRET}"\nRuntimeError',
    )

    assert await dispatcher.tick(T0 + timedelta(seconds=10)) == 1

    assert len(hook.received) == 1
    body = hook.received[0]["json"]
    assert body == {
        "event": "failed",
        "app": "shop",
        "job": {"id": job.id, "name": "daily_report"},
        "run": {
            "id": run.id,
            "status": "failed",
            "attempt": 1,
            "started_at": (T0 + timedelta(seconds=5)).isoformat(),
            "finished_at": (T0 + timedelta(seconds=9)).isoformat(),
            "duration_s": 4.0,
            "error": {
                "type": "RuntimeError",
                "message": "GET https://api.example/v1?key=*** -> 401",
            },
        },
        "rule": {"id": rule.id, "max_duration_s": None},
        "url": f"http://nightshift.test:8470/api/v1/runs/{run.id}",
    }
    assert hook.received[0]["headers"]["Content-Type"] == "application/json"
    # Neither params nor the traceback, nor the secret anywhere in what was sent or kept.
    assert SECRET.encode() not in hook.raw[0]
    assert b"Traceback" not in hook.raw[0]
    (delivery,) = store.list_alert_deliveries(rule.id)
    assert SECRET not in str(delivery.payload)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 1, None)

    # Sent once: later ticks (the scan overlaps its cursor) send nothing more.
    assert await dispatcher.tick(T0 + timedelta(seconds=20)) == 0
    assert await dispatcher.tick(T0 + timedelta(minutes=5)) == 0
    assert len(hook.received) == 1


async def test_webhook_is_retried_with_backoff_after_a_500(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store)
    rule = rules(store, dispatcher.settings).create("shop", {"webhook_url": hook.url})
    hook.answers = [500]
    fail_run(store, start_run(store, job, T0), T0 + timedelta(seconds=1))

    now = T0 + timedelta(seconds=2)
    assert await dispatcher.tick(now) == 1
    (delivery,) = store.list_alert_deliveries(rule.id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1, "HTTP 500")
    assert delivery.next_attempt_at == now + timedelta(seconds=10)  # alert_backoff_s

    assert await dispatcher.tick(now + timedelta(seconds=9)) == 0  # not due yet
    assert await dispatcher.tick(now + timedelta(seconds=10)) == 1
    (delivery,) = store.list_alert_deliveries(rule.id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 2, None)
    assert len(hook.received) == 2
    assert hook.received[0]["json"] == hook.received[1]["json"]


async def test_delivery_gives_up_after_the_last_attempt(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store)
    rule = rules(store, dispatcher.settings).create("shop", {"webhook_url": hook.url})
    hook.answers = [503, 503, 503, 503]
    fail_run(store, start_run(store, job, T0), T0)

    now = T0
    for wait in (0, 10, 20):  # alert_attempts = 3, backoff 10 s doubling
        now += timedelta(seconds=wait)
        assert await dispatcher.tick(now) == 1
    assert await dispatcher.tick(now + timedelta(hours=1)) == 0
    (delivery,) = store.list_alert_deliveries(rule.id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 3, "HTTP 503")
    assert len(hook.received) == 3


async def test_email_goes_to_the_smtp_server_with_subject_and_body(
    store: SqlStore,
    dispatcher: AlertDispatcher,
    access: AccessService,
    mailbox: Mailbox,
) -> None:
    job = add_job(store)
    access.put_secret("shop", "DB_PASSWORD", SECRET)
    rule = rules(store, dispatcher.settings).create(
        "shop", {"job_id": job.id, "email": ["ops@example.com", "owner@example.org"]}
    )
    run = start_run(store, job, T0, params={"password": SECRET})
    fail_run(store, run, T0 + timedelta(seconds=3), message=f"login failed for {SECRET}")

    assert await dispatcher.tick(T0 + timedelta(seconds=4)) == 1

    assert len(mailbox.messages) == 1
    sent = mailbox.messages[0]
    assert sent["from"] == "alerts@nightshift.test"
    assert sorted(sent["to"]) == ["ops@example.com", "owner@example.org"]
    message = email.message_from_string(sent["data"], policy=policy.default)
    assert message["Subject"] == f"[nightshift] shop/daily_report failed (run {run.id})"
    body = message.get_body().get_content()
    assert f"Job shop/daily_report (id {job.id}) failed" in body
    assert "Error:     RuntimeError: login failed for ***" in body
    assert f"http://nightshift.test:8470/api/v1/runs/{run.id}" in body
    assert SECRET not in sent["data"]
    (delivery,) = store.list_alert_deliveries(rule.id)
    assert (delivery.channel, delivery.status) == ("email", "delivered")


async def test_both_channels_get_one_delivery_each(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook, mailbox: Mailbox
) -> None:
    job = add_job(store)
    rule = rules(store, dispatcher.settings).create(
        "shop", {"webhook_url": hook.url, "email": "ops@example.com"}
    )
    fail_run(store, start_run(store, job, T0), T0)
    assert await dispatcher.tick(T0 + timedelta(seconds=1)) == 2
    assert {d.channel for d in store.list_alert_deliveries(rule.id)} == {"webhook", "email"}
    assert len(hook.received) == 1
    assert len(mailbox.messages) == 1


async def test_long_running_fires_once_per_run(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store)
    rule = rules(store, dispatcher.settings).create(
        "shop", {"on": ["long_running"], "max_duration_s": 60, "webhook_url": hook.url}
    )
    run = start_run(store, job, T0)

    assert await dispatcher.tick(T0 + timedelta(seconds=30)) == 0
    assert await dispatcher.tick(T0 + timedelta(seconds=60)) == 0  # longer than, not as long as
    assert await dispatcher.tick(T0 + timedelta(seconds=61)) == 1
    for later in (62, 120, 3600):
        assert await dispatcher.tick(T0 + timedelta(seconds=later)) == 0

    assert len(hook.received) == 1
    body = hook.received[0]["json"]
    assert body["event"] == "long_running"
    assert body["run"]["id"] == run.id
    assert body["run"]["status"] == "running"
    assert body["run"]["duration_s"] == 61.0
    assert body["run"]["finished_at"] is None
    assert body["run"]["error"] is None
    assert [d.event for d in store.list_alert_deliveries(rule.id)] == ["long_running"]

    # A rule watching failures only does not fire for a long run, and the run ending as
    # succeeded afterwards sends nothing more.
    store.complete([Completion(run.id, OWNER, RunStatus.SUCCEEDED, T0 + timedelta(hours=2))])
    assert await dispatcher.tick(T0 + timedelta(hours=2, seconds=1)) == 0


async def test_no_alert_for_a_failure_that_will_be_retried(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store, retries=1)
    rule = rules(store, dispatcher.settings).create("shop", {"webhook_url": hook.url})
    first = start_run(store, job, T0)
    fail_run(store, first, T0 + timedelta(seconds=1), retry=True)

    assert await dispatcher.tick(T0 + timedelta(seconds=2)) == 0
    assert store.list_alert_deliveries(rule.id) == []

    second = claim_next(store, T0 + timedelta(seconds=3))
    assert (second.attempt, second.retry_of) == (2, first.id)
    fail_run(store, second, T0 + timedelta(seconds=4))
    assert await dispatcher.tick(T0 + timedelta(seconds=5)) == 1
    assert [d.run_id for d in store.list_alert_deliveries(rule.id)] == [second.id]
    assert hook.received[0]["json"]["run"]["attempt"] == 2


async def test_test_runs_skipped_runs_other_jobs_and_disabled_rules_never_alert(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store)
    other = add_job(store, name="other")
    add_job(store, app="elsewhere", name="daily_report")
    rule_api = rules(store, dispatcher.settings)
    rule = rule_api.create("shop", {"job_id": job.id, "webhook_url": hook.url})
    off = rule_api.create("shop", {"webhook_url": hook.url, "enabled": False})

    fail_run(store, start_run(store, job, T0, is_test=True), T0)  # a test run
    fail_run(store, start_run(store, other, T0), T0)  # not this rule's job
    store.enqueue(
        NewRun(job_id=job.id, run_at=T0, status=RunStatus.SKIPPED, reason="overlap: skip"), T0
    )
    assert await dispatcher.tick(T0 + timedelta(seconds=1)) == 0
    assert store.list_alert_deliveries(rule.id) == []
    assert store.list_alert_deliveries(off.id) == []
    assert hook.received == []


async def test_failures_before_a_rule_existed_do_not_alert(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store)
    fail_run(store, start_run(store, job, T0 - timedelta(hours=1)), T0 - timedelta(minutes=59))
    rules(store, dispatcher.settings).create("shop", {"webhook_url": hook.url})
    assert await dispatcher.tick(T0 + timedelta(seconds=1)) == 0
    assert hook.received == []


async def test_two_dispatchers_record_and_send_each_alert_once(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store)
    rule = rules(store, dispatcher.settings).create("shop", {"webhook_url": hook.url})
    fail_run(store, start_run(store, job, T0), T0)
    other = AlertDispatcher(store, FakeClock(T0), dispatcher.settings, owner="other")
    try:
        now = T0 + timedelta(seconds=1)
        assert dispatcher.detect(now) == 1
        assert other.detect(now) == 0  # already recorded
        claimed = store.claim_alert_deliveries("other", now, 60, 10)
        assert len(claimed) == 1
        assert await dispatcher.deliver(now) == 0  # held by the other dispatcher's lease
        # The other one "dies": once its lease expires the delivery is tried again.
        assert await dispatcher.deliver(now + timedelta(seconds=61)) == 1
        assert not store.finish_alert_delivery(claimed[0].id, "other", now)  # fenced out
    finally:
        await other.close()
    (delivery,) = store.list_alert_deliveries(rule.id)
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    assert len(hook.received) == 1


async def test_messages_are_withheld_when_secrets_cannot_be_read(
    store: SqlStore, dispatcher: AlertDispatcher, hook: Hook
) -> None:
    job = add_job(store)
    rules(store, dispatcher.settings).create("shop", {"webhook_url": hook.url})

    def unreadable(app: str) -> list[str]:
        raise RuntimeError("wrong key")

    dispatcher._secret_values = unreadable
    fail_run(store, start_run(store, job, T0), T0, message=f"leaks {SECRET}")
    assert await dispatcher.tick(T0 + timedelta(seconds=1)) == 1
    error = hook.received[0]["json"]["run"]["error"]
    assert error["type"] == "RuntimeError"
    assert "withheld" in error["message"]
    assert SECRET.encode() not in hook.raw[0]


async def test_a_cookie_a_webhook_answer_sets_never_goes_with_another_alert(hook: Hook) -> None:
    """The webhook client is shared by every app's alert rules: a cookie one receiver's
    answer sets would go with another app's alerts to the same host."""
    hook.set_cookie = "session=app-a-secret; Path=/"
    sender = WebhookSender(AddressPolicy(allow_private=True))
    try:
        assert (await sender.send(hook.url, {"app": "a"})).ok
        assert (await sender.send(hook.url, {"app": "b"})).ok
    finally:
        await sender.close()
    assert [r["json"]["app"] for r in hook.received] == ["a", "b"]
    assert "Cookie" not in hook.received[1]["headers"]
