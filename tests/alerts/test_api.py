"""The alerts API through the real service: rules, validation, app-token isolation, and the
deliveries a dispatcher step records."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx

from nightshift.alerts.dispatcher import AlertDispatcher
from nightshift.clock import FakeClock
from tests.alerts.conftest import Hook, add_job, fail_run, start_run
from tests.api.conftest import ApiServer, app_token


def create(client: httpx.Client, **body) -> httpx.Response:  # type: ignore[no-untyped-def]
    return client.post("/alerts", json=body)


def field_of(answer: httpx.Response) -> str | None:
    assert answer.status_code == 422, answer.text
    return answer.json()["error"]["field"]


def test_rule_lifecycle(api: ApiServer, admin: httpx.Client, hook: Hook) -> None:
    job = add_job(api.store)
    answer = create(
        admin,
        app="shop",
        job_id=job.id,
        on=["failed", "long_running"],
        max_duration_s=600,
        webhook_url=hook.url,
        email="ops@example.com",
    )
    assert answer.status_code == 201, answer.text
    rule = answer.json()
    assert {k: rule[k] for k in ("app", "job_id", "on", "max_duration_s", "email", "enabled")} == {
        "app": "shop",
        "job_id": job.id,
        "on": ["failed", "long_running"],
        "max_duration_s": 600.0,
        "email": ["ops@example.com"],
        "enabled": True,
    }
    assert rule["webhook_url"] == hook.url

    assert admin.get(f"/alerts/{rule['id']}").json() == rule
    assert [r["id"] for r in admin.get("/alerts", params={"app": "shop"}).json()["items"]] == [
        rule["id"]
    ]
    assert admin.get("/alerts", params={"job_id": job.id + 1}).json()["items"] == []

    patched = admin.patch(
        f"/alerts/{rule['id']}", json={"on": ["failed"], "email": None, "enabled": False}
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["on"], patched.json()["email"], patched.json()["enabled"]) == (
        ["failed"],
        [],
        False,
    )
    # Clearing the last channel is refused, naming it.
    assert field_of(admin.patch(f"/alerts/{rule['id']}", json={"webhook_url": None})) == (
        "webhook_url"
    )

    assert admin.delete(f"/alerts/{rule['id']}").status_code == 204
    assert admin.get(f"/alerts/{rule['id']}").status_code == 404
    assert admin.delete(f"/alerts/{rule['id']}").status_code == 404


def test_bad_input_names_the_field(api: ApiServer, admin: httpx.Client, hook: Hook) -> None:
    add_job(api.store)
    good = {"app": "shop", "webhook_url": hook.url}
    assert field_of(create(admin, app="shop")) == "webhook_url"  # no channel
    assert field_of(create(admin, **{**good, "webhook_url": "ftp://x.example/"})) == "webhook_url"
    assert field_of(create(admin, **{**good, "webhook_url": "not a url"})) == "webhook_url"
    assert field_of(create(admin, app="shop", email="nobody")) == "email"
    assert field_of(create(admin, app="shop", email=["a@example.com", "b@"])) == "email"
    assert field_of(create(admin, **good, on=["long_running"])) == "max_duration_s"
    assert field_of(create(admin, **good, on=["long_running"], max_duration_s=0)) == (
        "max_duration_s"
    )
    assert field_of(create(admin, **good, on=[])) == "on"
    assert field_of(create(admin, **good, on=["exploded"])) == "on.0"
    assert field_of(create(admin, **good, job_id=999_999)) == "job_id"
    assert field_of(create(admin, **good, colour="red")) == "colour"
    assert field_of(create(admin, webhook_url=hook.url)) == "app"
    assert field_of(create(admin, app="nope", webhook_url=hook.url)) == "app"


def test_webhook_url_obeys_the_http_address_policy(serve, hook: Hook) -> None:  # type: ignore[no-untyped-def]
    server = serve(http_allow_private=False)
    with server.client() as admin:
        assert admin.post("/apps", json={"name": "shop"}).status_code == 201
        answer = create(admin, app="shop", webhook_url=hook.url)  # 127.0.0.1
        assert field_of(answer) == "webhook_url"
        assert "NIGHTSHIFT_HTTP_ALLOW_PRIVATE" in answer.json()["error"]["message"]
        metadata = create(admin, app="shop", webhook_url="http://169.254.169.254/latest/")
        assert field_of(metadata) == "webhook_url"


def test_app_tokens_see_and_manage_only_their_app(
    api: ApiServer, admin: httpx.Client, hook: Hook
) -> None:
    shop_job = add_job(api.store, app="shop")
    blog_job = add_job(api.store, app="blog", name="digest")
    shop = api.client(app_token(admin, "shop"))
    blog = api.client(app_token(admin, "blog"))
    with shop, blog:
        mine = create(shop, webhook_url=hook.url)  # app defaults to the token's
        assert mine.status_code == 201, mine.text
        assert mine.json()["app"] == "shop"
        theirs = create(blog, job_id=blog_job.id, email="blog@example.com").json()
        assert theirs["app"] == "blog"

        # Another app's rules do not exist for this token.
        assert [r["id"] for r in shop.get("/alerts").json()["items"]] == [mine.json()["id"]]
        assert shop.get("/alerts", params={"app": "blog"}).json()["items"] == []
        for answer in (
            shop.get(f"/alerts/{theirs['id']}"),
            shop.patch(f"/alerts/{theirs['id']}", json={"enabled": False}),
            shop.delete(f"/alerts/{theirs['id']}"),
            shop.get(f"/alerts/{theirs['id']}/deliveries"),
            create(shop, app="blog", webhook_url=hook.url),
        ):
            assert answer.status_code == 404, answer.text
        # Another app's job is "no such job" in this app.
        assert field_of(create(shop, job_id=blog_job.id, webhook_url=hook.url)) == "job_id"
        assert field_of(
            shop.patch(f"/alerts/{mine.json()['id']}", json={"job_id": blog_job.id})
        ) == ("job_id")
        assert (
            shop.patch(f"/alerts/{mine.json()['id']}", json={"job_id": shop_job.id}).status_code
            == 200
        )

        assert blog.get(f"/alerts/{theirs['id']}").status_code == 200
        assert {r["app"] for r in admin.get("/alerts").json()["items"]} == {"shop", "blog"}


async def test_deliveries_show_status_attempts_and_last_error(
    api: ApiServer, admin: httpx.Client, hook: Hook
) -> None:
    store = api.store
    job = add_job(store)
    rule = create(admin, app="shop", webhook_url=hook.url).json()
    # The rule was created on the service's clock; runs that failed before it never alert.
    now = store.get_alert_rule(rule["id"]).created_at + timedelta(seconds=1)
    hook.answers = [500]

    async def deliveries() -> list[dict]:  # type: ignore[type-arg]
        answer = await asyncio.to_thread(admin.get, f"/alerts/{rule['id']}/deliveries")
        return answer.json()["items"]

    dispatcher = AlertDispatcher(store, FakeClock(now), api.settings)
    try:
        run = start_run(store, job, now)
        fail_run(store, run, now)
        assert await dispatcher.tick(now) == 1
        (item,) = await deliveries()
        assert {k: item[k] for k in ("run_id", "event", "channel", "status", "attempts")} == {
            "run_id": run.id,
            "event": "failed",
            "channel": "webhook",
            "status": "pending",
            "attempts": 1,
        }
        assert item["last_error"] == "HTTP 500"
        assert item["next_attempt_at"] is not None

        assert await dispatcher.tick(now + timedelta(minutes=5)) == 1
        (item,) = await deliveries()
        assert (item["status"], item["attempts"], item["last_error"]) == ("delivered", 2, None)
        assert item["delivered_at"] is not None
    finally:
        await dispatcher.close()


def test_alert_endpoints_are_in_the_openapi_document(api: ApiServer) -> None:
    paths = httpx.get(f"{api.base}/api/v1/openapi.json").json()["paths"]
    expected = {
        "/api/v1/alerts": {"get", "post"},
        "/api/v1/alerts/{rule_id}": {"get", "patch", "delete"},
        "/api/v1/alerts/{rule_id}/deliveries": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
        for method in methods:
            responses = paths[path][method]["responses"]
            (ok,) = [code for code in responses if code.startswith("2")]
            if ok != "204":
                assert "$ref" in responses[ok]["content"]["application/json"]["schema"]
