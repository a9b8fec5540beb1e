"""Schedule preview before a job is saved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from nightshift.api.auth import Caller
from nightshift.api.context import ApiContext, get_context
from nightshift.api.schemas import FiresOut
from nightshift.api.timeparse import parse_start
from nightshift.errors import InvalidInput

router = APIRouter(prefix="/schedules", tags=["schedules"])
Ctx = Annotated[ApiContext, Depends(get_context)]


@router.get("/preview", response_model=FiresOut)
def preview(
    _: Caller,
    ctx: Ctx,
    schedule: Annotated[
        str | None, Query(description="e.g. '*/5 * * * *', 'every 5m', '9:00'")
    ] = None,
    timezone: Annotated[
        str | None, Query(description="IANA name; default NIGHTSHIFT_TIMEZONE")
    ] = None,
    count: Annotated[int, Query(ge=1, le=1000)] = 10,
    start: Annotated[
        str | None, Query(alias="from", description="ISO 8601; without an offset, in timezone")
    ] = None,
) -> FiresOut:
    """The next `count` fires of a schedule, or 422 naming the part that is wrong."""
    if not schedule or not schedule.strip():
        raise InvalidInput("is required", field="schedule")
    zone = timezone or ctx.settings.timezone
    begin = parse_start(start, zone) if start else None
    return FiresOut(fires=ctx.service.preview(schedule, zone, count, begin))
