"""Profile a drain with py-spy: where the CPU goes, by process, thread and function.

    .venv/bin/pip install py-spy        # not a project dependency
    .venv/bin/python bench/profile_drain.py [--backend sqlite] [--n 5000] [--jobs 1]
                                            [--out /tmp/prof]

Runs `bench_throughput.py --mode inprocess`, lets it enqueue, attaches
`py-spy record --subprocesses --threads` (the python pool's children are followed as they
spawn) for the drain only, and summarises the raw (collapsed) stacks: active samples per
process and thread, the functions with the most self time, and the inclusive share of the
functions that matter to the drain (claim, complete, the pool's IPC, SQLAlchemy, the driver).
py-spy samples threads that are running (on a CPU: holding the GIL or in native code), not
idle ones. It reads them without stopping them (`--nonblocking`): stopping the processes for
each sample skewed the samples towards system calls on our VMs (15.8 % of an event loop's in
`getpid()`, bench/PROFILE.md, session 18), at the price of a stack now and then torn.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BENCH_DIR

#: Inclusive shares reported for these frames (a substring of "function (file:line)").
KEY_FRAMES = {
    "store.claim": "claim (",
    "store.complete": "complete (",
    "store.sync (heartbeat)": "sync (",
    "store.next_run_due": "next_run_due (",
    "SQLAlchemy statement compilation": "_compiler (",
    "SQLAlchemy execute": "_execute_context (",
    "row to Run/Job (codec)": "_from_row (",
    "sqlite3 / psycopg calls": "do_execute (",
    "commit": "commit (",
    "pool.run (parent side of IPC)": "run (nightshift/worker/pool.py",
    "pool reader thread (recv)": "_read (",
    "Connection.recv / send (pickle + pipe)": "_recv_bytes (",
    "child: _run_task": "_run_task (",
    "child: log capture set-up": "_capture (",
    "worker._completion + policy": "_completion (",
    "asyncio event loop (run_once)": "_run_once (",
    "asyncio.to_thread hand-off": "run_in_executor (",
}


def record(args: argparse.Namespace, out: Path) -> Path:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    ready = out / "ready"
    raw = out / f"drain-{args.backend}.txt"
    bench = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "bench_throughput.py"),
            "--n",
            str(args.n),
            "--mode",
            "inprocess",
            "--backend",
            args.backend,
            "--jobs",
            str(args.jobs),
            "--ready-file",
            str(ready),
        ]
    )
    while not ready.exists() or not ready.read_text():
        if bench.poll() is not None:
            raise SystemExit("the benchmark ended before its drain")
        time.sleep(0.05)
    pid = ready.read_text().strip()
    options = ["--subprocesses", "--threads", "--nonblocking", "--rate", str(args.rate)]
    spy = subprocess.Popen(
        [pyspy, "record", "--pid", pid, *options, "--format", "raw", "--output", str(raw)]
    )
    time.sleep(1.0)  # attached
    ready.unlink()
    bench.wait()
    spy.wait(60)
    return raw


def summarise(raw: Path, top: int = 30) -> str:
    by_thread: collections.Counter[str] = collections.Counter()
    by_process: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        # Command lines may hold ";": take the process frames out before splitting.
        processes = re.findall(r'process \d+:"([^"]*)"', stack)
        frames = re.sub(r'process \d+:"[^"]*";?', "", stack).split(";")
        process = _short_process(processes[-1] if processes else "?")
        thread = next((f for f in frames[:2] if f.startswith("thread ")), "thread ?")
        by_process[process] += count
        by_thread[f"{process} / {_short_thread(thread)}"] += count
        code = [f for f in frames if not f.startswith(("process ", "thread "))]
        if code:
            self_time[_short(code[-1])] += count
        seen = set()
        for name, needle in KEY_FRAMES.items():
            if name not in seen and any(needle in f for f in code):
                inclusive[name] += count
                seen.add(name)
    lines = [f"{total} active samples", "", "By process:"]
    lines += [f"  {c / total:6.1%}  {p}" for p, c in by_process.most_common()]
    lines += ["", "By thread:"]
    lines += [f"  {c / total:6.1%}  {t}" for t, c in by_thread.most_common(15)]
    lines += ["", "Inclusive (any frame of the stack):"]
    lines += [f"  {inclusive[k] / total:6.1%}  {k}" for k in KEY_FRAMES if inclusive[k]]
    lines += ["", f"Self time, top {top}:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in self_time.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    return re.sub(r"\(/\S*?/(site-packages|lib/python3\.\d+|src)/", "(", frame)


def _short_process(cmdline: str) -> str:
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "spawn_main" in cmdline:
        return "python pool children"
    return "service process" if "bench_throughput" in cmdline else cmdline[:60]


def _short_thread(frame: str) -> str:
    name = re.sub(r"thread \(\d+\):? ?", "", frame) or "?"
    if name.startswith("asyncio_"):
        return "asyncio.to_thread pool (store calls)"
    if name.startswith("nightshift-pool-"):
        return "pool reader threads"
    return name[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=1, help="spread the runs over this many jobs")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--out", help="directory for the raw profile (default: a temp dir)")
    parser.add_argument("--summarise", help="only summarise this existing raw file")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(Path(args.summarise)))
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="ns-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    raw = record(args, out)
    print(f"\nraw profile: {raw}\n")
    print(summarise(raw))


if __name__ == "__main__":
    main()
