"""One error body everywhere: `{"error": {"code", "message", "field"}}`.

Our own errors carry their code; FastAPI's and Starlette's (404 route, 405, 422 validation,
malformed JSON) are translated; anything unexpected answers `500 internal` while its traceback
goes to the service log, never to the client. `Guard` also refuses request bodies larger than
NIGHTSHIFT_MAX_BODY_BYTES with 413, by Content-Length and while they stream.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nightshift.errors import Conflict, InvalidInput, NightshiftError, NotFound

log = logging.getLogger("nightshift.api")

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An answer other than success, raised anywhere in a request."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.field = field


def unauthorized() -> ApiError:
    return ApiError(401, "a valid API token is required: Authorization: Bearer <token>")


def forbidden(message: str = "this needs an admin token") -> ApiError:
    return ApiError(403, message)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def _status_of(exc: NightshiftError) -> int:
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    return 400


def validation_field_message(errors: list[Any]) -> tuple[str | None, str]:
    """The first pydantic / FastAPI error as (field, message), like `jobspec.invalid_from`."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    kind = first.get("type", "")
    message = str(first.get("msg", "is invalid"))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return None, f"the body is not valid JSON: {detail}".rstrip(": ")
    if kind == "extra_forbidden":
        message = "is not a known field"
    elif kind == "missing":
        message = "is required"
    field = ".".join(loc) or None
    return field, message


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(NightshiftError)
    async def _domain_error(_: Request, exc: NightshiftError) -> JSONResponse:
        status = _status_of(exc)
        if isinstance(exc, InvalidInput):
            return error_response(status, "invalid", exc.message, exc.field)
        if isinstance(exc, Conflict):
            return error_response(status, STATUS_CODES[status], str(exc), exc.field)
        return error_response(status, STATUS_CODES[status], str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        field, message = validation_field_message(list(exc.errors()))
        return error_response(422, "invalid", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if status == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        response = error_response(status, STATUS_CODES.get(status, "error"), message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response


class Guard:
    """Outermost ASGI middleware: body size limit and the last line against tracebacks."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(send, 413, "too_large", _too_large(limit))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException raised while it reads the body through.
                    raise HTTPException(413, _too_large(limit))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:  # otherwise the answer is on its way; nothing more can be said
                await _send_error(send, 500, "internal", "internal error; see the service log")


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes (NIGHTSHIFT_MAX_BODY_BYTES)"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
