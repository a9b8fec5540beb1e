"""The `http` kind's configuration and the request a run sends: validation, query and header
merging, masking of secrets in what is recorded. Pure: no network here."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nightshift.domain.models import JSON
from nightshift.errors import InvalidInput

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_REDIRECTS = 5
# Recorded as *** in the request sent and in the response received (a session a server hands
# out is as secret as a key we send).
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "set-cookie", "x-api-key"}
)
SECRET_HEADER_PARTS = ("token", "secret")
SECRET_PARAMS = frozenset({"key", "sig", "auth"})
SECRET_PARAM_PARTS = (
    *SECRET_HEADER_PARTS,
    "password",
    "passwd",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "signature",
)
MASK = "***"
# 4xx answers that may well differ on a later attempt; every other 4xx is permanent.
RETRYABLE_4XX = frozenset({408, 425, 429})

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name
_STATUS_CLASS = re.compile(r"^[1-5]xx$")

QueryScalar = str | int | float | bool
QueryValue = QueryScalar | list[QueryScalar]


# --- configuration -------------------------------------------------------------------------


def _check_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("an http job needs a url")
    value = value.strip()
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not url.host:
        raise ValueError("must be an absolute URL with a host")
    return value


def _check_query(value: Any) -> dict[str, QueryValue] | str | None:
    if value is None or isinstance(value, str):
        return value.removeprefix("?") if value else None
    if not isinstance(value, dict):
        raise ValueError("must be an object or a query string")
    for key, item in value.items():
        items = item if isinstance(item, list) else [item]
        if not isinstance(key, str) or not all(isinstance(i, QueryScalar) for i in items):
            raise ValueError(f"{key!r}: values must be strings, numbers or lists of them")
    return value


def _check_headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be an object of header names to values")
    headers: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if isinstance(item, int | float) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise ValueError(f"{name}: the value must be a string")
        if any(c in item for c in "\r\n\0"):
            raise ValueError(f"{name}: the value must not contain line breaks")
        headers[name] = item
    return headers


def _check_body(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError("must be a JSON value or a string") from None
    return value


class HttpConfig(BaseModel):
    """A job's `config` for the http kind."""

    model_config = ConfigDict(extra="forbid")

    method: str = "GET"
    url: str
    query: dict[str, QueryValue] | str | None = None  # a string is kept exactly as written
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None  # a string is sent as text, any other JSON value as JSON, None: no body
    timeout_s: float = 30.0
    expect_status: list[int | str] = Field(default_factory=lambda: ["2xx"])
    follow_redirects: bool = True

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> str:
        method = value.strip().upper() if isinstance(value, str) else None
        if method not in METHODS:
            raise ValueError(f"must be one of {', '.join(METHODS)}")
        return method

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> str:
        return _check_url(value)

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> Any:
        return _check_query(value)

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> dict[str, str]:
        return _check_headers(value)

    @field_validator("body", mode="before")
    @classmethod
    def _body(cls, value: Any) -> Any:
        return _check_body(value)

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("expect_status", mode="before")
    @classmethod
    def _expect(cls, value: Any) -> list[int | str]:
        items = value if isinstance(value, list) else [value]
        result: list[int | str] = []
        for item in items:
            if isinstance(item, str) and item.strip().isdigit():
                item = int(item)
            if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
                result.append(item)
            elif isinstance(item, str) and _STATUS_CLASS.match(item.strip().lower()):
                result.append(item.strip().lower())
            else:
                raise ValueError('must list status codes (200) or classes ("2xx")')
        if not result:
            raise ValueError("must list at least one status")
        return result


def _invalid(exc: ValidationError, prefix: str = "config") -> InvalidInput:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "missing" and loc == ["url"]:
        message = "an http job needs a url"
    elif error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"]
    return InvalidInput(message, field=".".join([prefix, *loc[:1]]))


def parse_config(config: JSON) -> HttpConfig:
    """The config as a model, or InvalidInput naming the field; no network access."""
    if not isinstance(config, dict):
        raise InvalidInput("must be an object", field="config")
    try:
        return HttpConfig.model_validate(config)
    except ValidationError as exc:
        raise _invalid(exc) from None


