"""The real service — `Runtime` with its API on a loopback port — driven over HTTP.

Each server runs in a thread with its own event loop, as `nightshift up` runs it, so tests can
also reach into the process (the store, the worker) to check what the API says.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from nightshift.config import Settings
from nightshift.runtime import Runtime
from tests.integration.conftest import free_port

ADMIN = "ns_test-admin-token-0123456789abcdefghijklmnop"
SECRET_KEY = Fernet.generate_key().decode()


class ApiServer:
    """One Runtime (roles of choice) serving on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, settings: Settings, roles: tuple[str, ...]) -> None:
        self.settings = settings.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
        self.roles = roles
        self.runtime: Runtime | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.base = f"http://127.0.0.1:{self.settings.port}"

    def start(self, timeout: float = 30) -> ApiServer:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                self.runtime = Runtime(self.settings, roles=self.roles)
                ready.set()
                loop.run_until_complete(self.runtime.serve())
            except BaseException as exc:
                self._error = exc
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="api-server", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise AssertionError(f"the service did not start: {self._error!r}")
            try:
                if httpx.get(f"{self.base}/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise AssertionError("the service did not answer in time")

    def stop(self) -> None:
        if self.runtime is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.runtime.request_stop)
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "the service did not stop"

    def client(self, token: str | None = ADMIN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.base}/api/v1", headers=headers, timeout=30)

    @property
    def store(self):  # type: ignore[no-untyped-def]
        assert self.runtime is not None
        return self.runtime.store


def api_settings(settings: Settings, tmp_path: Path, **overrides: Any) -> Settings:
    """Test settings: a known admin token, files in tmp_path, one python process."""
    values: dict[str, Any] = {
        "admin_token": ADMIN,
        "secret_key": SECRET_KEY,
        "secret_key_file": str(tmp_path / "nightshift.key"),
        "config": str(tmp_path / "nightshift.toml"),
        "worker_processes": 1,
        "shutdown_grace_s": 0.5,
        "scheduler_poll_s": 0.2,
        **overrides,
    }
    return settings.model_copy(update=values)


@pytest.fixture
def serve(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """Start servers on the test's database: `serve(roles=..., **settings_overrides)`."""
    started: list[ApiServer] = []

    def start(roles: tuple[str, ...] = ("api",), **overrides: Any) -> ApiServer:
        server = ApiServer(api_settings(settings, tmp_path, **overrides), roles).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def api(serve: Callable[..., ApiServer]) -> ApiServer:
    """The API alone: nothing executes runs."""
    return serve()


@pytest.fixture
def admin(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def app_token(client: httpx.Client, app: str, name: str | None = None) -> str:
    """Create the app (if needed) and a token for it; returns the secret."""
    if client.get(f"/apps/{app}").status_code == 404:
        assert client.post("/apps", json={"name": app}).status_code == 201
    answer = client.post("/tokens", json={"name": name or f"{app}-token", "app": app})
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll a condition the service makes true in its own time (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
