"""The `nightshift` command (and `python -m nightshift`).

A command that runs a worker starts the worker's fork server first thing, before the CLI's own
imports: the server then imports the code of the worker's processes on the other core while this
process imports the rest, and it no longer has to wait for this one's CLI to load first
(bench/PROFILE.md, session 15).
"""

from __future__ import annotations

import gc
import sys

#: The commands whose process runs a worker (cli/serve.py starts the server there too).
RUN_A_WORKER = frozenset({"up", "worker"})


def main() -> None:
    # httpx imports its own command-line client at import (`httpx._main`, with click, rich's
    # console and pygments) whenever those are installed, as they are beside Typer: ~30 ms of
    # every start of this command (`nightshift runs list`: 0.26 -> 0.21 s), for a client it
    # never runs. With None in its place that import fails, and httpx leaves `httpx.main` a
    # stub. Only in this process: job code that imports nightshift elsewhere keeps its httpx.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    args = sys.argv[1:]
    if args and args[0] in RUN_A_WORKER and "--help" not in args:
        from nightshift.worker import forkserver

        # Whatever the CLI then finds wrong with the command, the server just exits with us.
        forkserver.start(main_holds_code=False)
    # Importing allocates objects that live as long as the process: collections during it
    # find next to nothing to free (see cli/serve.py).
    gc.disable()
    try:
        from nightshift.cli import main as cli_main
    finally:
        gc.enable()
    cli_main()


if __name__ == "__main__":
    main()
