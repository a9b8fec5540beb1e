"""Tables and details for people: Rich output, human durations and local times.

Rich is imported inside the functions: worker processes import the CLI's module on start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

JSON = dict[str, Any]
STATUS_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "stopping": "magenta",
    "stopped": "magenta",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "dim",
    "skipped": "dim",
}


def console(*, stderr: bool = False) -> Console:
    """A console for stdout; piped output gets a wide page instead of 80 columns."""
    from rich.console import Console

    plain = Console(stderr=stderr)
    if plain.is_terminal or os.environ.get("COLUMNS"):
        return plain
    return Console(stderr=stderr, width=240)


# -- values ----------------------------------------------------------------------------------


def human_duration(seconds: float | None) -> str:
    """'350 ms', '1.2 s', '42 s', '3 min', '2.5 h', '3.1 d'; '' for none."""
    if seconds is None:
        return ""
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 600:
        minutes = s / 60
        return f"{minutes:.0f} min" if minutes == round(minutes) else f"{minutes:.1f} min"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86_400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86_400:.1f} d"


def human_time(value: str | None, *, short: bool = False, now: datetime | None = None) -> str:
    """An ISO time from the API, in the local timezone, to the second.

    `short` (for tables) drops what `now` makes obvious: '09:00:05' today, 'Mar 02 09:00' this
    year, '2025-03-02 09:00' before."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    if not short:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    now = (now or datetime.now(moment.tzinfo)).astimezone(moment.tzinfo)
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S")
    if moment.year == now.year:
        return moment.strftime("%b %d %H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def status_text(status: str | None) -> str:
    if not status:
        return ""
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def children_text(children: JSON | None) -> str:
    if not children or not children.get("total"):
        return ""
    text = f"{children.get('finished', 0)}/{children['total']}"
    failed = children.get("failed") or 0
    return f"{text}, {failed} failed" if failed else text


def progress_text(progress: float | None) -> str:
    if progress is None:
        return ""
    return f"{progress:.0f} %"


def flag(value: Any, word: str = "yes") -> str:
    return word if value else ""


def job_state(job: JSON) -> str:
    state = job.get("state") or ("enabled" if job.get("enabled") else "disabled")
    return state


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _escape(value: Any) -> str:
    from rich.markup import escape

    return escape(as_text(value))


# -- tables ----------------------------------------------------------------------------------


def _table(*columns: str, title: str | None = None) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", padding=(0, 1), show_edge=False
    )
    for name in columns:
        table.add_column(name, no_wrap=True)
    return table


def _print(table: Table) -> None:
    """A table at its natural width: on a narrow terminal its lines wrap (or `less -S`), but no
    column is cut off or squeezed into a ragged cell."""
    from rich.console import Console
    from rich.measure import Measurement

    out = console()
    need = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if need > out.width:
        out = Console(width=need, force_terminal=out.is_terminal)
    out.print(table)


def jobs_table(jobs: Iterable[JSON]) -> None:
    table = _table(
        "ID", "App", "Name", "Kind", "Schedule", "Timezone", "State", "Next fire", "Last run"
    )
    for job in jobs:
        last = job.get("last_run") or {}
        table.add_row(
            str(job["id"]),
            _escape(job.get("app")),
            _escape(job.get("name")),
            _escape(job.get("kind")),
            _escape(job.get("schedule") or "(on demand)"),
            _escape(job.get("timezone")),
            _escape(job_state(job)),
            human_time(job.get("next_fire_at"), short=True),
            status_text(last.get("status")),
        )
    _print(table)


RUN_COLUMNS = (
    "ID",
    "Job",
    "Status",
    "Created",
    "Waiting",
    "Started",
    "Duration",
    "Errors",
    "Low priority",
    "Run by",
    "Progress",
    "Children",
    "Attempt",
)


def runs_table(runs: Iterable[JSON]) -> None:
    table = _table(*RUN_COLUMNS)
    for run in runs:
        table.add_row(
            str(run["id"]),
            _escape(run.get("job_name") or run.get("job_id")),
            status_text(run.get("status")),
            human_time(run.get("created_at"), short=True),
            human_duration(run.get("waiting_s")),
            human_time(run.get("started_at"), short=True),
            human_duration(run.get("duration_s")),
            "[red]yes[/]" if run.get("errors") else "",
            flag(run.get("low_priority")),
            _escape(run.get("run_by")),
            progress_text(run.get("progress")),
            children_text(run.get("children")),
            str(run.get("attempt", "")),
        )
    _print(table)


def apps_table(apps: Iterable[JSON]) -> None:
    table = _table("Name", "Schedules", "Retention", "Created")
    for app in apps:
        days = app.get("retention_days")
        table.add_row(
            _escape(app.get("name")),
            "on" if app.get("schedules_enabled") else "[yellow]paused[/]",
            f"{days} days" if days else "",
            human_time(app.get("created_at"), short=True),
        )
    _print(table)


def tokens_table(tokens: Iterable[JSON]) -> None:
    table = _table("ID", "Name", "App", "Created")
    for token in tokens:
        table.add_row(
            str(token.get("id")),
            _escape(token.get("name")),
            _escape(token.get("app") or "(admin)"),
            human_time(token.get("created_at"), short=True),
        )
    _print(table)


def details(rows: Iterable[tuple[str, Any]], title: str | None = None) -> None:
    """A two-column field / value listing; values are already markup-safe text."""
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value if isinstance(value, str) else _escape(value))
    out = console()
    if title:
        out.print(f"[bold]{title}[/]")
    out.print(table)


