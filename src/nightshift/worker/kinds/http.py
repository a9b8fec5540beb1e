"""The `http` kind: call an external URL and record the request sent and the response received.

Every run of every http job shares one `httpx.AsyncClient`, so a thousand slow calls wait in one
event loop rather than in a thousand threads. Its connections go through the guarded network
backend (`worker/netguard.py`), which checks each address it connects to, redirects included.
It keeps no cookies: one run's response must not set what another run's request sends (runs of
every app share the client). A request carries the cookies its job's headers name, no more.
"""

from __future__ import annotations

import asyncio
import codecs
import ssl

import httpx

from nightshift.domain.models import JSON, JobKind
from nightshift.errors import InvalidInput
from nightshift.worker.executor import Outcome, RunIO, Task, error_info
from nightshift.worker.kinds.http_request import (
    MAX_REDIRECTS,
    RequestSpec,
    build_request,
    human_size,
    is_permanent_status,
    mask_headers,
    parse_config,
    shown_url,
    status_expected,
)
from nightshift.worker.netguard import (
    AddressPolicy,
    BlockedAddress,
    Resolver,
    check_host_now,
    guarded_transport,
    no_cookies,
)

# --- the executor --------------------------------------------------------------------------


class HttpExecutor:
    """Sends http jobs' requests through one shared, address-guarded client."""

    kind = JobKind.HTTP
    reports_start = False

    def __init__(
        self,
        policy: AddressPolicy,
        max_body_bytes: int = 65536,
        max_connections: int = 1000,
        *,
        keepalive: int = 100,  # idle connections kept open: the worker passes its concurrency
        resolver: Resolver | None = None,  # for tests: how names become addresses
        ssl_context: ssl.SSLContext | None = None,  # default: certifi's CA bundle
    ) -> None:
        self.policy = policy
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.keepalive = keepalive
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._client: httpx.AsyncClient | None = None

    def validate(self, config: JSON) -> JSON:
        """The normalised config; may block up to 2 s resolving the URL's host (run in a thread)."""
        cfg = parse_config(config)
        try:
            check_host_now(self.policy, httpx.URL(cfg.url).host)
        except BlockedAddress as exc:
            raise InvalidInput(str(exc), field="config.url") from None
        return cfg.model_dump(mode="json")

    async def start(self) -> None:
        """Nothing to do: the client opens at the first request. Its SSL context (certifi's CA
        bundle) took ~20 ms of every worker's start-up, most of which never send one."""

    def _open(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        limits = httpx.Limits(
            max_connections=self.max_connections,
            max_keepalive_connections=min(self.keepalive, self.max_connections),
            keepalive_expiry=5.0,
        )
        transport = guarded_transport(
            self.policy, limits=limits, ssl_context=self._ssl_context, resolver=self._resolver
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            trust_env=False,  # no proxies or .netrc from the environment: they bypass the guard
            cookies=no_cookies(),
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": "nightshift"},
        )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def execute(self, task: Task, io: RunIO) -> Outcome:
        try:
            spec = build_request(task.job.config, task.params)
        except InvalidInput as exc:
            return Outcome("failed", error=error_info(exc, with_traceback=False), permanent=True)
        return await self.send(spec, io)

    async def send(self, spec: RequestSpec, io: RunIO) -> Outcome:
        """Send one request (a job's, or a workflow step's) and record the exchange.

        Stops early when `io.stop_event` is set; cancelling the caller cancels the request.
        """
        client = self._open()
        try:
            request = client.build_request(
                spec.method,
                spec.url,
                headers=[(k.encode(), v.encode()) for k, v in spec.headers.items()],
                content=spec.content,
                timeout=httpx.Timeout(spec.timeout_s),
            )
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            return Outcome("failed", error=error_info(exc, with_traceback=False), permanent=True)
        record: JSON = {
            "request": {
                "method": spec.method,
                "url": shown_url(request.url),
                "headers": mask_headers(request.headers),
                "body": spec.body,
            },
            "response": None,
        }
        if io.stop_event.is_set():
            return Outcome("stopped", result=record)
        exchange = asyncio.ensure_future(self._exchange(request, spec, record, io))
        stop = asyncio.ensure_future(io.stop_event.wait())
        try:
            await asyncio.wait({exchange, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # On our own cancellation (timeout, force stop) as on a graceful stop, the request
            # is cancelled; httpcore closes its connection. Cancellation then propagates.
            stop.cancel()
            if not exchange.done():
                exchange.cancel()
                await asyncio.wait({exchange})
        if exchange.cancelled():
            io.log("INFO", f"{spec.method} {record['request']['url']} -> stopped")
            return Outcome("stopped", result=record)
        return exchange.result()

    async def _exchange(
        self, request: httpx.Request, spec: RequestSpec, record: JSON, io: RunIO
    ) -> Outcome:
        assert self._client is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        label = f"{spec.method} {record['request']['url']}"

        def elapsed_ms() -> int:
            return round((loop.time() - started) * 1000)

        try:
            # One deadline for the whole exchange, redirects and body included; httpx's own
            # timeouts (per phase, same value) can only fire later, so they are a backstop.
            async with asyncio.timeout(spec.timeout_s):
                response = await self._client.send(
                    request, stream=True, follow_redirects=spec.follow_redirects
                )
                try:
                    record["response"] = received = {
                        "status": response.status_code,
                        "headers": mask_headers(response.headers),
                        "body": None,
                        "truncated": False,
                        "elapsed_ms": None,
                        "http_version": response.http_version,
                        "url": shown_url(response.url),
                        "redirects": len(response.history),
                    }
                    size = await self._read_body(response, received)
                finally:
                    await response.aclose()
        except TimeoutError:
            message = f"{label} timed out after {spec.timeout_s:g} s"
            return self._failure(io, "TimeoutException", message, record, permanent=False)
        except BlockedAddress as exc:
            return self._failure(io, "BlockedAddress", str(exc), record, permanent=True)
        except httpx.HTTPError as exc:
            message = f"{label}: {exc}" if str(exc) else label
            return self._failure(io, type(exc).__name__, message, record, permanent=False)

        received["elapsed_ms"] = elapsed_ms()
        status = response.status_code
        summary = f"{label} -> {status} in {received['elapsed_ms']} ms ({human_size(size)}"
        summary += ", truncated)" if received["truncated"] else ")"
        if status_expected(status, spec.expect_status):
            io.log("INFO", summary)
            return Outcome("succeeded", result=record)
        io.log("WARNING", summary)
        expected = ", ".join(str(item) for item in spec.expect_status)
        error = {
            "type": "UnexpectedStatus",
            "message": f"{label} → {status}, expected {expected}",
            "traceback": None,
        }
        return Outcome("failed", result=record, error=error, permanent=is_permanent_status(status))

    async def _read_body(self, response: httpx.Response, received: JSON) -> int:
        """Read at most max_body_bytes of the (decoded) body; the rest is never downloaded."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            room = self.max_body_bytes - size
            if len(chunk) > room:
                chunks.append(chunk[:room])
                size += room
                received["truncated"] = True
                break
            chunks.append(chunk)
            size += len(chunk)
        encoding = response.charset_encoding or "utf-8"
        try:
            codecs.lookup(encoding)
        except LookupError:
            encoding = "utf-8"
        received["body"] = b"".join(chunks).decode(encoding, errors="replace")
        return size

    @staticmethod
    def _failure(io: RunIO, kind: str, message: str, record: JSON, *, permanent: bool) -> Outcome:
        io.log("WARNING", f"{message} ({kind})" if kind not in message else message)
        error = {"type": kind, "message": message, "traceback": None}
        return Outcome("failed", result=record, error=error, permanent=permanent)
