"""Runs over HTTP: run now, test, the runs list with its filters and cursors, logs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import insert, update

from nightshift.store.base import NewRun
from nightshift.store.tables import run_logs, runs
from tests.api.conftest import ApiServer, app_token, wait_until

pytestmark = pytest.mark.timeout(60)

RUN_FIELDS = {
    "id", "job_id", "app", "status", "created_at", "scheduled_for", "started_at", "finished_at",
    "waiting_s", "duration_s", "attempt", "errors", "error", "low_priority", "run_by",
    "progress", "children", "parent_id", "root_id", "params", "result",
    "job_name", "run_at", "reason", "skip_count", "last_scheduled_for", "retry_of", "is_test",
    "restarted_from",
}  # fmt: skip


def test_run_now_answers_202_and_params_reach_the_job(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    with api.client() as admin:
        token = app_token(admin, "shop", name="deploy-bot")
        job = admin.post(
            "/jobs",
            json={
                "name": "hello",
                "app": "shop",
                "kind": "python",
                "config": {"function": "tests.jobs_worker:ok", "params": {"who": "default"}},
            },
        ).json()
    with api.client(token) as shop:
        started = shop.post(f"/jobs/{job['id']}/run", json={"params": {"who": "the api"}})
        assert started.status_code == 202, started.text
        run = started.json()
        assert set(run) == RUN_FIELDS
        assert run["status"] == "pending" and run["run_by"] == "deploy-bot"
        assert run["params"] == {"who": "the api"} and run["is_test"] is False
        assert run["children"] == {"total": 0, "finished": 0, "failed": 0}
        done = wait_until(
            lambda: (r := shop.get(f"/runs/{run['id']}").json())["status"] == "succeeded" and r
        )
        assert done["errors"] is False and done["error"] is None
        assert done["duration_s"] >= 0 and done["waiting_s"] >= 0 and done["progress"] == 100.0
        logs = shop.get(f"/runs/{run['id']}/logs").json()["items"]
        assert [line["message"] for line in logs] == ["hello the api"]
        assert set(logs[0]) == {"id", "at", "level", "message"}
        last = shop.get(f"/jobs/{job['id']}").json()["last_run"]
        assert last["id"] == run["id"] and last["status"] == "succeeded"
        # Without params the job's own defaults apply; low priority can be asked for.
        plain = shop.post(f"/jobs/{job['id']}/run", json={"low_priority": True}).json()
        assert plain["params"] == {"who": "default"} and plain["low_priority"] is True
        bare = shop.post(f"/jobs/{job['id']}/run")  # no body at all
        assert bare.status_code == 202


class _Echo(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps(
            {
                "path": self.path,
                "x_test": self.headers.get("X-Test"),
                "body": self.rfile.read(length).decode() if length else None,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/action"
    server.shutdown()


def test_the_test_endpoint_runs_an_http_job_and_answers_the_exchange(serve, echo_url) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    with api.client() as admin:
        job = admin.post(
            "/jobs",
            json={
                "name": "action",
                "kind": "http",
                "schedule": "every 1h",
                "retries": 3,
                "config": {"method": "POST", "url": echo_url, "query": "parameters={type:1}"},
            },
        ).json()
        answer = admin.post(
            f"/jobs/{job['id']}/test",
            json={
                "params": {
                    "query": {"extra": "2"},
                    "headers": {"X-Test": "yes"},
                    "body": {"hello": "world"},
                }
            },
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert set(result) == {"run", "request", "response", "log"}
        run = result["run"]
        assert run["status"] == "succeeded" and run["is_test"] is True and run["run_by"] == "admin"
        assert result["request"]["method"] == "POST"
        assert result["request"]["url"] == f"{echo_url}?parameters={{type:1}}&extra=2"
        assert result["request"]["headers"]["x-test"] == "yes"
        assert result["response"]["status"] == 200
        echoed = json.loads(result["response"]["body"])
        assert echoed == {
            "path": "/action?parameters={type:1}&extra=2",
            "x_test": "yes",
            "body": '{"hello": "world"}',
        }
        assert any("-> 200" in line["message"] for line in result["log"])
        assert set(result["log"][0]) == {"at", "level", "message"}
        # The test run is recorded and marked; the timer is untouched.
        listed = admin.get("/runs", params={"job": job["id"]}).json()["items"]
        assert [(r["id"], r["is_test"]) for r in listed] == [(run["id"], True)]
        assert admin.get(f"/jobs/{job['id']}").json()["next_fire_at"] == job["next_fire_at"]

        bad = admin.post(f"/jobs/{job['id']}/run", json={"params": {"headers": {"X": ["no"]}}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "params.headers"


def test_a_failed_test_run_is_not_retried(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    with api.client() as admin:
        job = admin.post(
            "/jobs",
            json={
                "name": "flaky",
                "kind": "python",
                "retries": {"max": 3, "backoff_s": 0},
                "config": {"function": "tests.jobs_worker:flaky"},
            },
        ).json()
        result = admin.post(f"/jobs/{job['id']}/test", json={}).json()
        assert result["run"]["status"] == "failed" and result["run"]["errors"] is True
        assert result["run"]["error"]["type"] == "RuntimeError"
        assert result["request"] is None and result["response"] is None
        assert any("attempt 1 failed" in line["message"] for line in result["log"])
        assert len(admin.get("/runs", params={"job": job["id"]}).json()["items"]) == 1


def test_the_test_endpoint_answers_504_when_no_worker_finishes_in_time(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(test_wait_s=0.3)  # the API alone: nobody executes runs
    with api.client() as admin:
        job = admin.post(
            "/jobs",
            json={"name": "idle", "kind": "python", "config": {"function": "tests.jobs_worker:ok"}},
        ).json()
        answer = admin.post(f"/jobs/{job['id']}/test", json={})
        assert answer.status_code == 504
        error = answer.json()["error"]
        assert error["code"] == "timeout" and "stays recorded" in error["message"]
        (run,) = admin.get("/runs", params={"job": job["id"]}).json()["items"]
        assert run["status"] == "pending" and run["is_test"] is True


def _set(api: ApiServer, run_id: int, **values: object) -> None:
    with api.store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(**values))


def test_runs_filters_and_cursor_pagination(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    def job(name: str, app: str) -> int:
        body = {"name": name, "app": app, "kind": "python"}
        body["config"] = {"function": "tests.jobs_worker:ok"}
        return admin.post("/jobs", json=body).json()["id"]

    one, two = job("one", "alpha"), job("two", "beta")
    made = [admin.post(f"/jobs/{one}/run").json()["id"] for _ in range(3)]
    made += [admin.post(f"/jobs/{two}/run").json()["id"] for _ in range(2)]
    _set(api, made[0], status="failed", error={"type": "E", "message": "boom"})
    _set(api, made[3], status="succeeded")
    now = datetime.now(UTC)
    child = api.store.enqueue(NewRun(job_id=two, run_at=now, parent_id=made[3]), now)
    system_job = api.runtime.service.create_job(
        {"name": "prune", "kind": "python", "config": {"function": "tests.jobs_worker:ok"}},
        system=True,
    )
    hidden = api.runtime.service.run_now(system_job.id)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    _set(api, made[1], created_at=old)

    def ids(**query: object) -> list[int]:
        answer = admin.get("/runs", params=query)
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["items"]]

    everything = [child.id, *reversed(made)]
    assert ids() == everything  # newest first, system runs left out
    assert ids(system="true") == [hidden.id, *everything]
    assert ids(job=one) == [made[2], made[1], made[0]]
    assert ids(app="beta") == [child.id, made[4], made[3]]
    assert ids(status="failed") == [made[0]]
    assert ids(status="failed,succeeded") == [made[3], made[0]]
    assert ids(root=made[3]) == [child.id, made[3]]
    assert ids(until="2026-01-02T00:00:00+00:00") == [made[1]]
    assert ids(since="2026-01-02T00:00:00Z", job=one) == [made[2], made[0]]
    assert ids(app="nobody") == []
    failed = admin.get(f"/runs/{made[0]}").json()
    assert failed["errors"] is True
    assert failed["error"] == {"type": "E", "message": "boom", "traceback": None}

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = admin.get("/runs", params=params).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == everything

    for query, field in [
        ({"status": "exploded"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"cursor": "bm9wZQ"}, "cursor"),
        ({"job": "x"}, "job"),
    ]:
        answer = admin.get("/runs", params=query)
        assert answer.status_code == 422, (query, answer.text)
        assert answer.json()["error"]["field"] == field
    # A cursor of another list is refused, not misread.
    jobs_cursor = admin.get("/jobs", params={"limit": 1}).json()["next_cursor"]
    assert admin.get("/runs", params={"cursor": jobs_cursor}).status_code == 422


def test_logs_search_by_text_level_and_time(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    body = {"name": "talk", "kind": "python", "config": {"function": "tests.jobs_worker:ok"}}
    job = admin.post("/jobs", json=body).json()
    run = admin.post(f"/jobs/{job['id']}/run").json()
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    lines = [
        ("DEBUG", "connecting to the warehouse"),
        ("INFO", "Fetched 100% of orders"),
        ("WARNING", "slow answer from the Warehouse"),
        ("ERROR", "gave up on invoices"),
    ]
    with api.store.engine.begin() as conn:
        conn.execute(
            insert(run_logs),
            [
                {"run_id": run["id"], "at": t0 + timedelta(minutes=n), "level": lvl, "message": m}
                for n, (lvl, m) in enumerate(lines)
            ],
        )

    def messages(**query: object) -> list[str]:
        answer = admin.get(f"/runs/{run['id']}/logs", params=query)
        assert answer.status_code == 200, answer.text
        return [line["message"] for line in answer.json()["items"]]

    assert messages() == [m for _, m in lines]
    assert messages(q="warehouse") == [lines[0][1], lines[2][1]]  # case-insensitive
    assert messages(q="100%") == [lines[1][1]]  # LIKE wildcards are literal
    assert messages(level="warning") == [lines[2][1], lines[3][1]]
    assert messages(q="warehouse", level="INFO") == [lines[2][1]]
    assert messages(since="2026-03-02T09:01:00+00:00", until="2026-03-02T09:03:00+00:00") == [
        lines[1][1],
        lines[2][1],
    ]
    assert messages(limit=1) == [lines[0][1]]
    assert admin.get(f"/runs/{run['id']}/logs", params={"level": "LOUD"}).status_code == 422
    assert admin.get("/runs/999999/logs").status_code == 404


def test_scheduled_runs_leave_run_by_empty(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "scheduler"))
    with api.client() as admin:
        body = {"name": "tick", "kind": "python", "schedule": "every 1s"}
        body["config"] = {"function": "tests.jobs_worker:ok"}
        job = admin.post("/jobs", json=body).json()
        fired = wait_until(
            lambda: admin.get("/runs", params={"job": job["id"]}).json()["items"], timeout=10
        )
        assert fired[0]["run_by"] is None and fired[0]["scheduled_for"] is not None
