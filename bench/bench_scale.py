"""Scale: many schedules and many run records.

    .venv/bin/python bench/bench_scale.py [--schedules 100000] [--runs 1000000] [--batch 5000]
                                          [--parallel 1] [--create-budget 900]
                                          [--backend sqlite]

1. Create S schedules (`every 1h`, no-op python jobs, first fires spread over an hour starting
   a day from now, so none is due) as a client would: `POST /api/v1/jobs/bulk` over HTTP to a
   `nightshift up` on the database, in requests of `--batch` jobs (each one transaction; the
   default keeps a request under the API's 1 MiB body limit), `--parallel` requests in flight
   (one by default); the client encodes the next batch while requests are in flight. The
   time covers the client's JSON encoding and every answer; the service's CPU time is
   reported too. When `--create-budget` seconds run out first, the rate so far is
   extrapolated to S and the rest are inserted by the bench itself (executemany of the
   store's own row encoding) so that the later steps still see S schedules; the row says so.
2. RSS: that `nightshift up` (its main process, and with its other processes: the sum of their
   RSS, and their PSS, which counts the pages they share once) 3 s after
   the last schedule was created, its scheduler holding S idle schedules; and this process
   (service + store in-process) after step 3.
3. The scheduler's wake-up with S idle schedules: `store.next_fire_due()` and an idle
   `Scheduler.tick(now)`, then with 10 more schedules (`every 1s`, overlap allow) due at each
   tick: `Scheduler.tick` at ten consecutive fire times (the ticks are given their `now`). The
   same on a database holding only those 10 schedules, as the baseline.
4. R run records inserted directly (SQLite: executemany in one transaction; PostgreSQL: COPY,
   then ANALYZE as autovacuum would), created over the last 24 h, 93 % succeeded, 5 % failed,
   2 % skipped, then the latency of `store.list_runs(limit=50)` (plus filtered and deep-page
   variants), `store.get_run(id)` at random ids, `store.count_runs()`, and an aggregate
   written here straight over the runs table (runs created, succeeded, failed and the average
   waiting, grouped by minute over the last day): what a statistics query costs without the
   service's roll-up. The service's own statistics (`GET /api/v1/stats`) are measured by
   bench_stats.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_throughput import NOOP
from benchlib import (
    NIGHTSHIFT,
    Results,
    TempDatabase,
    add_common_args,
    backends,
    bench_env,
    free_port,
    load1,
    quiet_logging,
    rss_mb,
    stop_process,
    timed,
    tree_pss_mb,
    tree_rss_mb,
    working_directory,
)
from sqlalchemy import insert, text


def schedule_spec(i: int, base: datetime) -> dict[str, Any]:
    return {
        "name": f"s-{i}",
        "kind": "python",
        "config": NOOP,
        "schedule": "every 1h",
        "start_at": (base + timedelta(seconds=i % 3600)).isoformat(),
    }


ADMIN = "ns_bench-admin-token-0123456789abcdefghijklmnop"


def start_service(db: TempDatabase) -> tuple[subprocess.Popen[bytes], str, float | None, Any]:
    """A `nightshift up` on the database (all roles, as a laptop runs it): the process, its
    base URL, how long it took to answer its health check, and its log file."""
    import httpx

    port = free_port()
    log = open(db.workdir / "service.log", "wb")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(
        [NIGHTSHIFT, "up"],
        cwd=db.workdir,
        env=bench_env(db.url, NIGHTSHIFT_PORT=str(port), NIGHTSHIFT_ADMIN_TOKEN=ADMIN),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    ready = None
    while time.perf_counter() - t0 < 120 and proc.poll() is None:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1).is_success:
                ready = time.perf_counter() - t0
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    if ready is None:
        stop_process(proc)
        log.close()
        raise SystemExit(f"nightshift up did not answer; see {db.workdir / 'service.log'}")
    return proc, base, ready, log


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_schedules(
    base: str, pid: int, store: Any, count: int, batch: int, parallel: int, budget_s: float
) -> dict[str, Any]:
    """`count` schedules through `POST /jobs/bulk`, `batch` per request, `parallel` requests in
    flight (one by default). Also
    the CPU time the service process spent meanwhile: on a shared machine, the figure that
    other people's load changes least."""
    import httpx

    from nightshift.store.sql.codec import job_values
    from nightshift.store.tables import jobs
    from nightshift.timing import fire_after

    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}

    def body(first: int) -> str:
        size = min(batch, count - first)
        return json.dumps({"jobs": [schedule_spec(first + i, start) for i in range(size)]})

    created, requests, largest = 0, 0, 0
    lock = threading.Lock()
    in_flight = threading.Semaphore(parallel)
    cpu0 = cpu_s(pid)
    t0 = time.perf_counter()

    def send(client: Any, first: int) -> None:
        nonlocal created, requests, largest
        if time.perf_counter() - t0 >= budget_s:
            return
        content = body(first)  # encoded while up to `parallel` requests are in flight
        with in_flight:
            answer = client.post("/jobs/bulk", content=content)
        if answer.status_code != 201:
            raise SystemExit(f"POST /jobs/bulk answered {answer.status_code}: {answer.text}")
        with lock:
            created += len(answer.json()["items"])
            requests += 1
            largest = max(largest, len(content))

    # One more thread than requests in flight: the client encodes the next batch while the
    # service works, as a client importing a file would.
    with (
        httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=300) as client,
        ThreadPoolExecutor(parallel + 1) as pool,
    ):
        list(pool.map(lambda first: send(client, first), range(0, count, batch)))
    api_s = time.perf_counter() - t0
    server_cpu = cpu_s(pid) - cpu0
    out: dict[str, Any] = {
        "via": "POST /api/v1/jobs/bulk",
        "batch": batch,
        "parallel": parallel,
        "requests": requests,
        "largest_body_kib": round(largest / 1024, 1),
        "created_via_api": created,
        "api_s": round(api_s, 2),
        "api_per_s": round(created / api_s, 1),
        "service_cpu_s": round(server_cpu, 2),
        "create_all_s": round(api_s * count / created, 2),
        "extrapolated": created < count,
    }
    if created < count:
        template = store.get_job(store.list_jobs(limit=1)[0].id)
        now = datetime.now(UTC)
        t1 = time.perf_counter()
        rows = []
        for i in range(created, count):
            first = start + timedelta(seconds=i % 3600)
            job = dataclasses.replace(
                template, id=0, name=f"s-{i}", start_at=first, anchor_at=first, created_at=now
            )
            job.next_fire_at = fire_after(job, now)
            rows.append(job_values(job))
        with store.engine.begin() as conn:
            for k in range(0, len(rows), 5000):
                conn.execute(insert(jobs), rows[k : k + 5000])
        out["bulk_filled"] = count - created
        out["bulk_fill_s"] = round(time.perf_counter() - t1, 2)
    return out


