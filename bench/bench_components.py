"""Ceilings of the drain's parts, measured apart (for PROFILE.md; not part of the suite).

    .venv/bin/python bench/bench_components.py [--backend sqlite] [--part store,pool,worker]

- store: `store.claim(limit=B)` then `store.complete(B completions)` in a loop over pending
  runs inserted beforehand (the store's own row encoding, one executemany), for B in 1, 2,
  10, 100, 500: claim+complete pairs per second, and the time split between the two. This is
  what the database layer allows at each batch size, with no worker around it.
- pool: the python kind's `ProcessPool` alone (default size: max(2, cores)), running the
  no-op job with 1, 2, 4 and 32 tasks in flight per process: round trips per second and the
  CPU per 1,000 tasks of the parent's event-loop thread (and of the children), with and
  without pipelining (queued tasks behind each busy process); and the same through
  `PythonExecutor.execute` (config validation included). `--pool-repeat N` runs each N times
  (the best rate, the lowest CPU, and every run's); `--pool-paths`, `--pool-inflight` and
  `--pool-count` narrow it.
- worker: the real `Worker` with a no-op in-process executor standing in for the python kind
  (no IPC), default settings (2 process slots) and 50 slots: drain rate of the worker loop and
  the store together.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

from bench_throughput import NOOP, CallStats, Completions, create_noop_job, observe_calls
from benchlib import Results, TempDatabase, add_common_args, backends, quiet_logging
from sqlalchemy import insert

from nightshift.domain.models import JobKind

BATCHES = (1, 2, 10, 100, 500)


def open_service(url: str, **settings: Any) -> tuple[Any, Any, Any]:
    from nightshift.clock import SystemClock
    from nightshift.config import Settings
    from nightshift.service import Service
    from nightshift.store import open_store
    from nightshift.worker.kinds.registry import build_executors

    cfg = Settings(database_url=url, **settings)
    store = open_store(url)
    return store, Service(store, SystemClock(), cfg, build_executors(cfg)), cfg


def insert_pending(store: Any, job: Any, count: int) -> None:
    """`count` pending runs of `job`, due now, in one executemany (the store's row encoding)."""
    from nightshift.store.base import NewRun
    from nightshift.store.sql.runs import run_values
    from nightshift.store.tables import runs

    now = datetime.now(UTC)
    row = {"app": job.app, "kind": str(job.kind), "overlap": str(job.overlap)}
    values = [run_values(NewRun(job_id=job.id, run_at=now), row, now) for _ in range(count)]
    with store.engine.begin() as conn:
        for k in range(0, count, 5000):
            conn.execute(insert(runs), values[k : k + 5000])


def store_ceiling(backend: str, results: Results) -> None:
    from nightshift.domain.status import RunStatus
    from nightshift.store.base import Completion

    for batch in BATCHES:
        count = 1000 if batch <= 2 else 5000
        with TempDatabase(backend) as db:
            store, service, _ = open_service(db.url)
            job = create_noop_job(service)
            insert_pending(store, job, count)
            claim_s = complete_s = 0.0
            done = 0
            while done < count:
                now = datetime.now(UTC)
                t0 = time.perf_counter()
                claimed = store.claim("bench", now, 30.0, batch, ["python"])
                t1 = time.perf_counter()
                store.complete(
                    [
                        Completion(
                            run_id=c.run.id,
                            owner="bench",
                            status=RunStatus.SUCCEEDED,
                            finished_at=datetime.now(UTC),
                            result={"returned": "OK"},
                        )
                        for c in claimed
                    ]
                )
                t2 = time.perf_counter()
                claim_s += t1 - t0
                complete_s += t2 - t1
                done += len(claimed)
                if not claimed:
                    break
            store.close()
        total = claim_s + complete_s
        results.add(
            "component-store",
            backend,
            {
                "batch": batch,
                "pairs_per_s": round(done / total, 1),
                "claim_ms_per_run": round(1000 * claim_s / done, 3),
                "complete_ms_per_run": round(1000 * complete_s / done, 3),
                "runs": done,
            },
        )


#: Tasks in flight, per process: with 2 processes, 2, 4, 8 and 64 (the worker's claim-ahead
#: makes the pool the queue of the claimed runs).
POOL_INFLIGHT = (1, 2, 4, 32)
#: The pool's paths: (label, through PythonExecutor.execute, pipelining).
POOL_PATHS = {
    "run": ("ProcessPool.run", False, True),
    "nopipe": ("ProcessPool.run, no pipelining", False, False),
    "executor": ("PythonExecutor.execute", True, True),
}


def _children_cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of live processes (Linux /proc), None where unreadable."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def _pool_rate(
    size: int, inflight: int, count: int, through_executor: bool, pipeline: bool = True
) -> dict[str, float]:
    """Round trips per second, and CPU per 1,000 tasks: the parent's event-loop thread (the
    pool runs there, in callbacks; the benchmark's own coroutines are the same for every
    pool) and the children's."""
    from nightshift.domain.models import Job, JobKind
    from nightshift.worker.executor import MemoryIO, Task
    from nightshift.worker.kinds.python import PythonExecutor
    from nightshift.worker.pool import ProcessPool

    executor = PythonExecutor(processes=size) if through_executor else None
    pool = ProcessPool(size, pipeline=pipeline)
    await (executor.start() if executor is not None else pool.start())
    job = Job(id=1, app="default", name="noop", kind=JobKind.PYTHON, config=dict(NOOP))
    semaphore = asyncio.Semaphore(inflight)

    async def one(i: int) -> None:
        async with semaphore:
            if executor is not None:
                task = Task(i, job, {}, order=(False, 0, i))
                outcome = await executor.execute(task, MemoryIO())
                assert outcome.status == "succeeded", outcome
            else:
                payload = {
                    "function": NOOP["function"],
                    "params": {},
                    "app": "default",
                    "run_id": i,
                    "job": "noop",
                    "attempt": 1,
                    "state": None,
                }
                result = await pool.run(payload, MemoryIO(), order=(False, 0, i))
                assert result["status"] == "succeeded", result

    try:
        await asyncio.gather(*(one(i) for i in range(50)))  # warm-up
        used = executor.pool if executor is not None else pool
        pids = [c.pid for c in used.children if c.pid is not None] if used is not None else []
        children0 = _children_cpu_s(pids)
        cpu0, t0 = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        children1 = _children_cpu_s(pids)
        figures = {
            "round_trips_per_s": count / elapsed,
            "parent_cpu_ms_per_1000": 1e6 * cpu / count,
        }
        if children0 is not None and children1 is not None:
            figures["children_cpu_ms_per_1000"] = 1e6 * (children1 - children0) / count
        return figures
    finally:
        await (executor.close() if executor is not None else pool.close())


