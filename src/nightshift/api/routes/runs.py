"""Runs: the monitor's list with its filters, one run, a run's log, and the operations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from nightshift.api import pagination
from nightshift.api.auth import Caller, scoped_app, visible_run
from nightshift.api.context import ApiContext, get_context
from nightshift.api.schemas import Input, LogList, RunList, RunOut, log_out, run_out
from nightshift.api.timeparse import parse_time
from nightshift.domain.models import Run
from nightshift.domain.status import RunStatus
from nightshift.errors import InvalidInput
from nightshift.operations import Operations

router = APIRouter(prefix="/runs", tags=["runs"])
Ctx = Annotated[ApiContext, Depends(get_context)]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _statuses(text: str | None) -> list[str] | None:
    if not text:
        return None
    wanted = [part.strip().lower() for part in text.split(",") if part.strip()]
    known = {str(s) for s in RunStatus}
    for item in wanted:
        if item not in known:
            raise InvalidInput(
                f"unknown status {item!r}; one of {', '.join(sorted(known))}", field="status"
            )
    return wanted


@router.get("", response_model=RunList)
def list_runs(
    caller: Caller,
    ctx: Ctx,
    job: Annotated[int | None, Query(description="a job id")] = None,
    app: str | None = None,
    status: Annotated[str | None, Query(description="comma-separated, e.g. failed,stopped")] = None,
    root: Annotated[int | None, Query(description="a root run id: it and its descendants")] = None,
    since: Annotated[str | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="created before (ISO 8601)")] = None,
    system: Annotated[bool, Query(description="include runs of system jobs")] = False,
    limit: pagination.Limit = pagination.DEFAULT_LIMIT,
    cursor: pagination.Cursor = None,
) -> RunList:
    """Runs, newest first; an app token sees its own app's only."""
    before = pagination.decode_id("run", cursor)
    statuses = _statuses(status)
    start, end = parse_time(since, "since"), parse_time(until, "until")
    app, empty = scoped_app(caller, app)
    if empty:
        return RunList(items=[], next_cursor=None)
    found = ctx.service.store.list_runs(
        job_id=job,
        app=app,
        status=statuses,
        root_id=root,
        since=start,
        until=end,
        system=None if system else False,
        before_id=before,
        limit=limit + 1,
    )
    page = found[:limit]
    now = ctx.service.clock.now()
    return RunList(
        items=[run_out(r, now) for r in page],
        next_cursor=pagination.encode("run", page[-1].id) if len(found) > limit else None,
    )


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: int, caller: Caller, ctx: Ctx) -> RunOut:
    run = visible_run(caller, ctx.service.store.get_run(run_id))
    return run_out(run, ctx.service.clock.now())


@router.get("/{run_id}/logs", response_model=LogList)
def run_logs(
    run_id: int,
    caller: Caller,
    ctx: Ctx,
    q: Annotated[str | None, Query(description="text to find, case-insensitive")] = None,
    level: Annotated[str | None, Query(description="minimum level, e.g. WARNING")] = None,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LogList:
    """A run's log lines in order."""
    visible_run(caller, ctx.service.store.get_run(run_id))
    if level is not None and level.upper() not in LEVELS:
        raise InvalidInput(f"one of {', '.join(LEVELS)}", field="level")
    lines = ctx.service.store.get_logs(
        run_id,
        q=q,
        level=level,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        limit=limit,
    )
    return LogList(items=[log_out(line) for line in lines])


# -- operations -------------------------------------------------------------------------------
class RunPatch(Input):
    low_priority: bool = Field(description="low-priority runs are claimed after normal ones")


def _operations(ctx: ApiContext) -> Operations:
    service = ctx.service
    return Operations(service.store, service.clock, on_change=service.changed)


def _operate(ctx: ApiContext, caller: Caller, run_id: int, operation: Callable[..., Run]) -> RunOut:
    run = operation(run_id, app=caller.app, who=caller.name)
    return run_out(run, ctx.service.clock.now())


_CONFLICT = {409: {"description": "the operation does not apply to the run's status; why"}}


@router.post("/{run_id}/stop", response_model=RunOut, responses=_CONFLICT)
def stop_run(run_id: int, caller: Caller, ctx: Ctx) -> RunOut:
    """Ask a running run to halt gracefully: it becomes `stopping`, then `stopped` once the job
    saves its checkpoint and returns (an http run's request is cancelled)."""
    return _operate(ctx, caller, run_id, _operations(ctx).stop)


@router.post("/{run_id}/resume", response_model=RunOut, responses=_CONFLICT)
def resume_run(run_id: int, caller: Caller, ctx: Ctx) -> RunOut:
    """A `stopped` run is `pending` again, the same run, continuing from its checkpoint."""
    return _operate(ctx, caller, run_id, _operations(ctx).resume)


@router.post("/{run_id}/force-stop", response_model=RunOut, responses=_CONFLICT)
def force_stop_run(run_id: int, caller: Caller, ctx: Ctx) -> RunOut:
    """End a `stopping` (or `running`) run now, even one stuck in a CPU loop: its worker kills
    it within a heartbeat and records it as `stopped` with the reason "force-stopped"."""
    return _operate(ctx, caller, run_id, _operations(ctx).force_stop)


@router.post("/{run_id}/cancel", response_model=RunOut, responses=_CONFLICT)
def cancel_run(run_id: int, caller: Caller, ctx: Ctx) -> RunOut:
    """Discard a `pending` or `stopped` run for good."""
    return _operate(ctx, caller, run_id, _operations(ctx).cancel)


@router.post("/{run_id}/restart", response_model=RunOut, status_code=202, responses=_CONFLICT)
def restart_run(run_id: int, caller: Caller, ctx: Ctx) -> RunOut:
    """Run a finished run's job again with the same params: 202 with the new pending run
    (`restarted_from` names the original; a restarted `stopped` run is cancelled)."""
    return _operate(ctx, caller, run_id, _operations(ctx).restart)


@router.patch("/{run_id}", response_model=RunOut)
def patch_run(run_id: int, body: RunPatch, caller: Caller, ctx: Ctx) -> RunOut:
    """Set or remove low priority, at any time (it matters while the run is pending)."""
    run = _operations(ctx).set_low_priority(run_id, body.low_priority, app=caller.app)
    return run_out(run, ctx.service.clock.now())
