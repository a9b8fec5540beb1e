"""The FastAPI application: built by a factory so that tests and every role mount the same app.

Everything lives under /api/v1; every route but `GET /api/v1/health` (and the OpenAPI document
and docs pages) needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from pydantic.json_schema import models_json_schema

from nightshift import __version__
from nightshift.access import AccessService
from nightshift.api import errors
from nightshift.api.auth import authenticate
from nightshift.api.context import ApiContext, Reload
from nightshift.api.routes import alerts as alerts_route
from nightshift.api.routes import apps, console, jobs, runs, schedules, secrets, system, tokens
from nightshift.api.routes import metrics as metrics_route
from nightshift.api.routes import stats as stats_route
from nightshift.api.schemas import ErrorOut
from nightshift.service import Service

PREFIX = "/api/v1"
# The error answers every protected route documents, as references to ErrorOut's schema (added
# to the document by `_with_error_schemas`). Given as `"model": ErrorOut`, FastAPI would build
# a validator per status and route that nothing ever uses: 246 of them, 30 ms of every start
# of the API (~45 % of building the app).
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
_ERRORS = {
    status: {"content": _ERROR_CONTENT, "description": description}
    for status, description in {
        401: "no token, or an unknown or revoked one",
        403: "an app token asked for something only an admin token may do",
        404: "no such thing, or one of another app",
        409: "conflicts with what exists",
        413: "the request body is too large",
        422: "invalid input: `field` names it, `message` says why",
    }.items()
}


def create_app(
    service: Service,
    access: AccessService,
    *,
    roles: tuple[str, ...] = ("api",),
    reload: Reload | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Nightshift",
        version=__version__,
        description="Background jobs on schedules or on demand, with a record of every run.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
    )
    app.state.nightshift = ApiContext(service=service, access=access, roles=roles, reload=reload)
    errors.install(app)
    app.add_middleware(errors.Guard, max_body_bytes=service.settings.max_body_bytes)

    app.include_router(system.router, prefix=PREFIX)  # health is open; reload checks itself
    app.include_router(metrics_route.router)  # /metrics, outside /api/v1; needs the admin token
    protected = APIRouter(prefix=PREFIX, dependencies=[Depends(authenticate)], responses=_ERRORS)
    for module in (apps, jobs, runs, secrets, schedules, tokens, console):
        protected.include_router(module.router)
    protected.include_router(stats_route.router)
    protected.include_router(alerts_route.router)
    app.include_router(protected)
    app.openapi = _with_error_schemas(app)  # type: ignore[method-assign]
    return app


def _with_error_schemas(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document, with the schemas its error answers refer to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # kept by the app as its openapi_schema
            _, definitions = models_json_schema(
                [(ErrorOut, "serialization")], ref_template="#/components/schemas/{model}"
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(definitions["$defs"])
        return app.openapi_schema

    return openapi
