"""A process runs only its roles' code: a worker or scheduler process never loads the HTTP
server's stack (a third of the import time of `nightshift up`). Start-up tells when it is done,
and the service commands collect garbage again from then on."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import nightshift.runtime
from nightshift.cli import serve
from nightshift.config import Settings
from nightshift.runtime import Runtime

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
