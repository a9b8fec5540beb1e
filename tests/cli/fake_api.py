"""A tiny real HTTP server on loopback that answers like the API: canned JSON per route,
and a record of every request, for testing the CLI's requests and rendering."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


Answer = tuple[int, Any]
Route = Answer | Callable[[Seen], Answer]


class FakeApi:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.seen: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                seen = Seen(
                    method=self.command,
                    path=parts.path,
                    query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=json.loads(raw) if raw else None,
                )
                fake.seen.append(seen)
                route = fake.routes.get((self.command, parts.path))
                if route is None:
                    status, body = 404, {"error": {"code": "not_found", "message": "no route"}}
                else:
                    status, body = route(seen) if callable(route) else route
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def on(self, method: str, path: str, body: Any = None, status: int = 200) -> None:
        self.routes[(method, f"/api/v1{path}")] = (status, body)

    def on_call(self, method: str, path: str, answer: Callable[[Seen], Answer]) -> None:
        self.routes[(method, f"/api/v1{path}")] = answer

    def last(self, method: str | None = None) -> Seen:
        return [s for s in self.seen if method is None or s.method == method][-1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def error(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


JOB: dict[str, Any] = {
    "id": 3,
    "app": "shop",
    "name": "type1",
    "description": "",
    "tags": ["sync"],
    "kind": "http",
    "config": {"url": "https://example.com/action", "method": "GET", "query": {"type": 1}},
    "schedule": "*/5 * * * *",
    "timezone": "Europe/Paris",
    "enabled": True,
    "overlap": "skip",
    "catch_up": "latest",
    "max_lateness_s": None,
    "retries": {"max": 1, "backoff_s": 30.0},
    "timeout_s": 60.0,
    "low_priority": False,
    "start_at": None,
    "end_at": None,
    "start_delay_s": 0.0,
    "jitter_s": 0.0,
    "next_fire_at": "2026-03-02T09:05:00Z",
    "last_run": {
        "id": 17,
        "status": "failed",
        "started_at": "2026-03-02T09:00:00Z",
        "finished_at": "2026-03-02T09:00:01Z",
    },
    "deactivated_reason": None,
    "state": "active",
    "declared": False,
    "created_at": "2026-03-01T10:00:00Z",
    "updated_at": "2026-03-01T10:00:00Z",
}

RUN: dict[str, Any] = {
    "id": 17,
    "job_id": 3,
    "job_name": "type1",
    "app": "shop",
    "status": "running",
    "created_at": "2026-03-02T09:00:00Z",
    "scheduled_for": "2026-03-02T09:00:00Z",
    "run_at": "2026-03-02T09:00:00Z",
    "started_at": "2026-03-02T09:00:01.2Z",
    "finished_at": None,
    "waiting_s": 1.2,
    "duration_s": 180.0,
    "attempt": 2,
    "errors": True,
    "error": {"type": "JobFailure", "message": "HTTP 500", "traceback": "Traceback: boom"},
    "low_priority": True,
    "run_by": "ci-token",
    "progress": 45.0,
    "children": {"total": 10, "finished": 3, "failed": 1},
    "parent_id": None,
    "root_id": 17,
    "params": {"day": "2026-03-02"},
    "result": None,
    "reason": None,
    "skip_count": 0,
    "retry_of": 16,
    "is_test": False,
}
