"""The service's console log (admin only): the process's last lines, newest kept."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from nightshift import console
from nightshift.api.auth import Admin
from nightshift.api.schemas import Time
from nightshift.api.timeparse import parse_time
from nightshift.errors import InvalidInput

router = APIRouter(prefix="/logs", tags=["logs"])


class ConsoleLineOut(BaseModel):
    id: int
    at: Time
    level: str
    logger: str
    message: str


class ConsoleLog(BaseModel):
    items: list[ConsoleLineOut]


@router.get("/console", response_model=ConsoleLog)
def console_log(
    _: Admin,
    q: Annotated[str | None, Query(description="text in the message or logger name")] = None,
    level: Annotated[str | None, Query(description="minimum level, e.g. WARNING")] = None,
    since: Annotated[str | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=console.CAPACITY)] = 200,
) -> ConsoleLog:
    """The newest `limit` console lines matching the filters, oldest first. The process keeps
    its last lines in memory only (a restart empties it); each API process shows its own."""
    if level is not None and level.upper() not in console.LEVELS:
        raise InvalidInput(f"one of {', '.join(console.LEVELS)}", field="level")
    buffer = console.installed()
    if buffer is None:
        return ConsoleLog(items=[])
    lines = buffer.lines(
        q=q,
        level=level,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        limit=limit,
    )
    return ConsoleLog(
        items=[ConsoleLineOut.model_validate(line, from_attributes=True) for line in lines]
    )
