"""Jobs over HTTP: create, read, change, list with filters and cursors, delete, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import ApiServer, app_token, wait_until

pytestmark = pytest.mark.timeout(60)

JOB_FIELDS = {
    "id", "app", "name", "description", "tags", "kind", "config", "schedule", "timezone",
    "enabled", "overlap", "catch_up", "max_lateness_s", "retries", "timeout_s", "low_priority",
    "start_at", "end_at", "start_delay_s", "jitter_s", "next_fire_at", "last_run",
    "deactivated_reason", "state", "declared", "created_at", "updated_at",
}  # fmt: skip


def py_job(name: str, **fields: object) -> dict:
    return {
        "name": name,
        "kind": "python",
        "config": {"function": "tests.jobs_worker:ok"},
        **fields,
    }


def test_create_read_change_and_delete_a_job(admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.post(
        "/jobs",
        json=py_job(
            "nightly",
            app="shop",
            description="the report",
            tags=["reports"],
            schedule="every 2h",
            timezone="America/New_York",
            retries=3,
            timeout_s=600,
        ),
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert set(job) == JOB_FIELDS
    assert job["app"] == "shop" and job["retries"] == {"max": 3, "backoff_s": 10.0}
    assert job["state"] == "active" and job["declared"] is False and job["last_run"] is None
    assert job["next_fire_at"].endswith("+00:00")  # ISO 8601 with its UTC offset
    assert admin.get(f"/jobs/{job['id']}").json() == job

    # An edit that leaves the timing alone keeps the timer; a new schedule recomputes it.
    kept = admin.patch(f"/jobs/{job['id']}", json={"description": "v2", "tags": ["a", "b"]})
    assert kept.status_code == 200, kept.text
    assert kept.json()["description"] == "v2" and kept.json()["tags"] == ["a", "b"]
    assert kept.json()["next_fire_at"] == job["next_fire_at"]
    moved = admin.patch(f"/jobs/{job['id']}", json={"schedule": "every 5m"}).json()
    assert moved["schedule"] == "every 5m" and moved["next_fire_at"] < job["next_fire_at"]
    disabled = admin.patch(f"/jobs/{job['id']}", json={"enabled": False}).json()
    assert disabled["state"] == "disabled" and disabled["next_fire_at"] is None
    unscheduled = admin.patch(f"/jobs/{job['id']}", json={"schedule": None}).json()
    assert unscheduled["schedule"] is None

    assert admin.delete(f"/jobs/{job['id']}").status_code == 204
    missing = admin.get(f"/jobs/{job['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert admin.delete(f"/jobs/{job['id']}").status_code == 404


INVALID = [
    ({"schedule": "61 * * * *"}, "schedule", "minute field '61': 61 is out of range 0-59"),
    ({"schedule": "every 5 fortnights"}, "schedule", "fortnights"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone", "unknown timezone 'Mars/Olympus_Mons'"),
    ({"kind": "http", "config": {"method": "GET"}}, "config.url", "an http job needs a url"),
    ({"kind": "http", "config": {"url": "ftp://x.example"}}, "config.url", "http:// or https://"),
    ({"timeout_s": -1}, "timeout_s", "greater than 0"),
    ({"overlap": "sometimes"}, "overlap", "'skip', 'queue', 'allow' or 'replace'"),
    ({"catch_up": "maybe"}, "catch_up", "'none', 'latest' or 'all'"),
    ({"retries": {"max": -1}}, "retries.max", "greater than or equal to 0"),
    ({"config": {"function": "not a reference"}}, "config.function", "module:function"),
    ({"colour": "blue"}, "colour", "is not a known field"),
    ({"name": "bad name!"}, "name", "pattern"),
    ({"kind": "sql", "config": {}}, "kind", "not available"),
    ({"start_at": "2026-12-01T09:00"}, "start_at", "UTC offset"),
    (
        {"start_at": "2026-12-02T00:00:00+00:00", "end_at": "2026-12-01T00:00:00+00:00"},
        "end_at",
        "later than start_at",
    ),
]


def test_invalid_jobs_answer_422_naming_the_field(admin) -> None:  # type: ignore[no-untyped-def]
    for change, field, message in INVALID:
        answer = admin.post("/jobs", json={**py_job("broken"), **change})
        assert answer.status_code == 422, (change, answer.text)
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("invalid", field), (change, error)
        assert message in error["message"], (change, error)
    missing = admin.post("/jobs", json={"kind": "python"}).json()["error"]
    assert (missing["field"], missing["message"]) == ("name", "is required")
    assert admin.get("/jobs").json()["items"] == []  # nothing was saved

    job = admin.post("/jobs", json=py_job("fine", schedule="every 1h")).json()
    for change, field, message in INVALID:
        if field in ("name", "colour"):
            continue
        answer = admin.patch(f"/jobs/{job['id']}", json=change)
        assert answer.status_code == 422, (change, answer.text)
        assert answer.json()["error"]["field"] == field, (change, answer.text)
        assert message in answer.json()["error"]["message"]
    assert admin.get(f"/jobs/{job['id']}").json() == job  # unchanged


def test_names_are_unique_per_app(admin) -> None:  # type: ignore[no-untyped-def]
    assert admin.post("/jobs", json=py_job("same", app="one")).status_code == 201
    assert admin.post("/jobs", json=py_job("same", app="two")).status_code == 201
    again = admin.post("/jobs", json=py_job("same", app="one"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


def test_an_app_token_creates_jobs_in_its_own_app(admin, api: ApiServer) -> None:  # type: ignore[no-untyped-def]
    token = app_token(admin, "shop")
    app_token(admin, "other")
    with api.client(token) as shop:
        created = shop.post("/jobs", json=py_job("mine"))
        assert created.status_code == 201 and created.json()["app"] == "shop"
        elsewhere = shop.post("/jobs", json=py_job("theirs", app="other"))
        assert elsewhere.status_code == 404 and elsewhere.json()["error"]["code"] == "not_found"
        moved = shop.patch(f"/jobs/{created.json()['id']}", json={"app": "other"})
        assert moved.status_code == 422 and moved.json()["error"]["field"] == "app"


def test_filters_and_cursor_pagination(admin) -> None:  # type: ignore[no-untyped-def]
    made = [
        admin.post("/jobs", json=py_job("a1", app="alpha", tags=["x"])).json(),
        admin.post("/jobs", json=py_job("a2", app="alpha", enabled=False)).json(),
        admin.post(
            "/jobs",
            json={
                "name": "h1",
                "app": "alpha",
                "kind": "http",
                "config": {"url": "http://127.0.0.1:9/"},
            },
        ).json(),
        admin.post("/jobs", json=py_job("b1", app="beta", tags=["x", "y"])).json(),
        admin.post("/jobs", json=py_job("b2", app="beta")).json(),
    ]
    ids = [job["id"] for job in made]

    def names(**query: object) -> list[str]:
        answer = admin.get("/jobs", params=query)
        assert answer.status_code == 200, answer.text
        return [j["name"] for j in answer.json()["items"]]

    assert names() == ["a1", "a2", "h1", "b1", "b2"]  # ascending id
    assert names(app="alpha") == ["a1", "a2", "h1"]
    assert names(tag="x") == ["a1", "b1"]
    assert names(kind="http") == ["h1"]
    assert names(enabled="false") == ["a2"]
    assert names(app="beta", tag="y") == ["b1"]
    assert names(app="nobody") == []

    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        body = admin.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        page = body.json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3

    for query, field in [
        ({"cursor": "garbage"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"kind": "fax"}, "kind"),
        ({"enabled": "perhaps"}, "enabled"),
    ]:
        answer = admin.get("/jobs", params=query)
        assert answer.status_code == 422, (query, answer.text)
        assert answer.json()["error"]["field"] == field


def test_deleting_a_job_removes_its_runs_and_abandons_the_one_in_flight(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path
) -> None:
    api = serve(roles=("api", "worker"))
    mark = tmp_path / "mark"
    with api.client() as admin:
        job = admin.post(
            "/jobs",
            json={
                "name": "long",
                "kind": "python",
                "config": {"function": "tests.jobs_worker:marks_then_sleeps"},
            },
        ).json()
        past = admin.post(
            f"/jobs/{job['id']}/run", json={"params": {"mark": str(mark), "seconds": 0}}
        )
        past_id = past.json()["id"]
        wait_until(lambda: admin.get(f"/runs/{past_id}").json()["status"] == "succeeded")
        mark.unlink()
        live = admin.post(
            f"/jobs/{job['id']}/run", json={"params": {"mark": str(mark), "seconds": 60}}
        )
        live_id = live.json()["id"]
        wait_until(mark.exists)
        assert admin.get(f"/runs/{live_id}").json()["status"] == "running"
        pid = int(mark.read_text().split()[0])

        assert admin.delete(f"/jobs/{job['id']}").status_code == 204

        for run_id in (past_id, live_id):
            assert admin.get(f"/runs/{run_id}").status_code == 404
            assert admin.get(f"/runs/{run_id}/logs").status_code == 404
        assert admin.get("/runs", params={"job": job["id"]}).json()["items"] == []
        # The worker learns at its next heartbeat that the run is gone and kills the process.
        wait_until(lambda: not api.runtime.worker.inflight, timeout=10)
        wait_until(lambda: not _alive(pid), timeout=10)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


# -- bulk create -----------------------------------------------------------------------------


def test_bulk_create_makes_every_job_in_one_request(admin) -> None:  # type: ignore[no-untyped-def]
    batch = [py_job(f"n{i}", schedule="every 1h", tags=[f"t{i}"]) for i in range(50)]
    batch.append(py_job("elsewhere", app="shop", timezone="Asia/Tokyo", retries=2))
    answer = admin.post("/jobs/bulk", json={"jobs": batch})
    assert answer.status_code == 201, answer.text
    items = answer.json()["items"]
    assert [(i["app"], i["name"]) for i in items] == [
        (job.get("app", "default"), job["name"]) for job in batch
    ]
    last = admin.get(f"/jobs/{items[-1]['id']}").json()
    assert (last["app"], last["timezone"], last["retries"]["max"]) == ("shop", "Asia/Tokyo", 2)
    first = admin.get(f"/jobs/{items[0]['id']}").json()
    assert set(first) == JOB_FIELDS and first["tags"] == ["t0"] and first["state"] == "active"
    # The same job as POST /jobs makes: defaults and the first fire included.
    single = admin.post("/jobs", json=py_job("single", schedule="every 1h", tags=["t0"])).json()
    differs = {k for k in JOB_FIELDS if first[k] != single[k]}
    assert differs <= {"id", "name", "next_fire_at", "created_at", "updated_at"}
    assert first["next_fire_at"] <= single["next_fire_at"]
    assert admin.get("/apps/shop").status_code == 200  # created with its job


def test_bulk_create_writes_nothing_when_one_item_is_bad(admin) -> None:  # type: ignore[no-untyped-def]
    good = [py_job("g0"), py_job("g1")]
    for change, field, message in INVALID:
        answer = admin.post("/jobs/bulk", json={"jobs": [*good, {**py_job("broken"), **change}]})
        assert answer.status_code == 422, (change, answer.text)
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("invalid", f"jobs[2].{field}"), (change, error)
        if field == "colour":  # the service's word for it (POST /jobs: FastAPI's)
            message = "is not a job field"
        assert message in error["message"], (change, error)
    for body, field in [
        ({"jobs": [py_job("a"), 7]}, "jobs[1]"),
        ({"jobs": [py_job("a"), {"kind": "python"}]}, "jobs[1].name"),
        ({"jobs": "all of them"}, "jobs"),
        ({}, "jobs"),
        ({"jobs": [], "extra": 1}, "extra"),
    ]:
        answer = admin.post("/jobs/bulk", json=body)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text
    assert admin.get("/jobs").json()["items"] == []  # nothing was saved
    assert admin.post("/jobs/bulk", json={"jobs": []}).json() == {"items": []}


def test_bulk_create_refuses_names_taken_in_the_app_or_the_batch(admin) -> None:  # type: ignore[no-untyped-def]
    admin.post("/jobs", json=py_job("taken", app="one"))
    taken = admin.post(
        "/jobs/bulk", json={"jobs": [py_job("fresh", app="one"), py_job("taken", app="one")]}
    )
    assert taken.status_code == 409, taken.text
    error = taken.json()["error"]
    assert (error["code"], error["field"]) == ("conflict", "jobs[1].name")
    assert "'taken'" in error["message"]
    twice = admin.post(
        "/jobs/bulk", json={"jobs": [py_job("x", app="one"), py_job("y"), py_job("x", app="one")]}
    )
    assert twice.status_code == 422 and twice.json()["error"]["field"] == "jobs[2].name"
    assert "jobs[0]" in twice.json()["error"]["message"]
    assert [j["name"] for j in admin.get("/jobs").json()["items"]] == ["taken"]
    # A name is unique per app: the same name in two apps is fine.
    both = admin.post("/jobs/bulk", json={"jobs": [py_job("x", app="one"), py_job("x", app="two")]})
    assert both.status_code == 201, both.text


def test_an_app_token_bulk_creates_in_its_own_app_only(admin, api: ApiServer) -> None:  # type: ignore[no-untyped-def]
    token = app_token(admin, "shop")
    app_token(admin, "other")
    with api.client(token) as shop:
        made = shop.post("/jobs/bulk", json={"jobs": [py_job("m1"), py_job("m2", app="shop")]})
        assert made.status_code == 201, made.text
        assert {i["app"] for i in made.json()["items"]} == {"shop"}
        for app in ("other", "nosuchapp"):  # another app answers as a missing one
            refused = shop.post(
                "/jobs/bulk", json={"jobs": [py_job("m3"), py_job("theirs", app=app)]}
            )
            assert refused.status_code == 404, refused.text
            error = refused.json()["error"]
            assert (error["code"], error["field"]) == ("not_found", "jobs[1].app")
            assert error["message"] == f"app '{app}' not found"
    assert sorted(j["name"] for j in admin.get("/jobs").json()["items"]) == ["m1", "m2"]


def test_bulk_bodies_over_the_limit_answer_413_and_a_batch_under_it_passes(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(max_body_bytes=4000)
    with api.client() as admin:
        many = [py_job(f"job-{i}") for i in range(100)]
        too_big = admin.post("/jobs/bulk", json={"jobs": many})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
        assert admin.get("/jobs").json()["items"] == []
        assert admin.post("/jobs/bulk", json={"jobs": many[:20]}).status_code == 201
