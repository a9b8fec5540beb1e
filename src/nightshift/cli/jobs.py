"""`nightshift jobs …`: list, show, create, edit, delete, run, test and preview jobs."""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nightshift.cli import jobs_edit
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
    parse_assignment,
    parse_json,
    print_json,
    show_list,
)

if TYPE_CHECKING:
    from nightshift.client import ApiError

jobs_app = typer.Typer(
    help="Job definitions: list, create, change, run now, test.",
    no_args_is_help=True,
    callback=group_options,
)
JobId = jobs_edit.JobId


# -- reading ---------------------------------------------------------------------------------


@jobs_app.command("list")
@friendly
def list_jobs(
    ctx: typer.Context,
    app: Annotated[str | None, typer.Option("--app", help="Only this app's jobs.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only jobs with this tag.")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="http, python, sql, workflow.")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Only enabled (disabled) jobs.")
    ] = None,
    limit: LimitOpt = None,
    all_: AllOpt = False,
    cursor: CursorOpt = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs with their schedule, state, next fire and last run."""
    conn = connection(ctx, server, token, as_json)
    filters = {"app": app, "tag": tag, "kind": kind, "enabled": enabled, "limit": limit}
    show_list(
        conn,
        lambda client, c: client.list_jobs(**filters, cursor=c),
        "jobs_table",
        follow=all_,
        cursor=cursor,
    )


@jobs_app.command("show")
@friendly
def show(
    ctx: typer.Context,
    job_id: JobId,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every field of one job."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        job = client.get_job(job_id)
    if conn.as_json:
        print_json(job)
        return
    from nightshift.cli import render

    render.job_details(job)


jobs_app.command("create")(jobs_edit.create)
jobs_app.command("edit")(jobs_edit.edit)

IMPORT_BATCH = 1000  # jobs per request: well under the API's 1 MiB body limit for usual jobs
_ITEM_INDEX = re.compile(r"jobs\[(\d+)\]")


def _read_jobs(path: str) -> list[Any]:
    """The jobs of FILE: a JSON array, `{"jobs": [...]}`, or `{"items": [...]}` (the output of
    `jobs list --all --json`), without the fields the API reports but does not take."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise fail(f"{path} is not UTF-8 text") from None
    data = parse_json(path if path != "-" else "stdin", text, want_object=False)
    if isinstance(data, dict):
        data = data.get("jobs", data.get("items"))
    if not isinstance(data, list):
        raise fail(f"{path}: expected a JSON array of jobs, or an object with a 'jobs' array")
    if not data:
        raise fail(f"{path}: no jobs in it")
    return [
        {k: v for k, v in item.items() if k not in jobs_edit.READ_ONLY}
        if isinstance(item, dict)
        else item
        for item in data
    ]


def _shifted(exc: ApiError, offset: int, batch: int) -> ApiError:
    """The error of one batch, with its `jobs[i]` counted in the whole file."""
    from nightshift.client import ApiError

    def shift(text: str | None) -> str | None:
        if text is None:
            return None
        return _ITEM_INDEX.sub(lambda m: f"jobs[{int(m.group(1)) + offset}]", text)

    message = shift(exc.message) or ""
    if offset:
        message += f" (jobs[0] to jobs[{offset - 1}] were created, in batches of {batch})"
    if exc.status == 413:
        message += "; give a smaller --batch"
    return ApiError(exc.status, message, code=exc.code, field=shift(exc.field))


