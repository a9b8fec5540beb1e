"""`nightshift apps …`: tenants, and their schedules switch."""

from __future__ import annotations

import sys
from typing import Annotated, Any

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
    fail,
    friendly,
    group_options,
    print_json,
    show_list,
)

apps_app = typer.Typer(
    help="Apps: each a group of jobs with its own tokens and schedules switch.",
    no_args_is_help=True,
    callback=group_options,
)
AppName = Annotated[str, typer.Argument(help="The app's name.")]


@apps_app.command("list")
@friendly
def list_apps(
    ctx: typer.Context,
    limit: LimitOpt = None,
    all_: AllOpt = False,
    cursor: CursorOpt = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apps with their schedules switch."""
    conn = connection(ctx, server, token, as_json)
    show_list(
        conn,
        lambda client, c: client.list_apps(limit=limit, cursor=c),
        "apps_table",
        follow=all_,
        cursor=cursor,
    )


@apps_app.command("show")
@friendly
def show(
    ctx: typer.Context,
    name: AppName,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One app."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        app = client.get_app(name)
    _print_app(conn.as_json, app)


@apps_app.command("create")
@friendly
def create(
    ctx: typer.Context,
    name: AppName,
    retention_days: Annotated[
        int | None,
        typer.Option("--retention-days", min=1, help="Keep run history this many days."),
    ] = None,
    paused: Annotated[
        bool, typer.Option("--paused", help="Start with its schedules switched off.")
    ] = False,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an app."""
    conn = connection(ctx, server, token, as_json)
    settings: dict[str, Any] = {}
    if retention_days is not None:
        settings["retention_days"] = retention_days
    if paused:
        settings["schedules_enabled"] = False
    with conn.client() as client:
        app = client.create_app({"name": name})
        if settings:  # the API creates by name; the settings are a change of the new app
            app = client.update_app(name, settings)
    if conn.as_json:
        print_json(app)
        return
    typer.echo(f"app {app['name']} created")


@apps_app.command("delete")
@friendly
def delete(
    ctx: typer.Context,
    name: AppName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete an app."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        client.get_app(name)  # a clear "not found" before any question
        if not yes:
            if not sys.stdin.isatty():
                raise fail(f"deleting app {name} needs --yes when not run at a terminal")
            typer.confirm(f"Delete app {name}?", abort=True)
        client.delete_app(name)
    if conn.as_json:
        print_json({"deleted": name})
        return
    typer.echo(f"app {name} deleted")


def _switch(ctx: typer.Context, name: str, enabled: bool, conn_args: tuple[Any, ...]) -> None:
    conn = connection(ctx, *conn_args)
    with conn.client() as client:
        app = client.update_app(name, {"schedules_enabled": enabled})
    if conn.as_json:
        print_json(app)
        return
    state = "on" if app.get("schedules_enabled") else "paused"
    typer.echo(f"app {app['name']}: schedules {state}")


@apps_app.command("pause")
@friendly
def pause(
    ctx: typer.Context,
    name: AppName,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch all of an app's schedules off (its jobs are kept; nothing is recorded)."""
    _switch(ctx, name, False, (server, token, as_json))


@apps_app.command("resume")
@friendly
def resume(
    ctx: typer.Context,
    name: AppName,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch an app's schedules back on, counting from now."""
    _switch(ctx, name, True, (server, token, as_json))


def _print_app(as_json: bool, app: dict[str, Any]) -> None:
    if as_json:
        print_json(app)
        return
    from nightshift.cli import render

    days = app.get("retention_days")
    render.details(
        [
            ("name", render.as_text(app.get("name"))),
            ("schedules", "on" if app.get("schedules_enabled") else "paused"),
            ("retention", f"{days} days" if days else "(service default)"),
            ("created", render.human_time(app.get("created_at"))),
        ],
        title=f"app {app.get('name')}",
    )
