"""Small builders for tests: a job row ready to insert, with every field defaulted."""

from __future__ import annotations

from datetime import datetime
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
