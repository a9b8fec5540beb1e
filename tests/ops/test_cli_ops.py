"""`nightshift runs stop|resume|force-stop|cancel|restart|priority` against a real service, on
SQLite and PostgreSQL: what a user sees, exit statuses and one-line errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nightshift.cli import app as nightshift_app
from tests.api.conftest import ADMIN, ApiServer, wait_until
from tests.integration.conftest import NIGHTSHIFT

pytestmark = pytest.mark.timeout(90)


def cli(api: ApiServer, *args: str, process: bool = False) -> tuple[int, str, str]:
    env = {"NIGHTSHIFT_URL": api.base, "NIGHTSHIFT_TOKEN": ADMIN, "COLUMNS": "200"}
    if process:  # as a user runs it
        done = subprocess.run(
            [NIGHTSHIFT, *args], env={**os.environ, **env}, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr
    result = CliRunner().invoke(nightshift_app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_every_run_operation_from_the_command_line(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = serve(roles=("api", "worker"))
    with api.client() as admin:
        config = {"function": "tests.jobs_worker:marks_then_sleeps",
                  "params": {"mark": str(tmp_path / "mark"), "seconds": 60}}  # fmt: skip
        job = admin.post("/jobs", json={"name": "sleepy", "kind": "python", "config": config})
        run_id = admin.post(f"/jobs/{job.json()['id']}/run").json()["id"]

        def status(*wanted: str) -> dict[str, Any] | None:
            run = admin.get(f"/runs/{run_id}").json()
            return run if run["status"] in wanted else None

        wait_until(lambda: status("running"))
        assert cli(api, "runs", "stop", str(run_id)) == (0, f"run {run_id} stopping\n", "")
        wait_until(lambda: status("stopped"))
        assert cli(api, "runs", "resume", str(run_id))[:2] == (0, f"run {run_id} pending\n")
        wait_until(lambda: status("running"))
        code, out, _ = cli(api, "runs", "force-stop", str(run_id), "--json")
        assert code == 0 and f'"id": {run_id}' in out and '"status": "stopping"' in out
        stopped = wait_until(lambda: status("stopped"))
        assert stopped["reason"] == "force-stopped"

        code, out, err = cli(api, "runs", "stop", str(run_id), process=True)
        assert code == 2 and out == ""
        assert err.strip() == f"error: cannot stop run {run_id}: it is stopped already"

        assert cli(api, "runs", "cancel", str(run_id))[:2] == (0, f"run {run_id} cancelled\n")
        code, out, _ = cli(api, "runs", "restart", str(run_id))
        assert code == 0, out
        word, new_id, state, *rest = out.split()
        assert (word, state, " ".join(rest)) == ("run", "pending", f"(restart of run {run_id})")
        fresh = admin.get(f"/runs/{new_id}").json()
        assert fresh["restarted_from"] == run_id
        assert cli(api, "runs", "priority", new_id, "--low")[:2] == (
            0,
            f"run {new_id} low priority\n",
        )
        assert admin.get(f"/runs/{new_id}").json()["low_priority"] is True
        assert (
            cli(api, "runs", "priority", new_id, "--normal")[1] == f"run {new_id} normal priority\n"
        )
        code, _, err = cli(api, "runs", "priority", new_id)
        assert code == 2 and "--low or --normal" in err
        code, _, err = cli(api, "runs", "cancel", "99999")
        assert code == 1 and err.strip() == "error: run 99999 not found"
