"""Jobs and runs cross from the worker's store process to the worker as pickles (positional,
for speed): every field must arrive as it left."""

from __future__ import annotations

import pickle
from dataclasses import MISSING, fields
from datetime import UTC, datetime, timedelta

from nightshift.domain.models import (
    CatchUp,
    Job,
    JobHold,
    JobKind,
    Overlap,
    RetryPolicy,
    Run,
)
from nightshift.domain.status import RunStatus

T = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def _differs_from_defaults(obj: object) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.default is not MISSING:
            assert value != f.default, f"{f.name} left at its default: the test would miss it"
        elif f.default_factory is not MISSING:
            assert value != f.default_factory(), f"{f.name} left at its default"


def test_a_job_with_every_field_set_survives_pickling() -> None:
    job = Job(
        id=7,
        app="shop",
        name="nightly",
        kind=JobKind.HTTP,
        config={"url": "http://127.0.0.1/x", "headers": {"a": "b"}},
        description="sends the report",
        tags=["report", "daily"],
        schedule="0 9 * * 1",
        timezone="Europe/Paris",
        enabled=False,
        overlap=Overlap.REPLACE,
        catch_up=CatchUp.ALL,
        max_lateness_s=30.0,
        retries=RetryPolicy(max=3, backoff_s=2.5),
        timeout_s=60.0,
        low_priority=True,
        start_at=T,
        end_at=T + timedelta(days=30),
        start_delay_s=5.0,
        jitter_s=1.5,
        next_fire_at=T + timedelta(hours=1),
        deactivated_reason="ended",
        hold=JobHold.STOP,
        declared=True,
        system=True,
        anchor_at=T - timedelta(hours=1),
        created_at=T - timedelta(days=1),
        updated_at=T - timedelta(minutes=5),
        last_run_id=41,
        last_skip_run_id=40,
        active_runs=2,
    )
    _differs_from_defaults(job)

    back = pickle.loads(pickle.dumps(job, pickle.HIGHEST_PROTOCOL))

    assert type(back) is Job
    assert back == job
    assert back.kind is JobKind.HTTP and back.overlap is Overlap.REPLACE


def test_a_run_with_every_field_set_survives_pickling() -> None:
    run = Run(
        id=9,
        job_id=7,
        app="shop",
        kind=JobKind.PYTHON,
        status=RunStatus.RUNNING,
        created_at=T,
        run_at=T + timedelta(seconds=1),
        scheduled_for=T + timedelta(seconds=1),
        started_at=T + timedelta(seconds=2),
        finished_at=T + timedelta(seconds=3),
        attempt=2,
        retry_of=8,
        error={"type": "ValueError", "message": "bad"},
        low_priority=True,
        run_by="admin",
        progress=0.5,
        parent_id=3,
        root_id=1,
        rank=4,
        params={"n": 1},
        result={"ok": True},
        state={"page": 2},
        reason="manual",
        skip_count=3,
        last_scheduled_for=T + timedelta(seconds=4),
        exclusive=True,
        is_test=True,
        lease_owner="host:1:abc",
        lease_expires_at=T + timedelta(minutes=1),
        lost_streak=1,
        children_total=5,
        children_finished=4,
        children_failed=1,
        job_name="nightly",
    )
    _differs_from_defaults(run)

    back = pickle.loads(pickle.dumps(run, pickle.HIGHEST_PROTOCOL))

    assert type(back) is Run
    assert back == run
