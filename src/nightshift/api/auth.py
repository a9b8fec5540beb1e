"""Bearer tokens: who is calling, and what an app token may see.

An app token sees only its app: anything of another app answers 404 exactly as a missing one
does, so a token never learns that another app's job, run or secret exists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nightshift.access import Principal
from nightshift.api.context import ApiContext, get_context
from nightshift.api.errors import forbidden, unauthorized
from nightshift.domain.models import Job, Run
from nightshift.errors import NotFound

bearer = HTTPBearer(auto_error=False, description="an admin token or an app token")


def authenticate(
    ctx: Annotated[ApiContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    token = credentials.credentials if credentials is not None else None
    principal = ctx.access.authenticate(token)
    if principal is None:
        raise unauthorized()
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


def require_admin(caller: Caller) -> Principal:
    if not caller.is_admin:
        raise forbidden()
    return caller


Admin = Annotated[Principal, Depends(require_admin)]


def visible_app(caller: Principal, app: str) -> str:
    """`app` if the caller may see it (existence is checked by the store), else NotFound."""
    if not caller.sees(app):
        raise NotFound("app", app)
    return app


def visible_job(caller: Principal, job: Job) -> Job:
    if not caller.sees(job.app):
        raise NotFound("job", job.id)
    return job


def visible_run(caller: Principal, run: Run) -> Run:
    if not caller.sees(run.app):
        raise NotFound("run", run.id)
    return run


def scoped_app(caller: Principal, app: str | None) -> tuple[str | None, bool]:
    """The app filter of a list: (filter, empty). An app token is always limited to its app;
    asking for another app's items gives an empty list, not an error."""
    if caller.app is None:
        return app, False
    return caller.app, app is not None and app != caller.app