@jobs_app.command("import")
@friendly
def import_jobs(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Argument(
            help="A JSON array of jobs (as POST /jobs takes them), or {\"jobs\": [...]}; '-' "
            "for stdin."
        ),
    ],
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Jobs per request; each one transaction.")
    ] = IMPORT_BATCH,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create many jobs: each request of --batch jobs is one transaction, all or none.

    A file of at most --batch jobs is created whole or not at all; a bad job names its index
    in the file (jobs[3].schedule) and stops the import there."""
    from nightshift.client import ApiError  # httpx stays out of worker start-up

    conn = connection(ctx, server, token, as_json)
    jobs = _read_jobs(file)
    created: list[dict[str, Any]] = []
    with conn.client() as client:
        for offset in range(0, len(jobs), batch):
            try:
                answer = client.create_jobs(jobs[offset : offset + batch])
            except ApiError as exc:
                raise _shifted(exc, offset, batch) from None
            created.extend(answer.get("items", []))
    if conn.as_json:
        print_json({"items": created})
        return
    apps = sorted({str(job.get("app")) for job in created})
    typer.echo(f"{len(created)} jobs created in {', '.join(apps)}")


@jobs_app.command("delete")
@friendly
def delete(
    ctx: typer.Context,
    job_id: JobId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a job with its past runs and logs; runs in flight are cancelled."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        job = client.get_job(job_id)
        if not yes:
            if not sys.stdin.isatty():
                raise fail(f"deleting job {job_id} needs --yes when not run at a terminal")
            label = f"{job.get('app')}/{job.get('name')}"
            typer.confirm(f"Delete job {job_id} ({label}) and its runs?", abort=True)
        client.delete_job(job_id)
    if conn.as_json:
        print_json({"deleted": job_id})
        return
    typer.echo(f"job {job_id} deleted")


# -- running ---------------------------------------------------------------------------------


ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="key=value, value as JSON if it parses (repeatable)."),
]
ParamsOpt = Annotated[
    str | None,
    typer.Option("--params", help="The run's params, a JSON object (default: the job's)."),
]


def _run_params(params: str | None, param: list[str] | None) -> dict[str, Any] | None:
    """`--params` JSON, then each `--param key=value` on top; None when neither is given."""
    body: dict[str, Any] | None = parse_json("--params", params) if params is not None else None
    for item in param or []:
        key, value = parse_assignment("--param", item)
        body = {**(body or {}), key: value}
    return body


@jobs_app.command("run")
@friendly
def run(
    ctx: typer.Context,
    job_id: JobId,
    param: ParamOpt = None,
    params: ParamsOpt = None,
    low_priority: Annotated[
        bool | None,
        typer.Option("--low-priority/--normal-priority", help="Override the job's priority."),
    ] = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a job now, asynchronously: prints the new run's id and status."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        started = client.run_job(
            job_id, params=_run_params(params, param), low_priority=low_priority
        )
    if conn.as_json:
        print_json(started)
        return
    typer.echo(f"run {started['id']} {started.get('status')}")


@jobs_app.command("test")
@friendly
def try_job(
    ctx: typer.Context,
    job_id: JobId,
    param: ParamOpt = None,
    params: ParamsOpt = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a job now and wait: the request sent, the response received and the log.

    The service waits up to the job's timeout; exits 1 when the test run did not succeed."""
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        outcome = client.test_job(job_id, params=_run_params(params, param))
    run_ = outcome.get("run") or {}
    if conn.as_json:
        print_json(outcome)
    else:
        from nightshift.cli import render

        took = render.human_duration(run_.get("duration_s"))
        status = render.status_text(run_.get("status"))
        render.console().print(
            f"run {run_.get('id')} {status}" + (f" in {took}" if took else ""), highlight=False
        )
        error = run_.get("error") or {}
        if error:
            render.console().print(
                render.as_text(f"{error.get('type', 'error')}: {error.get('message', '')}"),
                markup=False,
            )
        if outcome.get("request") is not None or outcome.get("response") is not None:
            render.exchange("request", outcome.get("request"))
            render.exchange("response", outcome.get("response"))
        elif run_.get("result") is not None:
            render.console().print("[bold]result[/]")
            typer.echo(json.dumps(run_["result"], indent=2, ensure_ascii=False))
        render.console().print("[bold]log[/]")
        render.log_lines(outcome.get("log") or [])
    if run_.get("status") != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("preview")
@friendly
def preview(
    ctx: typer.Context,
    expr: Annotated[
        str | None, typer.Argument(help="e.g. '*/5 * * * *', 'every 5m', '9:00'")
    ] = None,
    job: Annotated[
        int | None, typer.Option("--job", help="A saved job's next fires instead of EXPR.")
    ] = None,
    tz: Annotated[
        str | None, typer.Option("--tz", help="IANA timezone (default: the service's).")
    ] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1000)] = 10,
    start: Annotated[str | None, typer.Option("--from", help="ISO 8601 start.")] = None,
    server: ServerOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The next fire times the service computes, one ISO 8601 time per line."""
    conn = connection(ctx, server, token, as_json)
    if (expr is None) == (job is None):
        raise fail("give a schedule expression or --job ID (one of them)")
    if job is not None and tz is not None:
        raise fail("--tz: a saved job's fires are in its own timezone")
    with conn.client() as client:
        if job is not None:
            answer = client.next_fires(job, count=count, start=start)
        else:
            assert expr is not None
            answer = client.preview(expr, timezone=tz, count=count, start=start)
    if conn.as_json:
        print_json(answer)
        return
    for fire in answer.get("fires", []):
        typer.echo(fire)
