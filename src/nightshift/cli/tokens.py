"""`nightshift tokens …`: API tokens, admin or scoped to one app; secrets are shown once."""

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

tokens_app = typer.Typer(
    help="API tokens: create (shown once), list, revoke.",
    no_args_is_help=True,
    callback=group_options,
)


@tokens_app.command("list")
@friendly
def list_tokens(
    ctx: typer.Context,
    limit: LimitOpt = None,
    all_: AllOpt = False,
    cursor: CursorOpt = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tokens (never their secrets)."""
    conn = connection(ctx, server, token, as_json)
    show_list(
        conn,
        lambda client, c: client.list_tokens(limit=limit, cursor=c),
        "tokens_table",
        follow=all_,
        cursor=cursor,
    )


@tokens_app.command("create")
@friendly
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Shown as `run_by` on runs it starts.")],
    app: Annotated[
        str | None, typer.Option("--app", help="Scope it to this app (default: admin).")
    ] = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print its secret, once, on stdout (the notes go to stderr)."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        created = client.create_token(name, app)
    if conn.as_json:
        print_json(created)
    else:
        scope = f"app {created.get('app')}" if created.get("app") else "admin"
        typer.echo(f"token {created.get('id')} '{created.get('name')}' ({scope}):", err=True)
        typer.echo(created["token"])
    typer.echo(
        "warning: the secret is shown only now; store it safely, it cannot be read again",
        err=True,
    )


@tokens_app.command("revoke")
@friendly
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(help="The token's id.")],
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: requests with it answer 401 from now on."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        client.revoke_token(token_id)
    if conn.as_json:
        print_json({"revoked": token_id})
        return
    typer.echo(f"token {token_id} revoked")
