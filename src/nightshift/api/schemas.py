"""Request and response bodies of the REST API, and the conversions from domain records.

Field names are the contract of PRODUCT.md; times are ISO 8601 with their UTC offset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nightshift.domain.models import App, Job, JobHold, LogLine, Run
from nightshift.jobspec import JobSpec
from nightshift.operations import restarted_from


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _local(value: datetime) -> str:
    return value.isoformat()


_TIME_SCHEMA = WithJsonSchema({"type": "string", "format": "date-time"})
#: An aware datetime, written in UTC with its offset: "2026-03-02T09:00:00+00:00".
Time = Annotated[datetime, PlainSerializer(_utc, return_type=str, when_used="json"), _TIME_SCHEMA]
#: An aware datetime in its own zone (fire times in the job's timezone).
LocalTime = Annotated[
    datetime, PlainSerializer(_local, return_type=str, when_used="json"), _TIME_SCHEMA
]


class Input(BaseModel):
    """A request body: unknown fields are refused, naming them."""

    model_config = ConfigDict(extra="forbid")


# -- errors and health --------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="not_found, invalid, unauthorized, forbidden, conflict, ...")
    message: str
    field: str | None = Field(None, description="the input field at fault, when there is one")


class ErrorOut(BaseModel):
    error: ErrorDetail


class HealthOut(BaseModel):
    status: str
    database: str
    version: str
    roles: list[str]


# -- apps ---------------------------------------------------------------------------------------
class AppOut(BaseModel):
    name: str
    schedules_enabled: bool
    retention_days: int | None
    created_at: Time | None


class AppList(BaseModel):
    items: list[AppOut]
    next_cursor: str | None


class AppCreate(Input):
    name: str


class AppPatch(Input):
    schedules_enabled: bool | None = None
    retention_days: Annotated[int | None, Field(ge=1, le=36_500)] = None


def app_out(app: App) -> AppOut:
    return AppOut(
        name=app.name,
        schedules_enabled=app.schedules_enabled,
        retention_days=app.retention_days,
        created_at=app.created_at,
    )


# -- jobs ---------------------------------------------------------------------------------------
JobState = Literal["active", "stopped_until_reload", "disabled"]


class RetriesOut(BaseModel):
    max: int
    backoff_s: float


class LastRun(BaseModel):
    id: int
    status: str
    started_at: Time | None
    finished_at: Time | None


class JobOut(BaseModel):
    id: int
    app: str
    name: str
    description: str
    tags: list[str]
    kind: str
    config: dict[str, Any]
    schedule: str | None
    timezone: str
    enabled: bool
    overlap: str
    catch_up: str
    max_lateness_s: float | None
    retries: RetriesOut
    timeout_s: float | None
    low_priority: bool
    start_at: Time | None
    end_at: Time | None
    start_delay_s: float
    jitter_s: float
    next_fire_at: Time | None
    last_run: LastRun | None
    deactivated_reason: str | None
    state: JobState = Field(
        description="active; stopped_until_reload (the job returned STOP); disabled"
    )
    declared: bool = Field(description="declared in code or nightshift.toml")
    created_at: Time | None
    updated_at: Time | None


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class JobCreate(JobSpec):
    """A new job; `app` defaults to the token's app (or `default` for an admin token)."""

    app: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")] = None  # type: ignore[assignment]


class JobsBulkCreate(Input):
    """Jobs created together, in one transaction: all of them or none."""

    jobs: list[Any] = Field(
        description="each item as the body of POST /jobs; `app` defaults to the token's app"
    )

    # Documented as JobCreate items, but passed on as they came: the service validates each
    # item once, naming it in its errors (`jobs[3].schedule`) as POST /jobs names the field.
    @field_validator("jobs", mode="plain", json_schema_input_type=list[JobCreate])
    @classmethod
    def _items_as_given(cls, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise PydanticCustomError("list_type", "must be a list of jobs")
        return value


class JobCreated(BaseModel):
    id: int
    app: str
    name: str


class JobsCreated(BaseModel):
    items: list[JobCreated] = Field(description="the jobs created, in the order given")


def _patch_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (info.annotation | None, Field(None, description=info.description))
        for name, info in JobSpec.model_fields.items()
    }
    model = create_model(
        "JobPatch",
        __base__=Input,
        __doc__="Any subset of a job's fields; the timer is kept unless the timing changes.",
        __validators__={
            "_retries": field_validator("retries", mode="before")(
                JobSpec._retries_shorthand.__func__  # type: ignore[attr-defined]
            )
        },
        **fields,
    )
    return model


JobPatch = _patch_model()


def job_state(job: Job) -> JobState:
    if not job.enabled:
        return "disabled"
    if job.hold == JobHold.STOP:
        return "stopped_until_reload"
    return "active"


