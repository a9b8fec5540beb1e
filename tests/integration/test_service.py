"""`nightshift up` as a user runs it: declared jobs fire on time, HTTP jobs run, crashes lose
nothing, and SIGTERM drains."""

from __future__ import annotations

import itertools
import signal
import statistics
import textwrap
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from nightshift.domain.status import RunStatus
from nightshift.store import open_store
from tests.integration.conftest import ServiceProcess, wait_for

S = RunStatus
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EVERY_SECOND = textwrap.dedent(
    """
    import nightshift

    @nightshift.job(schedule="every 1s", overlap="allow")  # a slow start must not skip a fire
    def heartbeat(ctx):
        ctx.log.info("tick")
    """
)

WORKLOAD = textwrap.dedent(
    """
    import os, time
    from pathlib import Path
    import nightshift

    @nightshift.job()
    def slow(ctx):
        mark = Path(ctx.params["dir"]) / f"started-{ctx.params['n']}-{ctx.attempt}"
        mark.write_text(str(os.getpid()))
        time.sleep(ctx.params.get("seconds", 2))

    @nightshift.job()
    def quick(ctx):
        return nightshift.OK
    """
)


def test_up_answers_health_and_fires_an_every_second_job_ten_times(
    tmp_path: Path, sqlite_url: str
) -> None:
    (tmp_path / "mymodule.py").write_text(EVERY_SECOND)
    service = ServiceProcess(tmp_path, sqlite_url, imports="mymodule")
    service.start()
    store = open_store(sqlite_url)
    try:
        health = httpx.get(service.url("/api/v1/health")).json()
        assert health["status"] == "ok" and health["database"] == "ok"
        job = wait_for(lambda: store.find_job("default", "heartbeat"))
        window_end = job.next_fire_at + timedelta(seconds=9)  # ten fires: first .. first + 9 s

        def ten_done() -> list:  # type: ignore[type-arg]
            runs = store.list_runs(job_id=job.id, status=["succeeded"], limit=100)
            done = [r for r in runs if r.scheduled_for <= window_end]
            return done if len(done) >= 10 else []

        done = wait_for(ten_done, timeout=20)
        everything = store.list_runs(job_id=job.id, limit=100)
    finally:
        service.stop()
        store.close()
    assert not [r for r in everything if r.status == S.SKIPPED]
    slots = sorted(r.scheduled_for for r in done)
    assert len(slots) == 10 and len(set(slots)) == 10  # each scheduled time once
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(slots))
    assert all(r.status == S.SUCCEEDED for r in done)
    late = [(r.started_at - r.scheduled_for).total_seconds() for r in done]
    median_ms, max_ms = statistics.median(late) * 1000, max(late) * 1000
    print(f"start lateness over {len(late)} fires: median {median_ms:.1f} ms, max {max_ms:.1f} ms")
    assert all(0 <= x < 1.0 for x in late)
    logs = store.get_logs(done[0].id)
    assert [line.message for line in logs] == ["tick"]


