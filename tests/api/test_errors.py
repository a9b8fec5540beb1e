"""One error body everywhere, no traceback to clients, 413 for large bodies, the OpenAPI."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.api.conftest import ApiServer

pytestmark = pytest.mark.timeout(60)


def _error(answer: httpx.Response, status: int, code: str) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def test_every_error_has_the_same_body(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    _error(admin.get("/nowhere"), 404, "not_found")
    _error(admin.get("/jobs/424242"), 404, "not_found")
    _error(admin.get("/runs/424242"), 404, "not_found")
    _error(admin.get("/apps/ghost"), 404, "not_found")
    _error(admin.delete("/runs"), 405, "method_not_allowed")
    _error(admin.put("/jobs"), 405, "method_not_allowed")
    assert _error(admin.get("/jobs/abc"), 422, "invalid")["field"] == "job_id"
    assert _error(admin.get("/jobs", params={"limit": "x"}), 422, "invalid")["field"] == "limit"
    malformed = admin.post(
        "/jobs", content=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert _error(malformed, 422, "invalid")["message"].startswith("the body is not valid JSON")
    assert _error(admin.post("/jobs", json=[1, 2]), 422, "invalid")["field"] is None
    wrong_type = admin.post("/apps", json={"name": 5})
    assert _error(wrong_type, 422, "invalid")["field"] == "name"
    assert admin.post("/apps", json={"name": "dup"}).status_code == 201
    _error(admin.post("/apps", json={"name": "dup"}), 409, "conflict")
    unauth = httpx.get(f"{api.base}/api/v1/jobs")
    _error(unauth, 401, "unauthorized")
    assert unauth.headers["www-authenticate"] == "Bearer"
    basic = httpx.get(f"{api.base}/api/v1/jobs", headers={"Authorization": "Basic eDp5"})
    _error(basic, 401, "unauthorized")


def test_an_internal_error_answers_500_and_logs_the_traceback(  # type: ignore[no-untyped-def]
    api: ApiServer, admin, monkeypatch, caplog
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(api.store, "list_apps", broken)
    with caplog.at_level(logging.ERROR, logger="nightshift.api"):
        answer = admin.get("/apps")
    error = _error(answer, 500, "internal")
    assert "fire" not in answer.text and "Traceback" not in answer.text
    assert error["field"] is None
    logged = [r for r in caplog.records if r.name == "nightshift.api" and r.exc_info]
    assert logged and "the disk is on fire" in str(logged[0].exc_info[1])
    assert admin.get("/jobs").status_code == 200  # the service goes on


def test_bodies_over_the_limit_answer_413(serve) -> None:  # type: ignore[no-untyped-def]
    api = serve(max_body_bytes=2000)
    with api.client() as admin:
        big = {"name": "big", "kind": "python", "description": "x" * 5000, "config": {}}
        _error(admin.post("/jobs", json=big), 413, "too_large")

        def chunks():  # no Content-Length: the size is counted as the body streams
            yield b'{"name": "big", "kind": "python", "description": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        streamed = admin.post(
            "/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        _error(streamed, 413, "too_large")
        small = {"name": "small", "kind": "python", "config": {"function": "a:b"}}
        assert admin.post("/jobs", json=small).status_code == 201


def test_openapi_document_and_docs(api: ApiServer) -> None:
    document = httpx.get(f"{api.base}/api/v1/openapi.json")  # no token needed
    assert document.status_code == 200
    spec = document.json()
    paths = spec["paths"]
    expected = {
        "/api/v1/health": {"get"},
        "/api/v1/apps": {"get", "post"},
        "/api/v1/apps/{app}": {"get", "patch", "delete"},
        "/api/v1/jobs": {"get", "post"},
        "/api/v1/jobs/bulk": {"post"},
        "/api/v1/jobs/{job_id}": {"get", "patch", "delete"},
        "/api/v1/jobs/{job_id}/run": {"post"},
        "/api/v1/jobs/{job_id}/test": {"post"},
        "/api/v1/jobs/{job_id}/next-fires": {"get"},
        "/api/v1/schedules/preview": {"get"},
        "/api/v1/runs": {"get"},
        "/api/v1/runs/{run_id}": {"get", "patch"},
        "/api/v1/runs/{run_id}/logs": {"get"},
        "/api/v1/runs/{run_id}/stop": {"post"},
        "/api/v1/runs/{run_id}/resume": {"post"},
        "/api/v1/runs/{run_id}/force-stop": {"post"},
        "/api/v1/runs/{run_id}/cancel": {"post"},
        "/api/v1/runs/{run_id}/restart": {"post"},
        "/api/v1/logs/console": {"get"},
        "/api/v1/apps/{app}/secrets": {"get"},
        "/api/v1/apps/{app}/secrets/{name}": {"put", "delete"},
        "/api/v1/apps/{app}/sources": {"get"},
        "/api/v1/apps/{app}/sources/{name}": {"put", "delete"},
        "/api/v1/tokens": {"get", "post"},
        "/api/v1/tokens/{token_id}": {"delete"},
        "/api/v1/reload": {"post"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
        for method in methods:
            responses = paths[path][method]["responses"]
            ok = [code for code in responses if code.startswith("2")]
            assert len(ok) == 1, (path, method)
            if ok[0] != "204":  # every answer with a body has a schema for generated clients
                schema = responses[ok[0]]["content"]["application/json"]["schema"]
                assert "$ref" in schema, (path, method, schema)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # Error answers are documented on every protected route, with the error's shape.
    for status in ("401", "403", "404", "409", "413", "422"):
        answer = paths["/api/v1/runs/{run_id}"]["get"]["responses"][status]
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"
        }
    assert "404" not in paths["/api/v1/health"]["get"]["responses"]
    schemas = spec["components"]["schemas"]
    detail = {"$ref": "#/components/schemas/ErrorDetail"}
    assert schemas["ErrorOut"]["properties"]["error"] == detail
    assert {"code", "message", "field"} <= set(schemas["ErrorDetail"]["properties"])
    bulk = spec["components"]["schemas"]["JobsBulkCreate"]["properties"]["jobs"]
    assert bulk["items"] == {"$ref": "#/components/schemas/JobCreate"}  # typed for clients
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert job["next_fire_at"]["anyOf"][0] == {"type": "string", "format": "date-time"}
    docs = httpx.get(f"{api.base}/api/v1/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    health = httpx.get(f"{api.base}/api/v1/health").json()
    assert health["status"] == "ok" and health["roles"] == ["api"]


def test_job_text_with_a_nul_character_is_refused_naming_the_field(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL cannot store NUL; a job's own text with one is refused on every database."""
    job = {"name": "nul", "kind": "python", "config": {"function": "m:f"}}
    described = admin.post("/jobs", json={**job, "description": "a\u0000b"})
    assert _error(described, 422, "invalid")["field"] == "description"
    tagged = admin.post("/jobs", json={**job, "tags": ["ok", "a\u0000"]})
    assert _error(tagged, 422, "invalid")["field"] == "tags"
    assert admin.get("/jobs").json()["items"] == []  # nothing half-written


def test_names_with_a_nul_character_answer_as_unknown_ones(api: ApiServer, admin) -> None:  # type: ignore[no-untyped-def]
    """Looked up by a name holding NUL (a path, a query parameter), nothing is found, as for
    any unknown name, on PostgreSQL as on SQLite: no 500 from a statement the database
    refused. A token's name with one is refused, naming the field."""
    _error(admin.get("/apps/a%00b"), 404, "not_found")
    _error(admin.get("/apps/a%00b/secrets"), 404, "not_found")
    _error(admin.get("/stats", params={"app": "a\u0000b"}), 404, "not_found")
    assert admin.get("/jobs", params={"app": "a\u0000b"}).json()["items"] == []
    assert admin.get("/runs", params={"app": "a\u0000b"}).json()["items"] == []
    for_ghost = admin.post("/tokens", json={"name": "t", "app": "a\u0000b"})
    _error(for_ghost, 404, "not_found")
    named = admin.post("/tokens", json={"name": "a\u0000b", "app": None})
    assert _error(named, 422, "invalid")["field"] == "name"
    assert admin.get("/tokens").json()["items"] == []  # nothing written
