"""Senders: a webhook (JSON POST through the address guard of http jobs) and SMTP e-mail.

A sender makes one attempt and says whether it worked and, if not, whether retrying can help;
the dispatcher owns retries and backoff. Errors name what failed, never a credential.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import httpx

from nightshift.config import Settings
from nightshift.domain.models import JSON
from nightshift.worker.kinds.http_request import is_permanent_status
from nightshift.worker.netguard import (
    AddressPolicy,
    BlockedAddress,
    Resolver,
    guarded_transport,
    no_cookies,
)

MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class SendResult:
    error: str | None = None  # None: delivered
    permanent: bool = False  # retrying cannot help

    @property
    def ok(self) -> bool:
        return self.error is None


def backoff_s(attempt: int, base_s: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base, 2x, 4x, ..."""
    return base_s * 2 ** (attempt - 1)


# -- what an alert says -----------------------------------------------------------------------
def subject(payload: JSON) -> str:
    """E.g. "[nightshift] shop/daily_report failed (run 42)"."""
    run = payload["run"]
    what = f"{payload['app']}/{payload['job']['name'] or payload['job']['id']}"
    if payload["event"] == "failed":
        event = "failed"
    else:
        bound = payload.get("rule", {}).get("max_duration_s")
        event = f"running longer than {bound:g} s" if bound else "running long"
    text = f"[nightshift] {what} {event} (run {run['id']})"
    return " ".join(text.split())  # no CR / LF: a header


def text_body(payload: JSON) -> str:
    run, job = payload["run"], payload["job"]
    name = f"{payload['app']}/{job['name'] or job['id']}"
    if payload["event"] == "failed":
        headline = f"Job {name} (id {job['id']}) failed; no further attempt will follow."
    else:
        bound = payload.get("rule", {}).get("max_duration_s")
        headline = f"Job {name} (id {job['id']}) has been running longer than {bound:g} s."
    duration = run.get("duration_s")
    lines = [
        headline,
        "",
        f"Run:       {run['id']}",
        f"Status:    {run['status']}",
        f"Attempt:   {run['attempt']}",
        f"Started:   {run.get('started_at') or '-'}",
        f"Finished:  {run.get('finished_at') or '-'}",
        f"Duration:  {'-' if duration is None else f'{duration:g} s'}",
    ]
    error = run.get("error")
    if error:
        lines.append(f"Error:     {error['type']}: {error['message']}")
    lines += ["", f"Run:       {payload['url']}", "", "-- nightshift"]
    return "\n".join(lines) + "\n"


# -- webhook ----------------------------------------------------------------------------------
class WebhookSender:
    """POSTs alerts as JSON; connections go through the http jobs' address guard."""

    def __init__(
        self, policy: AddressPolicy, timeout_s: float = 10.0, *, resolver: Resolver | None = None
    ) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self._resolver = resolver
        self._client: httpx.AsyncClient | None = None

    async def send(self, url: str, payload: JSON) -> SendResult:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=guarded_transport(self.policy, resolver=self._resolver),
                trust_env=False,  # no proxies from the environment: they bypass the guard
                cookies=no_cookies(),  # every app's alerts share this client
                follow_redirects=False,
                headers={"User-Agent": "nightshift-alerts"},
                timeout=httpx.Timeout(self.timeout_s),
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.post(url, json=payload)
        except BlockedAddress as exc:
            return SendResult(_cut(str(exc)), permanent=True)
        except TimeoutError:
            return SendResult(f"no answer within {self.timeout_s:g} s")
        except httpx.InvalidURL as exc:
            return SendResult(_cut(f"invalid URL: {exc}"), permanent=True)
        except httpx.HTTPError as exc:
            name = type(exc).__name__
            return SendResult(_cut(f"{name}: {exc}" if str(exc) else name))
        if 200 <= response.status_code < 300:
            return SendResult()
        return SendResult(
            f"HTTP {response.status_code}", permanent=is_permanent_status(response.status_code)
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


# -- e-mail -----------------------------------------------------------------------------------
class EmailSender:
    """Sends plain-text mail over SMTP (stdlib smtplib, in a thread)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, to: list[str], payload: JSON) -> SendResult:
        if not self.settings.smtp_host:
            return SendResult("SMTP is not configured (set NIGHTSHIFT_SMTP_HOST)")
        if not to:
            return SendResult("the rule has no e-mail address any more", permanent=True)
        message = EmailMessage()
        message["Subject"] = subject(payload)
        message["From"] = self.settings.smtp_from
        message["To"] = ", ".join(to)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="nightshift")
        message.set_content(text_body(payload))
        return await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> SendResult:
        s = self.settings
        assert s.smtp_host is not None
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.alert_timeout_s) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_username:
                    password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                    smtp.login(s.smtp_username, password)
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            return SendResult(_cut(f"recipients refused: {', '.join(exc.recipients)}"), True)
        except smtplib.SMTPAuthenticationError as exc:
            return SendResult(f"SMTP login refused ({exc.smtp_code})", permanent=True)
        except smtplib.SMTPResponseException as exc:
            said = exc.smtp_error
            text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
            return SendResult(_cut(f"SMTP {exc.smtp_code}: {text}"), exc.smtp_code >= 500)
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult(_cut(f"{type(exc).__name__}: {exc}"))
        if refused:
            return SendResult(_cut(f"recipients refused: {', '.join(refused)}"), permanent=True)
        return SendResult()


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"
