"""The fork server the python pool's children and the worker's store process are forked from
(see pool.py and store_process.py).

A fresh process (never a fork of the service, which runs threads and an event loop) that has
imported their modules: a new child costs a fork, not an interpreter importing everything
again. `start()` starts it early, so that it imports on the other core while the service
imports the rest (`nightshift up` and `nightshift worker` call it first thing).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from multiprocessing import forkserver, spawn
from multiprocessing.context import ForkServerContext

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
