"""The `nightshift` command: run the service or one of its roles, preview schedules, and manage
jobs, runs, apps and tokens over the REST API.

Bad input exits with status 2 and one line on stderr; no traceback reaches a user
(NIGHTSHIFT_DEBUG=1 shows it). Module-level imports stay light: worker processes are spawned
and import the `nightshift` script, hence this package, on start-up.
"""

from __future__ import annotations

import sys

import typer

from nightshift.cli import serve
from nightshift.cli.apps import apps_app
from nightshift.cli.common import fail, friendly
from nightshift.cli.jobs import jobs_app
from nightshift.cli.runs import runs_app
from nightshift.cli.tokens import tokens_app

__all__ = ["app", "fail", "friendly", "main"]

app = typer.Typer(
    name="nightshift",
    help="Background jobs on schedules or on demand, with a record of every run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve.register(app)
app.add_typer(jobs_app, name="jobs")
app.add_typer(runs_app, name="runs")
app.add_typer(apps_app, name="apps")
app.add_typer(tokens_app, name="tokens")


def main() -> None:
    """The console script. Usage errors (an unknown option, a value of the wrong type, a missing
    argument) are one line and exit status 2 too, instead of a usage box."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:
        status = getattr(exc, "exit_code", 2)
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: the help, printed already
            if text.strip():
                typer.echo(text, err=True)
            sys.exit(status)
        typer.echo(f"error: {' '.join(text.split())} (see --help)", err=True)
        sys.exit(status)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
