"""Sample python jobs for the python kind's tests (imported by worker child processes)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from nightshift.context import Context
from nightshift.declare import job
from nightshift.domain.signals import EXIT, OK, SLEEP, STOP, Signal

SIGNALS = {"OK": OK, "SLEEP": SLEEP, "STOP": STOP, "EXIT": EXIT}


def echo(ctx: Context) -> None:
    ctx.log.info(
        "params=%s app=%s run_id=%s job=%s attempt=%s state=%r",
        sorted(ctx.params.items()),
        ctx.app,
        ctx.run_id,
        ctx.job,
        ctx.attempt,
        ctx.state,
    )


def returns(ctx: Context) -> object:
    """Returns params["value"]; as the Signal member when params["signal"] is true."""
    value = ctx.params.get("value")
    if ctx.params.get("signal"):
        return SIGNALS[value]
    return value


async def async_job(ctx: Context) -> Signal:
    await asyncio.sleep(0.01)
    ctx.log.info("async %s", ctx.params.get("n"))
    return SLEEP


def fails(ctx: Context) -> None:
    helper_that_raises(ctx.params.get("what", "bad thing"))


def helper_that_raises(what: str) -> None:
    raise ValueError(what)


async def async_fails(ctx: Context) -> None:
    await asyncio.sleep(0)
    raise RuntimeError("async boom")


def logs(ctx: Context) -> None:
    ctx.log.info("hello %s", ctx.params.get("who", "world"))
    ctx.log.debug("not shown at INFO")
    logging.getLogger("some.library").warning("library warning")
    print("printed line")
    print("partial", end="")
    print(" line")
    print("to stderr", file=sys.stderr)
    try:
        raise KeyError("missing")
    except KeyError:
        ctx.log.exception("caught")
    print("no newline at the end", end="")


def progress(ctx: Context) -> None:
    total = ctx.params.get("total", 100)
    for i in range(total):
        ctx.progress(i + 1, total=total)


def stoppable(ctx: Context) -> object:
    """Counts from the last checkpoint until a stop is asked for."""
    i = ctx.state or 0
    ctx.log.info("started at %s", i)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ctx.should_stop():
            ctx.checkpoint(i)
            ctx.log.info("stopping at %s", i)
            return OK
        i += 1
        time.sleep(0.005)
    return EXIT


def checkpoints(ctx: Context) -> None:
    ctx.checkpoint({"step": 1})
    ctx.checkpoint({"step": 2, "items": [1, 2]})
    if ctx.params.get("fail"):
        raise RuntimeError("after checkpoint")


def bad_checkpoint(ctx: Context) -> None:
    try:
        ctx.checkpoint({"when": object()})
    except TypeError as exc:
        ctx.log.info("TypeError: %s", exc)


@job(name="custom-name", app="shop", schedule="0 8 * * *", retries=3, timeout_s=600)
def declared_job(ctx: Context) -> None:
    ctx.log.info("declared job ran")


@job
def bare_declared(ctx: Context) -> None:
    pass


def plain_target(ctx: Context) -> None:
    pass


def enqueues(ctx: Context) -> None:
    ids = [
        ctx.enqueue("send_email", params={"to": "owner"}),
        ctx.enqueue(declared_job, low_priority=True),
        ctx.enqueue(plain_target),
    ]
    ctx.log.info("children %s", ids)
    try:
        ctx.enqueue("no_such_job")
    except LookupError as exc:
        ctx.log.info("LookupError: %s", exc)


def spin(ctx: Context) -> None:
    ctx.log.info("spinning")
    while True:
        pass


def exits(ctx: Context) -> None:
    ctx.log.info("exiting")
    sys.stdout.flush()
    os._exit(3)


def sleeps(ctx: Context) -> None:
    start = time.time()
    time.sleep(ctx.params.get("seconds", 0.5))
    ctx.log.info("slept %r %r", start, time.time())


not_a_function = 42
