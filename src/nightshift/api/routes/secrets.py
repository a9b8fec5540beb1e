"""An app's secrets and SQL data sources: written, listed by name, deleted; never read back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from nightshift.api.auth import Caller, visible_app
from nightshift.api.context import ApiContext, get_context
from nightshift.api.schemas_access import (
    SecretList,
    SecretPut,
    SourceList,
    SourcePut,
    secret_out,
    source_out,
)
from nightshift.domain.access import SecretKind

router = APIRouter(prefix="/apps/{app}", tags=["secrets"])
Ctx = Annotated[ApiContext, Depends(get_context)]


@router.get("/secrets", response_model=SecretList)
def list_secrets(app: str, caller: Caller, ctx: Ctx) -> SecretList:
    """The app's secret names (values never come back)."""
    entries = ctx.access.list_secrets(visible_app(caller, app), SecretKind.SECRET)
    return SecretList(items=[secret_out(e) for e in entries])


@router.put("/secrets/{name}", status_code=204, response_class=Response)
def put_secret(app: str, name: str, body: SecretPut, caller: Caller, ctx: Ctx) -> Response:
    """Create or replace a secret; stored encrypted."""
    ctx.access.put_secret(visible_app(caller, app), name, body.value)
    return Response(status_code=204)


@router.delete("/secrets/{name}", status_code=204, response_class=Response)
def delete_secret(app: str, name: str, caller: Caller, ctx: Ctx) -> Response:
    ctx.access.delete_secret(visible_app(caller, app), SecretKind.SECRET, name)
    return Response(status_code=204)


@router.get("/sources", response_model=SourceList)
def list_sources(app: str, caller: Caller, ctx: Ctx) -> SourceList:
    """The app's data sources: name, driver and host (the URL is a secret)."""
    entries = ctx.access.list_secrets(visible_app(caller, app), SecretKind.SOURCE)
    return SourceList(items=[source_out(e) for e in entries])


@router.put("/sources/{name}", status_code=204, response_class=Response)
def put_source(app: str, name: str, body: SourcePut, caller: Caller, ctx: Ctx) -> Response:
    """Create or replace a data source; its URL is stored encrypted, like a secret."""
    ctx.access.put_source(visible_app(caller, app), name, body.url)
    return Response(status_code=204)


@router.delete("/sources/{name}", status_code=204, response_class=Response)
def delete_source(app: str, name: str, caller: Caller, ctx: Ctx) -> Response:
    ctx.access.delete_secret(visible_app(caller, app), SecretKind.SOURCE, name)
    return Response(status_code=204)
