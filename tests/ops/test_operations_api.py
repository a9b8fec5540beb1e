"""Operations over HTTP on the real service, on SQLite and PostgreSQL: stop, resume, force
stop, cancel, restart and low priority, with real workers where a run must execute, and 409
with the reason where an operation does not apply."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from nightshift.store.base import NewRun
from nightshift.store.tables import runs
from tests.api.conftest import ApiServer, app_token, wait_until

pytestmark = pytest.mark.timeout(90)


def python_job(client: httpx.Client, name: str, fn: str, app: str = "ops", **fields: Any) -> int:
    config = {"function": f"tests.jobs_worker:{fn}", "params": fields.pop("params", {})}
    body = {"name": name, "app": app, "kind": "python", "config": config, **fields}
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def start(client: httpx.Client, job_id: int, **body: Any) -> int:
    answer = client.post(f"/jobs/{job_id}/run", json=body)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def status_is(client: httpx.Client, run_id: int, *wanted: str) -> dict[str, Any] | None:
    run = client.get(f"/runs/{run_id}").json()
    return run if run["status"] in wanted else None


def conflict(answer: httpx.Response, *words: str) -> str:
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "conflict"
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]


def _set(api: ApiServer, run_id: int, **values: object) -> None:
    with api.store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(**values))


def test_stop_near_300_then_resume_processes_every_item_exactly_once(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    out = tmp_path / "items.txt"
    with api.client() as admin:
        params = {"total": 1000, "delay": 0.005, "out": str(out)}
        run_id = start(admin, python_job(admin, "items", "items", params=params))
        # Progress is visible while the run runs (flushed at each heartbeat).
        seen = wait_until(
            lambda: (r := status_is(admin, run_id, "running")) and (r["progress"] or 0) >= 30 and r
        )
        assert 0 < seen["progress"] < 100
        stopping = admin.post(f"/runs/{run_id}/stop")
        assert stopping.status_code == 200, stopping.text
        assert stopping.json()["status"] in ("stopping", "stopped")
        stopped = wait_until(lambda: status_is(admin, run_id, "stopped", "succeeded"))
        assert stopped["status"] == "stopped"
        done_before = out.read_text().split()
        print(f"\nstopped after {len(done_before)} of 1000 items")
        assert 300 <= len(done_before) < 1000
        conflict(admin.post(f"/runs/{run_id}/stop"), "stopped already")

        resumed = admin.post(f"/runs/{run_id}/resume")
        assert resumed.status_code == 200, resumed.text
        assert (resumed.json()["id"], resumed.json()["status"]) == (run_id, "pending")
        finished = wait_until(lambda: status_is(admin, run_id, "succeeded", "failed", "stopped"))
        assert finished["status"] == "succeeded" and finished["progress"] == 100.0
        assert [int(n) for n in out.read_text().split()] == list(range(1000))
        logs = [line["message"] for line in admin.get(f"/runs/{run_id}/logs").json()["items"]]
        assert any(m.startswith("stop requested by") for m in logs), logs
        assert any(m.startswith("resume requested by") for m in logs), logs


def test_force_stop_ends_a_cpu_loop_within_5_s(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    with api.client() as admin:
        job = python_job(admin, "spin", "cpu_loop")
        run_id = start(admin, job)
        wait_until(lambda: status_is(admin, run_id, "running"))
        assert admin.post(f"/runs/{run_id}/stop").json()["status"] == "stopping"
        # It never looks at should_stop(): a graceful stop leaves it stopping.
        time.sleep(3 * api.settings.heartbeat_s)
        assert status_is(admin, run_id, "stopping")
        conflict(admin.post(f"/runs/{run_id}/cancel"), "stopping")
        began = time.monotonic()
        forced = admin.post(f"/runs/{run_id}/force-stop")
        assert forced.status_code == 200, forced.text
        ended = wait_until(lambda: status_is(admin, run_id, "stopped"), timeout=5)
        took = time.monotonic() - began
        print(f"\nforce stop of a stopping CPU loop took {took:.2f} s")
        assert ended["reason"] == "force-stopped" and took < 5

        # A running run may be force-stopped at once, without a graceful stop first.
        second = start(admin, job)
        wait_until(lambda: status_is(admin, second, "running"))
        began = time.monotonic()
        assert admin.post(f"/runs/{second}/force-stop").json()["status"] == "stopping"
        wait_until(lambda: status_is(admin, second, "stopped"), timeout=5)
        print(f"force stop of a running CPU loop took {time.monotonic() - began:.2f} s")
        # The worker still works afterwards.
        third = start(admin, python_job(admin, "fine", "ok"))
        wait_until(lambda: status_is(admin, third, "succeeded"))


def test_operations_that_do_not_apply_answer_409_with_the_reason(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    token = app_token(admin, "ops", name="ops-bot")
    other = app_token(admin, "elsewhere")
    job = python_job(admin, "hello", "ok", params={"who": "ops"})
    with api.client(token) as ops, api.client(other) as stranger:
        run_id = start(ops, job)  # nothing executes it: no worker
        conflict(ops.post(f"/runs/{run_id}/stop"), "has not started", "cancel it instead")
        conflict(ops.post(f"/runs/{run_id}/force-stop"), "cancel it instead")
        conflict(ops.post(f"/runs/{run_id}/resume"), "waiting to run")
        conflict(ops.post(f"/runs/{run_id}/restart"), "has not run yet")
        for op in ("stop", "resume", "force-stop", "cancel", "restart"):
            assert stranger.post(f"/runs/{run_id}/{op}").status_code == 404
            assert ops.post(f"/runs/99999/{op}").status_code == 404
        assert stranger.patch(f"/runs/{run_id}", json={"low_priority": True}).status_code == 404

        _set(api, run_id, status="running")
        conflict(ops.post(f"/runs/{run_id}/cancel"), "is running: stop it first")
        conflict(ops.post(f"/runs/{run_id}/resume"), "only a stopped run")
        assert ops.post(f"/runs/{run_id}/stop").json()["status"] == "stopping"
        conflict(ops.post(f"/runs/{run_id}/stop"), "force-stop it")

        _set(api, run_id, status="stopped")
        conflict(ops.post(f"/runs/{run_id}/force-stop"), "stopped already")
        assert ops.post(f"/runs/{run_id}/resume").json()["status"] == "pending"
        cancelled = ops.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["finished_at"] is not None
        conflict(ops.post(f"/runs/{run_id}/cancel"), "finished (cancelled)", "restart it")
        conflict(ops.post(f"/runs/{run_id}/resume"), "finished (cancelled)")

        again = ops.post(f"/runs/{run_id}/restart")
        assert again.status_code == 202, again.text
        fresh = again.json()
        assert fresh["id"] != run_id and fresh["status"] == "pending"
        assert fresh["restarted_from"] == run_id and fresh["run_by"] == "ops-bot"
        assert fresh["params"] == {"who": "ops"} and fresh["job_id"] == job
        assert ops.get(f"/runs/{run_id}").json()["restarted_from"] is None

        # A stopped run restarted is started over: it can no longer be resumed.
        _set(api, fresh["id"], status="stopped")
        newer = ops.post(f"/runs/{fresh['id']}/restart").json()
        old = ops.get(f"/runs/{fresh['id']}").json()
        assert (old["status"], old["reason"]) == ("cancelled", f"restarted as run {newer['id']}")
        conflict(ops.post(f"/runs/{fresh['id']}/resume"), "finished (cancelled)")

        # Low priority: set and removed at any time.
        low = ops.patch(f"/runs/{newer['id']}", json={"low_priority": True})
        assert low.status_code == 200 and low.json()["low_priority"] is True
        assert (
            ops.patch(f"/runs/{newer['id']}", json={"low_priority": False}).json()["low_priority"]
            is False
        )
        bad = ops.patch(f"/runs/{newer['id']}", json={"low_priority": True, "status": "x"})
        assert bad.status_code == 422
        assert ops.patch(f"/runs/{newer['id']}", json={}).status_code == 422


def test_a_low_priority_run_waits_while_normal_runs_are_pending(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))  # one python process: one run at a time
    with api.client() as admin:
        mark = tmp_path / "mark"
        blocker = start(admin, python_job(admin, "block", "marks_then_sleeps",
                                          params={"mark": str(mark), "seconds": 60}))  # fmt: skip
        wait_until(lambda: status_is(admin, blocker, "running"))
        quick = python_job(admin, "quick", "ok")
        low = start(admin, quick, low_priority=True)
        normal = [start(admin, quick) for _ in range(2)]
        flipped = start(admin, quick)
        assert admin.patch(f"/runs/{flipped}", json={"low_priority": True}).status_code == 200
        assert admin.post(f"/runs/{blocker}/stop").status_code == 200  # frees the slot
        wait_until(lambda: status_is(admin, blocker, "stopped"))
        ids = [*normal, low, flipped]
        done = wait_until(
            lambda: (
                all(status_is(admin, i, "succeeded") for i in ids)
                and {i: admin.get(f"/runs/{i}").json()["started_at"] for i in ids}
            )
        )
        assert max(done[i] for i in normal) < min(done[low], done[flipped])


def test_children_are_counted_even_when_created_after_their_parent_finished(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    with api.client() as admin:
        python_job(admin, "child", "child")
        flaky = python_job(admin, "flaky", "flaky")
        parent = start(admin, python_job(admin, "parent", "parent", params={"children": 3}))

        def counted(total: int, finished: int, failed: int) -> dict[str, Any] | None:
            run = admin.get(f"/runs/{parent}").json()
            want = {"total": total, "finished": finished, "failed": failed}
            return run if run["children"] == want and run["status"] == "succeeded" else None

        wait_until(lambda: counted(3, 3, 0))
        family = admin.get("/runs", params={"root": parent}).json()["items"]
        children = [r for r in family if r["id"] != parent]
        assert len(children) == 3
        assert all((r["parent_id"], r["root_id"]) == (parent, parent) for r in children)
        now = api.runtime.clock.now()
        late = api.store.enqueue(NewRun(job_id=flaky, run_at=now, parent_id=parent), now)
        assert late.root_id == parent
        wait_until(lambda: counted(4, 4, 1))


def test_the_console_log_is_readable_by_admins(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    logging.getLogger("nightshift.opstest").warning("console needle %d", 42)
    logging.getLogger("nightshift.opstest").error("another needle")
    found = admin.get("/logs/console", params={"q": "NEEDLE"}).json()["items"]
    assert [(x["level"], x["logger"], x["message"]) for x in found][-2:] == [
        ("WARNING", "nightshift.opstest", "console needle 42"),
        ("ERROR", "nightshift.opstest", "another needle"),
    ]
    assert set(found[-1]) == {"id", "at", "level", "logger", "message"}
    errors = admin.get("/logs/console", params={"q": "needle", "level": "error"}).json()["items"]
    assert errors and all(x["level"] == "ERROR" for x in errors)
    last = admin.get("/logs/console", params={"q": "needle", "limit": 1}).json()["items"]
    assert [x["message"] for x in last] == ["another needle"]
    since = found[-1]["at"]
    later = admin.get("/logs/console", params={"q": "needle", "since": since}).json()["items"]
    assert "another needle" in [x["message"] for x in later]
    assert admin.get("/logs/console", params={"level": "LOUD"}).status_code == 422
    with api.client(app_token(admin, "ops")) as ops:
        assert ops.get("/logs/console").status_code == 403
