"""A small synchronous client for Nightshift's REST API (`/api/v1`), used by the CLI.

Every method returns the API's JSON as it came (dicts and lists), so `--json` output is the
API's own. Failures raise one of two errors: `ApiError` for an answer the API gave (status,
code, message, field, and what was asked for), `Unreachable` when no answer came at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from nightshift.errors import NightshiftError

JSON = dict[str, Any]
DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_TIMEOUT_S = 30.0


class ApiError(NightshiftError):
    """The API answered with an error body: `{"error": {"code", "message", "field"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "error",
        field: str | None = None,
        subject: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.subject = subject  # what was asked for, e.g. "job 42"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Unreachable(NightshiftError):
    """No HTTP answer: connection refused, DNS failure, timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Page:
    items: list[JSON]
    next_cursor: str | None
    raw: JSON


class Client:
    """One connection pool to one service; use as a context manager or call `close()`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "nightshift-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: JSON | None = None,
        json: Any = None,
        subject: str | None = None,
        wait: bool = False,
    ) -> Any:
        """Send one request; the decoded JSON body (None for an empty one) or an error.

        `wait`: no read timeout, for answers the API itself bounds (a job test waits up to the
        job's timeout, then answers 504)."""
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        extra: JSON = (
            {"timeout": httpx.Timeout(self._http.timeout.connect, read=None)} if wait else {}
        )
        try:
            response = self._http.request(method, path, params=query, json=json, **extra)
        except httpx.TimeoutException:
            raise Unreachable(self.url, "no answer in time") from None
        except httpx.TransportError as exc:
            raise Unreachable(self.url, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            raise _error_of(response, subject)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code, "the answer is not JSON (is this a Nightshift URL?)"
            ) from None

    def page(self, path: str, params: JSON | None = None, *, subject: str | None = None) -> Page:
        body = self.request("GET", path, params=params, subject=subject)
        return Page(list(body.get("items", [])), body.get("next_cursor"), body)

    def pages(
        self, path: str, params: JSON | None = None, *, follow: bool = True
    ) -> Iterator[Page]:
        """The first page and, if `follow`, every next one (stops if a cursor repeats)."""
        params = dict(params or {})
        seen: set[str] = set()
        while True:
            page = self.page(path, params)
            yield page
            cursor = page.next_cursor
            if not follow or not cursor or cursor in seen:
                return
            seen.add(cursor)
            params["cursor"] = cursor

    # -- apps -------------------------------------------------------------------------------
    def list_apps(self, *, limit: int | None = None, cursor: str | None = None) -> Page:
        return self.page("/apps", {"limit": limit, "cursor": cursor})

    def get_app(self, name: str) -> JSON:
        return self.request("GET", f"/apps/{_seg(name)}", subject=f"app {name}")

    def create_app(self, data: JSON) -> JSON:
        return self.request("POST", "/apps", json=data)

    def update_app(self, name: str, changes: JSON) -> JSON:
        return self.request("PATCH", f"/apps/{_seg(name)}", json=changes, subject=f"app {name}")

    def delete_app(self, name: str) -> None:
        self.request("DELETE", f"/apps/{_seg(name)}", subject=f"app {name}")

    # -- jobs -------------------------------------------------------------------------------
    def list_jobs(self, **filters: Any) -> Page:
        """Filters: app, tag, kind, enabled, limit, cursor."""
        return self.page("/jobs", filters)

    def get_job(self, job_id: int) -> JSON:
        return self.request("GET", f"/jobs/{job_id}", subject=f"job {job_id}")

    def create_job(self, data: JSON) -> JSON:
        return self.request("POST", "/jobs", json=data)

    def create_jobs(self, jobs: list[Any]) -> JSON:
        """`POST /jobs/bulk`: every job or none; `{"items": [{"id", "app", "name"}, …]}`."""
        return self.request("POST", "/jobs/bulk", json={"jobs": jobs})

    def update_job(self, job_id: int, changes: JSON) -> JSON:
        return self.request("PATCH", f"/jobs/{job_id}", json=changes, subject=f"job {job_id}")

    def delete_job(self, job_id: int) -> None:
        self.request("DELETE", f"/jobs/{job_id}", subject=f"job {job_id}")

    def run_job(
        self, job_id: int, *, params: JSON | None = None, low_priority: bool | None = None
    ) -> JSON:
        body: JSON = {}
        if params is not None:
            body["params"] = params
        if low_priority is not None:
            body["low_priority"] = low_priority
        return self.request("POST", f"/jobs/{job_id}/run", json=body, subject=f"job {job_id}")

    def test_job(self, job_id: int, *, params: JSON | None = None) -> JSON:
        body = {} if params is None else {"params": params}
        return self.request(
            "POST", f"/jobs/{job_id}/test", json=body, subject=f"job {job_id}", wait=True
        )

    def next_fires(
        self, job_id: int, *, count: int | None = None, start: str | None = None
    ) -> JSON:
        params = {"count": count, "from": start}
        return self.request(
            "GET", f"/jobs/{job_id}/next-fires", params=params, subject=f"job {job_id}"
        )

    def preview(
        self,
        schedule: str,
        *,
        timezone: str | None = None,
        count: int | None = None,
        start: str | None = None,
    ) -> JSON:
        params = {"schedule": schedule, "timezone": timezone, "count": count, "from": start}
        return self.request("GET", "/schedules/preview", params=params)

    # -- runs -------------------------------------------------------------------------------
    def list_runs(self, **filters: Any) -> Page:
        """Filters: job, app, status (comma list), root, since, until, system, limit, cursor."""
        return self.page("/runs", filters)

    def get_run(self, run_id: int) -> JSON:
        return self.request("GET", f"/runs/{run_id}", subject=f"run {run_id}")

    def run_logs(
        self,
        run_id: int,
        *,
        q: str | None = None,
        level: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> JSON:
        params = {"q": q, "level": level, "since": since, "until": until, "limit": limit}
        return self.request("GET", f"/runs/{run_id}/logs", params=params, subject=f"run {run_id}")

    def operate_run(self, run_id: int, operation: str) -> JSON:
        """stop, resume, force-stop, cancel or restart (the new run comes back)."""
        return self.request("POST", f"/runs/{run_id}/{operation}", subject=f"run {run_id}")

    def update_run(self, run_id: int, changes: JSON) -> JSON:
        """`{"low_priority": bool}`."""
        return self.request("PATCH", f"/runs/{run_id}", json=changes, subject=f"run {run_id}")

    # -- tokens -----------------------------------------------------------------------------
    def list_tokens(self, *, limit: int | None = None, cursor: str | None = None) -> Page:
        return self.page("/tokens", {"limit": limit, "cursor": cursor})

    def create_token(self, name: str, app: str | None = None) -> JSON:
        return self.request("POST", "/tokens", json={"name": name, "app": app})

    def revoke_token(self, token_id: int | str) -> None:
        self.request("DELETE", f"/tokens/{token_id}", subject=f"token {token_id}")


def _seg(value: str) -> str:
    """One path segment, escaped so that a name cannot reach another path."""
    from urllib.parse import quote

    return quote(value, safe="")


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return value


def _error_of(response: httpx.Response, subject: str | None) -> ApiError:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or response.reason_phrase or status)
        return ApiError(
            status,
            message.splitlines()[0] if message else message,
            code=str(err.get("code") or "error"),
            field=err.get("field") or None,
            subject=subject,
        )
    if isinstance(body, dict) and "detail" in body:  # a framework error that slipped through
        detail = body["detail"]
        message = detail if isinstance(detail, str) else str(detail)
    else:
        message = f"HTTP {status} {response.reason_phrase}".strip()
    return ApiError(status, message, subject=subject)