def job_out(job: Job, last: Run | None) -> JobOut:
    return JobOut(
        id=job.id,
        app=job.app,
        name=job.name,
        description=job.description,
        tags=list(job.tags),
        kind=str(job.kind),
        config=job.config,
        schedule=job.schedule,
        timezone=job.timezone,
        enabled=job.enabled,
        overlap=str(job.overlap),
        catch_up=str(job.catch_up),
        max_lateness_s=job.max_lateness_s,
        retries=RetriesOut(max=job.retries.max, backoff_s=job.retries.backoff_s),
        timeout_s=job.timeout_s,
        low_priority=job.low_priority,
        start_at=job.start_at,
        end_at=job.end_at,
        start_delay_s=job.start_delay_s,
        jitter_s=job.jitter_s,
        next_fire_at=job.next_fire_at,
        last_run=(
            LastRun(
                id=last.id,
                status=str(last.status),
                started_at=last.started_at,
                finished_at=last.finished_at,
            )
            if last is not None
            else None
        ),
        deactivated_reason=job.deactivated_reason,
        state=job_state(job),
        declared=job.declared,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


# -- runs ---------------------------------------------------------------------------------------
class RunError(BaseModel):
    type: str
    message: str
    traceback: str | None = None


class Children(BaseModel):
    total: int
    finished: int
    failed: int


class RunOut(BaseModel):
    id: int
    job_id: int
    job_name: str | None
    app: str
    status: str
    created_at: Time
    run_at: Time
    scheduled_for: Time | None
    started_at: Time | None
    finished_at: Time | None
    waiting_s: float | None = Field(
        description="created to started; grows while pending; null if it never started"
    )
    duration_s: float | None = Field(description="started to finished; grows while running")
    attempt: int
    retry_of: int | None
    errors: bool = Field(description="whether the run has an error")
    error: RunError | None
    low_priority: bool
    run_by: str | None = Field(description="the token that started it by hand; null: schedule")
    progress: float | None
    children: Children
    parent_id: int | None
    root_id: int | None
    params: dict[str, Any]
    result: Any
    reason: str | None
    skip_count: int
    last_scheduled_for: Time | None
    is_test: bool
    restarted_from: int | None = Field(description="the run this one restarts, if any")


class RunList(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class RunRequest(Input):
    params: dict[str, Any] | None = Field(
        None,
        description="the run's params (default: the job's); http jobs: `query`, `headers` "
        "and `body` override the job's for this run",
    )
    low_priority: bool | None = None


class LogLineOut(BaseModel):
    id: int | None
    at: Time
    level: str
    message: str


class LogList(BaseModel):
    items: list[LogLineOut]


class TestLine(BaseModel):
    at: Time
    level: str
    message: str


class TestOut(BaseModel):
    run: RunOut
    request: Any = Field(description="the request sent (http jobs), else null")
    response: Any = Field(description="the response received (http jobs), else null")
    log: list[TestLine]


def run_out(run: Run, now: datetime) -> RunOut:
    error = None
    if run.error:
        error = RunError(
            type=str(run.error.get("type") or "Error"),
            message=str(run.error.get("message") or ""),
            traceback=run.error.get("traceback"),
        )
    return RunOut(
        id=run.id,
        job_id=run.job_id,
        job_name=run.job_name,
        app=run.app,
        status=str(run.status),
        created_at=run.created_at,
        run_at=run.run_at,
        scheduled_for=run.scheduled_for,
        started_at=run.started_at,
        finished_at=run.finished_at,
        waiting_s=_rounded(run.waiting_s(now)),
        duration_s=_rounded(run.duration_s(now)),
        attempt=run.attempt,
        retry_of=run.retry_of,
        errors=error is not None,
        error=error,
        low_priority=run.low_priority,
        run_by=run.run_by,
        progress=run.progress,
        children=Children(
            total=run.children_total, finished=run.children_finished, failed=run.children_failed
        ),
        parent_id=run.parent_id,
        root_id=run.root_id,
        params=run.params,
        result=run.result,
        reason=run.reason,
        skip_count=run.skip_count,
        last_scheduled_for=run.last_scheduled_for,
        is_test=run.is_test,
        restarted_from=restarted_from(run),
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def log_out(line: LogLine) -> LogLineOut:
    return LogLineOut(id=line.id, at=line.at, level=line.level, message=line.message)


# -- schedules ----------------------------------------------------------------------------------
class FiresOut(BaseModel):
    fires: list[LocalTime] = Field(description="ISO 8601 times with the timezone's UTC offset")


# -- reload -------------------------------------------------------------------------------------
class ReloadOut(BaseModel):
    created: list[str] = Field(description="app/name of declared jobs created")
    updated: list[str]
    disabled: list[str] = Field(description="declared jobs no longer declared, now disabled")
    released: int = Field(description="jobs that had returned STOP and may fire again")
    modules: list[str] = Field(description="modules re-imported")
