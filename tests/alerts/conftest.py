"""Alerts fixtures: a loopback webhook receiver, a real SMTP server (aiosmtpd), runs that
really fail through the store's claim / complete, and a dispatcher stepped by hand."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from cryptography.fernet import Fernet

from nightshift.access import AccessService
from nightshift.alerts.dispatcher import AlertDispatcher, app_secret_values
from nightshift.clock import FakeClock
from nightshift.config import Settings
from nightshift.domain.models import Job, Run
from nightshift.domain.status import RunStatus
from nightshift.store import SqlStore
from nightshift.store.base import Completion, NewRun
from tests.api.conftest import admin, api, serve  # noqa: F401  (fixtures, re-exported)
from tests.factories import make_job
from tests.integration.conftest import free_port

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
OWNER = "test-worker"


# -- a webhook receiver -----------------------------------------------------------------------
@dataclass
class Hook:
    url: str
    answers: list[int] = field(default_factory=list)  # statuses to give, in order; then 200
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    set_cookie: str | None = None  # a Set-Cookie header for every answer


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.raw.append(body)
                state.received.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                )
                status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            if state.set_cookie:
                self.send_header("Set-Cookie", state.set_cookie)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # what http jobs call: always an error
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts"
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# -- an SMTP server ---------------------------------------------------------------------------
@dataclass
class Mailbox:
    port: int
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "data": envelope.content.decode("utf-8", errors="replace"),
            }
        )
        return "250 Message accepted for delivery"


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port, ready_timeout=15)
    controller.start()
    yield box
    controller.stop()


# -- the dispatcher ---------------------------------------------------------------------------
@pytest.fixture
def alert_settings(settings: Settings, tmp_path, mailbox: Mailbox) -> Settings:  # type: ignore[no-untyped-def]
    return settings.model_copy(
        update={
            "public_url": "http://nightshift.test:8470",
            "smtp_host": "127.0.0.1",
            "smtp_port": mailbox.port,
            "smtp_starttls": False,
            "smtp_from": "alerts@nightshift.test",
            "alert_backoff_s": 10.0,
            "alert_attempts": 3,
            "alert_timeout_s": 10.0,
            "secret_key": Fernet.generate_key().decode(),
            "secret_key_file": str(tmp_path / "nightshift.key"),
        }
    )


@pytest.fixture
def access(store: SqlStore, alert_settings: Settings) -> AccessService:
    return AccessService(store, FakeClock(T0), alert_settings)


@pytest.fixture
async def dispatcher(
    store: SqlStore, alert_settings: Settings, access: AccessService
) -> AsyncIterator[AlertDispatcher]:
    d = AlertDispatcher(
        store, FakeClock(T0), alert_settings, secret_values=app_secret_values(access)
    )
    yield d
    await d.close()


# -- runs that really go through the store ----------------------------------------------------
def add_job(store: SqlStore, app: str = "shop", name: str = "daily_report", **fields: Any) -> Job:
    return store.create_job(make_job(T0, app=app, name=name, **fields))


def start_run(store: SqlStore, job: Job, now: datetime, **new: Any) -> Run:
    """Enqueue a run of `job` and claim it at `now` (it becomes running, started at `now`)."""
    run = store.enqueue(NewRun(job_id=job.id, run_at=now, **new), now)
    claimed = store.claim(OWNER, now, 3600, 100, ["python", "http", "sql", "workflow"])
    assert [c.run.id for c in claimed] == [run.id]
    return store.get_run(run.id)


def claim_next(store: SqlStore, now: datetime) -> Run:
    """Claim the one pending run that is due (e.g. a retry inserted by `fail_run`)."""
    claimed = store.claim(OWNER, now, 3600, 100, ["python", "http", "sql", "workflow"])
    assert len(claimed) == 1
    return store.get_run(claimed[0].run.id)


def fail_run(
    store: SqlStore,
    run: Run,
    now: datetime,
    *,
    message: str = "boom",
    traceback: str | None = None,
    retry: bool = False,
) -> None:
    """End a running run as failed; with `retry`, the next attempt is inserted with it."""
    follow = None
    if retry:
        follow = NewRun(
            job_id=run.job_id,
            run_at=now,
            params=run.params,
            attempt=run.attempt + 1,
            retry_of=run.retry_of or run.id,
        )
    error = {"type": "RuntimeError", "message": message, "traceback": traceback}
    done = store.complete(
        [Completion(run.id, OWNER, RunStatus.FAILED, now, error=error, retry=follow)]
    )
    assert done == [True]
