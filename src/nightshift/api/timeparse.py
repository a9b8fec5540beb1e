"""Query-string times: ISO 8601, with an offset or local to a given timezone."""

from __future__ import annotations

from datetime import UTC, datetime

from nightshift.errors import InvalidInput
from nightshift.timing import zone_of


def parse_start(text: str | None, timezone: str, field: str = "from") -> datetime | None:
    """`from=`: an ISO 8601 date-time; one without an offset is local to `timezone`."""
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{text!r} is not an ISO 8601 date-time", field=field) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone_of(timezone))
    return value


def parse_time(text: str | None, field: str) -> datetime | None:
    """A filter time: ISO 8601; one without an offset is UTC."""
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{text!r} is not an ISO 8601 date-time", field=field) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
