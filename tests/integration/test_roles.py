"""A process runs only its roles' code: a worker or scheduler process never loads the HTTP
server's stack (a third of the import time of `nightshift up`). Start-up tells when it is done,
and the service commands collect garbage again from then on."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import nightshift.runtime
from nightshift.cli import serve
from nightshift.clock import SystemClock
from nightshift.config import Settings
from nightshift.runtime import Runtime
from nightshift.service import Service
from nightshift.store import open_store
from nightshift.worker.kinds.registry import build_executors
from tests.integration.conftest import ServiceProcess, wait_for

pytestmark = pytest.mark.timeout(120)

HTTP_STACK = ["fastapi", "starlette", "uvicorn", "nightshift.api.app"]

START_AND_STOP = textwrap.dedent(
    """
    import asyncio, json, sys
    from nightshift.config import Settings
    from nightshift.runtime import Runtime

    async def main():
        settings = Settings(database_url=sys.argv[1], port=0)  # any free port
        runtime = Runtime(settings, roles=tuple(sys.argv[2:]))
        runtime.stop.set()  # start every role, then stop at once
        await runtime.serve()

    asyncio.run(main())
    print(json.dumps(sorted(sys.modules)))
    """
)


def _modules_after_serving(tmp_path: Path, *roles: str) -> set[str]:
    url = f"sqlite:///{tmp_path / 'nightshift.db'}"
    done = subprocess.run(
        [sys.executable, "-c", START_AND_STOP, url, *roles],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("roles", [("worker",), ("scheduler",), ("scheduler", "worker")])
def test_a_process_without_the_api_role_never_loads_the_http_server(
    tmp_path: Path, roles: tuple[str, ...]
) -> None:
    loaded = _modules_after_serving(tmp_path, *roles)
    assert "nightshift.worker.worker" in loaded  # it did start
    assert [m for m in HTTP_STACK if m in loaded] == []


def test_the_api_role_loads_it(tmp_path: Path) -> None:
    loaded = _modules_after_serving(tmp_path, "api")
    assert [m for m in HTTP_STACK if m in loaded] == HTTP_STACK


async def test_started_is_called_once_start_up_is_done(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'nightshift.db'}", port=0)
    runtime = Runtime(settings, roles=("scheduler", "worker"))
    calls: list[bool] = []
    frozen = gc.get_freeze_count()

    def started() -> None:
        calls.append(gc.get_freeze_count() > frozen)  # what start-up built is frozen already
        runtime.request_stop()

    await asyncio.wait_for(runtime.serve(started=started), 60)
    assert calls == [True]


def test_the_service_commands_hold_the_collector_off_until_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up runs without cyclic collections (they found next to nothing to free); once the
    roles run, the collector must be on again, or a long-lived service would never free a
    cycle."""
    seen: dict[str, bool] = {}

    class Recorded:
        def __init__(self, settings: Settings, *, roles: tuple[str, ...]) -> None:
            seen["while building"] = gc.isenabled()

        async def serve(self, started: Any = None) -> None:
            seen["while starting"] = gc.isenabled()
            started()
            seen["once started"] = gc.isenabled()

    monkeypatch.setattr(nightshift.runtime, "Runtime", Recorded)
    monkeypatch.setattr(serve, "_setup_logging", lambda level: None)
    try:
        serve._serve(("scheduler",), database_url=f"sqlite:///{tmp_path / 'nightshift.db'}")
    finally:
        gc.enable()  # whatever happened, not for the rest of the session
    assert seen == {"while building": False, "while starting": False, "once started": True}


def test_a_failed_start_up_turns_the_collector_back_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "_setup_logging", lambda level: None)
    try:
        with pytest.raises(ValueError, match="unsupported database URL"):
            serve._serve(("scheduler",), database_url="nosuch://nowhere")
        assert gc.isenabled()
    finally:
        gc.enable()


def test_the_worker_s_processes_load_neither_the_nightshift_command_nor_pydantic(
    tmp_path: Path, sqlite_url: str
) -> None:
    """They are forked from a server that has loaded the program: with the `nightshift`
    command, that is nothing they need (jobs come from `--import`), and each of them used to
    run it again, its CLI and Typer, while starting (CPython gh-126631). Nor do they need
    pydantic (the service's settings): the server loaded it for two annotations, ~90 ms of
    its start and ~14 MB in each process forked from it."""
    store = open_store(sqlite_url)
    settings = Settings(database_url=sqlite_url)
    service = Service(store, SystemClock(), settings, build_executors(settings))
    job = service.create_job(
        {"name": "loaded", "kind": "python", "config": {"function": "tests.jobs_worker:loaded"}}
    )
    modules = ["nightshift.cli", "typer", "pydantic", "nightshift.config"]
    run = service.run_now(job.id, params={"modules": modules})
    worker = ServiceProcess(tmp_path, sqlite_url, role="worker")
    worker.start()
    try:
        done = wait_for(lambda: (r := store.get_run(run.id)).status == "succeeded" and r)
    finally:
        worker.stop()
        store.close()
    assert done.state == dict.fromkeys(modules, False)


RUN_ONE_JOB = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path

    # Top-level code, run wherever this script is loaded: here, and in the fork server.
    with open(Path(sys.argv[2]), "a") as marks:
        print("loaded", file=marks)

    async def main():
        from nightshift.config import Settings
        from nightshift.runtime import Runtime

        runtime = Runtime(Settings(database_url=sys.argv[1]), roles=("worker",))
        job = runtime.service.create_job(
            {"name": "ok", "kind": "python", "config": {"function": "tests.jobs_worker:ok"}}
        )
        run = runtime.service.run_now(job.id)

        def started():
            async def stop_when_done():
                while runtime.store.get_run(run.id).status != "succeeded":
                    await asyncio.sleep(0.05)
                runtime.request_stop()

            asyncio.ensure_future(stop_when_done())

        await runtime.serve(started=started)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_a_program_s_own_script_is_loaded_once_for_the_worker_s_processes(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A program that runs the worker itself: its script is loaded by the fork server, once,
    and found loaded by the processes forked from it (three: the store process and two pool
    children), as the preload of "__main__" intends."""
    script, marks = tmp_path / "program.py", tmp_path / "marks"
    script.write_text(RUN_ONE_JOB)
    subprocess.run(
        [sys.executable, str(script), sqlite_url, str(marks)],
        cwd=Path.cwd(),
        env={**os.environ, "NIGHTSHIFT_WORKER_PROCESSES": "2"},
        timeout=90,
        check=True,
    )
    assert marks.read_text().splitlines() == ["loaded", "loaded"]  # the program, the server