class _Slow(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Slow.hits.append(self.path)
        body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_http_jobs_run_against_a_real_server(tmp_path: Path, database_url: str, outside) -> None:  # type: ignore[no-untyped-def]
    store, svc = outside
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/action"
    jobs = [
        svc.create_job(
            {
                "name": f"type{n}",
                "kind": "http",
                "schedule": "every 1s",
                "config": {"url": url, "query": f"parameters={{type:{n}}}"},
            }
        )
        for n in (1, 2)
    ]
    service = ServiceProcess(tmp_path, database_url)
    service.start()
    try:
        wait_for(
            lambda: all(store.count_runs(job_id=j.id, status=["succeeded"]) >= 2 for j in jobs)
        )
    finally:
        service.stop()
        server.shutdown()
    assert (
        "/action?parameters={type:1}" in _Slow.hits and "/action?parameters={type:2}" in _Slow.hits
    )
    run = store.list_runs(job_id=jobs[0].id, status=["succeeded"])[0]
    assert run.result["response"]["status"] == 200 and run.result["response"]["body"] == "pong"


HEAVY_IMPORT = textwrap.dedent(
    """
    import multiprocessing, pathlib, time
    import nightshift

    if multiprocessing.parent_process() is not None:  # in the worker's python processes only
        gate = pathlib.Path(__file__).with_name("imported")
        end = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < end:  # a heavy import (pandas, Django)
            time.sleep(0.01)

    @nightshift.job()
    def quick(ctx):
        return nightshift.OK
    """
)


def test_the_api_and_http_runs_do_not_wait_for_the_python_processes_to_import(  # type: ignore[no-untyped-def]
    tmp_path: Path, database_url: str, outside
) -> None:
    store, svc = outside
    (tmp_path / "heavy.py").write_text(HEAVY_IMPORT)
    service = ServiceProcess(tmp_path, database_url, imports="heavy")
    service.start()  # the API answers while the python processes still import
    try:
        quick = wait_for(lambda: store.find_job("default", "quick"))
        python_run = svc.run_now(quick.id)
        ping = svc.create_job(
            {"name": "ping", "kind": "http", "config": {"url": service.url("/api/v1/health")}}
        )
        http_run = svc.run_now(ping.id)
        wait_for(lambda: store.get_run(http_run.id).status == S.SUCCEEDED)
        assert store.get_run(python_run.id).status == S.PENDING  # no process to run it yet
        (tmp_path / "imported").touch()
        wait_for(lambda: store.get_run(python_run.id).status == S.SUCCEEDED)
    finally:
        service.stop()


def test_kill_9_mid_run_loses_nothing(tmp_path: Path, database_url: str, outside) -> None:  # type: ignore[no-untyped-def]
    store, svc = outside
    (tmp_path / "workload.py").write_text(WORKLOAD)
    service = ServiceProcess(
        tmp_path, database_url, imports="workload", NIGHTSHIFT_WORKER_PROCESSES="2"
    )
    service.start()
    slow = wait_for(lambda: store.find_job("default", "slow"))
    quick = store.find_job("default", "quick")
    victim = svc.run_now(slow.id, params={"dir": str(tmp_path), "n": 0, "seconds": 3})
    wait_for(lambda: (tmp_path / "started-0-1").exists())
    queued = [svc.run_now(quick.id) for _ in range(20)]
    service.signal(signal.SIGKILL)
    service.wait()
    assert store.get_run(victim.id).status == S.RUNNING  # died holding it

    service.start()  # a fresh start recovers its predecessor's runs without waiting for leases
    try:
        retried = wait_for(
            lambda: [
                r
                for r in store.list_runs(job_id=slow.id)
                if r.attempt == 2 and r.status == S.SUCCEEDED
            ],
            timeout=30,
        )
        # A quick run the killed worker had already claimed (NOTIFY wakes it at once) is
        # recovered too: it succeeds as its next attempt.
        wait_for(lambda: all(_succeeded_or_retried(store, r.id) for r in queued))
    finally:
        service.stop()
    first = store.get_run(victim.id)
    assert (first.status, first.reason) == (S.FAILED, "worker lost")
    assert retried[0].retry_of == victim.id
    assert (tmp_path / "started-0-2").exists()
    assert store.count_runs(status=["pending", "running"]) == 0


def _succeeded_or_retried(store, run_id: int) -> bool:  # type: ignore[no-untyped-def]
    run = store.get_run(run_id)
    if run.status == S.SUCCEEDED:
        return True
    if (run.status, run.reason) != (S.FAILED, "worker lost"):
        return False
    retries = [r for r in store.list_runs(job_id=run.job_id) if r.retry_of == run_id]
    return any(r.status == S.SUCCEEDED for r in retries)


def test_sigterm_lets_runs_finish_or_returns_them_to_pending(
    tmp_path: Path, database_url: str, outside
) -> None:  # type: ignore[no-untyped-def]
    store, svc = outside
    (tmp_path / "workload.py").write_text(WORKLOAD)
    service = ServiceProcess(
        tmp_path, database_url, imports="workload", NIGHTSHIFT_SHUTDOWN_GRACE_S="2"
    )
    service.start()
    slow = wait_for(lambda: store.find_job("default", "slow"))
    short = svc.run_now(slow.id, params={"dir": str(tmp_path), "n": 1, "seconds": 0.5})
    long = svc.run_now(slow.id, params={"dir": str(tmp_path), "n": 2, "seconds": 60})
    wait_for(lambda: (tmp_path / "started-1-1").exists() and (tmp_path / "started-2-1").exists())
    began = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0
    assert time.monotonic() - began < 10
    assert store.get_run(short.id).status == S.SUCCEEDED  # finished within the grace period
    back = store.get_run(long.id)
    assert (back.status, back.attempt, back.lease_owner) == (S.PENDING, 1, None)
