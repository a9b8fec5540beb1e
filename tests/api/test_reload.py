"""Reload and declared jobs: code and nightshift.toml declarations, synced at start and on
`POST /reload`, matched by app and name; timers kept; STOPped jobs woken; new code loaded."""

from __future__ import annotations

import secrets
import sys
import textwrap
import weakref
from pathlib import Path

import pytest

from tests.api.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

MODULE = textwrap.dedent(
    """
    import nightshift

    @nightshift.job(schedule="every 1h", app="rl")
    def keeper(ctx):
        return nightshift.OK

    @nightshift.job(schedule="every 1h", app="rl", description="{version}")
    def stopper(ctx):
        ctx.log.info("running {version}")
        return nightshift.STOP
    """
)


def test_reload_keeps_timers_wakes_stopped_jobs_and_loads_new_code(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path, monkeypatch
) -> None:
    name = f"reload_jobs_{secrets.token_hex(4)}"
    source = tmp_path / f"{name}.py"
    source.write_text(MODULE.format(version="v1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    api = serve(roles=("api", "worker"), imports=[name])
    with api.client() as admin:
        jobs = {j["name"]: j for j in admin.get("/jobs", params={"app": "rl"}).json()["items"]}
        assert set(jobs) == {"keeper", "stopper"}
        assert all(j["declared"] for j in jobs.values())
        stopper = jobs["stopper"]["id"]

        def finished(run_id: int) -> dict:
            return (r := admin.get(f"/runs/{run_id}").json())["status"] == "succeeded" and r

        first = admin.post(f"/jobs/{stopper}/run").json()
        wait_until(lambda: finished(first["id"]))
        held = admin.get(f"/jobs/{stopper}").json()
        assert held["state"] == "stopped_until_reload" and held["enabled"] is True
        logs = admin.get(f"/runs/{first['id']}/logs").json()["items"]
        assert [line["message"] for line in logs] == ["running v1"]

        source.write_text(MODULE.format(version="version-2"))  # another size: no stale .pyc
        answer = admin.post("/reload")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "created": [],
            "updated": ["rl/stopper"],
            "disabled": [],
            "released": 1,
            "modules": [name],
        }
        keeper = admin.get(f"/jobs/{jobs['keeper']['id']}").json()
        assert keeper["next_fire_at"] == jobs["keeper"]["next_fire_at"]  # timer kept
        woken = admin.get(f"/jobs/{stopper}").json()
        assert woken["state"] == "active" and woken["description"] == "version-2"
        assert woken["next_fire_at"] is not None

        second = admin.post(f"/jobs/{stopper}/run").json()
        wait_until(lambda: finished(second["id"]))
        logs = admin.get(f"/runs/{second['id']}/logs").json()["items"]
        assert [line["message"] for line in logs] == ["running version-2"]  # new code ran

        source.write_text("def broken(:\n")  # a syntax error: 422, nothing synced
        answer = admin.post("/reload")
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["field"] == "imports" and "SyntaxError" in error["message"]
        assert admin.get(f"/jobs/{stopper}").json()["state"] == "stopped_until_reload"


def test_a_reload_frees_the_replaced_code(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path, monkeypatch
) -> None:
    """The service keeps what start-up built out of the collector's sight; the code a reload
    replaces is collected all the same, so reloads do not pile up old modules."""
    name = f"reload_frees_{secrets.token_hex(4)}"
    source = tmp_path / f"{name}.py"
    source.write_text("class Cycle:\n    pass\n\nCycle.me = Cycle  # only the collector frees it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    api = serve(imports=[name])
    old = weakref.ref(sys.modules[name].Cycle)
    with api.client() as admin:
        source.write_text("class Cycle:\n    version = 2\n")
        assert admin.post("/reload").status_code == 200
    assert sys.modules[name].Cycle.version == 2
    assert old() is None


TOML = """
[[jobs]]
name = "ping"
app = "decl"
kind = "http"
schedule = "{schedule}"
config = {{ url = "http://127.0.0.1:9/ping", query = "parameters={{type:1}}" }}
"""
REPORT = """
[[jobs]]
name = "report"
app = "decl"
function = "tests.jobs_worker:ok"
schedule = "0 8 * * *"
timezone = "America/New_York"
retries = 2
params = { who = "toml" }
"""


def test_toml_declared_jobs_are_created_once_updated_and_disabled(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path
) -> None:
    toml = tmp_path / "nightshift.toml"
    toml.write_text(TOML.format(schedule="*/10 * * * *") + REPORT)
    api = serve()

    with api.client() as admin:

        def declared() -> dict[str, dict]:
            items = admin.get("/jobs", params={"app": "decl"}).json()["items"]
            return {j["name"]: j for j in items}

        jobs = declared()
        assert set(jobs) == {"ping", "report"}
        report = jobs["report"]
        assert report["kind"] == "python" and report["declared"] is True
        assert report["config"] == {"function": "tests.jobs_worker:ok", "params": {"who": "toml"}}
        assert report["retries"]["max"] == 2 and report["timezone"] == "America/New_York"
        assert jobs["ping"]["config"]["query"] == "parameters={type:1}"

        same = admin.post("/reload").json()
        assert (same["created"], same["updated"], same["disabled"]) == ([], [], [])
        assert declared() == jobs  # never duplicated, timers untouched

        toml.write_text(TOML.format(schedule="*/5 * * * *"))  # report removed
        changed = admin.post("/reload").json()
        assert changed["updated"] == ["decl/ping"] and changed["disabled"] == ["decl/report"]
        after = declared()
        assert after["ping"]["schedule"] == "*/5 * * * *"
        assert after["report"]["state"] == "disabled" and after["report"]["enabled"] is False
        assert "no longer declared" in after["report"]["deactivated_reason"]
        assert after["report"]["id"] == report["id"]  # disabled, not deleted

        toml.write_text(TOML.format(schedule="*/5 * * * *") + REPORT)
        back = admin.post("/reload").json()
        assert back["updated"] == ["decl/report"]
        assert declared()["report"]["state"] == "active"

        toml.write_text(TOML.format(schedule="61 * * * *") + REPORT)
        bad = admin.post("/reload")
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["field"] == "schedule"
        assert "decl/ping" in error["message"] and "nightshift.toml [[jobs]] #1" in error["message"]
        assert "61 is out of range" in error["message"]
        assert declared()["ping"]["schedule"] == "*/5 * * * *"  # nothing changed

        toml.write_text('[[jobs]]\nname = "nokind"\n')
        assert admin.post("/reload").json()["error"]["field"] == "kind"
        toml.write_text(TOML.format(schedule="*/5 * * * *") + REPORT)
    api.stop()

    again = serve()  # a start syncs too, and finds everything in place
    with again.client() as admin:
        items = admin.get("/jobs", params={"app": "decl"}).json()["items"]
        assert sorted(j["name"] for j in items) == ["ping", "report"]
