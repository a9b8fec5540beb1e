"""Exactly-once fires under scheduler crashes: N `nightshift scheduler` processes on one
PostgreSQL, M jobs firing every second, one scheduler SIGKILLed every few seconds (half of the
time aimed at the moment the jobs fire) and started again. Afterwards every (job, scheduled
second) in the window must have exactly one run: the figures are fires checked, duplicates and
missed (both must be 0).

    .venv/bin/python bench/exactly_once.py                      # 500 jobs, 3 schedulers, 5 min
    .venv/bin/python bench/exactly_once.py --jobs 100 --seconds 30 --no-record

It prints its figures and appends them, with the command and the machine, to bench/RESULTS.md.
`tests/faults/test_scheduler_kills.py` runs the same harness, shortened, in `make test`.

Every job fires on the same phase (whole seconds), so the schedulers race for the same rows each
second: the hardest case for exactly-once, where spread phases would only be harder on CPU.
Jobs use overlap=allow and catch_up=all: every due second must become a run, whatever happened.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

REPO = Path(__file__).resolve().parent.parent
NIGHTSHIFT = str(Path(sys.executable).with_name("nightshift"))
PG_URL = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
APP = "exactly-once"  # the experiment's jobs; Nightshift's own (app `system`) are left out


@dataclass
class Figures:
    jobs: int
    schedulers: int
    seconds: float
    fires_checked: int = 0
    runs_in_window: int = 0
    duplicates: int = 0
    missed: int = 0
    skipped_records: int = 0
    kills: int = 0
    kills_mid_transaction: int = 0  # the victim had an open transaction when the signal left
    unexpected_exits: int = 0
    lateness_ms: dict[str, float] = field(default_factory=dict)  # created_at - scheduled_for
    window: tuple[str, str] = ("", "")
    missing_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fires_checked > 0 and self.duplicates == 0 and self.missed == 0


class Process:
    """One `nightshift scheduler` (or worker) process; its connections carry its name in
    application_name, so pg_stat_activity tells whether it is inside a transaction."""

    def __init__(self, name: str, url: str, logdir: Path, extra_env: dict[str, str]) -> None:
        self.name = name
        self.url = f"{url}&application_name={quote(name)}"
        self.log = logdir / f"{name}.log"
        self.env = {
            **os.environ,
            "NIGHTSHIFT_DATABASE_URL": self.url,
            "NIGHTSHIFT_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO),
            **extra_env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.role = "scheduler"

    def start(self, role: str | None = None) -> None:
        self.role = role or self.role
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [NIGHTSHIFT, self.role], cwd=REPO, env=self.env, stdout=out, stderr=out
            )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the process logs that its role runs."""
        deadline = time.monotonic() + timeout
        while f"nightshift {self.role}: ".encode() not in self.log.read_bytes():
            if not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: see {self.log}")
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run(
    server_url: str = PG_URL,
    *,
    jobs: int = 500,
    seconds: float = 300,
    schedulers: int = 3,
    kill_every: tuple[float, float] = (2.0, 6.0),
    workers: int = 0,
    seed: int | None = None,
    logdir: Path | None = None,
    say: Any = print,
) -> Figures:
    """Run the experiment on a fresh schema of `server_url` (dropped afterwards)."""
    from nightshift.store import open_store  # late: `--help` works without the package set up

    rng = random.Random(seed)
    schema = f"ns_bench_eo_{secrets.token_hex(4)}"
    sep = "&" if "?" in server_url else "?"
    url = f"{server_url}{sep}options=-csearch_path%3D{schema}"
    logdir = logdir or Path(tempfile.mkdtemp(prefix="nightshift-exactly-once-"))
    figures = Figures(jobs=jobs, schedulers=schedulers, seconds=seconds)
    _sql(server_url, f"CREATE SCHEMA {schema}")
    procs: list[Process] = []
    monitor: psycopg.Connection | None = None
    try:
        store = open_store(url)
        try:
            _create_jobs(store, jobs)
            env = {"NIGHTSHIFT_HTTP_ALLOW_PRIVATE": "true"}
            procs = [Process(f"eo-scheduler-{i}", url, logdir, env) for i in range(schedulers)]
            for proc in procs:
                proc.start()
            helpers = [Process(f"eo-worker-{i}", url, logdir, env) for i in range(workers)]
            for proc in helpers:
                proc.start("worker")
            procs += helpers
            for proc in procs:
                proc.wait_ready()
            first = _arm(store)  # every process is up: from now on lateness is steady state
        finally:
            store.close()
        say(f"{jobs} jobs every second from {first:%H:%M:%S}; logs in {logdir}")
        monitor = psycopg.connect(server_url, autocommit=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(rng.uniform(*kill_every), max(0.0, deadline - time.monotonic())))
            if rng.random() < 0.5:
                # Aim at a firing: every job is due on the whole second, and the transaction
                # that fires them runs during the first tens of milliseconds after it.
                wall = time.time()
                time.sleep(1 - (wall % 1) + rng.uniform(0.0, 0.04))
            if time.monotonic() >= deadline:
                break
            victim = rng.choice(procs[:schedulers])
            for proc in procs:
                if proc is not victim and not proc.alive:
                    figures.unexpected_exits += 1
                    proc.start()
            if not victim.alive:
                figures.unexpected_exits += 1
                victim.start()
                continue
            if _in_transaction(monitor, victim.name):
                figures.kills_mid_transaction += 1
            victim.kill()
            figures.kills += 1
            victim.start()  # back at once; the others fire meanwhile
        # Let every scheduler come back and catch up, then look at whole seconds well past.
        time.sleep(3.0)
        last = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
        for proc in procs:
            if not proc.alive:
                figures.unexpected_exits += 1
    finally:
        for proc in procs:
            proc.stop()
        if monitor is not None:
            monitor.close()
    try:
        _check(server_url, schema, first, last, figures)
    finally:
        _sql(server_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return figures


def _create_jobs(store: Any, count: int) -> None:
    """`count` jobs every second, in their own app."""
    from sqlalchemy import update

    from nightshift.clock import SystemClock
    from nightshift.config import Settings
    from nightshift.service import Service
    from nightshift.store.tables import jobs
    from nightshift.worker.kinds.registry import build_executors

    settings = Settings(database_url=store.url, http_allow_private=True)
    service = Service(store, SystemClock(), settings, build_executors(settings))
    for i in range(count):
        service.create_job(
            {
                "app": APP,
                "name": f"every-second-{i:04d}",
                "kind": "python",
                "config": {"function": "tests.faults.jobs:noop"},
                "schedule": "every 1s",
                "overlap": "allow",
                "catch_up": "all",
            }
        )
    # Parked far ahead until every process runs (see `_arm`).
    parked = datetime.now(UTC) + timedelta(days=1)
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.app == APP).values(next_fire_at=parked))


