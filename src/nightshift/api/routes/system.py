"""Health (no token) and reload (admin)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from nightshift import __version__
from nightshift.api.auth import Admin
from nightshift.api.context import ApiContext, get_context
from nightshift.api.errors import ApiError
from nightshift.api.schemas import ErrorOut, HealthOut, ReloadOut

router = APIRouter(tags=["system"])
Ctx = Annotated[ApiContext, Depends(get_context)]


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"description": "the database does not answer"}},
)
async def health(ctx: Ctx) -> Any:
    """Liveness and readiness: 200 when the database answers, 503 otherwise. No token."""
    try:
        await asyncio.wait_for(asyncio.to_thread(ctx.service.store.ping), timeout=5)
    except Exception as exc:
        body = {"status": "unavailable", "database": f"error: {type(exc).__name__}"}
        return JSONResponse(body, status_code=503)
    return HealthOut(status="ok", database="ok", version=__version__, roles=list(ctx.roles))


@router.post(
    "/reload",
    response_model=ReloadOut,
    responses={
        401: {"model": ErrorOut, "description": "no token, or an unknown or revoked one"},
        403: {"model": ErrorOut, "description": "an app token: reload needs an admin token"},
        422: {"model": ErrorOut, "description": "a declaration is invalid; nothing changed"},
    },
)
async def reload(_: Admin, ctx: Ctx) -> ReloadOut:
    """Re-import the `--import` modules and re-read nightshift.toml's `[[jobs]]`: declared jobs
    are created, updated or disabled (never duplicated; timers kept unless their timing
    changed); jobs that returned STOP may fire again; python worker processes restart so that
    changed code loads."""
    if ctx.reload is None:
        raise ApiError(503, "this process cannot reload")
    report = await ctx.reload()
    return ReloadOut(
        created=report.created,
        updated=report.updated,
        disabled=report.disabled,
        released=report.released,
        modules=report.modules,
    )
