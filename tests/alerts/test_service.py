"""End to end: `nightshift up`'s roles in one process; the scheduler role's dispatcher loop
alerts when an http job fails for good."""

from __future__ import annotations

from tests.alerts.conftest import Hook
from tests.api.conftest import wait_until


def test_the_scheduler_role_runs_the_dispatcher(serve, hook: Hook) -> None:  # type: ignore[no-untyped-def]
    server = serve(roles=("api", "scheduler", "worker"), alert_poll_s=0.1)
    with server.client() as admin:
        job = admin.post(
            "/jobs",
            json={"name": "ping", "app": "shop", "kind": "http", "config": {"url": hook.url}},
        ).json()
        rule = admin.post("/alerts", json={"app": "shop", "webhook_url": hook.url}).json()
        run = admin.post(f"/jobs/{job['id']}/run").json()

        wait_until(lambda: hook.received, timeout=30)
        body = hook.received[0]["json"]
        assert (body["event"], body["job"]["name"]) == ("failed", "ping")
        assert body["run"]["id"] == run["id"]
        assert body["run"]["error"]["type"] == "UnexpectedStatus"
        assert body["url"].endswith(f"/api/v1/runs/{run['id']}")
        items = wait_until(
            lambda: [
                d
                for d in admin.get(f"/alerts/{rule['id']}/deliveries").json()["items"]
                if d["status"] == "delivered"
            ]
        )
        assert len(items) == 1
