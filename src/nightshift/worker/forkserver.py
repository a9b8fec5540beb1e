"""The fork server the python pool's children and the worker's store process are forked from
(see pool.py and store_process.py).

A fresh process (never a fork of the service, which runs threads and an event loop) that has
imported their modules: a new child costs a fork, not an interpreter importing everything
again. `start()` starts it early, so that it imports on the other core while the service
imports the rest (`nightshift up` and `nightshift worker` call it first thing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing import forkserver, spawn
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)

#: Tells the server the program's script, its arguments and whether to run it, as JSON
#: (forkserver_main.py): the server inherits our environment, and nothing else reaches it.
MAIN_VAR = "NIGHTSHIFT_FORKSERVER_MAIN"

#: What the server imports before it forks a child ("__main__": the program, as "spawn" would
#: import it in every child, loaded by forkserver_main; the store and its drivers for the
#: store process, and the scheduler's planner, which fires through it).
PRELOAD = [
    "nightshift.worker.forkserver_main",
    "__main__",
    "nightshift.worker.child",
    "nightshift.worker.store_process",
    "nightshift.store",
    "nightshift.scheduler",
]


#: How long a start waits for a fork server that went away to be gone (then a new one starts).
GONE_S = 5.0
RETRY_S = 0.05

#: One start at a time: multiprocessing's bookkeeping of its processes is not thread-safe.
_starting = threading.Lock()


def context() -> ForkServerContext:
    """The context to start processes with, its server running."""
    start()
    return multiprocessing.get_context("forkserver")


def start(*, main_holds_code: bool = True) -> None:
    """Start the server now rather than at the first child (a no-op once it runs).
    `main_holds_code=False`: the program's script is nothing the processes need (the
    `nightshift` command's: jobs come from `--import` modules, which they import themselves),
    so it is not run in the server or in them."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    main_path = spawn.get_preparation_data("forkserver").get("init_main_from_path")
    before = os.environ.get(MAIN_VAR)
    if main_path is not None:
        told = {"path": main_path, "argv": sys.argv, "run": main_holds_code}
        os.environ[MAIN_VAR] = json.dumps(told)
    try:
        forkserver.ensure_running()
    finally:
        if before is None:
            os.environ.pop(MAIN_VAR, None)
        else:
            os.environ[MAIN_VAR] = before


async def start_process(
    process: BaseProcess, handed: Sequence[Connection], kept: Sequence[Connection]
) -> None:
    """Start `process` from the server, on a thread of its own.

    `handed` are the process's ends of its pipes, `kept` ours. The handed ends travel to the
    server with the request, so only the start's thread closes them, once it is over: closed
    under it by whoever asked for the process (cancelled, or its event loop shut down, which
    cancels even a shielded start), the request reaches the server cut short, and
    multiprocessing's server exits on that, failing every start until a new one runs. If the
    caller gives up or the start fails, our ends are closed and the process is killed as soon
    as it has started (at once if it has)."""
    start = _Start(process, handed)
    try:
        await asyncio.to_thread(start.run)
    except BaseException:
        for end in kept:
            end.close()
        start.abandon()
        raise


class _Start:
    def __init__(self, process: BaseProcess, handed: Sequence[Connection]) -> None:
        self.process = process
        self._handed = handed
        self._lock = threading.Lock()
        self._started = False
        self._abandoned = False

    def run(self) -> None:
        try:
            with _starting:
                _start(self.process)
        finally:
            for end in self._handed:
                end.close()
        with self._lock:
            self._started = True
            abandoned = self._abandoned
        if abandoned:
            _kill(self.process)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            started = self._started
        if started:
            threading.Thread(target=_kill, args=(self.process,), daemon=True).start()


def _start(process: BaseProcess) -> None:
    gone_since = None
    while True:
        try:
            process.start()
            return
        except (ConnectionRefusedError, FileNotFoundError):
            # The server is gone, or still going. Once it has exited, start() launches a new
            # one; until then its address refuses.
            now = time.monotonic()
            if gone_since is None:
                gone_since = now
                log.warning("the fork server is gone: waiting for a new one")
            elif now - gone_since >= GONE_S:
                raise
            time.sleep(RETRY_S)


def _kill(process: BaseProcess) -> None:
    """Kill and reap a process nobody wants (a start that failed has nothing to kill)."""
    if process.pid is None:
        return
    with contextlib.suppress(Exception):
        process.kill()
        process.join(5)
