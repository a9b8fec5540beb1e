"""Python jobs for the fault tests, imported by the workers' child processes.

Each start leaves a mark file `<dir>/<n>-<attempt>-<pid>`: a test counts executions from the
marks, independently of what the database says.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nightshift


def noop(ctx: nightshift.Context) -> None:
    """For fires that only have to exist (the exactly-once runs)."""


def mark_and_sleep(ctx: nightshift.Context) -> None:
    _mark(ctx)
    time.sleep(ctx.params.get("seconds", 1.0))


def exit_when_stale(ctx: nightshift.Context) -> object:
    """Attempt 1 (the one whose worker gets paused) ends with EXIT, which would deactivate the
    job if its completion were ever recorded; later attempts end with OK."""
    _mark(ctx)
    time.sleep(ctx.params.get("seconds", 1.0))
    ctx.log.info("attempt %s finished in pid %s", ctx.attempt, os.getpid())
    return nightshift.EXIT if ctx.attempt == 1 else nightshift.OK


def _mark(ctx: nightshift.Context) -> None:
    folder = Path(ctx.params["dir"])
    (folder / f"{ctx.params.get('n', 0)}-{ctx.attempt}-{os.getpid()}").touch()
