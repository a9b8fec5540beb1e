"""Apps: create, list, read, change (schedules switch, retention), delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from nightshift.api import pagination
from nightshift.api.auth import Admin, Caller, visible_app
from nightshift.api.context import ApiContext, get_context
from nightshift.api.schemas import AppCreate, AppList, AppOut, AppPatch, app_out
from nightshift.stats import SYSTEM_APP

router = APIRouter(prefix="/apps", tags=["apps"])
Ctx = Annotated[ApiContext, Depends(get_context)]


@router.get("", response_model=AppList)
def list_apps(
    caller: Caller,
    ctx: Ctx,
    limit: pagination.Limit = pagination.DEFAULT_LIMIT,
    cursor: pagination.Cursor = None,
    system: Annotated[bool, Query(description="include the app of system jobs")] = False,
) -> AppList:
    """Apps by name; an app token sees its own app only."""
    after = pagination.decode("app", cursor)
    apps = [
        a
        for a in ctx.service.store.list_apps()
        if caller.sees(a.name) and (system or a.name != SYSTEM_APP)
    ]
    if after is not None:
        apps = [a for a in apps if a.name > after]
    page = apps[:limit]
    more = len(apps) > limit
    return AppList(
        items=[app_out(a) for a in page],
        next_cursor=pagination.encode("app", page[-1].name) if more else None,
    )


@router.post("", response_model=AppOut, status_code=201)
def create_app(body: AppCreate, _: Admin, ctx: Ctx) -> AppOut:
    """Create an app (admin). 409 when it exists."""
    return app_out(ctx.service.create_app(body.name))


@router.get("/{app}", response_model=AppOut)
def get_app(app: str, caller: Caller, ctx: Ctx) -> AppOut:
    return app_out(ctx.service.store.get_app(visible_app(caller, app)))


@router.patch("/{app}", response_model=AppOut)
def update_app(app: str, body: AppPatch, caller: Caller, ctx: Ctx) -> AppOut:
    """`schedules_enabled: false` pauses every schedule of the app without touching its jobs;
    `true` resumes from the next fire, without a burst. An app token may change its own app."""
    changes = body.model_dump(exclude_unset=True)
    return app_out(ctx.service.update_app(visible_app(caller, app), changes))


@router.delete("/{app}", status_code=204, response_class=Response)
def delete_app(app: str, _: Admin, ctx: Ctx) -> Response:
    """Delete the app (admin) with its jobs, their runs and logs, its tokens, secrets and
    sources. Runs in flight are abandoned by their workers at the next heartbeat."""
    ctx.service.delete_app(app)
    return Response(status_code=204)