# --- the request ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything needed to send one request, after per-run overrides."""

    method: str
    url: str  # with the query
    headers: dict[str, str]
    body: Any  # as configured: recorded in the run
    content: bytes | None  # as sent
    timeout_s: float
    expect_status: tuple[int | str, ...]
    follow_redirects: bool


def encode_query(query: dict[str, QueryValue]) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return urlencode(pairs, quote_via=quote)


def merge_query(
    base: dict[str, QueryValue] | str | None, override: dict[str, QueryValue] | str | None
) -> dict[str, QueryValue] | str | None:
    """A string override replaces; an object override replaces the keys it names."""
    if override is None or isinstance(override, str) or not base:
        return override if override is not None else base
    if isinstance(base, dict):
        return {**base, **override}
    # Keep the parts of a query string that are not overridden exactly as written.
    kept = [part for part in base.split("&") if unquote_plus(part.split("=", 1)[0]) not in override]
    return "&".join([*filter(None, kept), encode_query(override)])


def url_with_query(url: str, query: dict[str, QueryValue] | str | None) -> str:
    url = url.split("#", 1)[0]
    text = encode_query(query) if isinstance(query, dict) else (query or "")
    if not text:
        return url
    text = text.replace("#", "%23")
    if "?" not in url:
        return f"{url}?{text}"
    return f"{url}&{text}" if not url.endswith(("?", "&")) else url + text


def _merge_headers(base: dict[str, str], override: dict[str, str]) -> dict[str, str]:
    names = {name.lower() for name in override}
    return {**{k: v for k, v in base.items() if k.lower() not in names}, **override}


def build_request(config: JSON, params: JSON | None = None) -> RequestSpec:
    """The request a run sends: the job's config with the run's `query`, `headers`, `body`."""
    cfg = parse_config(config)
    params = params or {}
    try:
        query = merge_query(cfg.query, _check_query(params.get("query")))
    except ValueError as exc:
        raise InvalidInput(str(exc), field="params.query") from None
    try:
        headers = _merge_headers(cfg.headers, _check_headers(params.get("headers")))
    except ValueError as exc:
        raise InvalidInput(str(exc), field="params.headers") from None
    body = cfg.body
    if "body" in params:
        try:
            body = _check_body(params["body"])
        except ValueError as exc:
            raise InvalidInput(str(exc), field="params.body") from None
    content: bytes | None = None
    if body is not None:
        if isinstance(body, str):
            content, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            content, content_type = json.dumps(body).encode(), "application/json"
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = content_type
    return RequestSpec(
        method=cfg.method,
        url=url_with_query(cfg.url, query),
        headers=headers,
        body=body,
        content=content,
        timeout_s=cfg.timeout_s,
        expect_status=tuple(cfg.expect_status),
        follow_redirects=cfg.follow_redirects,
    )


def is_secret_header(name: str) -> bool:
    name = name.lower()
    return name in SECRET_HEADERS or any(part in name for part in SECRET_HEADER_PARTS)


def mask_headers(headers: httpx.Headers | dict[str, str]) -> dict[str, str]:
    return {k: MASK if is_secret_header(k) else v for k, v in headers.items()}


def is_secret_param(name: str) -> bool:
    """A query parameter whose value is a credential by its name (api_key, access_token...)."""
    name = name.lower()
    return name in SECRET_PARAMS or any(part in name for part in SECRET_PARAM_PARTS)


def shown_url(url: httpx.URL | str) -> str:
    """The URL as recorded and logged: a password in it, and the value of a query parameter
    named as a credential, show as ***. The rest of the query stays as written."""
    url = httpx.URL(url) if isinstance(url, str) else url
    if url.password:
        url = url.copy_with(username=url.username, password=MASK)
    query = url.query.decode("ascii")
    if query:
        parts = query.split("&")
        for i, part in enumerate(parts):
            name, sep, _ = part.partition("=")
            if sep and is_secret_param(unquote_plus(name)):
                parts[i] = f"{name}={MASK}"
        url = url.copy_with(query="&".join(parts).encode("ascii"))
    return str(url)


def status_expected(status: int, expect: tuple[int | str, ...]) -> bool:
    return any(
        status == item if isinstance(item, int) else str(status)[0] == item[0] for item in expect
    )


def is_permanent_status(status: int) -> bool:
    """Whether retrying cannot change the answer (4xx but 408, 425, 429; 1xx and 3xx)."""
    return status < 500 and status not in RETRYABLE_4XX


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"
