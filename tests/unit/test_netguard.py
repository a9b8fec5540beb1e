"""The address policy, and its enforcement at every connection httpx opens (real sockets)."""

from __future__ import annotations

import inspect
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpcore
import httpx
import pytest
import uvicorn
from httpcore._async.connection_pool import AsyncPoolRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from nightshift.domain.models import Job, JobKind
from nightshift.errors import InvalidInput, JobFailure
from nightshift.worker.executor import MemoryIO, Task
from nightshift.worker.kinds.http import HttpExecutor
from nightshift.worker.netguard import (
    AddressPolicy,
    BlockedAddress,
    ConnectionPool,
    GuardedBackend,
    check_host_now,
    classify,
    guarded_transport,
)

# --- the policy ----------------------------------------------------------------------------

BLOCKED = [
    ("127.0.0.1", "private/loopback"),
    ("127.8.9.10", "private/loopback"),
    ("10.1.2.3", "private/loopback"),
    ("172.16.0.1", "private/loopback"),
    ("192.168.1.1", "private/loopback"),
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "shared (100.64.0.0/10)"),
    ("100.100.100.200", "shared (100.64.0.0/10)"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "private/loopback"),  # 240/4 is reserved; ipaddress lists it as private too
    ("255.255.255.255", "private/loopback"),
    ("::1", "private/loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private/loopback"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "private/loopback"),  # IPv4-mapped: judged as 127.0.0.1
    ("::ffff:169.254.169.254", "a cloud metadata address"),
    ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::", "private/loopback"),  # 6to4 of 127.0.0.1
]


@pytest.mark.parametrize(("address", "reason"), BLOCKED)
def test_default_policy_blocks_non_public_addresses(address: str, reason: str) -> None:
    assert classify(address) == reason
    with pytest.raises(BlockedAddress) as info:
        AddressPolicy().check("example.com", [address])
    how = (
        "add it to NIGHTSHIFT_HTTP_ALLOW_HOSTS to reach it"
        if "metadata" in reason
        else "set NIGHTSHIFT_HTTP_ALLOW_PRIVATE=true or add it to NIGHTSHIFT_HTTP_ALLOW_HOSTS"
    )
    assert str(info.value) == f"address {address} is {reason}; {how}"
    assert info.value.permanent is True
    assert isinstance(info.value, JobFailure)
    if "metadata" in reason:  # ALLOW_PRIVATE never opens cloud metadata
        with pytest.raises(BlockedAddress):
            AddressPolicy(allow_private=True).check("example.com", [address])
    else:
        AddressPolicy(allow_private=True).check("example.com", [address])


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert classify(address) is None
    AddressPolicy().check("example.com", [address])


def test_one_blocked_address_among_public_ones_blocks_the_host() -> None:
    with pytest.raises(BlockedAddress, match=r"10\.0\.0\.1"):
        AddressPolicy().check("example.com", ["93.184.216.34", "10.0.0.1"])


def test_the_metadata_name_is_blocked_whatever_it_resolves_to() -> None:
    with pytest.raises(BlockedAddress, match=r"metadata\.google\.internal is a cloud metadata"):
        AddressPolicy().check("Metadata.Google.Internal.", ["8.8.8.8"])
    AddressPolicy(allow_hosts=["metadata.google.internal"]).check(
        "metadata.google.internal", ["169.254.169.254"]
    )


def test_an_allowed_cidr_opens_exactly_that_range() -> None:
    policy = AddressPolicy(allow_hosts=["10.1.0.0/16"])
    policy.check("a", ["10.1.2.3"])
    policy.check("a", ["10.1.255.255", "8.8.8.8"])
    policy.check("a", ["::ffff:10.1.2.3"])  # the mapped form falls in the IPv4 range
    for outside in ("10.2.0.1", "10.0.255.255", "192.168.1.1", "127.0.0.1"):
        with pytest.raises(BlockedAddress):
            policy.check("a", [outside])
    with pytest.raises(BlockedAddress):
        policy.check("a", ["10.1.2.3", "10.2.0.1"])


