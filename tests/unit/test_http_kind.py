"""The http kind against a real HTTP server on loopback (uvicorn in a thread), no httpx mocks."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from nightshift.domain.models import Job, JobKind
from nightshift.errors import InvalidInput
from nightshift.worker.executor import MemoryIO, Task
from nightshift.worker.kinds.http import HttpExecutor
from nightshift.worker.kinds.http_request import build_request, parse_config
from nightshift.worker.netguard import AddressPolicy

# --- the server ----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.bytes_sent = 0

    def find(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]


def make_app(rec: Recorder) -> Starlette:
    async def record(request: Request) -> dict:
        entry = {
            "method": request.method,
            "path": request.url.path,
            "raw_query": request.scope["query_string"].decode("latin-1"),
            "query": dict(request.query_params.multi_items()),
            "query_multi": request.query_params.multi_items(),
            "headers": dict(request.headers),
            "body": (await request.body()).decode(),
            "client_port": request.client.port if request.client else None,
        }
        rec.requests.append(entry)
        return entry

    async def echo(request: Request) -> Response:
        entry = await record(request)
        return JSONResponse({"ok": True, "method": entry["method"], "query": entry["query"]})

    async def status(request: Request) -> Response:
        await record(request)
        return Response(f"status {request.path_params['code']}", int(request.path_params["code"]))

    async def slow(request: Request) -> Response:
        await record(request)
        await asyncio.sleep(float(request.query_params.get("s", "2")))
        return Response("slow done")

    async def redirect(request: Request) -> Response:
        await record(request)
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def login(request: Request) -> Response:
        await record(request)
        response = Response("logged in", headers={"X-Session-Token": "tok-abc"})
        response.set_cookie("session", "app-a-secret", path="/")
        return response

    async def loop(request: Request) -> Response:
        await record(request)
        return RedirectResponse("/loop", status_code=302)

    async def huge(request: Request) -> Response:
        await record(request)
        total = int(request.query_params.get("bytes", str(1024 * 1024)))
        chunk = b"x" * 65536

        async def stream():
            sent = 0
            while sent < total:
                part = chunk[: total - sent]
                sent += len(part)
                rec.bytes_sent += len(part)
                yield part
                await asyncio.sleep(0)

        return StreamingResponse(stream(), media_type="text/plain")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[
            Route("/echo", echo, methods=methods),
            Route("/status/{code:int}", status, methods=methods),
            Route("/slow", slow),
            Route("/redirect", redirect),
            Route("/loop", loop),
            Route("/login", login),
            Route("/huge", huge),
        ]
    )


class ServerThread:
    """A uvicorn server on loopback sockets, in a thread with its own event loop."""

    def __init__(self, app, hosts: tuple[str, ...] = ("127.0.0.1",), **config) -> None:
        self.app, self.hosts, self.config = app, hosts, config
        self.ports: list[int] = []

    def __enter__(self) -> ServerThread:
        sockets = []
        for host in self.hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            sockets.append(sock)
            self.ports.append(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            backlog=4096,
            **self.config,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": sockets}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def url(self, path: str = "/", index: int = 0) -> str:
        return f"http://{self.hosts[index]}:{self.ports[index]}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, Recorder]]:
    rec = Recorder()
    with ServerThread(make_app(rec)) as srv:
        yield srv, rec


@pytest.fixture
def srv(server) -> ServerThread:
    return server[0]


@pytest.fixture
def rec(server) -> Recorder:
    server[1].requests.clear()
    return server[1]


@pytest.fixture
async def executor():
    ex = HttpExecutor(AddressPolicy(allow_private=True))
    await ex.start()
    yield ex
    await ex.close()


def task(config: dict, params: dict | None = None, run_id: int = 1) -> Task:
    job = Job(id=1, app="default", name="call", kind=JobKind.HTTP, config=config)
    return Task(run_id=run_id, job=job, params=params or {})


# --- config --------------------------------------------------------------------------------


def test_validate_normalises_and_keeps_a_query_string_exactly() -> None:
    ex = HttpExecutor(AddressPolicy(allow_private=True))
    config = ex.validate(
        {"method": "post", "url": " http://api.example.com/x ", "query": "parameters={type:1}"}
    )
    assert config == {
        "method": "POST",
        "url": "http://api.example.com/x",
        "query": "parameters={type:1}",
        "headers": {},
        "body": None,
        "timeout_s": 30.0,
        "expect_status": ["2xx"],
        "follow_redirects": True,
    }
    assert ex.validate(config) == config  # idempotent


def test_validate_accepts_objects_and_status_forms() -> None:
    config = parse_config(
        {
            "url": "https://example.com",
            "query": {"a": 1, "b": ["x", 2]},
            "headers": {"X-Count": 5},
            "body": {"k": [1, 2]},
            "expect_status": [200, "4XX", "201"],
        }
    )
    assert config.headers == {"X-Count": "5"}
    assert config.expect_status == [200, "4xx", 201]


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({}, "config.url", "an http job needs a url"),
        ({"url": ""}, "config.url", "an http job needs a url"),
        ({"url": "ftp://example.com/f"}, "config.url", "must be an http:// or https:// URL"),
        ({"url": "/relative/path"}, "config.url", "must be an http:// or https:// URL"),
        (
            {"url": "http://e.com", "method": "TRACE"},
            "config.method",
            "must be one of GET, POST, PUT, PATCH, DELETE",
        ),
        ({"url": "http://e.com", "timeout_s": 0}, "config.timeout_s", "must be greater than 0"),
        ({"url": "http://e.com", "timeout_s": -1}, "config.timeout_s", "must be greater than 0"),
        ({"url": "http://e.com", "expect_status": ["2yy"]}, "config.expect_status", "classes"),
        ({"url": "http://e.com", "expect_status": []}, "config.expect_status", "at least one"),
        ({"url": "http://e.com", "headers": {"Bad Name": "x"}}, "config.headers", "header name"),
        ({"url": "http://e.com", "headers": {"X": "a\r\nb"}}, "config.headers", "line breaks"),
        ({"url": "http://e.com", "query": 5}, "config.query", "object or a query string"),
        ({"url": "http://e.com", "query": {"a": {"b": 1}}}, "config.query", "strings, numbers"),
        ({"url": "http://e.com", "colour": "red"}, "config.colour", "unknown field"),
    ],
)
def test_validate_names_the_field(config: dict, field: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        HttpExecutor(AddressPolicy(allow_private=True)).validate(config)
    assert info.value.field == field
    assert message in info.value.message


def test_validate_refuses_a_private_literal_address_by_default() -> None:
    with pytest.raises(InvalidInput) as info:
        HttpExecutor(AddressPolicy()).validate({"url": "http://127.0.0.1:8080/x"})
    assert info.value.field == "config.url"
    assert info.value.message == (
        "address 127.0.0.1 is private/loopback; set NIGHTSHIFT_HTTP_ALLOW_PRIVATE=true "
        "or add it to NIGHTSHIFT_HTTP_ALLOW_HOSTS"
    )


def test_validate_allows_a_name_that_does_not_resolve_now() -> None:
    config = HttpExecutor(AddressPolicy()).validate({"url": "http://no-such-host.invalid/x"})
    assert config["url"] == "http://no-such-host.invalid/x"


# --- build_request -------------------------------------------------------------------------


def test_build_request_query_forms_and_overrides() -> None:
    base = {"url": "http://e.com/a", "query": "parameters={type:1}&keep=1"}
    assert build_request(base, {}).url == "http://e.com/a?parameters={type:1}&keep=1"
    # an object override replaces the keys it names, the rest of the string stays as written
    spec = build_request(base, {"query": {"parameters": "{type:2}"}})
    assert spec.url == "http://e.com/a?keep=1&parameters=%7Btype%3A2%7D"
    # a string override replaces the whole query
    assert build_request(base, {"query": "x=1"}).url == "http://e.com/a?x=1"
    spec = build_request({"url": "http://e.com/a?z=0#frag", "query": {"a": 1}}, {"query": {"b": 2}})
    assert spec.url == "http://e.com/a?z=0&a=1&b=2"


def test_build_request_headers_merge_and_body() -> None:
    config = {"url": "http://e.com", "method": "PUT", "headers": {"Accept": "a", "X-A": "1"}}
    spec = build_request(config, {"headers": {"accept": "b"}, "body": {"n": 1}})
    assert spec.headers == {"X-A": "1", "accept": "b", "Content-Type": "application/json"}
    assert spec.content == b'{"n": 1}'
    spec = build_request({**config, "body": "plain"}, None)
    assert spec.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert spec.content == b"plain"
    assert build_request({"url": "http://e.com"}).content is None


def test_build_request_rejects_bad_params() -> None:
    with pytest.raises(InvalidInput) as info:
        build_request({"url": "http://e.com"}, {"query": 3})
    assert info.value.field == "params.query"
    with pytest.raises(InvalidInput) as info:
        build_request({"url": "http://e.com"}, {"headers": ["x"]})
    assert info.value.field == "params.headers"


# --- execution -----------------------------------------------------------------------------


async def test_seed_000_two_jobs_with_query_strings(executor, srv, rec) -> None:
    for n in (1, 2):
        config = {"url": srv.url("/echo"), "query": f"parameters={{type:{n}}}"}
        outcome = await executor.execute(task(config, run_id=n), MemoryIO())
        assert outcome.status == "succeeded", outcome.error
        assert outcome.result["request"]["url"] == srv.url(f"/echo?parameters={{type:{n}}}")
    seen = rec.find("/echo")
    assert [r["raw_query"] for r in seen] == ["parameters={type:1}", "parameters={type:2}"]
    assert [r["query"] for r in seen] == [{"parameters": "{type:1}"}, {"parameters": "{type:2}"}]


async def test_post_json_body_and_headers(executor, srv, rec) -> None:
    config = {
        "method": "post",
        "url": srv.url("/echo"),
        "headers": {"X-Trace": "abc"},
        "body": {"name": "report", "n": [1, 2]},
    }
    io = MemoryIO()
    outcome = await executor.execute(task(config), io)
    assert outcome.status == "succeeded", outcome.error
    [seen] = rec.find("/echo")
    assert seen["method"] == "POST"
    assert json.loads(seen["body"]) == {"name": "report", "n": [1, 2]}
    assert seen["headers"]["x-trace"] == "abc"
    assert seen["headers"]["content-type"] == "application/json"
    request, response = outcome.result["request"], outcome.result["response"]
    assert request["method"] == "POST"
    assert request["body"] == {"name": "report", "n": [1, 2]}
    assert request["headers"]["x-trace"] == "abc"
    assert response["status"] == 200
    assert json.loads(response["body"])["ok"] is True
    assert response["headers"]["content-type"] == "application/json"
    assert response["truncated"] is False
    assert response["http_version"] == "HTTP/1.1"
    assert isinstance(response["elapsed_ms"], int)
    [(level, line)] = io.lines
    assert level == "INFO"
    assert re.fullmatch(rf"POST {re.escape(srv.url('/echo'))} -> 200 in \d+ ms \(\d+ B\)", line)


async def test_text_body(executor, srv, rec) -> None:
    config = {"method": "PATCH", "url": srv.url("/echo"), "body": "long text\nline 2"}
    outcome = await executor.execute(task(config), MemoryIO())
    assert outcome.status == "succeeded"
    [seen] = rec.find("/echo")
    assert seen["body"] == "long text\nline 2"
    assert seen["headers"]["content-type"] == "text/plain; charset=utf-8"


async def test_query_object_and_run_params(executor, srv, rec) -> None:
    config = {"url": srv.url("/echo"), "query": {"a": 1, "b": ["x", "y z"], "c": True}}
    outcome = await executor.execute(task(config, {"query": {"a": 5}}), MemoryIO())
    assert outcome.status == "succeeded"
    [seen] = rec.find("/echo")
    assert seen["query_multi"] == [("a", "5"), ("b", "x"), ("b", "y z"), ("c", "true")]


async def test_unexpected_5xx_is_retryable(executor, srv) -> None:
    url = srv.url("/status/503")
    outcome = await executor.execute(task({"url": url}), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.permanent is False
    assert outcome.error["type"] == "UnexpectedStatus"
    assert outcome.error["message"] == f"GET {url} → 503, expected 2xx"
    assert outcome.result["response"]["status"] == 503
    assert outcome.result["response"]["body"] == "status 503"
    assert outcome.result["request"]["url"] == url


@pytest.mark.parametrize(("code", "permanent"), [(404, True), (400, True), (429, False)])
async def test_4xx_is_permanent_except_retryable_ones(executor, srv, code, permanent) -> None:
    outcome = await executor.execute(task({"url": srv.url(f"/status/{code}")}), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.permanent is permanent


async def test_expect_status(executor, srv) -> None:
    config = {"url": srv.url("/status/404"), "expect_status": [404]}
    assert (await executor.execute(task(config), MemoryIO())).status == "succeeded"
    config = {"url": srv.url("/status/204"), "expect_status": ["4xx", 500]}
    outcome = await executor.execute(task(config), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.error["message"].endswith("→ 204, expected 4xx, 500")


async def test_large_body_is_cut_at_max_body_bytes(executor, srv) -> None:
    io = MemoryIO()
    outcome = await executor.execute(task({"url": srv.url("/huge")}), io)
    response = outcome.result["response"]
    assert outcome.status == "succeeded"
    assert len(response["body"]) == 65536
    assert response["truncated"] is True
    assert io.lines[0][1].endswith("(64.0 KiB, truncated)")


async def test_a_body_of_exactly_the_limit_is_not_truncated(srv) -> None:
    ex = HttpExecutor(AddressPolicy(allow_private=True), max_body_bytes=1000)
    try:
        outcome = await ex.execute(task({"url": srv.url("/huge?bytes=1000")}), MemoryIO())
    finally:
        await ex.close()
    assert len(outcome.result["response"]["body"]) == 1000
    assert outcome.result["response"]["truncated"] is False


async def test_an_endless_body_is_not_downloaded(executor, srv, rec) -> None:
    rec.bytes_sent = 0
    started = time.monotonic()
    url = srv.url(f"/huge?bytes={1024**3}")
    outcome = await executor.execute(task({"url": url}), MemoryIO())
    assert outcome.result["response"]["truncated"] is True
    assert time.monotonic() - started < 5
    await asyncio.sleep(0.2)
    assert rec.bytes_sent < 100 * 1024**2  # far from the 1 GiB offered


async def test_timeout_is_a_retryable_failure(executor, srv) -> None:
    started = time.monotonic()
    config = {"url": srv.url("/slow?s=2"), "timeout_s": 0.3}
    outcome = await executor.execute(task(config), MemoryIO())
    assert time.monotonic() - started < 1.5
    assert outcome.status == "failed"
    assert outcome.permanent is False
    assert outcome.error["type"] == "TimeoutException"
    assert outcome.result["request"]["url"] == srv.url("/slow?s=2")
    assert outcome.result["response"] is None


async def test_connection_refused_is_a_retryable_failure(executor) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    outcome = await executor.execute(task({"url": f"http://127.0.0.1:{port}/"}), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.permanent is False
    assert outcome.error["type"] == "ConnectError"
    assert outcome.result["request"]["method"] == "GET"


async def test_blocked_address_is_a_permanent_failure(srv) -> None:
    ex = HttpExecutor(AddressPolicy())
    try:
        outcome = await ex.execute(task({"url": srv.url("/echo")}), MemoryIO())
    finally:
        await ex.close()
    assert outcome.status == "failed"
    assert outcome.permanent is True
    assert outcome.error["type"] == "BlockedAddress"
    assert "127.0.0.1 is private/loopback" in outcome.error["message"]


async def test_bad_run_params_fail_permanently(executor, srv) -> None:
    outcome = await executor.execute(task({"url": srv.url("/echo")}, {"query": 1}), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.permanent is True
    assert outcome.error["type"] == "InvalidInput"


async def test_secret_headers_are_masked_in_the_record(executor, srv, rec) -> None:
    headers = {
        "Authorization": "Bearer s3cret",
        "X-Api-Key": "k",
        "X-Service-Token": "t",
        "Client-Secret": "c",
        "Cookie": "session=1",
        "X-Plain": "visible",
    }
    config = {"url": srv.url("/echo"), "headers": headers}
    outcome = await executor.execute(task(config), MemoryIO())
    [seen] = rec.find("/echo")
    assert seen["headers"]["authorization"] == "Bearer s3cret"  # the real value is sent
    assert seen["headers"]["x-service-token"] == "t"
    recorded = outcome.result["request"]["headers"]
    for name in ("authorization", "x-api-key", "x-service-token", "client-secret", "cookie"):
        assert recorded[name] == "***"
    assert recorded["x-plain"] == "visible"
    assert "s3cret" not in json.dumps(outcome.result)


async def test_secrets_the_response_sends_are_masked_in_the_record(executor, srv) -> None:
    """A session cookie or a token a server hands out is as secret as the ones we send."""
    outcome = await executor.execute(task({"url": srv.url("/login")}), MemoryIO())
    assert outcome.status == "succeeded"
    recorded = outcome.result["response"]["headers"]
    assert recorded["set-cookie"] == "***"
    assert recorded["x-session-token"] == "***"
    assert recorded["content-length"] == "9"
    assert "app-a-secret" not in json.dumps(outcome.result)
    assert "tok-abc" not in json.dumps(outcome.result)


async def test_a_password_in_the_url_is_masked(executor, srv, rec) -> None:
    url = srv.url("/echo").replace("http://", "http://user:pa55@")
    outcome = await executor.execute(task({"url": url}), MemoryIO())
    assert outcome.status == "succeeded"
    assert rec.find("/echo")[0]["headers"]["authorization"].startswith("Basic ")
    assert "pa55" not in json.dumps(outcome.result)
    assert outcome.result["request"]["url"].startswith("http://user:***@127.0.0.1:")


async def test_credentials_in_the_query_are_masked_and_the_rest_kept_as_written(
    executor, srv, rec
) -> None:
    query = "q=visible&api_key=k1&access_token=t2&sort_key=s&x=%7Ba%7D&Signature=z9&empty"
    outcome = await executor.execute(
        task({"url": srv.url("/status/200"), "query": query}), MemoryIO()
    )
    assert outcome.status == "succeeded"
    assert rec.find("/status/200")[0]["raw_query"] == query  # sent as written
    shown = "q=visible&api_key=***&access_token=***&sort_key=s&x=%7Ba%7D&Signature=***&empty"
    assert outcome.result["request"]["url"] == srv.url(f"/status/200?{shown}")
    assert outcome.result["response"]["url"] == srv.url(f"/status/200?{shown}")
    for secret in ("k1", "t2", "z9"):
        assert secret not in json.dumps(outcome.result)


async def test_redirects_are_followed(executor, srv) -> None:
    config = {"url": srv.url("/redirect"), "query": {"to": "/echo?x=1"}}
    outcome = await executor.execute(task(config), MemoryIO())
    assert outcome.status == "succeeded"
    assert outcome.result["response"]["url"] == srv.url("/echo?x=1")
    assert outcome.result["response"]["redirects"] == 1
    config["follow_redirects"] = False
    outcome = await executor.execute(task(config), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.result["response"]["status"] == 302


async def test_a_cookie_one_run_receives_is_never_sent_by_another(executor, srv, rec) -> None:
    """Every run shares the worker's client: a cookie kept from one app's response would go
    with another app's requests to the same server (a session, for instance)."""
    login = Task(
        run_id=1,
        job=Job(id=1, app="a", name="login", kind=JobKind.HTTP, config={"url": srv.url("/login")}),
        params={},
    )
    echo = Task(
        run_id=2,
        job=Job(id=2, app="b", name="call", kind=JobKind.HTTP, config={"url": srv.url("/echo")}),
        params={},
    )
    assert (await executor.execute(login, MemoryIO())).status == "succeeded"
    assert (await executor.execute(echo, MemoryIO())).status == "succeeded"
    [sent] = rec.find("/echo")
    assert "cookie" not in sent["headers"]


