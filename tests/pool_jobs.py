"""Python jobs for the process pool's tests (imported by the pool's child processes)."""

from __future__ import annotations

import os
import time

from nightshift.context import Context


def pid(ctx: Context) -> None:
    """Logs the process it runs in."""
    ctx.log.info("pid %s", os.getpid())


def sleep(ctx: Context) -> None:
    """Sleeps params["s"] seconds, then logs its process."""
    time.sleep(ctx.params.get("s", 0.5))
    ctx.log.info("pid %s", os.getpid())


def touch(ctx: Context) -> None:
    """Appends a line to the file params["path"]: proof that it ran."""
    with open(ctx.params["path"], "a") as f:
        f.write(f"{ctx.run_id}\n")


def stop_seen(ctx: Context) -> None:
    """Logs whether a stop was asked for when it started."""
    ctx.log.info("stop %s", ctx.should_stop())


def unhooks_logging(ctx: Context) -> None:
    """Takes every handler off the root logger and raises its level (as some libraries do)."""
    import logging

    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.ERROR)