def test_an_allowed_host_name_opens_its_addresses() -> None:
    policy = AddressPolicy(allow_hosts=["internal.example", "*.corp.example", "127.0.0.1"])
    policy.check("INTERNAL.example.", ["10.0.0.5", "::1"])
    policy.check("api.corp.example", ["192.168.0.9"])
    policy.check("127.0.0.1", ["127.0.0.1"])  # a bare address is a /32
    with pytest.raises(BlockedAddress):
        policy.check("other.example", ["10.0.0.5"])
    with pytest.raises(BlockedAddress):
        policy.check("corp.example", ["10.0.0.5"])  # the wildcard is for subdomains only
    with pytest.raises(BlockedAddress):
        policy.check("127.0.0.2", ["127.0.0.2"])


def test_from_strings() -> None:
    policy = AddressPolicy.from_strings(False, " 10.0.0.0/8, api.local ,,[::1]")
    assert policy.allow_hosts == ("10.0.0.0/8", "api.local", "[::1]")
    policy.check("x", ["10.9.9.9", "::1"])
    policy.check("api.local", ["192.168.0.1"])
    assert AddressPolicy.from_strings(True, "").allow_private is True
    with pytest.raises(ValueError, match="bad CIDR"):
        AddressPolicy.from_strings(False, "10.0.0.0/33")


def test_check_host_now() -> None:
    with pytest.raises(BlockedAddress, match="private/loopback"):
        check_host_now(AddressPolicy(), "localhost")
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"):
        check_host_now(AddressPolicy(), "2130706433")  # a decimal 127.0.0.1 resolves to it
    with pytest.raises(BlockedAddress):
        check_host_now(AddressPolicy(), "[::ffff:127.0.0.1]")
    check_host_now(AddressPolicy(), "no-such-host.invalid")  # checked again at connection
    check_host_now(AddressPolicy(allow_hosts=["localhost"]), "localhost")


def test_validate_refuses_metadata_and_mapped_loopback() -> None:
    ex = HttpExecutor(AddressPolicy())
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://localhost:8080/",
    ):
        with pytest.raises(InvalidInput) as info:
            ex.validate({"url": url})
        assert info.value.field == "config.url"
        assert "NIGHTSHIFT_HTTP_ALLOW_HOSTS" in info.value.message


# --- enforcement at connection time --------------------------------------------------------


def make_app() -> Starlette:
    async def whoami(request: Request) -> Response:
        return JSONResponse({"host": request.headers["host"], "server": request.url.hostname})

    async def redirect(request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    return Starlette(routes=[Route("/", whoami), Route("/redirect", redirect)])


class Server:
    """uvicorn serving `make_app` on one socket per host, in a thread."""

    def __init__(self, hosts: tuple[str, ...], **config) -> None:
        self.sockets = []
        for host in hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            self.sockets.append(sock)
        self.ports = [sock.getsockname()[1] for sock in self.sockets]
        config = uvicorn.Config(make_app(), log_level="warning", lifespan="off", **config)
        self.server = uvicorn.Server(config)

    def __enter__(self) -> Server:
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "server did not start"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int]]:
    """Ports of a server on 127.0.0.1 and of one on 127.0.0.2 (another loopback host)."""
    try:
        server = Server(("127.0.0.1", "127.0.0.2"))
    except OSError:
        pytest.skip("cannot bind 127.0.0.2")
    with server:
        yield server.ports[0], server.ports[1]


def client(policy: AddressPolicy, **options) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=guarded_transport(policy, **options), trust_env=False)


async def test_default_policy_blocks_loopback_connections(servers) -> None:
    port = servers[0]
    async with client(AddressPolicy()) as http:
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
            with pytest.raises(BlockedAddress, match="private/loopback"):
                await http.get(url)


async def test_an_allowed_address_connects(servers) -> None:
    port = servers[0]
    async with client(AddressPolicy(allow_hosts=["127.0.0.1"])) as http:
        response = await http.get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200


async def test_a_redirect_to_a_blocked_address_is_blocked(servers) -> None:
    port1, port2 = servers
    target = f"http://127.0.0.2:{port2}/"
    url = f"http://127.0.0.1:{port1}/redirect"
    async with client(AddressPolicy(allow_hosts=["127.0.0.1"])) as http:
        with pytest.raises(BlockedAddress, match=r"127\.0\.0\.2"):
            await http.get(url, params={"to": target}, follow_redirects=True)
    async with client(AddressPolicy(allow_hosts=["127.0.0.1", "127.0.0.2"])) as http:
        response = await http.get(url, params={"to": target}, follow_redirects=True)
    assert response.status_code == 200
    assert response.json()["server"] == "127.0.0.2"


