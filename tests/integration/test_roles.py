"""A process runs only its roles' code: a worker or scheduler process never loads the HTTP
server's stack (a third of the import time of `nightshift up`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
