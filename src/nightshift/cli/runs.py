"""`nightshift runs …`: the run monitor, one run's details, its log, and the operations."""

from __future__ import annotations

from typing import Annotated

import typer

from nightshift.cli.common import (
    DEFAULT_URL,
    AllOpt,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    ServerOpt,
    TokenOpt,
    connection,
    friendly,
    group_options,
    print_json,
    show_list,
)

runs_app = typer.Typer(
    help="Runs: the monitor, one run's details, its log; stop, resume, cancel, restart, …",
    no_args_is_help=True,
    callback=group_options,
)
RunId = Annotated[int, typer.Argument(help="The run's id.", min=1)]


@runs_app.command("list")
@friendly
def list_runs(
    ctx: typer.Context,
    job: Annotated[int | None, typer.Option("--job", help="Only this job's runs.")] = None,
    app: Annotated[str | None, typer.Option("--app", help="Only this app's runs.")] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="pending, running, failed, … (repeatable or comma list)."),
    ] = None,
    root: Annotated[
        int | None, typer.Option("--root", help="Only the runs under this root run.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="Created at or after (ISO).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Created before (ISO).")] = None,
    system: Annotated[bool, typer.Option("--system", help="Include system jobs' runs.")] = False,
    limit: LimitOpt = None,
    all_: AllOpt = False,
    cursor: CursorOpt = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Runs, newest first: times, waiting, duration, errors, progress, children, attempt."""
    conn = connection(ctx, server, token, as_json)
    statuses = [s.strip() for item in status or [] for s in item.split(",") if s.strip()]
    filters = {
        "job": job,
        "app": app,
        "status": statuses or None,
        "root": root,
        "since": since,
        "until": until,
        "system": True if system else None,
        "limit": limit,
    }
    show_list(
        conn,
        lambda client, c: client.list_runs(**filters, cursor=c),
        "runs_table",
        follow=all_,
        cursor=cursor,
    )


@runs_app.command("show")
@friendly
def show(
    ctx: typer.Context,
    run_id: RunId,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every field of one run, with its error's traceback and its result."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        run = client.get_run(run_id)
    if conn.as_json:
        print_json(run)
        return
    from nightshift.cli import render

    render.run_details(run)


@runs_app.command("logs")
@friendly
def logs(
    ctx: typer.Context,
    run_id: RunId,
    q: Annotated[
        str | None, typer.Option("--q", "-q", help="Only lines containing this text.")
    ] = None,
    level: Annotated[
        str | None, typer.Option("--level", "-l", help="Only lines of this level or worse.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="At or after (ISO).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before (ISO).")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, max=10_000, help="At most this many lines.")
    ] = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A run's log lines in order: time, level, message."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        answer = client.run_logs(run_id, q=q, level=level, since=since, until=until, limit=limit)
    if conn.as_json:
        print_json(answer)
        return
    from nightshift.cli import render

    render.log_lines(answer.get("items") or [])


# -- operations ---------------------------------------------------------------------------------
def _operate(ctx: typer.Context, operation: str, run_id: int, server: str, token, as_json) -> None:  # type: ignore[no-untyped-def]
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        run = client.operate_run(run_id, operation)
    if conn.as_json:
        print_json(run)
    elif operation == "restart":
        typer.echo(f"run {run['id']} {run['status']} (restart of run {run_id})")
    else:
        typer.echo(f"run {run['id']} {run['status']}")


OPERATIONS = {
    "stop": "Ask a running run to halt gracefully (it saves a checkpoint and becomes stopped).",
    "resume": "Continue a stopped run from its checkpoint.",
    "force-stop": "End a stopping (or running) run now, even one stuck in a loop.",
    "cancel": "Discard a pending or stopped run for good.",
    "restart": "Run a finished run's job again with the same params; prints the new run.",
}


def _register(operation: str, help_text: str) -> None:
    """One command per operation: they differ only in the API path they call."""

    def command(
        ctx: typer.Context,
        run_id: RunId,
        server: ServerOpt = DEFAULT_URL,
        token: TokenOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        _operate(ctx, operation, run_id, server, token, as_json)

    command.__name__ = operation.replace("-", "_")
    command.__doc__ = help_text
    runs_app.command(operation)(friendly(command))


for _operation, _help in OPERATIONS.items():
    _register(_operation, _help)


@runs_app.command("priority")
@friendly
def priority(
    ctx: typer.Context,
    run_id: RunId,
    low: Annotated[
        bool | None,
        typer.Option("--low/--normal", help="Claim it after normal runs, or as one of them."),
    ] = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set (--low) or remove (--normal) a run's low priority."""
    if low is None:
        from nightshift.cli.common import fail

        raise fail("say --low or --normal")
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        run = client.update_run(run_id, {"low_priority": low})
    if conn.as_json:
        print_json(run)
    else:
        typer.echo(f"run {run['id']} {'low' if run['low_priority'] else 'normal'} priority")