async def test_the_executor_reports_a_blocked_redirect(servers) -> None:
    port1, port2 = servers
    config = {
        "url": f"http://127.0.0.1:{port1}/redirect",
        "query": {"to": f"http://127.0.0.2:{port2}/"},
    }
    job = Job(id=1, app="default", name="r", kind=JobKind.HTTP, config=config)
    ex = HttpExecutor(AddressPolicy(allow_hosts=["127.0.0.1"]))
    try:
        outcome = await ex.execute(Task(run_id=1, job=job, params={}), MemoryIO())
    finally:
        await ex.close()
    assert outcome.status == "failed"
    assert outcome.permanent is True
    assert outcome.error["type"] == "BlockedAddress"


async def test_connects_to_the_checked_address_not_the_name(servers) -> None:
    """The name is resolved once; the socket goes to the address that was checked."""
    port = servers[0]
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]  # "rebind.test" does not exist in real DNS

    policy = AddressPolicy(allow_hosts=["127.0.0.0/8"])
    async with client(policy, resolver=resolver) as http:
        response = await http.get(f"http://rebind.test:{port}/")
    assert response.json()["host"] == f"rebind.test:{port}"
    assert calls == ["rebind.test"]


async def test_the_next_checked_address_is_tried_when_one_refuses(servers) -> None:
    port = servers[0]  # nothing listens on this port at 127.0.0.2

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.2", "127.0.0.1"]

    async with client(AddressPolicy(allow_hosts=["127.0.0.0/8"]), resolver=resolver) as http:
        response = await http.get(f"http://two.test:{port}/")
    assert response.json()["server"] == "two.test"


async def test_a_name_resolving_to_any_blocked_address_is_refused(servers) -> None:
    port = servers[0]

    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"]

    async with client(AddressPolicy(), resolver=resolver) as http:
        with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"):
            await http.get(f"http://mixed.test:{port}/")


async def test_unresolvable_names_are_connect_errors() -> None:
    async with client(AddressPolicy()) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://no-such-host.invalid/")


