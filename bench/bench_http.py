"""HTTP: N http jobs against a loopback server that answers after 1 s.

    NIGHTSHIFT_HTTP_ALLOW_PRIVATE=true .venv/bin/python bench/bench_http.py [--n 1000]

The server (`bench/slow_server.py`, uvicorn) runs in its own process and counts the requests
in flight. N runs of one http job are enqueued through `Service.run_now`, then the real
`Runtime` (scheduler + worker roles, default settings; NIGHTSHIFT_WORKER_CONCURRENCY, default
100, bounds the http runs in flight) drains them. Total time is from `Runtime.serve()` to the
N-th committed completion; the ideal is ceil(N / concurrency) x delay. `startup_s` is the part
of it before the first request reaches the server (the server and this process share
time.monotonic).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time

import httpx
from bench_throughput import Completions, enqueue, job_run_ids, observe_calls, verify
from benchlib import (
    BENCH_DIR,
    Results,
    TempDatabase,
    add_common_args,
    free_port,
    load1,
    quiet_logging,
    stop_process,
    working_directory,
)


def start_server(port: int, delay: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "slow_server.py"),
            "--port",
            str(port),
            "--delay",
            str(delay),
        ],
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError("the slow server did not start")


def per_second(arrivals: list[float]) -> list[int]:
    """Requests arriving in each second after the first one (how the worker paced them)."""
    if not arrivals:
        return []
    counts = [0] * (int(arrivals[-1] - arrivals[0]) + 1)
    for moment in arrivals:
        counts[int(moment - arrivals[0])] += 1
    return counts


def run(backend: str, n: int, delay: float, results: Results) -> None:
    os.environ["NIGHTSHIFT_HTTP_ALLOW_PRIVATE"] = "true"
    from nightshift.config import Settings
    from nightshift.runtime import Runtime

    port = free_port()
    server = start_server(port, delay)
    try:
        with TempDatabase(backend) as db, working_directory(db.workdir):
            settings = Settings(database_url=db.url)
            runtime = Runtime(settings, roles=("scheduler", "worker"))
            job = runtime.service.create_job(
                {
                    "name": "slow-http",
                    "kind": "http",
                    "config": {"method": "GET", "url": f"http://127.0.0.1:{port}/slow"},
                }
            )
            enqueued = enqueue(runtime.service, [job.id], n)
            load_before = load1()

            async def drain() -> tuple[float, Completions]:
                completions = Completions(n, job_run_ids(runtime.store, [job.id]))
                observe_calls(runtime.worker.calls, {"complete": completions})
                started = time.monotonic()  # the server's clock, for the start-up figure
                t0 = time.perf_counter()
                serving = asyncio.create_task(runtime.serve())
                try:
                    await asyncio.wait_for(completions.done.wait(), 60 + 3 * n * delay)
                except TimeoutError:
                    print("  timed out", flush=True)
                runtime.request_stop()
                await serving
                return started, t0, completions

            started, t0, completions = asyncio.run(drain())
            check = verify(db.url, [job.id], n)
            stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
            arrivals = httpx.get(f"http://127.0.0.1:{port}/arrivals", timeout=5).json()
            concurrency = settings.worker_concurrency
            ideal = math.ceil(n / concurrency) * delay
            total = (completions.done_at or time.perf_counter()) - t0
            server_span = (
                stats["last"] - stats["first"] if stats["first"] and stats["last"] else None
            )
            results.add(
                "http",
                backend,
                {
                    "n": n,
                    "concurrency": concurrency,
                    "total_s": round(total, 2),
                    "ideal_s": ideal,
                    "total_over_ideal": round(total / ideal, 2),
                    "server_span_s": round(server_span, 2) if server_span else None,
                    "startup_s": round(arrivals[0] - started, 2) if arrivals else None,
                    "max_inflight": stats["max_inflight"],
                    "requests": stats["requests"],
                    "verified": check["verified"],
                },
                load1_before=load_before,
                arrivals_per_s=per_second(arrivals),
                enqueue_per_s=enqueued["enqueue_per_s"],
                statuses=check["statuses"],
                notes="total from Runtime.serve() (start-up included) to the last committed "
                "completion; server_span from the first request's arrival to the last answer; "
                "startup from Runtime.serve() to the first request's arrival",
            )
    finally:
        stop_process(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    quiet_logging()
    results = Results(args.json)
    for backend in args.backend or ["sqlite"]:
        print(f"http {backend}: {args.n} jobs, server delay {args.delay} s", flush=True)
        run(backend, args.n, args.delay, results)


if __name__ == "__main__":
    main()
