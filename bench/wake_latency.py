"""Claim latency between processes: how long a run made by one process waits before a worker
process starts it, with LISTEN/NOTIFY and with polling only (NIGHTSHIFT_NOTIFY=false, where an
idle worker looks every second).

    .venv/bin/python bench/wake_latency.py --runs 50

Runs are made one at a time, each after the previous one ended, so every one finds the worker
idle: the figure is created -> started (the run's waiting time), not throughput. It prints the
figures and appends them, with the command and the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from exactly_once import PG_URL, REPO, Process, _sql, machine  # run as bench/wake_latency.py


def measure(server_url: str, runs: int, notify: bool, logdir: Path) -> list[float]:
    from nightshift.clock import SystemClock
    from nightshift.config import Settings
    from nightshift.service import Service
    from nightshift.store import open_store
    from nightshift.worker.kinds.registry import build_executors

    schema = f"ns_bench_wake_{secrets.token_hex(4)}"
    url = f"{server_url}{'&' if '?' in server_url else '?'}options=-csearch_path%3D{schema}"
    _sql(server_url, f"CREATE SCHEMA {schema}")
    store = open_store(url)
    worker = Process(
        f"wake-worker-{'notify' if notify else 'poll'}",
        url,
        logdir,
        {"NIGHTSHIFT_NOTIFY": str(notify).lower(), "NIGHTSHIFT_WORKER_PROCESSES": "1"},
    )
    try:
        settings = Settings(database_url=url)
        service = Service(store, SystemClock(), settings, build_executors(settings))
        job = service.create_job(
            {"name": "quick", "kind": "python", "config": {"function": "tests.faults.jobs:noop"}}
        )
        worker.start("worker")
        waits = []
        for i in range(runs + 1):
            run = service.run_now(job.id)
            deadline = time.monotonic() + 30
            while (done := store.get_run(run.id)).finished_at is None:
                if time.monotonic() > deadline or not worker.alive:
                    raise RuntimeError(f"run {run.id} did not end; see {worker.log}")
                time.sleep(0.005)
            if i:  # the first one waits for the worker to start
                waits.append((done.started_at - done.created_at).total_seconds() * 1000)
            time.sleep(0.25)
        return waits
    finally:
        worker.stop()
        store.close()
        _sql(server_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def summary(waits: list[float]) -> dict[str, float]:
    ordered = sorted(waits)
    return {
        "median": round(statistics.median(ordered), 1),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
        "max": round(ordered[-1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=PG_URL)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    logdir = Path(tempfile.mkdtemp(prefix="nightshift-wake-"))
    host = machine(args.url)
    figures = {
        "LISTEN/NOTIFY": summary(measure(args.url, args.runs, True, logdir)),
        "poll only (every 1 s)": summary(measure(args.url, args.runs, False, logdir)),
    }
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Claim latency between processes ({when})",
        "",
        "`python bench/wake_latency.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in host.items()),
        "",
        f"| worker wakes by | created -> started, median / p95 / max over {args.runs} runs |",
        "| --- | --- |",
        *[f"| {k} | {v['median']} / {v['p95']} / {v['max']} ms |" for k, v in figures.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with open(args.results, "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
