"""System jobs: registered like declared jobs, hidden unless system=true, run by the worker,
invisible to app tokens; pruning deletes old finished runs and their logs only; /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from nightshift.clock import FakeClock
from nightshift.store.tables import run_logs
from nightshift.system_jobs import SystemTasks
from tests.api.conftest import app_token, wait_until
from tests.stats.conftest import add_job, add_run

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SYSTEM_JOBS = ["prune-history", "recover-leases", "stats-rollup"]


def test_pruning_deletes_old_finished_runs_and_logs_only(store, settings) -> None:  # type: ignore[no-untyped-def]
    days = lambda n: NOW - timedelta(days=n)  # noqa: E731
    shop = add_job(store, "shop", "sync", days(90))
    brief = add_job(store, "brief", "tick", days(90))
    store.set_app_retention("brief", 2)
    old_done = add_run(store, shop, days(40), days(40), days(40), "succeeded", logs=3)
    old_skip = add_run(store, shop, days(45), None, days(45), "skipped")
    old_pending = add_run(store, shop, days(40))
    old_running = add_run(store, shop, days(40), days(40), None, "running")
    old_stopped = add_run(store, shop, days(40), days(40), days(40), "stopped", logs=1)
    recent = add_run(store, shop, days(10), days(10), days(10), "failed", logs=2)
    brief_old = add_run(store, brief, days(3), days(3), days(3), "succeeded", logs=1)
    brief_new = add_run(store, brief, days(1), days(1), days(1), "succeeded")

    tasks = SystemTasks(store, FakeClock(NOW), settings.model_copy(update={"prune_batch": 1}))
    assert tasks.prune() == {"deleted": {"shop": 2, "brief": 1}}
    left = set(store.get_runs(range(1, 100)))
    assert left == {old_pending, old_running, old_stopped, recent, brief_new}
    assert {old_done, old_skip, brief_old}.isdisjoint(left)
    with store.engine.connect() as conn:
        by_run = dict(
            conn.execute(select(run_logs.c.run_id, func.count()).group_by(run_logs.c.run_id)).all()
        )
    assert by_run == {old_stopped: 1, recent: 2}
    assert tasks.prune() == {"deleted": {}}


def test_registration_keeps_timers_and_follows_schedules(store, settings) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock(NOW)
    first = {j.name: j for j in SystemTasks(store, clock, settings).register()}
    assert sorted(first) == SYSTEM_JOBS
    assert all(j.system and j.app == "system" and j.kind == "system" for j in first.values())
    clock.set(NOW + timedelta(seconds=5))
    again = {j.name: j for j in SystemTasks(store, clock, settings).register()}
    assert {n: (j.id, j.next_fire_at) for n, j in again.items()} == {
        n: (j.id, j.next_fire_at) for n, j in first.items()
    }
    slower = settings.model_copy(update={"prune_schedule": "every 2h"})
    moved = {j.name: j for j in SystemTasks(store, clock, slower).register()}
    assert moved["prune-history"].schedule == "every 2h"
    assert moved["prune-history"].next_fire_at == NOW + timedelta(seconds=5, hours=2)
    assert moved["stats-rollup"].next_fire_at == first["stats-rollup"].next_fire_at
    assert store.list_jobs() == []  # hidden without system=True
    assert len(store.list_jobs(system=None)) == 3


def test_system_jobs_run_hidden_and_out_of_reach(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "scheduler", "worker"), recover_schedule="every 1s")
    with api.client() as admin:
        assert admin.get("/jobs").json()["items"] == []
        listed = admin.get("/jobs", params={"system": "true"}).json()["items"]
        assert sorted(j["name"] for j in listed) == SYSTEM_JOBS
        assert admin.get("/apps").json()["items"] == []
        assert [a["name"] for a in admin.get("/apps?system=true").json()["items"]] == ["system"]

        def system_runs():  # type: ignore[no-untyped-def]
            items = admin.get("/runs", params={"system": "true"}).json()["items"]
            return [r for r in items if r["status"] == "succeeded"]

        run = wait_until(system_runs)[0]
        assert run["app"] == "system" and run["result"] is not None
        assert admin.get("/runs").json()["items"] == []

        refused = admin.post("/jobs", json={"name": "x", "app": "shop", "kind": "system"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "kind"
        sneaky = {"name": "x", "app": "system", "kind": "http", "config": {"url": "http://x"}}
        assert admin.post("/jobs", json=sneaky).status_code == 422
        assert admin.post("/apps", json={"name": "system"}).status_code == 422
        assert admin.post("/tokens", json={"name": "t", "app": "system"}).status_code == 422

        token = app_token(admin, "shop")
        with api.client(token) as shop:
            assert shop.get(f"/runs/{run['id']}").status_code == 404
            assert shop.get("/runs", params={"system": "true"}).json()["items"] == []
            assert shop.get("/jobs", params={"system": "true"}).json()["items"] == []


def test_metrics_need_the_admin_token_and_name_the_families(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    job = add_job(api.store, "shop", "sync", datetime.now(UTC))
    now = datetime.now(UTC)
    add_run(api.store, job, now - timedelta(seconds=3), now - timedelta(seconds=1), None, "running")
    add_run(api.store, job, now + timedelta(hours=1))  # pending, not due
    with api.client() as admin:
        token = app_token(admin, "shop")
    url = f"{api.base}/metrics"
    import httpx

    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 403
    with api.client() as admin:
        answer = httpx.get(url, headers=admin.headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    for family in (
        "nightshift_runs",
        "nightshift_runs_finished_recent",
        "nightshift_queue_depth",
        "nightshift_run_waiting_seconds",
        "nightshift_run_lateness_seconds",
        "nightshift_worker_utilisation",
        "nightshift_worker_busy_slots",
        "nightshift_worker_slots",
        "nightshift_worker_processes_up",
    ):
        assert f"# TYPE {family} " in text, family
    assert 'nightshift_runs{app="shop",status="running"} 1.0' in text
    assert 'nightshift_runs{app="shop",status="pending"} 1.0' in text
    assert 'nightshift_run_waiting_seconds_bucket{le="5.0"} 1.0' in text
    assert 'nightshift_worker_slots{pool="loop"}' in text
    assert "# TYPE nightshift_worker_runs_withdrawn_total counter" in text
    assert "nightshift_worker_runs_withdrawn_total 0.0" in text
