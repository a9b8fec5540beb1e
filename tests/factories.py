"""Small builders for tests: a job row ready to insert, with every field defaulted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nightshift.domain.models import CatchUp, Job, JobKind, Overlap, RetryPolicy


def make_job(now: datetime, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": 0,
        "app": "default",
        "name": "job",
        "kind": JobKind.PYTHON,
        "config": {"function": "tests.jobs_sample:echo"},
        "anchor_at": now,
        "created_at": now,
        "updated_at": now,
        "overlap": Overlap.ALLOW,
        "catch_up": CatchUp.LATEST,
    }
    if isinstance(fields.get("retries"), int):
        fields["retries"] = RetryPolicy(max=fields["retries"], backoff_s=0)
    values.update(fields)
    return Job(**values)


def whole_second_ahead(seconds: float = 1.0) -> datetime:
    """The first whole second at least `seconds` from now: a start time that setting up a test
    (creating its jobs) does not overtake. The next whole second can be a millisecond away."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0) + timedelta(
        seconds=1
    )
