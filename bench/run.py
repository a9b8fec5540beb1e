"""The benchmark suite: `make bench` (full) and `make bench-quick` (under two minutes).

    .venv/bin/python bench/run.py --quick|--full [--only throughput,lateness,scale,stats,http]
                                  [--no-record]

Each benchmark runs in a process of its own (clean RSS, no state carried over), prints its
figures, and writes JSON lines that this script turns into one dated table appended to
bench/RESULTS.md (with the command, the machine, the versions and the load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report
from benchlib import BENCH_DIR, machine

SQLITE = ["--backend", "sqlite"]
SUITES: dict[str, list[tuple[str, list[str]]]] = {
    "quick": [
        ("throughput", ["--n", "1000", "--mode", "inprocess"]),
        ("lateness", ["--jobs", "200", "--duration", "15", "--backend", "sqlite"]),
        (
            "scale",
            ["--schedules", "10000", "--runs", "100000", "--create-budget", "6", *SQLITE],
        ),
        ("stats", ["--runs", "100000", *SQLITE]),
        ("http", ["--n", "200"]),
    ],
    "full": [
        ("throughput", ["--n", "20000", "--mode", "all"]),
        # Runs of many jobs: each claimed run carries its own job (bench/PROFILE.md, session 10).
        ("throughput", ["--n", "20000", "--mode", "inprocess", "--jobs", "1000"]),
        ("lateness", ["--jobs", "1000", "--duration", "60", "--schedulers", "3"]),
        ("scale", ["--schedules", "100000", "--runs", "1000000", "--create-budget", "900"]),
        ("stats", ["--runs", "1000000"]),
        ("http", ["--n", "1000"]),
    ],
}


def run_suite(suite: str, only: set[str] | None, record: bool, command: str) -> int:
    info = machine()
    print(f"machine: {info}", flush=True)
    rows: list[dict] = []
    failed: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ns-bench-run-") as tmp:
        for step, (name, args) in enumerate(SUITES[suite]):
            if only and name not in only:
                continue
            out = Path(tmp) / f"{step}-{name}.jsonl"
            cmd = [sys.executable, str(BENCH_DIR / f"bench_{name}.py"), *args, "--json", str(out)]
            print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            code = subprocess.call(cmd)
            print(f"== {name}: {time.perf_counter() - t0:.1f} s, exit {code}", flush=True)
            if code != 0:
                failed.append(name)
            if out.exists():
                rows.extend(json.loads(line) for line in out.read_text().splitlines() if line)
    total = time.perf_counter() - started
    lines = report.header(f"`{command}` ({suite} suite, {total:.0f} s)", _cmdline(), info)
    lines += report.table(rows)
    if failed:
        lines += ["", f"Failed (exit status != 0): {', '.join(failed)}."]
    print("\n" + "\n".join(lines))
    if record:
        report.append(lines)
        print(f"\nappended to {report.RESULTS_MD}")
    return 1 if failed else 0


def _cmdline() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--quick", action="store_true")
    group.add_argument("--full", action="store_true")
    parser.add_argument("--only", help="comma-separated: throughput,lateness,scale,stats,http")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    suite = "quick" if args.quick else "full"
    only = set(args.only.split(",")) if args.only else None
    command = "make bench-quick" if args.quick else "make bench"
    sys.exit(run_suite(suite, only, not args.no_record, command))


if __name__ == "__main__":
    main()
