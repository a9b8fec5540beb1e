"""API tokens (admin only): create (the secret is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from nightshift.api import pagination
from nightshift.api.auth import Admin
from nightshift.api.context import ApiContext, get_context
from nightshift.api.schemas_access import TokenCreate, TokenCreated, TokenList, token_out

router = APIRouter(prefix="/tokens", tags=["tokens"])
Ctx = Annotated[ApiContext, Depends(get_context)]


@router.post("", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, _: Admin, ctx: Ctx) -> TokenCreated:
    """A token for one app (`app`), or another admin token (`app: null`). The `token` is in
    this answer only: Nightshift keeps its SHA-256, never the token."""
    issued = ctx.access.create_token(body.name, body.app)
    return TokenCreated(**token_out(issued.token).model_dump(), token=issued.secret)


@router.get("", response_model=TokenList)
def list_tokens(
    _: Admin,
    ctx: Ctx,
    limit: pagination.Limit = pagination.DEFAULT_LIMIT,
    cursor: pagination.Cursor = None,
) -> TokenList:
    """Active tokens by id, without their secrets."""
    after = pagination.decode_id("token", cursor)
    found = ctx.access.list_tokens(after, limit + 1)
    page = found[:limit]
    return TokenList(
        items=[token_out(t) for t in page],
        next_cursor=pagination.encode("token", page[-1].id) if len(found) > limit else None,
    )


@router.delete("/{token_id}", status_code=204, response_class=Response)
def revoke_token(token_id: int, _: Admin, ctx: Ctx) -> Response:
    """Revoke a token: it answers 401 from now on."""
    ctx.access.revoke_token(token_id)
    return Response(status_code=204)
