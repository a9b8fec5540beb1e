"""Apps, tokens, secrets and data sources over HTTP."""

from __future__ import annotations

import hashlib
import logging
import re
import stat
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from nightshift.access import AccessService, SecretKeyError, load_secret_key
from nightshift.clock import SystemClock
from nightshift.config import Settings
from nightshift.domain.access import SecretKind
from nightshift.store.tables import api_tokens, app_secrets
from tests.api.conftest import ApiServer, app_token

pytestmark = pytest.mark.timeout(60)
TOKEN = re.compile(r"^ns_[A-Za-z0-9_-]{32,}$")


def test_apps_create_change_and_delete_with_everything_they_own(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.post("/apps", json={"name": "shop"})
    assert created.status_code == 201, created.text
    assert set(created.json()) == {"name", "schedules_enabled", "retention_days", "created_at"}
    assert created.json()["schedules_enabled"] is True
    assert admin.post("/apps", json={"name": "shop"}).status_code == 409
    bad = admin.post("/apps", json={"name": "no spaces"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"

    job = admin.post(
        "/jobs",
        json={
            "name": "tick",
            "app": "shop",
            "kind": "python",
            "schedule": "every 1m",
            "config": {"function": "tests.jobs_worker:ok"},
        },
    ).json()
    off = admin.patch("/apps/shop", json={"schedules_enabled": False})
    assert off.status_code == 200 and off.json()["schedules_enabled"] is False
    assert admin.get(f"/jobs/{job['id']}").json()["enabled"] is True  # jobs untouched
    system = min(j.next_fire_at for j in api.store.list_jobs(system=True))
    assert api.store.next_fire_due() == system  # nothing of the app fires; system jobs do
    on = admin.patch("/apps/shop", json={"schedules_enabled": True, "retention_days": 7}).json()
    assert on["schedules_enabled"] is True and on["retention_days"] == 7
    assert api.store.next_fire_due() is not None
    bad = admin.patch("/apps/shop", json={"retention_days": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "retention_days"
    names = [a["name"] for a in admin.get("/apps").json()["items"]]
    assert names == ["shop"]

    token = app_token(admin, "shop")
    run = admin.post(f"/jobs/{job['id']}/run").json()
    assert admin.put("/apps/shop/secrets/KEY", json={"value": "v"}).status_code == 204
    assert admin.delete("/apps/shop").status_code == 204
    for path in ("/apps/shop", f"/jobs/{job['id']}", f"/runs/{run['id']}"):
        assert admin.get(path).status_code == 404, path
    assert admin.get("/apps/shop/secrets").status_code == 404
    with api.client(token) as gone:
        assert gone.get("/jobs").status_code == 401  # its tokens went with it
    assert admin.delete("/apps/shop").status_code == 404


def test_tokens_are_shown_once_stored_hashed_and_revocable(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    admin.post("/apps", json={"name": "shop"})
    created = admin.post("/tokens", json={"name": "ci", "app": "shop"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "name", "app", "token", "created_at"}
    assert body["app"] == "shop" and TOKEN.match(body["token"])
    secret = body["token"]

    listed = admin.get("/tokens").json()
    assert listed["next_cursor"] is None
    assert [(t["id"], t["name"], t["app"]) for t in listed["items"]] == [(body["id"], "ci", "shop")]
    assert secret not in str(listed)
    with api.store.engine.connect() as conn:
        row = conn.execute(select(api_tokens)).one()._mapping
    assert row["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(dict(row))

    with api.client(secret) as shop:
        assert shop.get("/apps").json()["items"][0]["name"] == "shop"
        assert shop.get("/tokens").status_code == 403
        assert admin.delete(f"/tokens/{body['id']}").status_code == 204
        revoked = shop.get("/apps")
        assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "unauthorized"
    assert admin.delete(f"/tokens/{body['id']}").status_code == 404
    assert admin.get("/tokens").json()["items"] == []

    other_admin = admin.post("/tokens", json={"name": "ops"}).json()
    assert other_admin["app"] is None
    with api.client(other_admin["token"]) as ops:
        assert ops.get("/tokens").status_code == 200
        assert ops.post("/apps", json={"name": "new"}).status_code == 201
    assert admin.post("/tokens", json={"name": "x", "app": "ghost"}).status_code == 404
    assert admin.post("/tokens", json={"name": "", "app": None}).status_code == 422
    for n in range(3):
        admin.post("/tokens", json={"name": f"t{n}"})
    first = admin.get("/tokens", params={"limit": 2}).json()
    second = admin.get("/tokens", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(first["items"]) == 2 and len(second["items"]) == 2
    assert second["next_cursor"] is None


def test_the_admin_token_is_generated_once_and_printed_once(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING, logger="nightshift"):
        first = serve(admin_token=None)
    printed = [r.getMessage() for r in caplog.records if "admin API token" in r.getMessage()]
    assert len(printed) == 1
    token = printed[0].rsplit(" ", 1)[1]
    assert TOKEN.match(token)
    with first.client(token) as admin:
        assert admin.get("/tokens").json()["items"][0]["name"] == "admin"
    with first.store.engine.connect() as conn:
        hashes = conn.execute(select(api_tokens.c.token_hash)).scalars().all()
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]
    first.stop()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nightshift"):
        second = serve(admin_token=None)  # a restart on the same database
    assert not [r for r in caplog.records if "admin API token" in r.getMessage()]
    with second.client(token) as admin:
        assert admin.get("/jobs").status_code == 200
    with second.client("ns_" + "x" * 43) as stranger:
        assert stranger.get("/jobs").status_code == 401


def test_secrets_are_encrypted_at_rest_and_never_come_back(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path, caplog
) -> None:
    with caplog.at_level(logging.WARNING, logger="nightshift"):
        api = serve(secret_key=None)
    key_file = tmp_path / "nightshift.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert any("nightshift.key" in r.getMessage() for r in caplog.records)
    with api.client() as admin:
        admin.post("/apps", json={"name": "shop"})
        put = admin.put("/apps/shop/secrets/API_KEY", json={"value": "hunter2-very-secret"})
        assert put.status_code == 204 and put.content == b""
        admin.put("/apps/shop/secrets/OTHER", json={"value": "x"})
        listed = admin.get("/apps/shop/secrets").json()
        assert [set(i) for i in listed["items"]] == [{"name", "updated_at"}] * 2
        assert [i["name"] for i in listed["items"]] == ["API_KEY", "OTHER"]
        assert "hunter2" not in str(listed)

        with api.store.engine.connect() as conn:
            stored = conn.execute(
                select(app_secrets.c.value).where(app_secrets.c.name == "API_KEY")
            ).scalar_one()
        assert "hunter2" not in stored
        fernet = Fernet(key_file.read_bytes().strip())
        assert fernet.decrypt(stored.encode()) == b"hunter2-very-secret"
        assert api.runtime.access.reveal("shop", SecretKind.SECRET, "API_KEY") == (
            "hunter2-very-secret"
        )

        replaced = admin.put("/apps/shop/secrets/API_KEY", json={"value": "new"})
        assert replaced.status_code == 204
        assert api.runtime.access.reveal("shop", SecretKind.SECRET, "API_KEY") == "new"
        for name in ("1BAD", "has-dash", "x" * 129):
            bad = admin.put(f"/apps/shop/secrets/{name}", json={"value": "v"})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "name", name
        assert admin.put("/apps/shop/secrets/K", json={}).json()["error"]["field"] == "value"
        assert admin.put("/apps/ghost/secrets/K", json={"value": "v"}).status_code == 404
        assert admin.delete("/apps/shop/secrets/OTHER").status_code == 204
        assert admin.delete("/apps/shop/secrets/OTHER").status_code == 404
        assert [i["name"] for i in admin.get("/apps/shop/secrets").json()["items"]] == ["API_KEY"]


def test_sources_keep_their_url_secret(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    admin.post("/apps", json={"name": "shop"})
    url = "postgresql://reporter:pa55word@db.internal.example:5432/shop"
    assert admin.put("/apps/shop/sources/warehouse", json={"url": url}).status_code == 204
    listed = admin.get("/apps/shop/sources")
    assert listed.json() == {
        "items": [
            {
                "name": "warehouse",
                "driver": "postgresql",
                "host": "db.internal.example",
                "updated_at": listed.json()["items"][0]["updated_at"],
            }
        ]
    }
    assert "pa55word" not in listed.text and "reporter" not in listed.text
    assert api.runtime.access.reveal("shop", SecretKind.SOURCE, "warehouse") == url
    bad = admin.put("/apps/shop/sources/x", json={"url": "not a url"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "url"
    assert admin.delete("/apps/shop/sources/warehouse").status_code == 204
    assert admin.get("/apps/shop/sources").json() == {"items": []}


def test_a_secret_key_must_be_a_fernet_key(tmp_path: Path) -> None:
    with pytest.raises(SecretKeyError, match="Fernet"):
        load_secret_key(Settings(secret_key="correct horse battery staple"))
    (tmp_path / "k").write_text("garbage")
    with pytest.raises(SecretKeyError, match="Fernet"):
        load_secret_key(Settings(secret_key_file=str(tmp_path / "k")))


def test_a_secret_written_under_another_key_cannot_be_read(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store.ensure_app("shop", SystemClock().now())
    writer = AccessService(
        store, SystemClock(), Settings(secret_key=Fernet.generate_key().decode())
    )
    writer.put_secret("shop", "K", "v")
    reader = AccessService(
        store, SystemClock(), Settings(secret_key=Fernet.generate_key().decode())
    )
    with pytest.raises(SecretKeyError, match="another secret key"):
        reader.reveal("shop", SecretKind.SECRET, "K")


def test_an_app_token_sees_only_its_app(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    token = app_token(admin, "shop")
    app_token(admin, "rival")
    with api.client(token) as shop:
        assert [a["name"] for a in shop.get("/apps").json()["items"]] == ["shop"]
        assert shop.get("/apps/rival").status_code == 404
        assert shop.post("/apps", json={"name": "mine"}).status_code == 403
        assert shop.delete("/apps/shop").status_code == 403
        changed = shop.patch("/apps/shop", json={"schedules_enabled": False})
        assert changed.status_code == 200 and changed.json()["schedules_enabled"] is False
        assert shop.patch("/apps/rival", json={"schedules_enabled": False}).status_code == 404
        assert shop.post("/reload").status_code == 403
    assert httpx.get(f"{api.base}/api/v1/health").status_code == 200