def job_details(job: JSON) -> None:
    retries = job.get("retries") or {}
    last = job.get("last_run") or {}
    rows: list[tuple[str, Any]] = [
        ("id", str(job.get("id"))),
        ("app", _escape(job.get("app"))),
        ("name", _escape(job.get("name"))),
        ("description", _escape(job.get("description"))),
        ("tags", _escape(", ".join(job.get("tags") or []))),
        ("kind", _escape(job.get("kind"))),
        ("config", _escape(json.dumps(job.get("config") or {}, indent=2, ensure_ascii=False))),
        ("schedule", _escape(job.get("schedule") or "(on demand)")),
        ("timezone", _escape(job.get("timezone"))),
        ("state", _escape(job_state(job))),
        ("deactivated", _escape(job.get("deactivated_reason"))),
        ("next fire", human_time(job.get("next_fire_at"))),
        ("overlap", _escape(job.get("overlap"))),
        ("catch up", _escape(job.get("catch_up"))),
        ("max lateness", human_duration(job.get("max_lateness_s"))),
        ("retries", f"{retries.get('max', 0)}, backoff {human_duration(retries.get('backoff_s'))}"),
        ("timeout", human_duration(job.get("timeout_s"))),
        ("low priority", flag(job.get("low_priority"))),
        ("active from", human_time(job.get("start_at"))),
        ("active until", human_time(job.get("end_at"))),
        ("start delay", human_duration(job.get("start_delay_s") or None)),
        ("jitter", human_duration(job.get("jitter_s") or None)),
        ("declared in code", flag(job.get("declared"))),
        (
            "last run",
            f"{last['id']} {status_text(last.get('status'))} {human_time(last.get('started_at'))}"
            if last
            else "",
        ),
        ("created", human_time(job.get("created_at"))),
        ("updated", human_time(job.get("updated_at"))),
    ]
    details([(k, v) for k, v in rows if v not in ("", None)], title=f"job {job.get('id')}")


def run_details(run: JSON) -> None:
    error = run.get("error") or {}
    rows: list[tuple[str, Any]] = [
        ("id", str(run.get("id"))),
        ("job", _escape(f"{run.get('job_id')} {run.get('job_name') or ''}".strip())),
        ("app", _escape(run.get("app"))),
        ("status", status_text(run.get("status"))),
        ("reason", _escape(run.get("reason"))),
        ("skipped fires", str(run["skip_count"]) if run.get("skip_count") else ""),
        ("test run", flag(run.get("is_test"))),
        ("created", human_time(run.get("created_at"))),
        ("scheduled for", human_time(run.get("scheduled_for"))),
        ("run at", human_time(run.get("run_at"))),
        ("waiting", human_duration(run.get("waiting_s"))),
        ("started", human_time(run.get("started_at"))),
        ("duration", human_duration(run.get("duration_s"))),
        ("finished", human_time(run.get("finished_at"))),
        ("attempt", str(run.get("attempt", ""))),
        ("retry of", as_text(run.get("retry_of"))),
        ("errors", "[red]yes[/]" if run.get("errors") else "no"),
        ("error", _escape(f"{error.get('type', '')}: {error.get('message', '')}") if error else ""),
        ("low priority", flag(run.get("low_priority"))),
        ("run by", _escape(run.get("run_by"))),
        ("progress", progress_text(run.get("progress"))),
        ("children", children_text(run.get("children"))),
        ("parent", as_text(run.get("parent_id"))),
        ("root", as_text(run.get("root_id"))),
        ("params", _escape(run.get("params") or "")),
        (
            "result",
            _escape(json.dumps(run.get("result"), indent=2, ensure_ascii=False))
            if run.get("result") is not None
            else "",
        ),
    ]
    details([(k, v) for k, v in rows if v not in ("", None)], title=f"run {run.get('id')}")
    if error.get("traceback"):
        out = console()
        out.print("[bold]traceback[/]")
        out.print(_escape(error["traceback"].rstrip()))


def log_lines(lines: Iterable[JSON]) -> None:
    out = console()
    for line in lines:
        level = str(line.get("level", "")).upper()
        style = {"ERROR": "red", "CRITICAL": "bold red", "WARNING": "yellow", "DEBUG": "dim"}
        tag = f"[{style[level]}]{level:<7}[/]" if level in style else f"{level:<7}"
        out.print(
            f"{human_time(line.get('at'))} {tag} {_escape(line.get('message'))}",
            highlight=False,
            soft_wrap=True,
        )


def exchange(title: str, part: JSON | None) -> None:
    """The request sent or the response received by an http test run."""
    out = console()
    out.print(f"[bold]{title}[/]")
    if not part:
        out.print("  (none)")
        return
    if "method" in part:
        out.print(f"  {_escape(part.get('method'))} {_escape(part.get('url'))}", highlight=False)
    if "status" in part:
        took = human_duration(part["elapsed_ms"] / 1000) if part.get("elapsed_ms") else ""
        out.print(f"  status {part['status']}" + (f" in {took}" if took else ""))
    for name, value in (part.get("headers") or {}).items():
        out.print(f"  {_escape(name)}: {_escape(value)}", highlight=False)
    body = part.get("body")
    if body not in (None, ""):
        text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
        out.print("")
        for line in text.splitlines() or [""]:
            out.print(f"  {_escape(line)}", highlight=False, soft_wrap=True)
