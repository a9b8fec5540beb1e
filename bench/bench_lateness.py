"""Lateness: J schedules `every 1s` (no-op python jobs) for D seconds, on time or not.

    .venv/bin/python bench/bench_lateness.py [--jobs 1000] [--duration 60] [--backend sqlite]
                                             [--schedulers 1] [--history 0]

Every job gets the same `start_at` (a whole second), so all J are due at the same instant
every second - the worst case, as in the peer harness's APScheduler runs. The service runs
in-process (the real `Runtime`, scheduler + worker roles, default settings); with
`--schedulers K` (PostgreSQL), K-1 more `nightshift scheduler` processes share the database.

The window is the D seconds of scheduled fires starting at the first whole second at least 2 s
after the runtime started (warm-up fires before it are ignored). After the window the runtime
keeps going until every run of the window has finished (at most 15 s), then stops. From the
database:
- start lateness = started_at - scheduled_for (runs that started);
- fire lateness = created_at - scheduled_for (the run row's created_at is the `now` of the
  scheduler tick that inserted it, or the fire's time for a fire made ahead of it
  (Settings.fire_ahead_s): it shows how late the tick began, not when its transaction
  committed);
- the same start lateness without the first instant after the service started, when it is in
  the window: the worker knows nothing yet of how long its runs take (until session 15 it held
  none of that instant ahead of its time; bench/PROFILE.md);
- missed = expected (job, slot) pairs with no started run; of those, `skipped` were recorded
  as skipped by the overlap policy (a fire while the previous run still waited) and
  `not_started` had a run that never started before the stop;
- duplicates = (job, slot) pairs with more than one run;
- per instant (medians over the window's instants): the first and the last start after the
  instant, and the starts per second between them - what bounds the last start of J runs due
  together (bench/PROFILE.md, session 10).
`--history N` first inserts N finished runs of another job, spread over the last day (as
bench_scale.py does): the periodic reads and writes of a service with a long history then
run beside the fires (the recovery of expired leases by every worker, every lease_s / 3).
`Scheduler.tick` is timed by a wrapper: ticks, fires per tick, ms per tick. CPU per fired run
over the window, by part, is read from /proc (the service's threads, its store process, the
pool's children, the other schedulers, PostgreSQL's server): on a 2-core machine a big instant
is CPU-bound, and this says where (bench/PROFILE.md, session 11).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_scale import insert_runs
from bench_throughput import NOOP, CallStats
from benchlib import (
    NIGHTSHIFT,
    CpuMeter,
    Results,
    TempDatabase,
    add_common_args,
    backends,
    bench_env,
    load1,
    quiet_logging,
    spread_ms,
    stop_process,
    working_directory,
)
from sqlalchemy import text

GRACE_S = 15.0
SHOW_INSTANTS = False  # --instants


def whole_second_after(moment: datetime) -> datetime:
    return datetime.fromtimestamp(math.ceil(moment.timestamp()), UTC)


def run(
    backend: str, jobs: int, duration: int, schedulers: int, results: Results, history: int = 0
) -> None:
    from nightshift.config import Settings
    from nightshift.runtime import Runtime

    with TempDatabase(backend) as db, working_directory(db.workdir):
        settings = Settings(database_url=db.url)
        runtime = Runtime(settings, roles=("scheduler", "worker"))
        if history:
            past = runtime.service.create_job({"name": "history", "kind": "python", "config": NOOP})
            print(f"  history: {history:,} runs inserted in", end=" ", flush=True)
            print(f"{insert_runs(runtime.store, history, [past.id], backend):.1f} s", flush=True)
        # Creation takes ~2-6 ms per job here; start the timers after it with a margin.
        start_at = whole_second_after(datetime.now(UTC) + timedelta(seconds=2 + jobs * 0.008))
        t_create = time.perf_counter()
        ids = [
            runtime.service.create_job(
                {
                    "name": f"lat-{i}",
                    "kind": "python",
                    "config": NOOP,
                    "schedule": "every 1s",
                    "start_at": start_at.isoformat(),
                }
            ).id
            for i in range(jobs)
        ]
        create_s = time.perf_counter() - t_create
        extra: list[subprocess.Popen[bytes]] = []
        for k in range(schedulers - 1):
            log = open(db.workdir / f"scheduler{k}.log", "wb")  # noqa: SIM115 - child keeps it
            extra.append(
                subprocess.Popen(
                    [NIGHTSHIFT, "scheduler"],
                    cwd=db.workdir,
                    env=bench_env(db.url),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        ticks = runtime.scheduler.tick = CallStats(runtime.scheduler.tick, size=lambda n: n)  # type: ignore[method-assign]
        window: dict[str, datetime] = {}
        load_before = load1()

        calls = runtime.worker.calls
        meter = CpuMeter(
            {
                "store process": lambda: getattr(calls, "pid", None),
                "other schedulers": lambda: [p.pid for p in extra],
            }
        )

        async def serve() -> None:
            serving = asyncio.create_task(runtime.serve())
            w0 = whole_second_after(max(start_at, datetime.now(UTC) + timedelta(seconds=2)))
            w1 = w0 + timedelta(seconds=duration)
            window.update(start=w0, end=w1)
            print(f"  window {w0:%H:%M:%S} .. {w1:%H:%M:%S} UTC", flush=True)
            await asyncio.sleep((w0 - datetime.now(UTC)).total_seconds())
            meter.start()
            await asyncio.sleep((w1 - datetime.now(UTC)).total_seconds())
            meter.stop()
            deadline = time.monotonic() + GRACE_S
            while time.monotonic() < deadline:
                if await asyncio.to_thread(unfinished, runtime.store.engine, w1) == 0:
                    break
                await asyncio.sleep(0.25)
            runtime.request_stop()
            await serving

        try:
            asyncio.run(serve())
        finally:
            for proc in extra:
                stop_process(proc)
        figures, context = analyse(
            db.url, ids, window["start"], window["end"], jobs, duration, first=start_at
        )
        tick_summary = ticks.summary()
        tick_summary["fires_per_tick"] = tick_summary.pop("per_call", None)
        results.add(
            "lateness",
            backend,
            figures,
            jobs=jobs,
            duration_s=duration,
            schedulers=schedulers,
            history_runs=history,
            create_s=round(create_s, 2),
            load1_before=load_before,
            ticks=tick_summary,
            cpu_us_per_run=meter.per_job_us(jobs * duration),
            **context,
        )


def unfinished(engine: Any, end: datetime) -> int:
    """Runs scheduled before `end` still pending or running."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM runs WHERE status IN ('pending', 'running')"
                " AND scheduled_for < :end"
            ),
            {"end": _bind(engine, end)},
        ).scalar_one()