async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(BlockedAddress, match="unix socket"):
        await GuardedBackend(AddressPolicy(allow_private=True)).connect_unix_socket("/tmp/x.sock")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=guarded.test"),
            *("-addext", "subjectAltName=DNS:guarded.test"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_checks_the_certificate_against_the_url_name(certificate) -> None:
    """Connecting to the checked IP keeps SNI and certificate checks on the URL's host name."""
    cert, key = certificate

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    context = ssl.create_default_context(cafile=str(cert))
    policy = AddressPolicy(allow_private=True)
    with Server(("127.0.0.1",), ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        port = server.ports[0]
        async with client(policy, resolver=resolver, ssl_context=context) as http:
            response = await http.get(f"https://guarded.test:{port}/")
            assert response.json()["host"] == f"guarded.test:{port}"
            # the certificate names guarded.test only: the literal address fails verification
            with pytest.raises(httpx.ConnectError, match=r"certificate|hostname|IP address"):
                await http.get(f"https://127.0.0.1:{port}/")


def test_allow_private_opens_laptop_addresses_but_never_cloud_metadata() -> None:
    laptop = AddressPolicy(allow_private=True)
    laptop.check("localhost", ["127.0.0.1", "::1"])
    laptop.check("db.internal", ["10.1.2.3"])
    with pytest.raises(BlockedAddress, match="NIGHTSHIFT_HTTP_ALLOW_HOSTS"):
        laptop.check("evil.example", ["169.254.169.254"])
    with pytest.raises(BlockedAddress):
        laptop.check_name("metadata.google.internal")
    AddressPolicy(allow_private=True, allow_hosts=["169.254.169.254/32"]).check(
        "evil.example", ["169.254.169.254"]
    )


# --- the connection pool's assignment pass -------------------------------------------------
# httpcore 1.0.9 handed one idle connection to every request that came in before the first of
# them started on it; all but one failed with ConnectionNotAvailable and went round again,
# each running a pass that cost O(connections²). A thousand http jobs crawled (issue #6).
# The tests run in an event loop, as the pool always does: handing a request a connection sets
# an event of httpcore's, which asks sniffio for the running async library.


class FakeConnection:
    """A pooled connection in a given state, as the pool's pass sees it."""

    def __init__(self, url: str = "http://a.test/", state: str = "idle", expired: bool = False):
        self.origin = httpcore.URL(url).origin
        self.state, self.expired = state, expired

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self.origin

    def is_available(self) -> bool:
        return self.state == "idle"

    def is_idle(self) -> bool:
        return self.state == "idle"

    def is_closed(self) -> bool:
        return self.state == "closed"

    def has_expired(self) -> bool:
        return self.expired


def make_pool(*connections: FakeConnection, max_connections: int = 10, keepalive: int = 10):
    pool = ConnectionPool(max_connections=max_connections, max_keepalive_connections=keepalive)
    pool._connections = list(connections)
    return pool


def waiting(pool: ConnectionPool, url: str = "http://a.test/") -> AsyncPoolRequest:
    request = AsyncPoolRequest(httpcore.Request("GET", url))
    pool._requests.append(request)
    return request


def test_the_pass_replaced_is_the_one_httpcore_runs() -> None:
    source = inspect.getsource(httpcore.AsyncConnectionPool.handle_async_request)
    assert "self._assign_requests_to_connections()" in source
    transport = guarded_transport(AddressPolicy())
    assert type(transport._pool) is ConnectionPool


async def test_an_idle_connection_goes_to_one_waiting_request() -> None:
    idle = FakeConnection()
    pool = make_pool(idle)
    first, second, third = waiting(pool), waiting(pool), waiting(pool)
    assert pool._assign_requests_to_connections() == []
    assert first.connection is idle
    assert second.connection is not idle and third.connection is not idle
    assert second.connection is not third.connection
    assert len(pool._connections) == 3


async def test_a_connection_held_by_a_request_not_started_on_it_is_not_given_again() -> None:
    idle, busy = FakeConnection(), FakeConnection(state="active")
    pool = make_pool(idle, busy, max_connections=2)
    first = waiting(pool)
    pool._assign_requests_to_connections()
    assert first.connection is idle  # still IDLE: `first` has not started on it yet
    second = waiting(pool)
    assert pool._assign_requests_to_connections() == []  # not closed to make room either
    assert second.is_queued()
    assert pool._connections == [idle, busy]


async def test_the_keepalive_limit_counts_idle_connections_only() -> None:
    busy = [FakeConnection(state="active") for _ in range(3)]
    idle = [FakeConnection() for _ in range(3)]
    pool = make_pool(*busy, *idle[:2], keepalive=2)
    assert pool._assign_requests_to_connections() == []
    assert pool._connections == [*busy, *idle[:2]]
    pool = make_pool(*busy, *idle, keepalive=2)
    assert pool._assign_requests_to_connections() == [idle[0]]  # the oldest idle one goes
    assert pool._connections == [*busy, *idle[1:]]


async def test_at_max_connections_an_idle_connection_elsewhere_makes_room() -> None:
    other, busy = FakeConnection("http://b.test/"), FakeConnection(state="active")
    pool = make_pool(other, busy, max_connections=2)
    request = waiting(pool, "http://a.test/")
    assert pool._assign_requests_to_connections() == [other]
    assert request.connection is not None and request.connection not in (other, busy)
    assert request.connection.can_handle_request(httpcore.URL("http://a.test/").origin)
    assert pool._connections == [busy, request.connection]


async def test_closed_and_expired_connections_leave_the_pool() -> None:
    closed, expired = FakeConnection(state="closed"), FakeConnection(expired=True)
    fresh = FakeConnection()
    pool = make_pool(closed, expired, fresh)
    request = waiting(pool)
    assert pool._assign_requests_to_connections() == [expired]
    assert request.connection is fresh
    assert pool._connections == [fresh]


async def test_between_sweeps_a_connection_is_checked_before_it_is_given_out() -> None:
    dropped, fresh, later = FakeConnection(expired=True), FakeConnection(), FakeConnection()
    pool = make_pool(dropped, fresh, later)
    pool._swept_at = time.monotonic()  # swept just now: the next sweep is SWEEP_S away
    request = waiting(pool)
    assert pool._assign_requests_to_connections() == [dropped]
    assert request.connection is fresh
    later.expired = True  # not given out: it waits for the next sweep
    assert pool._assign_requests_to_connections() == []
    assert pool._connections == [fresh, later]
    pool._swept_at -= pool.SWEEP_S
    assert pool._assign_requests_to_connections() == [later]
