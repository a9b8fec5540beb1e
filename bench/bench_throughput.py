"""Throughput: enqueue N no-op python jobs, then drain them with the default worker settings.

    .venv/bin/python bench/bench_throughput.py [--n 20000] [--backend sqlite] [--mode all]
                                               [--jobs 1]

Enqueue goes through `Service.run_now`, one call per run (one write transaction plus a read of
the job each). When the store offers `enqueue_many` (a bulk path, in progress at the time of
writing), the first half (at most 2,000) still goes through `run_now` and the rest through
`store.enqueue_many` in batches of 1,000, and both rates are reported.

Drain, mode `inprocess`: the real `Runtime` with the scheduler and worker roles (what
`nightshift up` runs, minus the HTTP server), default `Settings` (worker_processes =
max(2, cores), worker_concurrency 100...). Timed from `Runtime.serve()` - which starts the
python process pool - until the N-th completion has been committed by `store.complete` (a
counting wrapper around the store's method; nothing in src/ is changed), so like the peer
harness it includes worker start-up; `steady/s` starts at the first committed completion.
The same wrappers time every claim and complete call (the profile's batch sizes). The row also
carries the CPU per job by part, exact (from /proc, not sampled), between the first and the
last committed completion: each thread of this process by name (the event loop, the store
threads), the pool's children, and PostgreSQL's server processes. Per-job CPU of the parent's
threads against the wall time per job shows whether the drain is bound by the GIL (their sum
equals it), the cores, or waiting.

With `--jobs J` (in-process only) the N runs are spread over J jobs: each claimed run then
carries a job of its own from the store, as in a deployment of many jobs (the peers' workload,
and the targets, are runs of one job).

Drain, mode `subprocess`: `nightshift up` started as a process against the prepared database,
polled every 50 ms from here (as the peer harness polls its peers) until no run of the job is
pending or running. Mode `worker`: the same with `nightshift worker`, the process a deployment
runs to execute jobs. It is what the harness starts of its peers (their worker processes, no
scheduler and no web server), so it is the like-for-like row; `nightshift up` adds the API's
start-up. `both` is inprocess and subprocess, `all` the three.

Both end with a durability check from a fresh connection: the job's succeeded runs must number
N, each with started_at and finished_at (finished >= started), and nothing else left.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from benchlib import (
    NIGHTSHIFT,
    CpuMeter,
    Results,
    TempDatabase,
    add_common_args,
    backends,
    bench_env,
    free_port,
    load1,
    quiet_logging,
    stop_process,
    working_directory,
)
from sqlalchemy import bindparam, create_engine, text

NOOP = {"function": "bench_jobs:noop"}
POLL_S = 0.05


class CallStats:
    """One store method's calls as the worker sees them: calls, items per call, time from the
    call to its reply (queueing included). Given `fn`, it is also `fn` timed (bench_lateness
    wraps `Scheduler.tick` so)."""

    def __init__(self, fn: Any = None, size: Any = len) -> None:
        self.fn, self.size = fn, size
        self.calls = self.items = 0
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = self.fn(*args, **kwargs)
        self.observe(args, result, time.perf_counter() - t0)
        return result

    def observe(self, args: tuple[Any, ...], result: Any, spent: float) -> None:
        self.calls += 1
        self.items += self.size(result) if self.size else 0
        self.seconds += spent

    def summary(self) -> dict[str, Any]:
        if not self.calls:
            return {"calls": 0}
        return {
            "calls": self.calls,
            "per_call": round(self.items / self.calls, 2),
            "ms_per_call": round(1000 * self.seconds / self.calls, 3),
            "total_s": round(self.seconds, 3),
        }


class Completions(CallStats):
    """Counts committed completions of `run_ids` (the service's own system jobs complete runs
    too); sets `done` once `n` are in."""

    def __init__(
        self, n: int, run_ids: set[int] | None = None, meter: CpuMeter | None = None
    ) -> None:
        super().__init__(size=None)
        self.n, self.run_ids = n, run_ids
        self.done = asyncio.Event()
        self.first_at: float | None = None
        self.done_at: float | None = None
        #: CPU by part from the first committed completion to the last (the steady drain).
        self.meter = meter or CpuMeter()
        self.first_items = 0

    def observe(self, args: tuple[Any, ...], result: Any, spent: float) -> None:
        super().observe(args, result, spent)
        (completions,) = args
        self.items += sum(
            ok
            for c, ok in zip(completions, result, strict=True)
            if self.run_ids is None or c.run_id in self.run_ids
        )
        now = time.perf_counter()
        if self.first_at is None and self.items:
            self.first_at = now
            self.first_items = self.items
            self.meter.start()
        if self.items >= self.n and self.done_at is None:
            self.done_at = now
            self.meter.stop()
            self.done.set()


def observe_calls(calls: Any, stats: dict[str, CallStats]) -> None:
    """Time the worker's store calls named in `stats` where it makes them (on its event loop),
    whether they run on its threads or in its store process."""
    call = calls.call

    async def observed(lane: str, name: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        result = await call(lane, name, *args)
        if (stat := stats.get(name)) is not None:
            stat.observe(args, result, time.perf_counter() - t0)
        return result

    calls.call = observed


def create_noop_job(service: Any) -> Any:
    return service.create_job({"name": "bench-noop", "kind": "python", "config": NOOP})


def create_noop_jobs(service: Any, count: int) -> list[int]:
    """The ids of `count` no-op jobs (one: the job every other bench uses)."""
    if count == 1:
        return [create_noop_job(service).id]
    specs = [{"name": f"bench-noop-{i}", "kind": "python", "config": NOOP} for i in range(count)]
    return [job.id for job in service.create_jobs(specs)]


def enqueue(service: Any, job_ids: Sequence[int], n: int, bulk_batch: int = 1000) -> dict[str, Any]:
    """run_now for every run, or for a sample when the store has a bulk path for the rest;
    run i is a run of job i mod len(job_ids)."""
    from nightshift.store.base import NewRun

    many = getattr(service.store, "enqueue_many", None)
    single = n if many is None else min(n // 2, 2000)
    t0 = time.perf_counter()
    for i in range(single):
        service.run_now(job_ids[i % len(job_ids)])
    t1 = time.perf_counter()
    out: dict[str, Any] = {"enqueue_per_s": round(single / (t1 - t0), 1), "bulk_per_s": None}
    if many is not None and n > single:
        for k in range(single, n, bulk_batch):
            now = datetime.now(UTC)
            size = min(bulk_batch, n - k)
            batch = [
                NewRun(job_id=job_ids[i % len(job_ids)], run_at=now) for i in range(k, k + size)
            ]
            many(batch, now)
        out["bulk_per_s"] = round((n - single) / (time.perf_counter() - t1), 1)
    out["enqueue_s"] = time.perf_counter() - t0
    return out


def job_run_ids(store: Any, job_ids: Sequence[int]) -> set[int]:
    with store.engine.connect() as conn:
        rows = conn.execute(_OF_JOBS.bindparams(jobs=list(job_ids)))
        return {row[0] for row in rows}


_OF_JOBS = text("SELECT id FROM runs WHERE job_id IN :jobs").bindparams(
    bindparam("jobs", expanding=True)
)
_STATUSES = text(
    "SELECT status, count(*), count(started_at), count(finished_at),"
    " sum(CASE WHEN finished_at >= started_at THEN 1 ELSE 0 END)"
    " FROM runs WHERE job_id IN :jobs GROUP BY status"
).bindparams(bindparam("jobs", expanding=True))


def verify(url: str, job_ids: Sequence[int], n: int) -> dict[str, Any]:
    """From a fresh connection: every run of the jobs succeeded and carries its timestamps."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(_STATUSES.bindparams(jobs=list(job_ids))).all()
    finally:
        engine.dispose()
    by_status = {r[0]: r[1] for r in rows}
    ok = next((r for r in rows if r[0] == "succeeded"), None)
    complete = (
        ok is not None
        and ok[1] == n
        and ok[2] == n
        and ok[3] == n
        and ok[4] == n
        and set(by_status) == {"succeeded"}
    )
    return {"verified": complete, "statuses": by_status}


