"""Statistics latency with a million run records.

    .venv/bin/python bench/bench_stats.py [--runs 1000000] [--backend sqlite]

R finished runs (bench_scale's generator: created over the last 24 h, 93 % succeeded, 5 % failed,
2 % skipped) spread over 4 apps, inserted straight into the table. Then:

1. `StatsService.stats` with nothing rolled up (every figure aggregated live from runs);
2. the roll-up system job's work, `StatsService.roll_up()`, until it has caught up (the last
   `stats_lag_s` = 120 s stay live); it writes per-minute rows and, for each hour it closes,
   per-hour rows (what hour and day buckets read);
3. `StatsService.stats` again — what `GET /api/v1/stats` runs — for: hourly buckets over the
   day, per-minute buckets over the last hour, daily buckets over 30 days, and hourly buckets of
   one app; median / p95 / max of 20 calls each.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_scale import insert_runs
from benchlib import (
    Results,
    TempDatabase,
    add_common_args,
    backends,
    load1,
    quiet_logging,
    timed,
    working_directory,
)
from sqlalchemy import text

APPS = ["shop", "blog", "billing", "search"]


def run(backend: str, count: int, results: Results) -> None:
    from nightshift.clock import SystemClock
    from nightshift.config import Settings
    from nightshift.domain.models import Job, JobKind
    from nightshift.stats import StatsService
    from nightshift.store import open_store

    load_before = load1()
    with TempDatabase(backend) as db, working_directory(db.workdir):
        settings = Settings(database_url=db.url)
        store = open_store(db.url)
        now = datetime.now(UTC)
        job_ids = []
        for app in APPS:
            store.ensure_app(app, now)
            job = Job(0, app, "j", JobKind.HTTP, {"url": "http://x"}, anchor_at=now)
            job.created_at = job.updated_at = now
            job_ids.append(store.create_job(job).id)
        insert_s = insert_runs(store, count, job_ids, backend)
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE runs SET app = (SELECT app FROM jobs WHERE jobs.id = runs.job_id)")
            )
            if backend == "postgresql":
                conn.execute(text("ANALYZE runs"))
        print(f"  {count} runs inserted in {insert_s:.1f} s", flush=True)
        service = StatsService(store, SystemClock(), settings)

        figures: dict[str, Any] = {"runs": count}
        figures["live_hour_day_ms"] = timed(lambda: service.stats("hour"), reps=1, warmup=0)[
            "max_ms"
        ]
        print(f"  live only: {figures['live_hour_day_ms']} ms", flush=True)

        t0 = time.perf_counter()
        minutes = 0
        while (step := service.roll_up())["rolled_minutes"]:
            minutes += step["rolled_minutes"]
        figures["rollup_s"] = round(time.perf_counter() - t0, 2)
        figures["rolled_minutes"] = minutes
        with store.engine.connect() as conn:
            figures["stats_rows"] = conn.execute(text("SELECT count(*) FROM run_stats")).scalar()
            figures["hist_rows"] = conn.execute(
                text("SELECT count(*) FROM run_stats_hist")
            ).scalar()
            figures["hourly_rows"] = conn.execute(
                text("SELECT count(*) FROM run_stats_hourly")
            ).scalar()
            figures["hourly_hist_rows"] = conn.execute(
                text("SELECT count(*) FROM run_stats_hist_hourly")
            ).scalar()
        print(f"  roll-up: {figures}", flush=True)

        cases = {
            "hour_buckets_24h": lambda: service.stats("hour"),
            "minute_buckets_1h": lambda: service.stats("minute"),
            "day_buckets_30d": lambda: service.stats("day"),
            "hour_buckets_24h_one_app": lambda: service.stats("hour", app="shop"),
            "hour_buckets_7d": lambda: service.stats(
                "hour", since=datetime.now(UTC) - timedelta(days=7)
            ),
        }
        for name, fn in cases.items():
            figures[name] = timed(fn, reps=20)
            print(f"  {name}: {figures[name]}", flush=True)
        total = sum(a["executions"] for a in service.stats("day")["apps"])
        figures["executions_counted"] = total
        store.close()
    results.add(
        "stats",
        backend,
        figures,
        load1_before=load_before,
        notes="runs inserted directly; StatsService called in-process (no HTTP)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000)
    add_common_args(parser)
    args = parser.parse_args()
    quiet_logging()
    results = Results(args.json)
    for backend in backends(args):
        print(f"{backend}:", flush=True)
        run(backend, args.runs, results)


if __name__ == "__main__":
    main()