async def test_a_redirect_loop_stops_after_five(executor, srv, rec) -> None:
    outcome = await executor.execute(task({"url": srv.url("/loop")}), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.error["type"] == "TooManyRedirects"
    assert len(rec.find("/loop")) == 6  # the first request and five redirects


async def test_graceful_stop_cancels_the_request_in_flight(executor, srv) -> None:
    io = MemoryIO()
    started = time.monotonic()
    running = asyncio.create_task(executor.execute(task({"url": srv.url("/slow?s=5")}), io))
    await asyncio.sleep(0.3)
    io.stop_event.set()
    outcome = await asyncio.wait_for(running, 2)
    assert outcome.status == "stopped"
    assert time.monotonic() - started < 2
    assert outcome.result["request"]["url"] == srv.url("/slow?s=5")


async def test_stop_asked_before_sending_sends_nothing(executor, srv, rec) -> None:
    io = MemoryIO()
    io.stop_event.set()
    outcome = await executor.execute(task({"url": srv.url("/echo")}), io)
    assert outcome.status == "stopped"
    assert rec.find("/echo") == []


async def test_cancelling_execute_propagates(executor, srv) -> None:
    running = asyncio.create_task(executor.execute(task({"url": srv.url("/slow?s=5")}), MemoryIO()))
    await asyncio.sleep(0.3)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 2)
    # the client is still usable afterwards
    outcome = await executor.execute(task({"url": srv.url("/echo")}), MemoryIO())
    assert outcome.status == "succeeded"