# -- in-process -----------------------------------------------------------------------------


def wait_for_profiler(ready_file: str | None) -> None:
    """With --ready-file: write our PID there and wait until the profiler removes it."""
    if not ready_file:
        return
    with open(ready_file, "w") as fh:
        fh.write(str(os.getpid()))
    while os.path.exists(ready_file):
        time.sleep(0.05)


def run_inprocess(
    backend: str,
    n: int,
    results: Results,
    timeout_s: float,
    ready_file: str | None = None,
    jobs: int = 1,
) -> None:
    from nightshift.config import Settings
    from nightshift.runtime import Runtime

    with TempDatabase(backend) as db, working_directory(db.workdir):
        settings = Settings(database_url=db.url)
        runtime = Runtime(settings, roles=("scheduler", "worker"))
        job_ids = create_noop_jobs(runtime.service, jobs)
        load_before = load1()
        enqueued = enqueue(runtime.service, job_ids, n)
        print(f"  enqueued {n} in {enqueued['enqueue_s']:.2f} s: {enqueued}", flush=True)
        wait_for_profiler(ready_file)
        stats: dict[str, Any] = {}

        async def drain() -> tuple[float, Completions]:
            calls = runtime.worker.calls
            meter = CpuMeter({"store process": lambda: getattr(calls, "pid", None)})
            completions = Completions(n, job_run_ids(runtime.store, job_ids), meter)
            stats.update(
                complete=completions,
                claim_slots=CallStats(),
                sync=CallStats(size=None),
                next_run_due=CallStats(size=None),
            )
            observe_calls(calls, stats)
            t0 = time.perf_counter()
            serving = asyncio.create_task(runtime.serve())
            try:
                await asyncio.wait_for(completions.done.wait(), timeout_s)
            except TimeoutError:
                print(f"  timed out after {timeout_s:.0f} s", flush=True)
            runtime.request_stop()
            await serving
            return t0, completions

        t0, completions = asyncio.run(drain())
        check = verify(db.url, job_ids, n)
        done = completions.items
        end = completions.done_at or time.perf_counter()
        drain_s = end - t0
        first_s = (completions.first_at - t0) if completions.first_at else None
        steady = (
            round(done / (end - completions.first_at), 1)
            if completions.first_at and end > completions.first_at
            else None
        )
        results.add(
            "throughput",
            backend,
            {
                "n": n,
                "enqueue_per_s": enqueued["enqueue_per_s"],
                "enqueue_bulk_per_s": enqueued["bulk_per_s"],
                "drain_per_s": round(done / drain_s, 1),
                "steady_per_s": steady,
                "first_completion_s": round(first_s, 3) if first_s is not None else None,
                "drain_s": round(drain_s, 2),
                "completed": done,
                "verified": check["verified"],
            },
            mode="inprocess",
            jobs=jobs,
            cpu_us_per_job=completions.meter.per_job_us(max(1, done - completions.first_items)),
            load1_before=load_before,
            settings={
                "worker_processes": settings.worker_processes,
                "worker_concurrency": settings.worker_concurrency,
                "sqlite_synchronous": settings.sqlite_synchronous,
            },
            calls={k: v.summary() for k, v in stats.items()},
            statuses=check["statuses"],
            notes="enqueue: Service.run_now, one transaction per run"
            + ("; bulk: store.enqueue_many" if enqueued["bulk_per_s"] else " (no bulk path)")
            + ("" if check["verified"] else f"; NOT VERIFIED: {check['statuses']}"),
        )