def pool_ceiling(
    results: Results,
    repeat: int = 1,
    count: int = 3000,
    paths: tuple[str, ...] = tuple(POOL_PATHS),
    per_process: tuple[int, ...] = POOL_INFLIGHT,
) -> None:
    """Round trips per second and CPU per 1,000 tasks; with `repeat` > 1 each row gives the
    best rate, the lowest CPU and every run's figures (the box is shared: the spread matters
    as much as the best)."""
    size = max(2, os.cpu_count() or 2)
    for key in paths:
        path, through, pipeline = POOL_PATHS[key]
        for tasks_per_process in per_process:
            inflight = tasks_per_process * size
            runs = [
                asyncio.run(_pool_rate(size, inflight, count, through, pipeline))
                for _ in range(repeat)
            ]
            figures: dict[str, Any] = {
                "processes": size,
                "in_flight": inflight,
                "path": path,
                "round_trips_per_s": round(max(r["round_trips_per_s"] for r in runs), 1),
                "parent_cpu_ms_per_1000": round(min(r["parent_cpu_ms_per_1000"] for r in runs), 1),
            }
            if all("children_cpu_ms_per_1000" in r for r in runs):
                figures["children_cpu_ms_per_1000"] = round(
                    min(r["children_cpu_ms_per_1000"] for r in runs), 1
                )
            if repeat > 1:
                figures["runs"] = [round(r["round_trips_per_s"]) for r in runs]
                figures["parent_cpu_runs"] = [round(r["parent_cpu_ms_per_1000"]) for r in runs]
            results.add("component-pool", "-", figures)


class NullExecutor:
    """Stands in for the python kind: succeeds at once, in the worker's event loop."""

    kind = JobKind.PYTHON

    def validate(self, config: Any) -> Any:
        return config

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def execute(self, task: Any, io: Any) -> Any:
        from nightshift.worker.executor import Outcome

        return Outcome("succeeded", result={"returned": "OK"})


async def _drain(store: Any, settings: Any, count: int) -> tuple[float, Completions, CallStats]:
    from nightshift.clock import SystemClock
    from nightshift.worker.worker import Worker

    completions, claims = Completions(count), CallStats()
    worker = Worker(store, SystemClock(), settings, {JobKind.PYTHON: NullExecutor()})
    observe_calls(worker.calls, {"complete": completions, "claim_slots": claims})
    stop = asyncio.Event()
    t0 = time.perf_counter()
    await worker.start()
    loop_task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(completions.done.wait(), 300)
    elapsed = time.perf_counter() - t0
    stop.set()
    await loop_task
    await worker.close()
    return elapsed, completions, claims


def worker_ceiling(backend: str, results: Results, count: int = 5000) -> None:
    for slots in (None, 50):
        with TempDatabase(backend) as db:
            extra = {} if slots is None else {"worker_processes": slots}
            store, service, settings = open_service(db.url, **extra)
            job = create_noop_job(service)
            insert_pending(store, job, count)

            elapsed, completions, claims = asyncio.run(_drain(store, settings, count))
            store.close()
        results.add(
            "component-worker",
            backend,
            {
                "slots": settings.worker_processes,
                "runs_per_s": round(count / elapsed, 1),
                "claim_calls_per_run": round(claims.calls / count, 2),
                "complete_batch": completions.summary().get("per_call"),
            },
            calls={"claim": claims.summary(), "complete": completions.summary()},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--part", default="store,pool,worker")
    parser.add_argument("--pool-repeat", type=int, default=1)
    parser.add_argument("--pool-count", type=int, default=3000, help="tasks per pool figure")
    parser.add_argument(
        "--pool-paths", default=",".join(POOL_PATHS), help=f"of {', '.join(POOL_PATHS)}"
    )
    parser.add_argument(
        "--pool-inflight",
        default=",".join(map(str, POOL_INFLIGHT)),
        help="tasks in flight per process",
    )
    args = parser.parse_args()
    quiet_logging()
    results = Results(args.json)
    parts = set(args.part.split(","))
    if "pool" in parts:
        pool_ceiling(
            results,
            repeat=args.pool_repeat,
            count=args.pool_count,
            paths=tuple(args.pool_paths.split(",")),
            per_process=tuple(int(n) for n in args.pool_inflight.split(",")),
        )
    for backend in backends(args):
        if "store" in parts:
            store_ceiling(backend, results)
        if "worker" in parts:
            worker_ceiling(backend, results)


if __name__ == "__main__":
    main()