async def test_execute_starts_the_client_when_needed(srv) -> None:
    ex = HttpExecutor(AddressPolicy(allow_hosts=["127.0.0.1"]))
    try:
        outcome = await ex.execute(task({"url": srv.url("/echo")}), MemoryIO())
    finally:
        await ex.close()
    assert outcome.status == "succeeded"


async def test_two_hundred_slow_requests_wait_concurrently(executor, srv) -> None:
    started = time.monotonic()
    config = {"url": srv.url("/slow?s=0.5")}
    outcomes = await asyncio.gather(
        *(executor.execute(task(config, run_id=i), MemoryIO()) for i in range(200))
    )
    elapsed = time.monotonic() - started
    assert [o.status for o in outcomes] == ["succeeded"] * 200
    assert elapsed < 5, f"200 requests of 0.5 s took {elapsed:.1f} s"


async def test_kept_alive_connections_take_the_next_requests_one_each(executor, srv, rec) -> None:
    """Three waves of 100 requests, 100 at a time, as the worker sends them: each request that
    ends leaves its connection to exactly one waiting request. httpcore 1.0.9 gave a freed
    connection to every request that came in before the first started on it, so requests
    queued behind one another and the waves after the first crawled (issue #6)."""
    config = {"url": srv.url("/slow?s=0.5")}
    slots = asyncio.Semaphore(100)

    async def one(run_id: int) -> str:
        async with slots:
            return (await executor.execute(task(config, run_id=run_id), MemoryIO())).status

    statuses = await asyncio.gather(*(one(i) for i in range(300)))
    assert statuses == ["succeeded"] * 300
    ports = [r["client_port"] for r in rec.find("/slow")]
    assert len(ports) == 300
    assert len(set(ports)) == 100, "requests after the first wave opened new connections"
