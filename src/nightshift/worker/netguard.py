"""Which network addresses HTTP jobs may reach, and a network backend that enforces it.

The policy is checked twice: when a job is saved (a literal IP, or a name that resolves now) and
at every connection httpx opens, redirects included. The guarded backend resolves the name once,
checks every address, then connects to one of the addresses it checked — never to the name — so a
DNS answer that changes between the check and the connection (a rebind) cannot reach a blocked
address. TLS is unaffected: httpcore calls `start_tls(server_hostname=<origin host>)` (see
`httpcore/_async/connection.py`, `_connect`), so SNI and certificate checks use the URL's name.

The transport's connection pool is httpcore's with its request-to-connection assignment replaced
(`ConnectionPool`): httpcore 1.0.9's own stalls requests that reuse kept-alive connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
import ssl
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpcore
import httpx

from nightshift.errors import JobFailure

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

HOW_TO_ALLOW = "set NIGHTSHIFT_HTTP_ALLOW_PRIVATE=true or add it to NIGHTSHIFT_HTTP_ALLOW_HOSTS"
# Cloud metadata serves machine credentials: ALLOW_PRIVATE (meant for laptops) does not open it;
# only naming the host or address in NIGHTSHIFT_HTTP_ALLOW_HOSTS does.
METADATA_REASON = "a cloud metadata address"
HOW_TO_ALLOW_METADATA = "add it to NIGHTSHIFT_HTTP_ALLOW_HOSTS to reach it"

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix, embeds an IPv4 address
_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_METADATA_NAMES = frozenset({"metadata.google.internal"})


class BlockedAddress(JobFailure):
    """A connection to an address the policy refuses; retrying cannot help."""

    code = "blocked_address"

    def __init__(self, message: str, *, host: str | None = None, address: str | None = None):
        super().__init__(message, permanent=True)
        self.host = host
        self.address = address


def normalise_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets: the form names are compared in."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _parse_ip(address: str) -> IPAddress:
    return ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")


def classify(address: str) -> str | None:
    """Why an address is not public (e.g. "private/loopback"), or None for a public address."""
    ip = _parse_ip(address)
    inner = _embedded_ipv4(ip)
    if inner is not None:
        return classify(str(inner))
    if ip in _METADATA_ADDRESSES:
        return METADATA_REASON
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.version == 4 and ip in _SHARED:
        return "shared (100.64.0.0/10)"
    if ip.is_loopback or ip.is_private:
        return "private/loopback"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses only, unless private ones are allowed or a host or CIDR is listed."""

    allow_private: bool = False
    allow_hosts: Sequence[str] = ()
    _names: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in self.allow_hosts:
            item = normalise_host(entry)
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                names.add(item)
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_networks", tuple(networks))

    @classmethod
    def from_strings(cls, allow_private: bool, allow_hosts: str) -> AddressPolicy:
        """From NIGHTSHIFT_HTTP_ALLOW_PRIVATE and NIGHTSHIFT_HTTP_ALLOW_HOSTS (comma separated)."""
        hosts = [part.strip() for part in (allow_hosts or "").split(",") if part.strip()]
        for item in hosts:  # a malformed CIDR is a configuration error, not a host name
            if "/" in item:
                try:
                    ipaddress.ip_network(normalise_host(item), strict=False)
                except ValueError as exc:
                    raise ValueError(f"NIGHTSHIFT_HTTP_ALLOW_HOSTS: bad CIDR {item!r}") from exc
        return cls(allow_private=allow_private, allow_hosts=tuple(hosts))

    def host_allowed(self, host: str) -> bool:
        """Whether a host name is opened as a whole (exact name, or `*.suffix` entries)."""
        if self.allow_private:
            return True
        return self.host_named(host)

    def host_named(self, host: str) -> bool:
        """Whether NIGHTSHIFT_HTTP_ALLOW_HOSTS names the host (exactly or by `*.suffix`)."""
        host = normalise_host(host)
        if host in self._names:
            return True
        return any(n.startswith("*.") and host.endswith(n[1:]) for n in self._names)

    def address_allowed(self, address: str) -> bool:
        ip = _parse_ip(address)
        candidates = [ip]
        inner = _embedded_ipv4(ip)
        if inner is not None:
            candidates.append(inner)
        return any(
            c in net for c in candidates for net in self._networks if c.version == net.version
        )

    def check_name(self, host: str) -> None:
        """Refuse a name that is blocked whatever it resolves to (cloud metadata names)."""
        name = normalise_host(host)
        if name in _METADATA_NAMES and not self.host_named(name):
            raise BlockedAddress(
                f"host {name} is a cloud metadata endpoint; {HOW_TO_ALLOW_METADATA}", host=name
            )

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise BlockedAddress unless every address `host` resolved to may be reached."""
        self.check_name(host)
        if self.host_named(host):
            return
        for address in addresses:
            reason = classify(address)
            if reason is None or self.address_allowed(address):
                continue
            if reason != METADATA_REASON and self.allow_private:
                continue
            how = HOW_TO_ALLOW_METADATA if reason == METADATA_REASON else HOW_TO_ALLOW
            raise BlockedAddress(
                f"address {address} is {reason}; {how}", host=normalise_host(host), address=address
            )


def literal_ip(host: str) -> str | None:
    """The host as an IP address string when it is one, else None."""
    try:
        return str(_parse_ip(normalise_host(host)))
    except ValueError:
        return None


def check_host_now(policy: AddressPolicy, host: str, timeout: float = 2.0) -> None:
    """The save-time check: a literal IP, or a name that resolves within `timeout` seconds.

    Blocking (up to `timeout`): async callers should run it in a thread. A name that does not
    resolve now passes, since DNS may differ where the worker runs; the connection is checked again.
    """
    policy.check_name(host)
    if policy.host_named(host):
        return
    ip = literal_ip(host)
    if ip is not None:
        policy.check(host, [ip])
        return
    # A thread of its own, so a resolver that hangs costs `timeout` and nothing more.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightshift-dns")
    try:
        infos = pool.submit(socket.getaddrinfo, normalise_host(host), None).result(timeout)
    except (OSError, UnicodeError, concurrent.futures.TimeoutError):
        return
    finally:
        pool.shutdown(wait=False)
    policy.check(host, _unique(str(info[4][0]) for info in infos))


def _unique(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, in its order of preference."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return _unique(str(info[4][0]) for info in infos)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that only connects to addresses the policy allows."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolver or system_resolver
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # One deadline for resolving and connecting, as the plain backend has for connecting.
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self._addresses(host, port)
                self.policy.check(host, addresses)
                return await self._connect_first(
                    addresses,
                    port,
                    deadline=deadline,
                    local_address=local_address,
                    socket_options=socket_options,
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc

    async def _addresses(self, host: str, port: int) -> list[str]:
        ip = literal_ip(host)
        if ip is not None:
            return [ip]
        self.policy.check_name(host)  # before asking DNS about it
        try:
            addresses = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no addresses")
        return addresses

    async def _connect_first(
        self,
        addresses: list[str],
        port: int,
        *,
        deadline: float | None,
        local_address: str | None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the checked addresses in order; the first that answers wins.

        Each attempt gets an equal share of the time left, so an address that swallows packets
        (an IPv6 route that goes nowhere) leaves time for the next one.
        """
        loop = asyncio.get_running_loop()
        last: Exception | None = None
        for index, address in enumerate(addresses):
            share = None
            if deadline is not None:
                share = max(0.0, deadline - loop.time()) / (len(addresses) - index)
            try:
                return await self._backend.connect_tcp(
                    address,
                    port,
                    timeout=share,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress(f"unix socket {path} refused: HTTP jobs connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class ConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's connection pool with a linear assignment pass that gives an idle connection
    to one waiting request only. HTTP/1.1 only (`guarded_transport` never enables HTTP/2).

    httpcore runs `_assign_requests_to_connections` each time a request enters the pool and
    each time a response is closed. In httpcore 1.0.9 (see encode/httpcore#1035, #1110) that
    pass has two faults. Together they stalled reused keep-alive connections: 300 requests of
    1 s, 100 at a time, took 10-15 s instead of 3 s.
    - Deciding whether an idle connection is beyond the keep-alive limit scans every connection
      once per idle connection. With 100 idle connections one pass costs about 4 ms, and the
      event loop is blocked during it. (The scan also counts busy connections as idle.)
    - Assigning a request leaves its connection IDLE until that request's task runs. The next
      pass gives the same connection to the next request, so several requests are sent to one
      connection. All but one fail with ConnectionNotAvailable, go round again, and each goes
      round by running another pass.

    Here a pass is O(requests + connections). A connection assigned to a request that has not
    yet started on it is "held": it is not given to another request, and not closed to make
    room. The keep-alive limit counts idle connections that are not held.

    `has_expired()` on an idle connection asks the socket whether the server closed it (some
    10 us each, through anyio). Run on every idle connection at every pass, as httpcore does,
    it took over half of the client's CPU time. So a connection is checked just before it is
    given out, which is what keeps a request off a connection the server dropped; the pool is
    swept for expired connections to close at most once every SWEEP_S.
    """

    SWEEP_S = 1.0
    _swept_at = float("-inf")

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        if self._http2:  # an HTTP/2 connection takes many requests: httpcore's own pass
            return super()._assign_requests_to_connections()
        closing: list[httpcore.AsyncConnectionInterface] = []
        held = {r.connection for r in self._requests if r.connection is not None}
        now = time.monotonic()
        sweep = now - self._swept_at >= self.SWEEP_S
        if sweep:
            self._swept_at = now
        kept: list[httpcore.AsyncConnectionInterface] = []
        idle: list[httpcore.AsyncConnectionInterface] = []  # idle and not held, oldest first
        for connection in self._connections:
            if connection.is_closed():
                continue
            if sweep and connection.has_expired():
                # Closed as httpcore does, even when held: a held request has not started
                # (its connection would not be IDLE), so it gets ConnectionNotAvailable and
                # another connection.
                closing.append(connection)
                continue
            kept.append(connection)
            if connection not in held and connection.is_idle():
                idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            dropped = set(idle[:surplus])
            closing.extend(idle[:surplus])
            kept = [connection for connection in kept if connection not in dropped]
            idle = idle[surplus:]
        self._connections = kept

        taken: set[httpcore.AsyncConnectionInterface] = set()  # given out or closed in this pass
        # Idle connections to each origin (Origin is not hashable: keyed by its parts).
        ready: dict[tuple[bytes, bytes, int], list[httpcore.AsyncConnectionInterface]] = {}
        spare = iter(idle)  # idle connections to close for room, when at max_connections
        for request in self._requests:
            if not request.is_queued():
                continue
            origin = request.request.url.origin
            key = (origin.scheme, origin.host, origin.port)
            if key not in ready:
                ready[key] = [
                    c for c in reversed(idle) if c.can_handle_request(origin) and c.is_available()
                ]  # reversed: pop() gives the oldest
            candidates = ready[key]
            connection = None
            while candidates and connection is None:
                connection = candidates.pop()
                if connection in taken:
                    connection = None
                elif not sweep and connection.has_expired():
                    taken.add(connection)
                    self._connections.remove(connection)
                    closing.append(connection)
                    connection = None
            if connection is None:
                if len(self._connections) >= self._max_connections:
                    victim = next((c for c in spare if c not in taken), None)
                    if victim is None:
                        break  # nothing free, nothing to close: no request can be assigned
                    taken.add(victim)
                    self._connections.remove(victim)
                    closing.append(victim)
                connection = self.create_connection(origin)
                self._connections.append(connection)
            taken.add(connection)
            request.assign_to_connection(connection)
        return closing


class _KeepNoCookies(DefaultCookiePolicy):
    def set_ok(self, cookie: object, request: object) -> bool:
        return False


def no_cookies() -> CookieJar:
    """The jar of a client that every app's requests share (http jobs, alert webhooks): it
    refuses every cookie a response sets, so that none goes with another app's request."""
    return CookieJar(policy=_KeepNoCookies())


def guarded_transport(
    policy: AddressPolicy,
    *,
    limits: httpx.Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    resolver: Resolver | None = None,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through a GuardedBackend.

    `httpx.AsyncHTTPTransport` has no network_backend argument. Subclassing
    `AsyncBaseTransport` would mean copying its request/response and exception mapping, so we
    build the ordinary transport and replace its connection pool (`_pool`, created in its
    constructor without any I/O) with one built from the same settings plus our backend.
    No proxy is configured, so the pool is a plain `ConnectionPool` connecting to origins.
    """
    limits = limits or httpx.Limits()
    ssl_context = ssl_context or httpx.create_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport changed: it has no _pool to guard")
    transport._pool = ConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=GuardedBackend(policy, resolver=resolver),
    )
    return transport