# -- subprocess -----------------------------------------------------------------------------


#: The processes a subprocess mode starts, and how its rows name them.
COMMANDS = {"subprocess": "up", "worker": "worker"}


def run_subprocess(
    backend: str, n: int, results: Results, timeout_s: float, mode: str = "subprocess"
) -> None:
    command = COMMANDS[mode]
    from nightshift.clock import SystemClock
    from nightshift.config import Settings
    from nightshift.service import Service
    from nightshift.store import open_store
    from nightshift.worker.kinds.registry import build_executors

    with TempDatabase(backend) as db, working_directory(db.workdir):
        settings = Settings(database_url=db.url)
        store = open_store(db.url)
        service = Service(store, SystemClock(), settings, build_executors(settings))
        job = create_noop_job(service)
        enqueued = enqueue(service, [job.id], n)
        store.close()
        engine = create_engine(db.url.replace("postgresql://", "postgresql+psycopg://", 1))
        left = text(
            "SELECT (SELECT count(*) FROM runs WHERE status = 'pending' AND job_id = :j)"
            " + (SELECT count(*) FROM runs WHERE status IN ('running', 'stopping')"
            " AND job_id = :j)"
        )
        log = open(db.workdir / "service.log", "wb")  # noqa: SIM115 - closed below
        load_before = load1()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [NIGHTSHIFT, command],
            cwd=db.workdir,
            env=bench_env(db.url, NIGHTSHIFT_PORT=str(free_port())),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        first = remaining = None
        try:
            while time.perf_counter() - t0 < timeout_s and proc.poll() is None:
                with engine.connect() as conn:
                    remaining = conn.execute(left, {"j": job.id}).scalar_one()
                if first is None and remaining < n:
                    first = time.perf_counter()
                if remaining == 0:
                    break
                time.sleep(POLL_S)
            end = time.perf_counter()
        finally:
            stop_process(proc)
            log.close()
            engine.dispose()
        if proc.returncode not in (0, None) and remaining != 0:
            print((db.workdir / "service.log").read_text()[-3000:])
        check = verify(db.url, [job.id], n)
        done = check["statuses"].get("succeeded", 0)
        results.add(
            "throughput",
            backend,
            {
                "n": n,
                "enqueue_per_s": enqueued["enqueue_per_s"],
                "enqueue_bulk_per_s": enqueued["bulk_per_s"],
                "drain_per_s": round(done / (end - t0), 1),
                "steady_per_s": round(done / (end - first), 1) if first and end > first else None,
                "first_completion_s": round(first - t0, 3) if first else None,
                "drain_s": round(end - t0, 2),
                "completed": done,
                "verified": check["verified"],
            },
            mode=mode,
            load1_before=load_before,
            statuses=check["statuses"],
            notes=f"`nightshift {command}` as a process, polled every 50 ms like the peer harness"
            + ("" if check["verified"] else f"; NOT VERIFIED: {check['statuses']}"),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument(
        "--mode", choices=["inprocess", "subprocess", "worker", "both", "all"], default="all"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="in-process: spread the runs over this many jobs"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per drain, seconds")
    parser.add_argument("--ready-file", help="in-process: pause before the drain (profile_drain)")
    args = parser.parse_args()
    if args.jobs < 1 or (args.jobs > 1 and args.mode != "inprocess"):
        parser.error("--jobs must be at least 1, and more than 1 only with --mode inprocess")
    quiet_logging()
    results = Results(args.json)
    for backend in backends(args):
        if args.mode in ("inprocess", "both", "all"):
            print(f"throughput {backend} in-process, n={args.n}", flush=True)
            run_inprocess(backend, args.n, results, args.timeout, args.ready_file, args.jobs)
        if args.mode in ("subprocess", "both", "all"):
            print(f"throughput {backend} `nightshift up` subprocess, n={args.n}", flush=True)
            run_subprocess(backend, args.n, results, args.timeout)
        if args.mode in ("worker", "all"):
            print(f"throughput {backend} `nightshift worker` subprocess, n={args.n}", flush=True)
            run_subprocess(backend, args.n, results, args.timeout, "worker")


if __name__ == "__main__":
    main()
