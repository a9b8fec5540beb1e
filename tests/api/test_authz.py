"""The authorisation matrix: every endpoint, asked by admin, app A's token, app B's token, no
token and a revoked token. An app token touches only its app: app B's things answer 404 to A
exactly as missing ones do, A's lists leave them out, and no filter reveals them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from nightshift.config import Settings
from nightshift.store.tables import run_logs
from tests.api.conftest import ApiServer, api_settings
from tests.conftest import _truncate

pytestmark = pytest.mark.timeout(60)

IDENTITIES = ("admin", "a", "b", "none", "revoked")
B_MARK = "zulu"  # in every name and value of app B that A could not know


@dataclass
class World:
    server: ApiServer
    clients: dict[str, httpx.Client]
    ids: dict[str, Any] = field(default_factory=dict)

    @property
    def admin(self) -> httpx.Client:
        return self.clients["admin"]

    def fresh(self, kind: str) -> dict[str, Any]:
        """A new thing of app B, for a case that deletes or consumes one."""
        tag = secrets.token_hex(3)
        if kind == "job":
            job = self.admin.post("/jobs", json=_job(f"{B_MARK}-{tag}", "bravo")).json()
            return {"job": job["id"]}
        if kind == "app":
            self.admin.post("/apps", json={"name": f"{B_MARK}-app-{tag}"})
            return {"app": f"{B_MARK}-app-{tag}"}
        if kind == "secret":
            self.admin.put(f"/apps/bravo/secrets/ZULU_{tag}", json={"value": "v"})
            return {"secret": f"ZULU_{tag}"}
        if kind == "source":
            self.admin.put(f"/apps/bravo/sources/{B_MARK}-{tag}", json={"url": "sqlite:///x"})
            return {"source": f"{B_MARK}-{tag}"}
        if kind == "token":
            token = self.admin.post("/tokens", json={"name": f"{B_MARK}-{tag}", "app": "bravo"})
            return {"token": token.json()["id"]}
        raise AssertionError(kind)


def _job(name: str, app: str) -> dict[str, Any]:
    return {
        "name": name,
        "app": app,
        "kind": "python",
        "tags": [name],
        "schedule": "every 1h",
        "config": {"function": "tests.jobs_worker:ok", "params": {"marker": name}},
    }


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("authz")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'nightshift.db'}"
    else:
        pg = request.getfixturevalue("pg_store_session")
        _truncate(pg)
        url = pg.url
    base = Settings(database_url=url, http_allow_private=True)
    server = ApiServer(api_settings(base, tmp, test_wait_s=0.2), ("api",)).start()
    admin = server.client()
    ids: dict[str, Any] = {}
    tokens: dict[str, str | None] = {"admin": None, "none": None}
    for app, key in (("alpha", "a"), ("bravo", "b")):
        admin.post("/apps", json={"name": app})
        tokens[key] = admin.post("/tokens", json={"name": f"{app}-bot", "app": app}).json()["token"]
        mark = "alpha" if app == "alpha" else B_MARK
        job = admin.post("/jobs", json=_job(f"{mark}-job", app)).json()
        run = admin.post(f"/jobs/{job['id']}/run", json={"params": {"marker": mark}}).json()
        ids[f"{key}_job"], ids[f"{key}_run"] = job["id"], run["id"]
        with server.store.engine.begin() as conn:
            conn.execute(
                insert(run_logs).values(
                    run_id=run["id"], at=datetime.now(UTC), level="INFO", message=f"{mark} log"
                )
            )
    admin.put("/apps/bravo/secrets/ZULU_SECRET", json={"value": "zulu-value"})
    admin.put("/apps/bravo/sources/zulu-db", json={"url": "postgresql://zulu@zulu-host/db"})
    revoked = admin.post("/tokens", json={"name": "old", "app": "alpha"}).json()
    admin.delete(f"/tokens/{revoked['id']}")
    clients = {"admin": admin, "none": server.client(None)}
    clients["a"], clients["b"] = server.client(tokens["a"]), server.client(tokens["b"])
    clients["revoked"] = server.client(revoked["token"])
    yield World(server, clients, ids)
    for client in clients.values():
        client.close()
    server.stop()


@dataclass(frozen=True)
class Case:
    """One endpoint: how to call it and what each identity gets."""

    method: str
    path: str
    admin: int
    a: int
    b: int
    body: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    fresh: str | None = None  # a fresh thing of app B the call consumes
    open: bool = False  # no token needed
    a_empty: bool = False  # A's answer is a list left empty

    def expected(self, who: str) -> int:
        if who in ("none", "revoked") and not self.open:
            return 401
        return {"admin": self.admin, "a": self.a, "b": self.b}.get(who, self.admin)


CASES: dict[str, Case] = {
    "health": Case("GET", "/health", 200, 200, 200, open=True),
    "list apps": Case("GET", "/apps", 200, 200, 200),
    "create app": Case("POST", "/apps", 201, 403, 403, body={"name": "{new}"}),
    "get app B": Case("GET", "/apps/bravo", 200, 404, 200),
    "patch app B": Case("PATCH", "/apps/bravo", 200, 404, 200, body={"retention_days": 9}),
    "delete an app": Case("DELETE", "/apps/{app}", 204, 403, 403, fresh="app"),
    "list jobs": Case("GET", "/jobs", 200, 200, 200),
    "list jobs of B": Case("GET", "/jobs", 200, 200, 200, params={"app": "bravo"}, a_empty=True),
    "jobs by B's tag": Case(
        "GET", "/jobs", 200, 200, 200, params={"tag": "zulu-job"}, a_empty=True
    ),
    "create job in B": Case(
        "POST", "/jobs", 201, 404, 201, body={**_job("{new}", "bravo"), "tags": []}
    ),
    "bulk create in B": Case(
        "POST", "/jobs/bulk", 201, 404, 201, body={"jobs": [{**_job("{new}", "bravo"), "tags": []}]}
    ),
    "get job of B": Case("GET", "/jobs/{b_job}", 200, 404, 200),
    "patch job of B": Case("PATCH", "/jobs/{b_job}", 200, 404, 200, body={"description": "d"}),
    "delete job of B": Case("DELETE", "/jobs/{job}", 204, 404, 204, fresh="job"),
    "run job of B": Case("POST", "/jobs/{b_job}/run", 202, 404, 202, body={}),
    "test job of B": Case("POST", "/jobs/{b_job}/test", 504, 404, 504, body={}),
    "next fires of B's job": Case("GET", "/jobs/{b_job}/next-fires", 200, 404, 200),
    "preview": Case("GET", "/schedules/preview", 200, 200, 200, params={"schedule": "9:00"}),
    "list runs": Case("GET", "/runs", 200, 200, 200),
    "runs of B": Case("GET", "/runs", 200, 200, 200, params={"app": "bravo"}, a_empty=True),
    "runs of B's job": Case("GET", "/runs", 200, 200, 200, params={"job": "{b_job}"}, a_empty=True),
    "runs under B's root": Case(
        "GET", "/runs", 200, 200, 200, params={"root": "{b_run}"}, a_empty=True
    ),
    "get run of B": Case("GET", "/runs/{b_run}", 200, 404, 200),
    "logs of B's run": Case("GET", "/runs/{b_run}/logs", 200, 404, 200),
    "list B's secrets": Case("GET", "/apps/bravo/secrets", 200, 404, 200),
    "put B's secret": Case(
        "PUT", "/apps/bravo/secrets/ZULU_NEW", 204, 404, 204, body={"value": "v"}
    ),
    "delete B's secret": Case(
        "DELETE", "/apps/bravo/secrets/{secret}", 204, 404, 204, fresh="secret"
    ),
    "list B's sources": Case("GET", "/apps/bravo/sources", 200, 404, 200),
    "put B's source": Case(
        "PUT", "/apps/bravo/sources/zulu-new", 204, 404, 204, body={"url": "sqlite:///y"}
    ),
    "delete B's source": Case(
        "DELETE", "/apps/bravo/sources/{source}", 204, 404, 204, fresh="source"
    ),
    "list tokens": Case("GET", "/tokens", 200, 403, 403),
    "create token": Case("POST", "/tokens", 201, 403, 403, body={"name": "t", "app": "bravo"}),
    "revoke token": Case("DELETE", "/tokens/{token}", 204, 403, 403, fresh="token"),
    "reload": Case("POST", "/reload", 200, 403, 403),
}


def _fill(value: Any, names: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**names) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


@pytest.mark.parametrize("who", IDENTITIES)
@pytest.mark.parametrize("name", list(CASES))
def test_authorisation(world: World, name: str, who: str) -> None:
    case = CASES[name]
    names = {**world.ids, "new": f"n-{secrets.token_hex(4)}"}
    if case.fresh:
        names.update(world.fresh(case.fresh))
    answer = world.clients[who].request(
        case.method,
        _fill(case.path, names),
        json=_fill(case.body, names),
        params=_fill(case.params, names),
    )
    assert answer.status_code == case.expected(who), answer.text
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) == {"code", "message", "field"}
    if who == "a":
        assert B_MARK not in answer.text, answer.text  # nothing of app B, not even its names
        if answer.status_code == 200 and "items" in answer.json():
            items = answer.json()["items"]
            assert all(item.get("app", "alpha") == "alpha" for item in items)
            if case.a_empty:
                assert items == []
            elif name in ("list jobs", "list runs", "list apps"):
                assert items, "A sees its own things"


def test_a_404_for_another_apps_job_is_the_same_as_for_a_missing_one(world: World) -> None:
    a = world.clients["a"]
    theirs = a.get(f"/jobs/{world.ids['b_job']}")
    missing = a.get("/jobs/987654321")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["message"].replace(str(world.ids["b_job"]), "N") == (
        missing.json()["error"]["message"].replace("987654321", "N")
    )


def test_run_by_is_the_token_name(world: World) -> None:
    run = world.clients["b"].post(f"/jobs/{world.ids['b_job']}/run", json={}).json()
    assert run["run_by"] == "bravo-bot"
    run = world.admin.post(f"/jobs/{world.ids['b_job']}/run", json={}).json()
    assert run["run_by"] == "admin"