def _arm(store: Any) -> datetime:
    """Put every job on whole seconds, starting in two seconds; returns the first fire."""
    from sqlalchemy import select, update

    from nightshift.store.tables import jobs

    anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    first = anchor + timedelta(seconds=1)
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.app == APP).values(anchor_at=anchor, next_fire_at=first)
        )
        some = conn.execute(select(jobs.c.id).where(jobs.c.app == APP).limit(1)).scalar_one()
    store.update_job(some, {"description": "armed"})  # a job change: the schedulers re-read
    return first


def _in_transaction(monitor: psycopg.Connection, name: str) -> bool:
    """Sampled a moment before the kill, on a connection kept open for it (no connect delay)."""
    row = monitor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
        "AND xact_start IS NOT NULL AND state <> 'idle'",
        [name],
    ).fetchone()
    return bool(row and row[0])


def _check(server_url: str, schema: str, first: datetime, last: datetime, fig: Figures) -> None:
    slots = int((last - first).total_seconds()) + 1
    fig.window = (first.isoformat(), last.isoformat())
    fig.fires_checked = fig.jobs * slots
    window = [APP, first, last]
    rows = _sql(
        server_url,
        f"SELECT count(*), count(DISTINCT (job_id, scheduled_for)) FROM {schema}.runs "
        "WHERE app = %s AND status <> 'skipped' AND scheduled_for BETWEEN %s AND %s",
        window,
    )
    fig.runs_in_window, distinct = rows[0]
    fig.duplicates = fig.runs_in_window - distinct
    fig.missed = fig.fires_checked - distinct
    skipped = _sql(
        server_url,
        f"SELECT coalesce(sum(skip_count), 0) FROM {schema}.runs "
        "WHERE app = %s AND status = 'skipped' AND scheduled_for BETWEEN %s AND %s",
        window,
    )
    fig.skipped_records = int(skipped[0][0])
    missing = _sql(
        server_url,
        f"SELECT j.name, s.slot FROM {schema}.jobs j "
        "CROSS JOIN generate_series(%s::timestamptz, %s::timestamptz, interval '1 second') s(slot) "
        f"WHERE j.app = %s AND NOT EXISTS (SELECT 1 FROM {schema}.runs r WHERE r.job_id = j.id "
        "AND r.scheduled_for = s.slot AND r.status <> 'skipped') ORDER BY s.slot LIMIT 5",
        [first, last, APP],
    )
    fig.missing_examples = [f"{name} @ {slot.isoformat()}" for name, slot in missing]
    late = _sql(
        server_url,
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY x), max(x) FROM ("
        "SELECT extract(epoch FROM created_at - scheduled_for) * 1000 AS x "
        f"FROM {schema}.runs WHERE app = %s AND status <> 'skipped' "
        "AND scheduled_for BETWEEN %s AND %s) t",
        window,
    )
    (p50, p99), worst = late[0]
    figures = {"p50": p50, "p99": p99, "max": worst}
    fig.lateness_ms = {k: round(float(v), 1) for k, v in figures.items()}


