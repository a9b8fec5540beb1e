"""`nightshift jobs create` and `jobs edit`: a job's fields from flags, `--file` and `--set`.

The commands are registered on the `jobs` group by `nightshift.cli.jobs`.
"""

from __future__ import annotations

import copy
import sys
from typing import Annotated, Any

import typer

from nightshift.cli.common import (
    DEFAULT_URL,
    JsonOpt,
    ServerOnlyOpt,
    TokenOpt,
    connection,
    fail,
    friendly,
    parse_assignment,
    parse_json,
    print_json,
)

#: Fields the API reports but does not take: dropped from `--file` so that the JSON of
#: `jobs show --json` can be edited and saved again.
READ_ONLY = (
    "id",
    "next_fire_at",
    "last_run",
    "deactivated_reason",
    "state",
    "declared",
    "created_at",
    "updated_at",
)
JobId = Annotated[int, typer.Argument(help="The job's id.", min=1)]
_MISSING = object()

FileOpt = Annotated[
    str | None,
    typer.Option("--file", "-f", help="A job's JSON, from a file or '-' for stdin."),
]
NameOpt = Annotated[str | None, typer.Option("--name", help="Unique within the app.")]
AppOpt = Annotated[str | None, typer.Option("--app", help="The app (default: 'default').")]
KindOpt = Annotated[
    str | None,
    typer.Option("--kind", help="http, python, sql or workflow (implied by --url, --function)."),
]
ScheduleOpt = Annotated[
    str | None,
    typer.Option("--schedule", help="'*/5 * * * *', 'every 5m', '9:00', '' for on demand only."),
]
TimezoneOpt = Annotated[str | None, typer.Option("--timezone", "--tz", help="IANA timezone.")]
ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="The kind's configuration, a JSON object.")
]
TargetUrlOpt = Annotated[str | None, typer.Option("--url", help="http shorthand: config.url.")]
MethodOpt = Annotated[
    str | None, typer.Option("--method", help="http shorthand: config.method (GET, POST, …).")
]
FunctionOpt = Annotated[
    str | None, typer.Option("--function", help="python shorthand: config.function 'module:fn'.")
]
TagOpt = Annotated[
    list[str] | None, typer.Option("--tag", help="A tag (repeatable; replaces the tags).")
]
DescriptionOpt = Annotated[str | None, typer.Option("--description")]
RetriesOpt = Annotated[int | None, typer.Option("--retries", help="Retries after a failure.")]
BackoffOpt = Annotated[
    float | None, typer.Option("--backoff", help="Seconds before the first retry.")
]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="Seconds a run may take.")]
OverlapOpt = Annotated[
    str | None,
    typer.Option("--overlap", help="When a fire finds a run active: skip, queue, allow, replace."),
]
CatchUpOpt = Annotated[
    str | None, typer.Option("--catch-up", help="After downtime: none, latest, all.")
]
LatenessOpt = Annotated[
    float | None, typer.Option("--max-lateness", help="Seconds after which a fire is skipped.")
]
EnabledOpt = Annotated[
    bool | None, typer.Option("--enable/--disable", help="Switch the job on or off.")
]
LowPriorityOpt = Annotated[
    bool | None, typer.Option("--low-priority/--normal-priority", help="Its runs' priority.")
]
StartAtOpt = Annotated[
    str | None, typer.Option("--start-at", help="Active from (ISO with offset).")
]
EndAtOpt = Annotated[str | None, typer.Option("--end-at", help="Active until (ISO with offset).")]
StartDelayOpt = Annotated[
    float | None, typer.Option("--start-delay", help="Seconds after start for '@reboot'.")
]
JitterOpt = Annotated[
    float | None, typer.Option("--jitter", help="Random delay per fire, seconds.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="field=value, value as JSON if it parses (repeatable; dotted: config.method=POST).",
    ),
]


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        raise fail(f"--file: cannot read {path}: {exc.strerror or exc}") from None
    data = parse_json("--file", text)
    return {k: v for k, v in data.items() if k not in READ_ONLY}


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[parts[-1]] = value


