"""Run one script of the shared peer harness, its JSON results redirected (used by peers.py).

    <peer venv>/bin/python bench/peer_case.py tp_run huey --n 20000 --run 1 --variant default

Runs inside a peer's own virtualenv (stdlib only here). The harness in PEERBENCH_DIR
(default ../shared/bench/peers) is used in place, never copied; only `common.RESULTS` is pointed
at PEERBENCH_OUT so that its recorded results are not overwritten.
"""

from __future__ import annotations

import importlib
import os
import sys


def main() -> None:
    peers = os.environ["PEERBENCH_DIR"]
    sys.path.insert(0, peers)
    import common  # the harness's own module

    common.RESULTS = os.environ["PEERBENCH_OUT"]
    name, args = sys.argv[1], sys.argv[2:]
    if name == "lat_procrastinate":  # it re-executes itself unless the job count matches
        jobs = args[args.index("--jobs") + 1] if "--jobs" in args else "1000"
        os.environ["PEERBENCH_LAT_JOBS"] = jobs
    sys.argv = [os.path.join(peers, f"{name}.py"), *args]
    importlib.import_module(name).main()


if __name__ == "__main__":
    main()