def _bind(engine: Any, moment: datetime) -> Any:
    if engine.dialect.name == "sqlite":  # integer microseconds, as the store's column adapter
        return int(moment.timestamp() * 1_000_000)
    return moment


def analyse(
    url: str,
    ids: list[int],
    w0: datetime,
    w1: datetime,
    jobs: int,
    duration: int,
    first: datetime | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures of the window [w0, w1); `first` is the first fire after the start."""
    from nightshift.store import open_store

    store = open_store(url, migrate=False)
    try:
        rows = []
        before_id = None
        while True:  # every run, newest first, through the store's own listing
            page = store.list_runs(before_id=before_id, limit=5000, system=None)
            if not page:
                break
            rows.extend(page)
            before_id = page[-1].id
    finally:
        store.close()
    mine = set(ids)
    in_window = [
        r for r in rows if r.job_id in mine and r.scheduled_for and w0 <= r.scheduled_for < w1
    ]
    runs = [r for r in in_window if r.status != "skipped"]
    started = [r for r in runs if r.started_at is not None]
    per_slot = Counter((r.job_id, r.scheduled_for) for r in runs)
    started_slots = {(r.job_id, r.scheduled_for) for r in started}
    expected = jobs * duration
    skipped = sum(_skips_in_window(r, w1) for r in in_window if r.status == "skipped")
    start_late = [(r.started_at - r.scheduled_for).total_seconds() for r in started]
    fire_late = [(r.created_at - r.scheduled_for).total_seconds() for r in runs]
    start_spread = spread_ms(start_late)
    warm = spread_ms(
        [late for r, late in zip(started, start_late, strict=True) if r.scheduled_for != first]
    )
    fire_spread = spread_ms(fire_late)
    figures = {
        "start_p50_ms": start_spread["p50_ms"],
        "start_p99_ms": start_spread["p99_ms"],
        "start_max_ms": start_spread["max_ms"],
        "warm_p99_ms": warm["p99_ms"],
        "warm_max_ms": warm["max_ms"],
        "fire_p50_ms": fire_spread["p50_ms"],
        "fire_p99_ms": fire_spread["p99_ms"],
        "fire_max_ms": fire_spread["max_ms"],
        "expected": expected,
        "started": len(started_slots),
        "missed": expected - len(started_slots),
        "skipped": skipped,
        "not_started": len({(r.job_id, r.scheduled_for) for r in runs} - started_slots),
        "duplicates": sum(c - 1 for c in per_slot.values() if c > 1),
        **per_instant(started),
    }
    return figures, {"window": [w0.isoformat(), w1.isoformat()]}


def per_instant(started: list[Any]) -> dict[str, float | None]:
    """How each instant's runs started, as medians over the instants of the window: the first
    and the last start after the instant, and the starts per second between them. All the
    jobs are due together, so the last start is bounded by their number over that rate."""
    by_instant: dict[datetime, list[float]] = {}
    for r in started:
        late = (r.started_at - r.scheduled_for).total_seconds()
        by_instant.setdefault(r.scheduled_for, []).append(late)
    if SHOW_INSTANTS:
        for instant, late in sorted(by_instant.items()):
            ms = sorted(x * 1000 for x in late)
            print(
                f"  {instant:%H:%M:%S}: {len(ms)} started, first / p50 / p99 / last"
                f" {ms[0]:.1f} / {ms[len(ms) // 2]:.1f} / {ms[int(len(ms) * 0.99)]:.1f}"
                f" / {ms[-1]:.1f} ms"
            )
    firsts = [min(late) for late in by_instant.values()]
    lasts = [max(late) for late in by_instant.values()]
    rates = [
        (len(late) - 1) / (max(late) - min(late))
        for late in by_instant.values()
        if len(late) > 1 and max(late) > min(late)
    ]
    return {
        "instant_first_ms": round(statistics.median(firsts) * 1000, 1) if firsts else None,
        "instant_last_ms": round(statistics.median(lasts) * 1000, 1) if lasts else None,
        "instant_starts_per_s": round(statistics.median(rates)) if rates else None,
    }


def _skips_in_window(record: Any, w1: datetime) -> int:
    """Fires of one skipped record (it grows while consecutive fires are skipped) that fall
    before the window's end; fires are 1 s apart here."""
    last = record.last_scheduled_for or record.scheduled_for
    if last < w1:
        return record.skip_count
    return min(record.skip_count, math.ceil((w1 - record.scheduled_for).total_seconds()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument(
        "--schedulers", type=int, default=1, help="PostgreSQL: scheduler processes in all"
    )
    parser.add_argument(
        "--instants", action="store_true", help="print each instant's starts and lateness"
    )
    parser.add_argument(
        "--history", type=int, default=0, help="finished runs inserted first (a long history)"
    )
    args = parser.parse_args()
    global SHOW_INSTANTS  # a flag for the analysis, set once here
    SHOW_INSTANTS = args.instants
    quiet_logging()
    results = Results(args.json)
    for backend in backends(args):
        k = args.schedulers if backend == "postgresql" else 1
        print(f"lateness {backend}: {args.jobs} x every 1s for {args.duration} s, {k} scheduler(s)")
        run(backend, args.jobs, args.duration, k, results, history=args.history)


if __name__ == "__main__":
    main()
