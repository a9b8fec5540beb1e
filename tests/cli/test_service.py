"""The real `nightshift` command against a real `nightshift up`, on SQLite and PostgreSQL:
what a user sees — tables, `--json` equal to the API's answers, exit statuses and one-line
errors, and app-scoped tokens that hide other apps."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from nightshift.cli import app as nightshift_app
from tests.conftest import PG_URL, pg_schema_url
from tests.integration.conftest import NIGHTSHIFT, ServiceProcess, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ADMIN = "cli-test-admin-token"
JOBS_MODULE = textwrap.dedent(
    """
    import nightshift

    def hello(ctx):
        ctx.log.info("hello %s", ctx.params.get("who", "world"))
        return nightshift.OK
    """
)


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error(self) -> str:
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in self.stderr, self.stderr
        return lines[0]


@dataclass
class Live:
    service: ServiceProcess

    @property
    def url(self) -> str:
        return self.service.url("")

    def cli(
        self, *args: str, token: str | None = ADMIN, process: bool = False, stdin: str | None = None
    ) -> Done:
        """`nightshift ARGS…` with the service in the environment: in a process of its own, as
        a user runs it, or (faster, same command tree and HTTP) in this one."""
        env: dict[str, str | None] = {
            "NIGHTSHIFT_URL": self.url,
            "NIGHTSHIFT_TOKEN": token,
            "COLUMNS": "250",
        }
        if process:
            environ = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
            if token is None:
                environ.pop("NIGHTSHIFT_TOKEN", None)
            done = subprocess.run(
                [NIGHTSHIFT, *args],
                env=environ,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return Done(done.returncode, done.stdout, done.stderr)
        result = CliRunner().invoke(nightshift_app, list(args), input=stdin, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Done(result.exit_code, result.stdout, result.stderr)

    def api(self, path: str, token: str = ADMIN, **params: Any) -> Any:
        answer = httpx.get(
            self.url + "/api/v1" + path,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """One service per backend for the whole module; each test uses apps of its own."""
    workdir = tmp_path_factory.mktemp(f"cli-{request.param}")
    (workdir / "clijobs.py").write_text(JOBS_MODULE)
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'nightshift.db'}"
    else:
        schema = f"ns_cli_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
        except psycopg.OperationalError as exc:
            pytest.fail(f"PostgreSQL is required and unreachable at {PG_URL}: {exc}")
        url = pg_schema_url(schema)
    service = ServiceProcess(
        workdir, url, NIGHTSHIFT_ADMIN_TOKEN=ADMIN, NIGHTSHIFT_WORKER_PROCESSES="1"
    )
    service.start()
    try:
        yield Live(service)
    finally:
        service.stop()
        if schema is not None:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def header_of(table: str) -> str:
    return next(line for line in table.splitlines() if line.strip().startswith("ID"))


def test_a_job_from_create_to_delete(live: Live) -> None:
    assert live.cli("apps", "create", "life").code == 0
    created = live.cli(
        "jobs", "create", "--app", "life", "--name", "hello", "--function", "clijobs:hello",
        "--schedule", "every 1h", "--tz", "Europe/Paris", "--tag", "demo", "--retries", "2",
        "--backoff", "5", "--json", process=True,
    )  # fmt: skip
    assert created.code == 0, created.stderr
    job = created.json()
    job_id = job["id"]
    assert job["kind"] == "python" and job["retries"] == {"max": 2, "backoff_s": 5.0}
    assert live.cli("jobs", "show", str(job_id), "--json").json() == live.api(f"/jobs/{job_id}")

    table = live.cli("jobs", "list", "--app", "life")
    assert table.code == 0
    for column in ("ID", "App", "Name", "Kind", "Schedule", "Timezone", "State", "Next fire"):
        assert column in header_of(table.stdout)
    row = next(line for line in table.stdout.splitlines() if "hello" in line)
    assert "every 1h" in row and "Europe/Paris" in row and "active" in row
    as_json = live.cli("jobs", "list", "--app", "life", "--json").json()
    assert as_json == live.api("/jobs", app="life")

    edited = live.cli(
        "jobs", "edit", str(job_id), "--schedule", "9:00", "--set", "description=nightly"
    )
    assert edited.code == 0, edited.stderr
    after = live.api(f"/jobs/{job_id}")
    assert after["schedule"] == "9:00" and after["description"] == "nightly"
    assert after["retries"] == {"max": 2, "backoff_s": 5.0} and after["tags"] == ["demo"]

    bad = live.cli("jobs", "edit", str(job_id), "--schedule", "61 * * * *", process=True)
    assert bad.code == 2
    assert bad.error == "error: schedule: minute field '61': 61 is out of range 0-59"

    deleted = live.cli("jobs", "delete", str(job_id), "--yes")
    assert deleted.code == 0 and deleted.stdout.strip() == f"job {job_id} deleted"
    gone = live.cli("jobs", "show", str(job_id), process=True)
    assert gone.code == 1 and gone.error == f"error: job {job_id} not found"


def test_run_now_then_watch_it_in_runs_and_logs(live: Live) -> None:
    live.cli("apps", "create", "watch")
    job = live.cli(
        "jobs", "create", "--app", "watch", "--name", "greet", "--function", "clijobs:hello",
        "--json",
    ).json()  # fmt: skip
    started = live.cli("jobs", "run", str(job["id"]), "--param", "who=cli", "--low-priority")
    assert started.code == 0, started.stderr
    word, run_id, status = started.stdout.split()
    assert word == "run" and status == "pending"
    wait_for(lambda: live.api(f"/runs/{run_id}")["status"] == "succeeded", timeout=30)

    table = live.cli("runs", "list", "--job", str(job["id"]), process=True)
    assert table.code == 0
    header = header_of(table.stdout)
    columns = ["ID", "Job", "Status", "Created", "Waiting", "Started", "Duration", "Errors"]
    columns += ["Low priority", "Run by", "Progress", "Children", "Attempt"]
    assert [header.index(c) for c in columns] == sorted(header.index(c) for c in columns)
    row = next(line for line in table.stdout.splitlines() if line.split()[:1] == [run_id])
    assert "greet" in row and "succeeded" in row and "yes" in row  # low priority
    runs = live.cli("runs", "list", "--job", str(job["id"]), "--json").json()
    assert runs == live.api("/runs", job=job["id"])

    shown = live.cli("runs", "show", run_id, "--json").json()
    assert shown == live.api(f"/runs/{run_id}") and shown["params"] == {"who": "cli"}
    assert "succeeded" in live.cli("runs", "show", run_id).stdout
    logs = live.cli("runs", "logs", run_id, "--q", "hello")
    assert logs.code == 0 and "hello cli" in logs.stdout
    assert live.cli("runs", "logs", run_id, "--q", "no such text").stdout == ""

    tested = live.cli("jobs", "test", str(job["id"]), "--param", "who=tester")
    assert tested.code == 0, tested.stdout + tested.stderr
    assert "succeeded" in tested.stdout and "hello tester" in tested.stdout


class _Pong(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, *args: object) -> None:
        pass


def test_test_of_an_http_job_shows_request_and_response(live: Live) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pong)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    ).start()
    try:
        target = f"http://127.0.0.1:{server.server_port}/action"
        live.cli("apps", "create", "web")
        job = live.cli(
            "jobs", "create", "--app", "web", "--name", "ping", "--url", target,
            "--set", "config.query.type=1", "--json",
        ).json()  # fmt: skip
        assert job["kind"] == "http" and job["config"]["url"] == target
        tested = live.cli("jobs", "test", str(job["id"]))
    finally:
        server.shutdown()
        server.server_close()
    assert tested.code == 0, tested.stdout + tested.stderr
    out = tested.stdout
    assert f"GET {target}?type=1" in out and "status 200" in out and "pong" in out
    assert out.index("request") < out.index("response") < out.index("log")


def test_preview_asks_the_service_and_bad_schedules_exit_2(live: Live) -> None:
    fires = live.cli(
        "jobs", "preview", "0 9 * * *", "--tz", "Europe/Paris", "--count", "2",
        "--from", "2026-03-02T00:00:00+00:00",
    )  # fmt: skip
    assert fires.code == 0, fires.stderr
    assert fires.stdout.splitlines() == ["2026-03-02T09:00:00+01:00", "2026-03-03T09:00:00+01:00"]
    bad = live.cli("jobs", "preview", "61 * * * *", process=True)
    assert bad.code == 2 and bad.stdout == ""
    assert bad.error == "error: schedule: minute field '61': 61 is out of range 0-59"
    zone = live.cli("jobs", "preview", "9:00", "--tz", "Mars/Base")
    assert zone.code == 2 and zone.error.startswith("error: timezone: ")


def test_an_app_token_sees_only_its_app(live: Live) -> None:
    for app in ("alpha", "beta"):
        live.cli("apps", "create", app)
        live.cli(
            "jobs", "create", "--app", app, "--name", f"{app}-job", "--function", "clijobs:hello"
        )
    beta_job = live.api("/jobs", app="beta")["items"][0]

    made = live.cli("tokens", "create", "--name", "alpha-ci", "--app", "alpha", process=True)
    assert made.code == 0, made.stderr
    secret = made.stdout.strip()
    assert len(made.stdout.splitlines()) == 1 and secret
    assert "shown only now" in made.stderr

    mine = live.cli("jobs", "list", "--json", token=secret, process=True)
    assert mine.code == 0, mine.stderr
    assert {job["app"] for job in mine.json()["items"]} == {"alpha"}
    hidden = live.cli("jobs", "show", str(beta_job["id"]), token=secret)
    assert hidden.code == 1 and hidden.error == f"error: job {beta_job['id']} not found"
    apps = live.cli("apps", "list", "--json", token=secret).json()
    assert [app["name"] for app in apps["items"]] == ["alpha"]

    tokens = live.cli("tokens", "list", "--json").json()["items"]
    token_id = next(t["id"] for t in tokens if t["name"] == "alpha-ci")
    assert "alpha-ci" in live.cli("tokens", "list").stdout
    revoked = live.cli("tokens", "revoke", str(token_id))
    assert revoked.code == 0 and revoked.stdout.strip() == f"token {token_id} revoked"
    refused = live.cli("jobs", "list", token=secret, process=True)
    assert refused.code == 2
    assert refused.error == "error: unauthorized: set --token or NIGHTSHIFT_TOKEN"
    anonymous = live.cli("runs", "list", token=None)
    assert anonymous.code == 2 and anonymous.error.startswith("error: unauthorized")


def test_jobs_import_creates_every_job_or_none(live: Live, tmp_path) -> None:  # type: ignore[no-untyped-def]
    jobs = [
        {"app": "bulk", "name": f"b{i}", "function": "clijobs:hello"} for i in range(3)
    ]  # a declaration's shorthand, not the API's job: refused, naming the field
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs))
    bad = live.cli("jobs", "import", str(path), process=True)
    assert bad.code == 2 and bad.error == "error: jobs[0].kind: is required"
    assert live.api("/jobs", app="bulk")["items"] == []

    jobs = [
        {"app": "bulk", "name": f"b{i}", "kind": "python", "schedule": "every 1h",
         "config": {"function": "clijobs:hello"}}
        for i in range(3)
    ]  # fmt: skip
    path.write_text(json.dumps({"jobs": jobs}))
    made = live.cli("jobs", "import", str(path), process=True)
    assert made.code == 0, made.stderr
    assert made.stdout.strip() == "3 jobs created in bulk"
    listed = live.api("/jobs", app="bulk")["items"]
    assert [j["name"] for j in listed] == ["b0", "b1", "b2"]
    assert all(j["next_fire_at"] and j["schedule"] == "every 1h" for j in listed)
    again = live.cli(
        "jobs", "import", "-", stdin=json.dumps([*jobs[2:], {**jobs[0], "name": "b9"}])
    )
    assert again.code == 2
    assert again.error == "error: jobs[0].name: app 'bulk' already has a job named 'b2'"
    assert len(live.api("/jobs", app="bulk")["items"]) == 3

    exported = live.cli("jobs", "list", "--app", "bulk", "--all", "--json").stdout
    renamed = json.loads(exported)
    for job in renamed["items"]:
        job["app"] = "copy"
    copied = live.cli("jobs", "import", "-", "--json", stdin=json.dumps(renamed))
    assert copied.code == 0, copied.stderr
    assert [(j["app"], j["name"]) for j in copied.json()["items"]] == [
        ("copy", "b0"), ("copy", "b1"), ("copy", "b2")
    ]  # fmt: skip


def test_apps_pause_and_resume_switch_the_schedules(live: Live) -> None:
    assert live.cli("apps", "create", "switch").code == 0
    paused = live.cli("apps", "pause", "switch")
    assert paused.code == 0 and paused.stdout.strip() == "app switch: schedules paused"
    assert live.api("/apps/switch")["schedules_enabled"] is False
    table = live.cli("apps", "list").stdout
    assert "Schedules" in table and "paused" in table
    assert live.cli("apps", "resume", "switch", "--json").json() == live.api("/apps/switch")
    assert live.api("/apps/switch")["schedules_enabled"] is True
    missing = live.cli("apps", "show", "nosuchapp")
    assert missing.code == 1 and missing.error == "error: app nosuchapp not found"
    deleted = live.cli("apps", "delete", "switch", "--yes")
    assert deleted.code == 0, deleted.stderr


def test_an_unreachable_service_is_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [NIGHTSHIFT, "jobs", "list", "--url", url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: cannot reach {url} (is `nightshift up` running?)\n"
