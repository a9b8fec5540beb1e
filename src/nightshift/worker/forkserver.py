"""The fork server the python pool's children and the worker's store process are forked from
(see pool.py and store_process.py).

A fresh process (never a fork of the service, which runs threads and an event loop) that has
imported their modules: a new child costs a fork, not an interpreter importing everything
again. `start()` starts it early, so that it imports on the other core while the service
imports the rest (`nightshift up` and `nightshift worker` call it first thing).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext

#: What the server imports before it forks a child ("__main__": the program, as "spawn" would
#: import it in every child; the store and its drivers for the store process, and the
#: scheduler's planner, which fires through it).
PRELOAD = [
    "__main__",
    "nightshift.worker.child",
    "nightshift.worker.store_process",
    "nightshift.store",
    "nightshift.scheduler",
]


def context() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start() -> None:
    """Start the server now rather than at the first child (a no-op once it runs)."""
    context()
    forkserver.ensure_running()
