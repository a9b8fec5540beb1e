"""What a user may say about a job: field types, defaults and cross-field rules.

The service validates every creation and change through `JobSpec`, and the REST API uses it
as its request body, so a bad field gets the same message from every interface.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nightshift.domain.models import CatchUp, JobKind, Overlap
from nightshift.errors import InvalidInput

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"


class RetriesSpec(BaseModel):
    # Frozen, so that one default instance is shared instead of built for every job (pydantic
    # copies mutable defaults; a bulk create validates 100,000 specs).
    model_config = ConfigDict(extra="forbid", frozen=True)
    max: Annotated[int, Field(ge=0, le=100)] = 0
    backoff_s: Annotated[float, Field(ge=0, le=86_400)] = 10.0


class JobSpec(BaseModel):
    """A job as a user writes it; `config` is checked by the kind's executor afterwards."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    app: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")] = "default"
    kind: JobKind
    config: dict[str, Any] = Field(default_factory=dict)
    description: Annotated[str, Field(max_length=2000)] = ""
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    schedule: Annotated[str | None, Field(max_length=200)] = None
    timezone: str | None = None
    enabled: bool = True
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.LATEST
    max_lateness_s: Annotated[float | None, Field(gt=0)] = None
    retries: RetriesSpec = RetriesSpec()
    timeout_s: Annotated[float | None, Field(gt=0)] = None
    low_priority: bool = False
    start_at: datetime | None = None
    end_at: datetime | None = None
    start_delay_s: Annotated[float, Field(ge=0)] = 0.0
    jitter_s: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("retries", mode="before")
    @classmethod
    def _retries_shorthand(cls, value: object) -> object:
        return {"max": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("start_at", "end_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-12-01T09:00:00+00:00")
        # The same instant in UTC, as it is stored: later arithmetic with other UTC times then
        # skips a utcoffset() call per operation (the timer, the row encoding).
        return value.astimezone(UTC)

    @field_validator("description", "tags")
    @classmethod
    def _no_nul(cls, value: str | list[str]) -> str | list[str]:
        # PostgreSQL cannot store it: refused here, the same on every database.
        if any("\x00" in text for text in ([value] if isinstance(value, str) else value)):
            raise ValueError("must not contain the NUL character (\\u0000)")
        return value

    @field_validator("schedule")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


def parse_spec(data: dict[str, Any]) -> JobSpec:
    """Validate raw data, turning pydantic's errors into one InvalidInput naming the field."""
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc) from None
    if spec.start_at and spec.end_at and spec.end_at <= spec.start_at:
        raise InvalidInput("must be later than start_at", field="end_at")
    return spec


def invalid_from(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "is not a job field"
    elif first["type"] == "missing":
        message = "is required"
    return InvalidInput(message, field=field)