def _apply(base: dict[str, Any], flags: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """The job's fields after the file (already in `base`), the flags, then `--set`."""
    data = copy.deepcopy(base)
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    if flags["config"] is not None:
        config = {**config, **parse_json("--config", flags["config"])}
    shorthand = {"url": flags["url"], "method": flags["method"], "function": flags["function"]}
    shorthand = {k: v for k, v in shorthand.items() if v is not None}
    if flags["config"] is not None or shorthand:
        data["config"] = {**config, **shorthand}
    if flags["kind"] is not None:
        data["kind"] = flags["kind"]
    elif "kind" not in data and ("url" in shorthand or "method" in shorthand):
        data["kind"] = "http"
    elif "kind" not in data and "function" in shorthand:
        data["kind"] = "python"
    plain = {
        "name": flags["name"],
        "app": flags["app"],
        "schedule": flags["schedule"],
        "timezone": flags["timezone"],
        "description": flags["description"],
        "timeout_s": flags["timeout"],
        "overlap": flags["overlap"],
        "catch_up": flags["catch_up"],
        "max_lateness_s": flags["max_lateness"],
        "enabled": flags["enabled"],
        "low_priority": flags["low_priority"],
        "start_at": flags["start_at"],
        "end_at": flags["end_at"],
        "start_delay_s": flags["start_delay"],
        "jitter_s": flags["jitter"],
    }
    data.update({k: v for k, v in plain.items() if v is not None})
    if flags["tags"]:
        data["tags"] = list(flags["tags"])
    if flags["retries"] is not None or flags["backoff"] is not None:
        retries = data.get("retries")
        retries = dict(retries) if isinstance(retries, dict) else {}
        if flags["retries"] is not None:
            retries["max"] = flags["retries"]
        if flags["backoff"] is not None:
            retries["backoff_s"] = flags["backoff"]
        data["retries"] = retries
    for item in sets or []:
        key, value = parse_assignment("--set", item)
        _set_path(data, key, value)
    return data


NOT_FIELDS = ("ctx", "conn", "file", "job_id", "sets", "server", "token", "as_json")


def _flags(given: dict[str, Any]) -> dict[str, Any]:
    """The field flags among a command's arguments (its `locals()`)."""
    return {k: v for k, v in given.items() if k not in NOT_FIELDS}


@friendly
def create(
    ctx: typer.Context,
    file: FileOpt = None,
    name: NameOpt = None,
    app: AppOpt = None,
    kind: KindOpt = None,
    schedule: ScheduleOpt = None,
    timezone: TimezoneOpt = None,
    config: ConfigOpt = None,
    url: TargetUrlOpt = None,
    method: MethodOpt = None,
    function: FunctionOpt = None,
    tags: TagOpt = None,
    description: DescriptionOpt = None,
    retries: RetriesOpt = None,
    backoff: BackoffOpt = None,
    timeout: TimeoutOpt = None,
    overlap: OverlapOpt = None,
    catch_up: CatchUpOpt = None,
    max_lateness: LatenessOpt = None,
    enabled: EnabledOpt = None,
    low_priority: LowPriorityOpt = None,
    start_at: StartAtOpt = None,
    end_at: EndAtOpt = None,
    start_delay: StartDelayOpt = None,
    jitter: JitterOpt = None,
    sets: SetOpt = None,
    server: ServerOnlyOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a job from flags or from a JSON file (flags override the file).

    e.g. nightshift jobs create --name ping --url https://example.com/ping --schedule 'every 5m'
    """
    flags = _flags(locals())  # first: locals() holds only the arguments here
    conn = connection(ctx, server, token, as_json)
    body = _apply(_read_file(file) if file else {}, flags, sets)
    with conn.client() as client:
        job = client.create_job(body)
    if conn.as_json:
        print_json(job)
        return
    _say_saved("created", job)


@friendly
def edit(
    ctx: typer.Context,
    job_id: JobId,
    file: FileOpt = None,
    name: NameOpt = None,
    kind: KindOpt = None,
    schedule: ScheduleOpt = None,
    timezone: TimezoneOpt = None,
    config: ConfigOpt = None,
    url: TargetUrlOpt = None,
    method: MethodOpt = None,
    function: FunctionOpt = None,
    tags: TagOpt = None,
    description: DescriptionOpt = None,
    retries: RetriesOpt = None,
    backoff: BackoffOpt = None,
    timeout: TimeoutOpt = None,
    overlap: OverlapOpt = None,
    catch_up: CatchUpOpt = None,
    max_lateness: LatenessOpt = None,
    enabled: EnabledOpt = None,
    low_priority: LowPriorityOpt = None,
    start_at: StartAtOpt = None,
    end_at: EndAtOpt = None,
    start_delay: StartDelayOpt = None,
    jitter: JitterOpt = None,
    sets: SetOpt = None,
    server: ServerOnlyOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a job: only the fields given change (--config and --set merge into the config).

    e.g. nightshift jobs edit 3 --schedule '0 9 * * 1' --set config.query.type=2
    """
    flags = {**_flags(locals()), "app": None}  # first: locals() holds only the arguments here
    conn = connection(ctx, server, token, as_json)
    with conn.client() as client:
        current = client.get_job(job_id)
        base = {k: v for k, v in current.items() if k not in READ_ONLY}
        if file:
            base.update(_read_file(file))
        after = _apply(base, flags, sets)
        before = {k: v for k, v in current.items() if k not in READ_ONLY}
        changes = {k: v for k, v in after.items() if before.get(k, _MISSING) != v}
        if not changes:
            if not (file or sets or any(v not in (None, []) for v in flags.values())):
                raise fail("nothing to change: give a field flag, --set field=value or --file")
            job = current
        else:
            job = client.update_job(job_id, changes)
    if conn.as_json:
        print_json(job)
        return
    _say_saved("updated" if changes else "unchanged", job)


def _say_saved(verb: str, job: dict[str, Any]) -> None:
    from nightshift.cli import render

    nxt = render.human_time(job.get("next_fire_at"))
    typer.echo(
        f"job {job['id']} {verb}: {job.get('app')}/{job.get('name')}"
        + (f", next fire {nxt}" if nxt else "")
    )
