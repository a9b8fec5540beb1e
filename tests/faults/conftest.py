"""Fault tests: real Nightshift processes on a real PostgreSQL, broken on purpose.

Every test gets a fresh schema on the shared server (`fresh_pg`), so that processes start on an
empty database and migrate it themselves, and a `fleet` that starts processes and always stops
them, even when the test fails. A test that restarts PostgreSQL gets a private cluster of its own
(`private_pg`): the shared server at 127.0.0.1:5432 is never touched, other test runs use it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from nightshift.clock import SystemClock
from nightshift.config import Settings
from nightshift.service import Service
from nightshift.store import SqlStore, open_store
from nightshift.worker.kinds.registry import build_executors
from tests.conftest import PG_URL
from tests.integration.conftest import NIGHTSHIFT, ServiceProcess, free_port

PG_BIN = Path(os.environ.get("NIGHTSHIFT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


# -- databases ------------------------------------------------------------------------------


class PgDatabase:
    """One schema on a PostgreSQL server; URLs name the schema (and, optionally, who connects:
    `application_name` finds a process's backends in pg_stat_activity)."""

    def __init__(self, server_url: str, schema: str) -> None:
        self.server_url = server_url
        self.schema = schema

    def url(self, application_name: str | None = None) -> str:
        sep = "&" if "?" in self.server_url else "?"
        url = f"{self.server_url}{sep}options=-csearch_path%3D{self.schema}"
        if application_name:
            url += f"&application_name={quote(application_name)}"
        return url

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One autocommit statement on the server, as an outsider; its rows."""
        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def create(self) -> None:
        self.sql(f"CREATE SCHEMA {self.schema}")

    def drop(self) -> None:
        self.sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


@pytest.fixture
def fresh_pg() -> Iterator[PgDatabase]:
    """An empty schema on the shared server (not migrated: the processes do it), dropped after."""
    db = PgDatabase(PG_URL, f"ns_fault_{secrets.token_hex(4)}")
    try:
        db.create()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests and unreachable at {PG_URL}: {exc}")
    yield db
    db.drop()


class PrivateServer:
    """A PostgreSQL cluster of our own in a temporary directory, on a free port, that a test may
    stop and restart. PostgreSQL refuses to run as root, so when we are root its commands run as
    the `postgres` OS user, in a directory that user owns."""

    def __init__(self) -> None:
        if not (PG_BIN / "pg_ctl").exists():
            pytest.fail(
                f"no PostgreSQL binaries in {PG_BIN} (set NIGHTSHIFT_TEST_PG_BIN to the directory "
                "holding initdb and pg_ctl)"
            )
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="nightshift-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self.root.chmod(0o700)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 90) -> None:
        command = [*self._as_owner, str(PG_BIN / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "fsync": "off",  # a throw-away cluster: durability across power loss is not tested
            "full_page_writes": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():  # pg_ctl could not stop it: end the postmaster ourselves
            with contextlib.suppress(Exception):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivateServer]:
    """A running private cluster (its `postgres` database is empty); removed after the test."""
    server = PrivateServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


# -- processes ------------------------------------------------------------------------------


class Fleet:
    """Nightshift processes of one test, each in a directory of its own; `stop_all` ends every
    one of them (continuing stopped ones first, killing those that do not exit)."""

    def __init__(self, root: Path, db: PgDatabase) -> None:
        self.root = root
        self.db = db
        self.procs: dict[str, ServiceProcess] = {}
        self.secret_key = base64.urlsafe_b64encode(os.urandom(32)).decode()

    def add(self, name: str, role: str, **env: str) -> ServiceProcess:
        workdir = self.root / name
        workdir.mkdir(parents=True, exist_ok=True)
        env.setdefault("NIGHTSHIFT_SECRET_KEY", self.secret_key)  # one key, as in a deployment
        proc = ServiceProcess(workdir, self.db.url(application_name=name), role=role, **env)
        self.procs[name] = proc
        return proc

    def start_together(self, procs: list[ServiceProcess], timeout: float = 60) -> None:
        """Launch every process at once (they race to migrate), then wait until all are ready."""
        marks = {}
        for proc in procs:
            marks[id(proc)] = proc.log.stat().st_size if proc.log.exists() else 0
            with proc.log.open("ab") as out:
                proc.proc = subprocess.Popen(
                    [NIGHTSHIFT, proc.role],
                    cwd=proc.workdir,
                    env=proc.env,
                    stdout=out,
                    stderr=out,
                )
        deadline = time.monotonic() + timeout
        waiting = list(procs)
        while waiting and time.monotonic() < deadline:
            for proc in list(waiting):
                assert proc.proc is not None
                if proc.proc.poll() is not None:
                    raise AssertionError(f"{proc.workdir.name} exited: {tail(proc)}")
                if proc.ready(marks[id(proc)]):
                    waiting.remove(proc)
            time.sleep(0.05)
        assert not waiting, f"not ready: {[p.workdir.name for p in waiting]}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.proc is not None and proc.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.proc.send_signal(signal.SIGCONT)
                    proc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            if proc.proc is None:
                continue
            try:
                proc.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.proc.kill()
                proc.proc.wait()


@pytest.fixture
def fleet(tmp_path: Path, fresh_pg: PgDatabase) -> Iterator[Fleet]:
    crew = Fleet(tmp_path, fresh_pg)
    try:
        yield crew
    finally:
        crew.stop_all()


def tail(proc: ServiceProcess, chars: int = 3000) -> str:
    return proc.log.read_text(errors="replace")[-chars:] if proc.log.exists() else ""


def alive(proc: ServiceProcess) -> bool:
    return proc.proc is not None and proc.proc.poll() is None


# -- the database as an outsider sees it ----------------------------------------------------


@pytest.fixture
def outsider_factory() -> Iterator[Callable[[str], tuple[SqlStore, Service]]]:
    """Stores (and services over them) opened by the test itself, closed after it."""
    opened: list[SqlStore] = []

    def make(url: str) -> tuple[SqlStore, Service]:
        store = open_store(url, migrate=False)
        opened.append(store)
        settings = Settings(database_url=url, http_allow_private=True)
        return store, Service(store, SystemClock(), settings, build_executors(settings))

    yield make
    for store in opened:
        store.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll a condition other processes make true, up to `timeout` seconds (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g} s: {what}")
        time.sleep(interval)
