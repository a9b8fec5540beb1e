"""Statistics per minute / hour / day and usage per app (see nightshift.stats)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from nightshift.api.auth import Caller, visible_app
from nightshift.api.context import ApiContext, get_context
from nightshift.api.timeparse import parse_time
from nightshift.stats import StatsService

router = APIRouter(prefix="/stats", tags=["stats"])
Ctx = Annotated[ApiContext, Depends(get_context)]


class Spread(BaseModel):
    avg: float | None
    min: float | None


class Waiting(Spread):
    max: float | None


class Durations(BaseModel):
    avg: float | None
    p95: float | None = Field(description="from log-spaced bins: within 9 % of the exact value")


class BucketOut(BaseModel):
    start: datetime
    created: int = Field(description="runs created in the bucket")
    waiting_s: Waiting = Field(description="created -> started, of runs started in the bucket")
    succeeded: int
    failed: int
    duration_s: Durations = Field(description="of runs that ran and finished in the bucket")


class UsageOut(BaseModel):
    app: str
    executions: int
    run_seconds: float


class StatsOut(BaseModel):
    bucket: str
    since: datetime
    until: datetime
    rolled_up_until: datetime | None
    buckets: list[BucketOut]
    apps: list[UsageOut]


@router.get("", response_model=StatsOut)
def stats(
    caller: Caller,
    ctx: Ctx,
    bucket: Literal["minute", "hour", "day"] = "hour",
    since: Annotated[
        str | None,
        Query(description="ISO 8601; default: 60 minutes, 24 hours or 30 days before until"),
    ] = None,
    until: Annotated[str | None, Query(description="ISO 8601, exclusive; default now")] = None,
    app: Annotated[str | None, Query(description="one app; default every app but system")] = None,
) -> StatsOut:
    """Per UTC bucket: runs created, waiting avg / min / max, succeeded, failed, duration avg and
    p95; per app: executions and run-seconds. An app token sees its own app only."""
    if caller.app is not None:
        app = visible_app(caller, app or caller.app)
    service = ctx.service
    if app is not None:
        service.store.get_app(app)  # 404 for an unknown app
    figures = StatsService(service.store, service.clock, service.settings).stats(
        bucket, parse_time(since, "since"), parse_time(until, "until"), app
    )
    return StatsOut.model_validate(figures)