def _sql(server_url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


# -- reporting ------------------------------------------------------------------------------


def machine(server_url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load1": round(os.getloadavg()[0], 2),
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        info["postgresql"] = _sql(server_url, "SHOW server_version")[0][0]
    with contextlib.suppress(Exception):  # read-only git: which source was measured
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        changed = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True)
        dirty = len(changed.stdout.splitlines())
        info["source"] = f"{commit.stdout.decode().strip()} + {dirty} changed file(s) under src/"
    return info


def report(fig: Figures, command: str, host: dict[str, Any]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Exactly-once fires under scheduler kills ({when})",
        "",
        f"`{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in host.items()),
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| schedulers / jobs firing every second | {fig.schedulers} / {fig.jobs} |",
        f"| duration | {fig.seconds:g} s |",
        f"| SIGKILLs (with an open transaction) | {fig.kills} ({fig.kills_mid_transaction}) |",
        f"| fires checked | {fig.fires_checked} |",
        f"| duplicates | {fig.duplicates} |",
        f"| missed | {fig.missed} |",
        f"| skipped records in the window | {fig.skipped_records} |",
        f"| unexpected exits | {fig.unexpected_exits} |",
        "| fire lateness p50 / p99 / max (created - scheduled) | "
        f"{fig.lateness_ms.get('p50')} / {fig.lateness_ms.get('p99')} / "
        f"{fig.lateness_ms.get('max')} ms |",
        f"| result | {'PASS' if fig.ok else 'FAIL'} |",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=PG_URL, help="PostgreSQL server (a schema is made)")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="also run N worker processes")
    parser.add_argument("--kill-min", type=float, default=2.0)
    parser.add_argument("--kill-max", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    host = machine(args.url)
    fig = run(
        args.url,
        jobs=args.jobs,
        seconds=args.seconds,
        schedulers=args.schedulers,
        kill_every=(args.kill_min, args.kill_max),
        workers=args.workers,
        seed=args.seed,
    )
    command = "python bench/exactly_once.py " + " ".join(sys.argv[1:])
    text = report(fig, command.strip(), host)
    print(text)
    print({k: v for k, v in asdict(fig).items() if k == "missing_examples" and v})
    if not args.no_record:
        with open(args.results, "a") as fh:
            fh.write("\n" + text)
    return 0 if fig.ok else 1


if __name__ == "__main__":
    sys.exit(main())
