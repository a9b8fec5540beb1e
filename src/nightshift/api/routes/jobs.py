"""Jobs: create, list, read, change, delete; run now, test, next fires."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from nightshift.access import Principal
from nightshift.api import pagination
from nightshift.api.auth import Caller, scoped_app, visible_job
from nightshift.api.context import ApiContext, get_context
from nightshift.api.errors import ApiError
from nightshift.api.schemas import (
    FiresOut,
    JobCreate,
    JobList,
    JobOut,
    JobPatch,
    JobsBulkCreate,
    JobsCreated,
    RunOut,
    RunRequest,
    TestLine,
    TestOut,
    job_out,
    run_out,
)
from nightshift.api.timeparse import parse_start
from nightshift.domain.models import Job, JobKind
from nightshift.domain.status import TERMINAL, RunStatus
from nightshift.errors import NotFound
from nightshift.service import Service

router = APIRouter(prefix="/jobs", tags=["jobs"])
Ctx = Annotated[ApiContext, Depends(get_context)]
_DONE = TERMINAL | {RunStatus.STOPPED}
TEST_GRACE_S = 5.0  # after a job's own timeout_s, for its worker to record the failure


def _job(ctx: ApiContext, caller: Principal, job_id: int) -> Job:
    return visible_job(caller, ctx.service.store.get_job(job_id))


def _outs(service: Service, jobs: list[Job]) -> list[JobOut]:
    last = service.store.get_runs(j.last_run_id for j in jobs if j.last_run_id is not None)
    return [job_out(j, last.get(j.last_run_id) if j.last_run_id else None) for j in jobs]


@router.get("", response_model=JobList)
def list_jobs(
    caller: Caller,
    ctx: Ctx,
    app: str | None = None,
    tag: str | None = None,
    kind: JobKind | None = None,
    enabled: bool | None = None,
    system: Annotated[bool, Query(description="include system jobs")] = False,
    limit: pagination.Limit = pagination.DEFAULT_LIMIT,
    cursor: pagination.Cursor = None,
) -> JobList:
    """Jobs by ascending id; an app token sees its own app's only."""
    after = pagination.decode_id("job", cursor)
    app, empty = scoped_app(caller, app)
    if empty:
        return JobList(items=[], next_cursor=None)
    found = ctx.service.store.list_jobs(
        app=app,
        tag=tag,
        kind=str(kind) if kind else None,
        enabled=enabled,
        system=None if system else False,
        after_id=after,
        limit=limit + 1,
    )
    page = found[:limit]
    more = len(found) > limit
    return JobList(
        items=_outs(ctx.service, page),
        next_cursor=pagination.encode("job", page[-1].id) if more else None,
    )


@router.post("", response_model=JobOut, status_code=201)
def create_job(body: JobCreate, caller: Caller, ctx: Ctx) -> JobOut:
    """Create a job. `app` defaults to the token's app (`default` for an admin token); an app
    token naming another app gets 404. 422 names the field at fault and why."""
    data = body.model_dump(exclude_unset=True)
    app = data.get("app") or caller.app or "default"
    if not caller.sees(app):
        raise NotFound("app", app)
    data["app"] = app
    job = ctx.service.create_job(data)
    return _outs(ctx.service, [job])[0]


@router.post(
    "/bulk",
    response_model=JobsCreated,
    status_code=201,
    responses={413: {"description": "over NIGHTSHIFT_MAX_BODY_BYTES: send smaller batches"}},
)
def create_jobs(body: JobsBulkCreate, caller: Caller, ctx: Ctx) -> JobsCreated:
    """Create many jobs in one transaction: all of them or none. Each item is the body of
    `POST /jobs` and is checked the same way; an error names the item: 422 `jobs[3].schedule`,
    409 `jobs[5].name` (a name its app has already; 422 when the batch gives it twice), 404
    `jobs[2].app` for an app token naming another app. One request is bounded by
    NIGHTSHIFT_MAX_BODY_BYTES (1 MiB: about 5,000 small jobs); send more as several requests."""
    items: list[Any] = []
    for i, item in enumerate(body.jobs):
        if isinstance(item, dict):  # anything else: the service says what is wrong with it
            app = item.get("app")
            if app is None:
                item = {**item, "app": caller.app or "default"}
            elif isinstance(app, str) and not caller.sees(app):
                message = str(NotFound("app", app))  # exactly as a missing app
                raise ApiError(404, message, field=f"jobs[{i}].app")
        items.append(item)
    created = ctx.service.create_jobs(items)
    # The body is written directly: building and re-validating one pydantic object per job
    # costs more than creating the job (JobsCreated documents it).
    body = {"items": [{"id": j.id, "app": j.app, "name": j.name} for j in created]}
    return JSONResponse(body, status_code=201)  # type: ignore[return-value]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: int, caller: Caller, ctx: Ctx) -> JobOut:
    return _outs(ctx.service, [_job(ctx, caller, job_id)])[0]


