"""Run the service or one of its roles; preview schedules offline.

Every flag mirrors a NIGHTSHIFT_* variable (shown in --help).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nightshift.cli.common import fail, friendly

if TYPE_CHECKING:
    from nightshift.config import Settings

schedule_app = typer.Typer(help="Check schedules before saving them.", no_args_is_help=True)

ImportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        "-i",
        help="Module whose @nightshift.job functions to load (repeatable).",
        envvar="NIGHTSHIFT_IMPORTS",
        show_envvar=True,
    ),
]
HostOpt = Annotated[str | None, typer.Option(envvar="NIGHTSHIFT_HOST", show_envvar=True)]
PortOpt = Annotated[int | None, typer.Option(envvar="NIGHTSHIFT_PORT", show_envvar=True)]
DbOpt = Annotated[
    str | None,
    typer.Option("--database-url", envvar="NIGHTSHIFT_DATABASE_URL", show_envvar=True),
]


def _settings(**overrides: Any) -> Settings:
    from nightshift.config import Settings

    given = {k: v for k, v in overrides.items() if v not in (None, [])}
    if "imports" in given:
        given["imports"] = [p for item in given["imports"] for p in item.split(",") if p]
    return Settings(**given)


def _setup_logging(level: str) -> None:
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations log only when they fail


def _serve(roles: tuple[str, ...], **overrides: Any) -> None:
    # No cyclic collection during start-up: importing and building the service allocate
    # ~120,000 objects that live as long as the process, and the collections that set off
    # found next to nothing to free (under 1,000 objects) for 45-50 ms of a ~410 ms import.
    # The runtime freezes what start-up built, then the collector runs again (`started`).
    gc.disable()
    try:
        if "worker" in roles:
            from nightshift.worker import forkserver

            # Before anything else: it imports the code of the worker's processes on the other
            # core while we import the service's, and they wait for it when they start. Both
            # changes together brought the first claim 50-60 ms sooner (bench/PROFILE.md,
            # session 13). Settings found invalid below just leave it to exit with us. The
            # `nightshift` command has started it already, before the CLI (__main__.py).
            forkserver.start(main_holds_code=False)

        settings = _settings(**overrides)
        from nightshift.runtime import Runtime

        _setup_logging(settings.log_level)

        async def main() -> None:
            runtime = Runtime(settings, roles=roles)
            await runtime.serve(started=gc.enable)

        asyncio.run(main())
    finally:
        gc.enable()  # a start-up that failed never reached `started`


@friendly
def up(
    imports: ImportOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Run everything in one process: API, dashboard, scheduler and workers."""
    roles = ("api", "scheduler", "worker")
    _serve(roles, imports=imports, host=host, port=port, database_url=database_url)


@friendly
def api(
    imports: ImportOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Run only the REST API (and dashboard)."""
    _serve(("api",), imports=imports, host=host, port=port, database_url=database_url)


@friendly
def scheduler(imports: ImportOpt = None, database_url: DbOpt = None) -> None:
    """Run only the scheduler: due fires become runs."""
    _serve(("scheduler",), imports=imports, database_url=database_url)


@friendly
def worker(imports: ImportOpt = None, database_url: DbOpt = None) -> None:
    """Run only a worker: claim runs and execute them."""
    _serve(("worker",), imports=imports, database_url=database_url)


@schedule_app.command("preview")
@friendly
def schedule_preview(
    expr: Annotated[str, typer.Argument(help="e.g. '*/5 * * * *', 'every 5m', '9:00'")],
    tz: Annotated[str, typer.Option("--tz", help="IANA timezone")] = "UTC",
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1000)] = 10,
    start: Annotated[
        str | None, typer.Option("--from", help="ISO 8601 start (local to --tz without offset)")
    ] = None,
) -> None:
    """Print the next fire times, one ISO 8601 time with its UTC offset per line."""
    from nightshift.schedules import parse_timezone, preview

    zone = parse_timezone(tz)
    begin = datetime.now(zone)
    if start is not None:
        try:
            begin = datetime.fromisoformat(start)
        except ValueError:
            raise fail(f"--from: {start!r} is not an ISO 8601 date-time") from None
        if begin.tzinfo is None:
            begin = begin.replace(tzinfo=zone)
    for fire in preview(expr, tz, count, begin):
        typer.echo(fire.isoformat())


def register(app: typer.Typer) -> None:
    for command in (up, api, scheduler, worker):
        app.command()(command)
    app.add_typer(schedule_app, name="schedule")
