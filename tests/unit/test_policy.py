"""What an outcome means: final status, retries with backoff, and job changes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from nightshift.domain.models import RetryPolicy, Run
from nightshift.domain.policy import backoff_delay, decide
from nightshift.domain.signals import Signal
from nightshift.domain.status import RunStatus
from tests.factories import make_job

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def run(attempt: int = 1, **kw) -> Run:  # type: ignore[no-untyped-def]
    return Run(
        id=1,
        job_id=1,
        app="default",
        kind="python",
        status=RunStatus.RUNNING,  # type: ignore[arg-type]
        created_at=NOW,
        run_at=NOW,
        attempt=attempt,
        **kw,
    )


def outcome(r: Run, job, status="failed", **kw):  # type: ignore[no-untyped-def]
    args = {
        "permanent": False,
        "signal": None,
        "deactivate": None,
        "now": NOW,
        "rng": random.Random(1),
    }
    args.update(kw)
    return decide(r, job, status=status, **args)


def test_failures_retry_until_the_policy_is_spent() -> None:
    job = make_job(NOW, retries=RetryPolicy(max=2, backoff_s=10))
    first = outcome(run(1), job)
    assert first.status == RunStatus.FAILED and first.retry is not None
    assert first.retry.attempt == 2
    assert timedelta(seconds=7.5) <= first.retry.run_at - NOW <= timedelta(seconds=12.5)
    second = outcome(run(2), job)
    assert second.retry is not None and second.retry.attempt == 3
    assert timedelta(seconds=15) <= second.retry.run_at - NOW <= timedelta(seconds=25)
    assert outcome(run(3), job).retry is None


def test_permanent_failures_deactivation_and_test_runs_do_not_retry() -> None:
    job = make_job(NOW, retries=RetryPolicy(max=5, backoff_s=1))
    assert outcome(run(), job, permanent=True).retry is None
    assert outcome(run(is_test=True), job).retry is None
    d = outcome(run(), job, deactivate="cannot import 'x:y'")
    assert d.retry is None
    assert d.job_changes == {
        "enabled": False,
        "deactivated_reason": "cannot import 'x:y'",
        "next_fire_at": None,
    }


def test_lost_attempts_do_not_use_up_retries() -> None:
    job = make_job(NOW, retries=RetryPolicy(max=1, backoff_s=1))
    assert outcome(run(2, lost_streak=1), job).retry is not None


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(10, n, rng) for n in range(1, 6)]
    for n, d in enumerate(delays, start=1):
        assert 0.75 * 10 * 2 ** (n - 1) <= d <= 1.25 * 10 * 2 ** (n - 1)
    assert backoff_delay(10, 60) <= 24 * 3600


def test_signals_steer_the_job() -> None:
    job = make_job(NOW)
    later = NOW + timedelta(days=1)
    assert outcome(run(), job, "succeeded", signal=Signal.OK).job_changes == {}
    assert outcome(
        run(), job, "succeeded", signal=Signal.SLEEP, sleep_until_fire=later
    ).job_changes == {"next_fire_at": later}
    assert outcome(run(), job, "succeeded", signal=Signal.STOP).job_changes == {"hold": "stop"}
    exit_ = outcome(run(), job, "succeeded", signal=Signal.EXIT)
    assert (
        exit_.job_changes["enabled"] is False and "EXIT" in exit_.job_changes["deactivated_reason"]
    )
    assert outcome(run(), job, "stopped").status == RunStatus.STOPPED
