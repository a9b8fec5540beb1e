"""Real `nightshift up` processes on a real database, driven from the outside."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nightshift.clock import SystemClock
from nightshift.config import Settings
from nightshift.service import Service
from nightshift.store import SqlStore, open_store
from nightshift.worker.kinds.registry import build_executors

NIGHTSHIFT = str(Path(sys.executable).with_name("nightshift"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """One `nightshift up` (or one role: `api`, `scheduler`, `worker`) in a working directory of
    its own, restartable."""

    def __init__(
        self, workdir: Path, database_url: str, imports: str = "", role: str = "up", **env: str
    ) -> None:
        self.workdir = workdir
        self.role = role
        self.port = free_port()
        self.env = {
            **os.environ,
            "NIGHTSHIFT_DATABASE_URL": database_url,
            "NIGHTSHIFT_PORT": str(self.port),
            "NIGHTSHIFT_IMPORTS": imports,
            "NIGHTSHIFT_HTTP_ALLOW_PRIVATE": "true",
            "NIGHTSHIFT_LOG_LEVEL": "INFO",
            "PYTHONPATH": os.pathsep.join([str(workdir), os.getcwd()]),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "service.log"

    def start(self, timeout: float = 30) -> None:
        """Start and wait until ready: the health endpoint answers (`up`, `api`), or the role
        logged that it runs (`scheduler`, `worker`: they serve no HTTP)."""
        log_from = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [NIGHTSHIFT, self.role], cwd=self.workdir, env=self.env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"nightshift {self.role} exited: {self.log.read_text()[-2000:]}"
                )
            if self.ready(log_from):
                return
            time.sleep(0.05)
        self.stop()  # not left running after the test
        raise AssertionError(f"nightshift {self.role} not ready: {self.log.read_text()[-2000:]}")

    def ready(self, log_from: int = 0) -> bool:
        if self.role in ("up", "api"):
            try:
                return httpx.get(self.url("/api/v1/health"), timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        with self.log.open("rb") as fh:
            fh.seek(log_from)
            return f"nightshift {self.role}: ".encode() in fh.read()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nightshift.db'}"


@pytest.fixture
def outside(database_url: str) -> Iterator[tuple[SqlStore, Service]]:
    """The database as another process sees it: for creating jobs and reading runs."""
    store = open_store(database_url)
    settings = Settings(database_url=database_url, http_allow_private=True)
    yield store, Service(store, SystemClock(), settings, build_executors(settings))
    store.close()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll a condition that another process makes true (bounded; the only channel is the DB)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
