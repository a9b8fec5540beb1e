"""Python jobs for the worker and service tests (imported by worker child processes)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nightshift


def ok(ctx: nightshift.Context) -> object:
    ctx.log.info("hello %s", ctx.params.get("who", "world"))
    ctx.progress(1, total=2)
    return nightshift.OK


def flaky(ctx: nightshift.Context) -> None:
    raise RuntimeError(f"attempt {ctx.attempt} failed")


def cpu_loop(ctx: nightshift.Context) -> None:
    while True:
        pass


def signal(ctx: nightshift.Context) -> object:
    return getattr(nightshift, ctx.params["signal"])


def items(ctx: nightshift.Context) -> object:
    """Processes items state..total, one every `delay` s, appending each to params['out']."""
    total, delay = ctx.params.get("total", 50), ctx.params.get("delay", 0.02)
    out = Path(ctx.params["out"])
    for i in range(ctx.state or 0, total):
        if ctx.should_stop():
            ctx.checkpoint(i)
            return nightshift.OK
        with out.open("a") as fh:
            fh.write(f"{i}\n")
        ctx.checkpoint(i + 1)
        ctx.progress(i + 1, total=total)
        time.sleep(delay)
    return nightshift.OK


def parent(ctx: nightshift.Context) -> None:
    for n in range(ctx.params.get("children", 3)):
        ctx.enqueue("child", params={"n": n})


def child(ctx: nightshift.Context) -> None:
    ctx.log.info("child %s", ctx.params["n"])


def marks_then_sleeps(ctx: nightshift.Context) -> None:
    """Writes its pid and attempt to params['mark'] and waits params['seconds']."""
    Path(ctx.params["mark"]).write_text(f"{os.getpid()} {ctx.attempt}\n")
    deadline = time.monotonic() + ctx.params.get("seconds", 30)
    while time.monotonic() < deadline and not ctx.should_stop():
        time.sleep(0.02)


def sleeps(ctx: nightshift.Context) -> object:
    """Sleeps params['seconds'] and appends its run id to params['out'] when it begins."""
    with Path(ctx.params["out"]).open("a") as fh:
        fh.write(f"{ctx.run_id}\n")
    time.sleep(ctx.params.get("seconds", 0.3))
    return nightshift.OK


def nul_bytes(ctx: nightshift.Context) -> None:
    """Text PostgreSQL cannot store (NUL) in a log line and in the error."""
    ctx.log.info("before\x00after")
    raise ValueError("bad\x00byte")


def loaded(ctx: nightshift.Context) -> None:
    """Records (as its checkpoint) which of the named modules its process has loaded."""
    ctx.checkpoint({name: name in sys.modules for name in ctx.params["modules"]})
