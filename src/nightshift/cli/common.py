"""What every command shares: one-line errors with exit statuses, and the connection options.

Exit statuses: 0 done; 1 the service is unreachable, failed or has no such thing; 2 the input
was wrong (bad flag, invalid job, 4xx from the API, unauthorized).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from nightshift.errors import InvalidInput, NightshiftError

if TYPE_CHECKING:
    from nightshift.client import Client, Page

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "http://127.0.0.1:8470"  # as nightshift.client.DEFAULT_URL, without importing httpx


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def friendly(fn: F) -> F:
    """One line and a status code for every error a user can cause; a traceback only on request."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except typer.Abort:  # "no" to a confirmation, or Ctrl-C at its prompt
            raise fail("aborted", 1) from None
        except Exception as exc:
            failure = _failure(exc)
            if failure is None and os.environ.get("NIGHTSHIFT_DEBUG"):
                raise
            raise (failure or fail(f"{type(exc).__name__}: {exc}", 1)) from None

    return wrapper  # type: ignore[return-value]


def _failure(exc: Exception) -> typer.Exit | None:
    """The line and status for an error a user can cause; None for any other."""
    # Imported once something failed: httpx takes ~45 ms, which `nightshift up` and
    # `nightshift worker` spent before they started their fork server.
    from nightshift.client import ApiError, Unreachable

    if isinstance(exc, Unreachable):
        if exc.reason == "no answer in time":
            return fail(f"{exc.url} did not answer in time", 1)
        return fail(f"cannot reach {exc.url} (is `nightshift up` running?)", 1)
    if isinstance(exc, ApiError):
        return _api_failure(exc)
    if isinstance(exc, InvalidInput | ValidationError):
        return fail(_one_line(exc))
    if isinstance(exc, NightshiftError):
        return fail(str(exc), 1)
    return None


def _api_failure(exc: Any) -> typer.Exit:
    if exc.status == 401:
        return fail("unauthorized: set --token or NIGHTSHIFT_TOKEN")
    if exc.status == 404:
        return fail(f"{exc.subject} not found" if exc.subject else str(exc), 1)
    if 400 <= exc.status < 500:
        return fail(str(exc))
    return fail(f"the service answered {exc.status}: {exc}", 1)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    return str(exc).splitlines()[0]


# -- connection options: on each group (`nightshift jobs --url U list`) and on each command ----

_URL_HELP = "Nightshift service URL."
_TOKEN_HELP = "API token (admin, or an app's)."
_JSON_HELP = "Print the API's JSON instead of a table."

ServerOpt = Annotated[
    str,
    typer.Option("--url", "--server", envvar="NIGHTSHIFT_URL", show_envvar=True, help=_URL_HELP),
]
#: On `jobs create` / `jobs edit`, `--url` is the http job's URL; the service is `--server`.
ServerOnlyOpt = Annotated[
    str, typer.Option("--server", envvar="NIGHTSHIFT_URL", show_envvar=True, help=_URL_HELP)
]
TokenOpt = Annotated[
    str | None,
    typer.Option(envvar="NIGHTSHIFT_TOKEN", show_envvar=True, show_default=False, help=_TOKEN_HELP),
]
JsonOpt = Annotated[bool, typer.Option("--json", help=_JSON_HELP)]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, max=500, help="Items per page (API default 50).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Follow the cursors: every item.")]
CursorOpt = Annotated[str | None, typer.Option("--cursor", help="Start at this page cursor.")]


def group_options(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Connection options given before the command; the command's own ones take precedence."""


@dataclass(frozen=True, slots=True)
class Conn:
    url: str
    token: str | None
    as_json: bool

    def client(self) -> Client:
        from nightshift.client import Client

        return Client(self.url, self.token)


def connection(ctx: typer.Context, server: str, token: str | None, as_json: bool) -> Conn:
    """Resolve the options: the command's line, then the group's line, then env and default."""
    group = ctx.parent

    def typed(where: typer.Context, name: str) -> bool:
        source = where.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    def pick(name: str, value: Any) -> Any:
        if group is None or typed(ctx, name) or name not in group.params:
            return value
        return group.params[name] if typed(group, name) else value

    url = pick("server", server)
    if not url.startswith(("http://", "https://")):
        raise fail(f"--url: {url!r} is not an http:// or https:// URL")
    return Conn(url=url, token=pick("token", token) or None, as_json=bool(pick("as_json", as_json)))


def collect(
    fetch: Callable[[str | None], Page], *, follow: bool, cursor: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items of one page, or of every page; and the JSON to print for `--json`.

    One page prints as the API sent it; `--all` prints every item under one `items`, with
    `next_cursor` null."""
    page = fetch(cursor)
    if not follow:
        return page.items, page.raw
    items, seen = list(page.items), set()
    while page.next_cursor and page.next_cursor not in seen:
        seen.add(page.next_cursor)
        page = fetch(page.next_cursor)
        items.extend(page.items)
    return items, {"items": items, "next_cursor": None}


def more_hint(raw: dict[str, Any]) -> None:
    cursor = raw.get("next_cursor")
    if cursor:
        typer.echo(f"more: --all, or --cursor {cursor}", err=True)


def show_list(
    conn: Any,
    fetch: Callable[[Any, str | None], Page],
    table: str,
    *,
    follow: bool,
    cursor: str | None,
) -> None:
    """A list command's whole flow: one page or every page, then `--json` or a table (the
    `render` function named `table`) and a hint when more pages remain."""
    with conn.client() as client:
        items, raw = collect(lambda c: fetch(client, c), follow=follow, cursor=cursor)
    if conn.as_json:
        print_json(raw)
        return
    from nightshift.cli import render

    getattr(render, table)(items)
    more_hint(raw)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def parse_json(option: str, text: str, *, want_object: bool = True) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise fail(f"{option}: not valid JSON: {exc}") from None
    if want_object and not isinstance(value, dict):
        raise fail(f"{option}: must be a JSON object, e.g. '{{\"key\": 1}}'")
    return value


def parse_assignment(option: str, text: str) -> tuple[str, Any]:
    """`key=value`, the value as JSON when it parses (`5`, `true`, `[1]`), else as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise fail(f"{option}: expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw
