"""Imported first by the fork server: the program's `__main__`, loaded once.

That is what the server's preload of "__main__" is for, but in Python 3.11 it never happens:
the server is never told the script's path (CPython gh-126631, fixed in later releases).
Every process forked from it then ran the whole script again while starting, as "spawn"
does: for the `nightshift` command its CLI and Typer, 25-35 ms of the start of every pool
child and store process, and ~6 MB of each one's memory (bench/PROFILE.md, session 13).
Loaded here, the script is found loaded and not run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from multiprocessing import process, spawn

from nightshift.worker.forkserver import MAIN_VAR


def _load_main() -> None:
    told = os.environ.pop(MAIN_VAR, None)  # not for the processes forked from here
    if not told:
        return
    main = json.loads(told)
    path = main["path"]
    if not main["run"]:
        # A script the processes do not need (the `nightshift` command's): they find it
        # "loaded" and do not run it.
        module = types.ModuleType("__mp_main__")
        module.__file__ = path
        sys.modules["__main__"] = sys.modules["__mp_main__"] = module
        return
    # The script sees the program's arguments, as in the processes that ran it themselves
    # (spawn sets them first; the server is started without them).
    sys.argv = main["argv"]
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as spawn does: no processes from an import
    try:
        # What fails here fails again, and is reported, in the process that needs it.
        with contextlib.suppress(Exception, SystemExit):
            spawn.import_main_path(path)
    finally:
        del current._inheriting  # type: ignore[attr-defined]


_load_main()
