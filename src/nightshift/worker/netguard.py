"""Which network addresses HTTP jobs may reach, and a network backend that enforces it.

The policy is checked twice: when a job is saved (a literal IP, or a name that resolves now) and
at every connection httpx opens, redirects included. The guarded backend resolves the name once,
checks every address, then connects to one of the addresses it checked — never to the name — so a
DNS answer that changes between the check and the connection (a rebind) cannot reach a blocked
address. TLS is unaffected: httpcore calls `start_tls(server_hostname=<origin host>)` (see
`httpcore/_async/connection.py`, `_connect`), so SNI and certificate checks use the URL's name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
import ssl
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

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
    No proxy is configured, so the pool is a plain AsyncConnectionPool connecting to origins.
    """
    limits = limits or httpx.Limits()
    ssl_context = ssl_context or httpx.create_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport changed: it has no _pool to guard")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=GuardedBackend(policy, resolver=resolver),
    )
    return transport