@router.patch("/{job_id}", response_model=JobOut)
def update_job(job_id: int, body: JobPatch, caller: Caller, ctx: Ctx) -> JobOut:  # type: ignore[valid-type]
    """Change any subset of fields. The timer is kept unless `schedule`, `timezone`,
    `start_at` or `end_at` change (or the job is re-enabled)."""
    _job(ctx, caller, job_id)
    changes = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    return _outs(ctx.service, [ctx.service.update_job(job_id, changes)])[0]


@router.delete("/{job_id}", status_code=204, response_class=Response)
def delete_job(job_id: int, caller: Caller, ctx: Ctx) -> Response:
    """Delete the job with all its past runs and their logs. Runs in flight are abandoned:
    their worker learns at its next heartbeat that the run is gone and cancels it."""
    _job(ctx, caller, job_id)
    ctx.service.delete_job(job_id)
    return Response(status_code=204)


@router.post("/{job_id}/run", response_model=RunOut, status_code=202)
def run_job(job_id: int, caller: Caller, ctx: Ctx, body: RunRequest | None = None) -> RunOut:
    """Run now, asynchronously: 202 with the pending run. `run_by` records the token's name."""
    job = _job(ctx, caller, job_id)
    body = body or RunRequest()
    run = ctx.service.run_now(
        job_id, params=body.params, low_priority=body.low_priority, run_by=caller.name, job=job
    )
    return run_out(run, ctx.service.clock.now())


@router.post(
    "/{job_id}/test",
    response_model=TestOut,
    responses={504: {"description": "no worker finished the run in time; it stays recorded"}},
)
async def try_job(job_id: int, caller: Caller, ctx: Ctx, body: RunRequest | None = None) -> TestOut:
    """Run now and wait (up to the job's timeout_s, or NIGHTSHIFT_TEST_WAIT_S): the run, the
    request sent and the response received (http jobs), and the log. The run is recorded with
    `is_test: true`; it is never retried and ignores the overlap policy."""
    service = ctx.service
    job = await asyncio.to_thread(_job, ctx, caller, job_id)
    body = body or RunRequest()
    run = await asyncio.to_thread(
        lambda: service.run_now(
            job_id,
            params=body.params,
            low_priority=body.low_priority,
            run_by=caller.name,
            is_test=True,
        )
    )
    wait_s = job.timeout_s + TEST_GRACE_S if job.timeout_s else ctx.settings.test_wait_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.01
    while run.status not in _DONE:
        if loop.time() >= deadline:
            raise ApiError(
                504,
                f"run {run.id} did not finish within {wait_s:g} s; it stays recorded "
                f"(GET /api/v1/runs/{run.id})",
            )
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 1.5, 0.2)
        run = await asyncio.to_thread(service.store.get_run, run.id)
    logs = await asyncio.to_thread(service.store.get_logs, run.id)
    result = run.result if isinstance(run.result, dict) else {}
    http = job.kind == JobKind.HTTP
    return TestOut(
        run=run_out(run, service.clock.now()),
        request=result.get("request") if http else None,
        response=result.get("response") if http else None,
        log=[TestLine(at=line.at, level=line.level, message=line.message) for line in logs],
    )


@router.get("/{job_id}/next-fires", response_model=FiresOut)
def next_fires(
    job_id: int,
    caller: Caller,
    ctx: Ctx,
    count: Annotated[int, Query(ge=1, le=1000)] = 10,
    start: Annotated[
        str | None,
        Query(alias="from", description="ISO 8601; without an offset, in the job's timezone"),
    ] = None,
) -> FiresOut:
    """The saved job's next fire times, in its timezone (empty without a schedule)."""
    job = _job(ctx, caller, job_id)
    begin: datetime | None = parse_start(start, job.timezone)
    return FiresOut(fires=ctx.service.next_fires(job_id, count, begin))