def service_rss(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """RSS of the running `nightshift up`, 3 s after the schedules were created."""
    time.sleep(3)
    alive = proc.poll() is None
    return {
        "service_rss_mb": rss_mb(proc.pid) if alive else None,
        "service_tree_rss_mb": tree_rss_mb(proc.pid) if alive else None,
        "service_tree_pss_mb": tree_pss_mb(proc.pid) if alive else None,
    }


def wakeup(service: Any, store: Any, settings: Any, due: int = 10) -> dict[str, Any]:
    """next_fire_due and idle / busy Scheduler.tick, with `due` schedules due per tick."""
    from nightshift.clock import SystemClock
    from nightshift.scheduler import Scheduler

    scheduler = Scheduler(store, SystemClock(), settings)
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    for i in range(due):
        service.create_job(
            {
                "name": f"due-{i}",
                "kind": "python",
                "config": NOOP,
                "schedule": "every 1s",
                "overlap": "allow",
                "start_at": first.isoformat(),
            }
        )
    next_due = timed(store.next_fire_due, reps=50)
    idle = timed(lambda: scheduler.tick(first - timedelta(seconds=0.5)), reps=20)
    busy_ms, handled = [], []
    for k in range(10):
        t0 = time.perf_counter()
        handled.append(scheduler.tick(first + timedelta(seconds=k + 0.5)))
        busy_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "next_fire_due_ms": next_due["median_ms"],
        "next_fire_due_p95_ms": next_due["p95_ms"],
        "idle_tick_ms": idle["median_ms"],
        "idle_tick_p95_ms": idle["p95_ms"],
        "due_tick_ms": round(sorted(busy_ms)[len(busy_ms) // 2], 2),
        "due_tick_max_ms": round(max(busy_ms), 2),
        "due_handled": sorted(set(handled)),
    }


RUN_COLUMNS = (
    "job_id, app, kind, status, created_at, run_at, started_at, finished_at, attempt,"
    " low_priority, rank, descendants, params, skip_count, exclusive, is_test,"
    " kill_requested, lost_streak, children_total, children_finished, children_failed, error"
)


def insert_runs(store: Any, count: int, job_ids: list[int], backend: str) -> float:
    """`count` finished runs created over the last 24 h, oldest first, straight into the table."""
    rng = random.Random(6)
    end = datetime.now(UTC)
    start = end - timedelta(days=1)
    span_us = int((end - start).total_seconds() * 1_000_000)
    start_us = int(start.timestamp() * 1_000_000)
    created = sorted(start_us + rng.randrange(span_us) for _ in range(count))
    error = json.dumps({"type": "RuntimeError", "message": "boom", "traceback": None})
    t0 = time.perf_counter()
    rows = []
    for c in created:
        roll = rng.random()
        status = "succeeded" if roll < 0.93 else "failed" if roll < 0.98 else "skipped"
        wait = min(int(rng.expovariate(1 / 50_000)), 5_000_000)
        began = None if status == "skipped" else c + wait
        ended = c if began is None else began + rng.randrange(10_000, 1_000_000)
        rows.append(
            (
                rng.choice(job_ids),
                "default",
                "python",
                status,
                c,
                c,
                began,
                ended,
                1,
                False,
                0,
                0,
                "{}",
                1 if status == "skipped" else 0,
                False,
                False,
                False,
                0,
                0,
                0,
                0,
                error if status == "failed" else None,
            )
        )
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        if backend == "sqlite":
            marks = ", ".join("?" * 22)
            cur.execute("BEGIN")
            cur.executemany(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({marks})", rows)
            cur.execute("COMMIT")
        else:
            as_dt = _micros_to_datetime
            with cur.copy(f"COPY runs ({RUN_COLUMNS}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(
                        (*r[:4], as_dt(r[4]), as_dt(r[5]), as_dt(r[6]), as_dt(r[7]), *r[8:])
                    )
            raw.commit()
            cur.execute("ANALYZE runs")
            raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - t0


def _micros_to_datetime(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


STATS_SQL = {
    "sqlite": (
        "SELECT created_at / 60000000 AS minute, count(*) AS created,"
        " sum(status = 'succeeded') AS succeeded, sum(status = 'failed') AS failed,"
        " avg(started_at - created_at) / 1e6 AS avg_wait_s,"
        " min(started_at - created_at) / 1e6 AS min_wait_s,"
        " max(started_at - created_at) / 1e6 AS max_wait_s"
        " FROM runs WHERE created_at >= :since AND created_at < :until"
        " GROUP BY minute ORDER BY minute"
    ),
    "postgresql": (
        "SELECT date_trunc('minute', created_at) AS minute, count(*) AS created,"
        " count(*) FILTER (WHERE status = 'succeeded') AS succeeded,"
        " count(*) FILTER (WHERE status = 'failed') AS failed,"
        " avg(extract(epoch FROM started_at - created_at)) AS avg_wait_s,"
        " min(extract(epoch FROM started_at - created_at)) AS min_wait_s,"
        " max(extract(epoch FROM started_at - created_at)) AS max_wait_s"
        " FROM runs WHERE created_at >= :since AND created_at < :until"
        " GROUP BY 1 ORDER BY 1"
    ),
}


def reads(store: Any, backend: str, job_ids: list[int]) -> dict[str, Any]:
    rng = random.Random(7)
    with store.engine.connect() as conn:
        lo, hi = conn.execute(text("SELECT min(id), max(id) FROM runs")).one()
    until = datetime.now(UTC)
    since = until - timedelta(days=1)
    if backend == "sqlite":
        bounds = {"since": int(since.timestamp() * 1e6), "until": int(until.timestamp() * 1e6)}
    else:
        bounds = {"since": since, "until": until}

    def stats() -> int:
        with store.engine.connect() as conn:
            return len(conn.execute(text(STATS_SQL[backend]), bounds).all())

    job = job_ids[len(job_ids) // 2]
    figures = {
        "list_ms": timed(lambda: store.list_runs(limit=50), reps=20),
        "list_failed_ms": timed(lambda: store.list_runs(limit=50, status=["failed"]), reps=20),
        "list_running_ms": timed(lambda: store.list_runs(limit=50, status=["running"]), reps=20),
        "list_job_ms": timed(lambda: store.list_runs(limit=50, job_id=job), reps=20),
        "list_deep_page_ms": timed(
            lambda: store.list_runs(limit=50, before_id=(lo + hi) // 2), reps=20
        ),
        "get_run_ms": timed(lambda: store.get_run(rng.randint(lo, hi)), reps=50),
        "count_runs_ms": timed(store.count_runs, reps=5),
        "stats_minute_day_ms": timed(stats, reps=5),
        # What a Prometheus scrape of /metrics reads (open and due runs, the last minute's).
        "metrics_ms": timed(lambda: store.metrics_snapshot(until, 60, 1000), reps=20),
        # What every worker does every lease_s / 3 (nothing has expired here).
        "recover_ms": timed(lambda: store.recover_expired(since, 3), reps=20),
    }
    return {"buckets": stats(), **figures}


def run(
    backend: str,
    schedules: int,
    runs: int,
    batch: int,
    parallel: int,
    budget_s: float,
    due: int,
    results: Results,
) -> None:
    from nightshift.clock import SystemClock
    from nightshift.config import Settings
    from nightshift.service import Service
    from nightshift.store import open_store
    from nightshift.worker.kinds.registry import build_executors

    load_before = load1()
    with TempDatabase(backend) as base_db, working_directory(base_db.workdir):
        settings = Settings(database_url=base_db.url)
        store = open_store(base_db.url)
        service = Service(store, SystemClock(), settings, build_executors(settings))
        baseline = wakeup(service, store, settings, due)
        store.close()
    with TempDatabase(backend) as db, working_directory(db.workdir):
        settings = Settings(database_url=db.url)
        store = open_store(db.url)
        proc, base, ready_s, log = start_service(db)
        try:
            creation = create_schedules(base, proc.pid, store, schedules, batch, parallel, budget_s)
            print(f"  schedules: {creation}", flush=True)
            figures: dict[str, Any] = {
                "schedules": schedules,
                "create_all_s": creation["create_all_s"],
                "create_per_s": creation["api_per_s"],
                "create_service_cpu_s": creation["service_cpu_s"],
                "service_ready_s": round(ready_s, 2) if ready_s else None,
            }
            figures.update(service_rss(proc))
        finally:
            stop_process(proc)
            log.close()
        print(f"  rss: {figures}", flush=True)
        service = Service(store, SystemClock(), settings, build_executors(settings))
        wake = wakeup(service, store, settings, due)
        figures["bench_rss_mb"] = rss_mb()
        figures.update(wake)
        figures.update({f"baseline_{k}": v for k, v in baseline.items() if k != "due_handled"})
        results.add(
            "scale-schedules",
            backend,
            figures,
            load1_before=load_before,
            creation=creation,
            notes=(
                f"POST /api/v1/jobs/bulk over HTTP to `nightshift up`, {creation['requests']} "
                f"requests of up to {batch} jobs, "
                + ("one at a time" if parallel == 1 else f"{parallel} in flight")
                + (
                    f"; budget ran out after {creation['created_via_api']}: "
                    "create_all_s extrapolated, the rest bulk-inserted"
                    if creation["extrapolated"]
                    else ""
                )
            ),
        )
        job_ids = [j.id for j in store.list_jobs(limit=1000)]
        load_before = load1()
        insert_s = insert_runs(store, runs, job_ids, backend)
        print(f"  inserted {runs} runs in {insert_s:.1f} s", flush=True)
        read_figures = reads(store, backend, job_ids)
        flat: dict[str, Any] = {"runs": runs}
        for key, value in read_figures.items():
            if isinstance(value, dict):
                flat[key.removesuffix("_ms") + "_ms"] = value["median_ms"]
                flat[key.removesuffix("_ms") + "_p95_ms"] = value["p95_ms"]
            else:
                flat[key] = value
        results.add(
            "scale-runs",
            backend,
            flat,
            load1_before=load_before,
            insert_s=round(insert_s, 1),
            db_size_mb=db.size_mb(),
            reads=read_figures,
            notes="runs inserted directly (not through the API); the per-minute aggregate is "
            "the bench's own SQL over raw runs (the service's statistics: bench_stats.py)"
            + ("; SQLite not ANALYZEd (the service never does)" if backend == "sqlite" else ""),
        )
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=10)
    parser.add_argument("--batch", type=int, default=5000, help="jobs per POST /jobs/bulk request")
    parser.add_argument(
        "--parallel", type=int, default=1, help="POST /jobs/bulk requests in flight at once"
    )
    parser.add_argument(
        "--create-budget", type=float, default=900.0, help="seconds of creating through the API"
    )
    args = parser.parse_args()
    quiet_logging()
    results = Results(args.json)
    for backend in backends(args):
        print(f"scale {backend}: {args.schedules} schedules, {args.runs} runs", flush=True)
        run(
            backend,
            args.schedules,
            args.runs,
            args.batch,
            args.parallel,
            args.create_budget,
            args.due,
            results,
        )


if __name__ == "__main__":
    main()
