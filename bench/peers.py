"""`make bench-peers`: the fastest peers and Nightshift, same workload, same machine, one run.

    .venv/bin/python bench/peers.py [--n 20000] [--runs 3] [--modes all] [--lateness]
                                    [--cases huey,huey_sqlite,dramatiq,procrastinate]
                                    [--no-record]

Peers run through the shared harness (../shared/bench/peers, used in place by
`bench/peer_case.py`, its results redirected to a scratch directory): Huey on Redis and on
SQLite, Dramatiq on Redis, Procrastinate on PostgreSQL (2 workers, concurrency 10 - its fastest
setup in the harness's RESULTS.md). Its services and virtualenvs live under /tmp/peerbench
(PEERBENCH_SCRATCH); missing ones are set up as its README says (redis-server on 6390, a private
PostgreSQL cluster on 5440, one virtualenv per peer), and whatever this script started is
stopped again at the end, by PID.

Nightshift: `bench/bench_throughput.py` with the same N on SQLite and PostgreSQL: the in-process
Runtime, `nightshift up`, and `nightshift worker` - the like-for-like row, as the harness times
its peers' worker processes from their spawn, start-up included, and starts no scheduler or web
server of theirs. The table gives drain and enqueue rates and the ratio
Nightshift / peer, appended to bench/RESULTS.md. This machine's speed drifts by tens of percent
over minutes, so the cases run `--runs` times interleaved (each run: every peer, then
Nightshift), each ratio pairs rows of the same run, and the verdict takes the median.

`--lateness` adds the scheduling comparison: Nightshift 1,000 x every 1s for 60 s on SQLite,
APScheduler 3 in memory (same workload; its venv is made if missing) and Procrastinate with
100 schedules (it collapses at 1,000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import report
from benchlib import BENCH_DIR, REPO, machine

PEERS_DIR = Path(os.environ.get("PEERBENCH_DIR", REPO.parent / "shared" / "bench" / "peers"))
SCRATCH = Path(os.environ.get("PEERBENCH_SCRATCH", "/tmp/peerbench"))
REDIS_PORT = int(os.environ.get("PEERBENCH_REDIS_PORT", "6390"))
PG_PORT = int(os.environ.get("PEERBENCH_PG_PORT", "5440"))

#: name: (harness adapter, venv, variant, label, backend Nightshift is compared on)
CASES: dict[str, tuple[str, str, str, str, str]] = {
    "huey": ("huey", "huey", "default", "Huey (Redis), `-w 2 -k process`", "sqlite"),
    "huey_sqlite": ("huey_sqlite", "huey", "default", "Huey (SQLite), `-w 2 -k process`", "sqlite"),
    "dramatiq": (
        "dramatiq",
        "dramatiq",
        "default",
        "Dramatiq (Redis), 2 processes x 8 threads",
        "sqlite",
    ),
    "procrastinate": (
        "procrastinate",
        "procrastinate",
        "c10",
        "Procrastinate (PostgreSQL), 2 workers c=10",
        "postgresql",
    ),
}
VENV_PACKAGES = {
    "huey": ["huey", "redis", "psutil"],
    "dramatiq": ["dramatiq[redis]", "psutil"],
    "procrastinate": ["procrastinate", "psycopg[binary]", "psutil"],
    "aps3": ["apscheduler<4", "sqlalchemy", "psutil"],
}
#: The issue's targets: Nightshift's drain / the peer's.
TARGET_RATIO = {"huey": 2.0, "procrastinate": 9.0}


# -- services and virtualenvs (as ../shared/bench/peers/README.md) ---------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(cmd: list[str] | str, **kw: Any) -> None:
    print("  $", cmd if isinstance(cmd, str) else " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def ensure_services(need_redis: bool, need_pg: bool) -> list[str]:
    """Start what is missing; returns what was started here (to stop it at the end)."""
    started = []
    for sub in ("redis", "pg", "venvs", "data", "logs"):
        (SCRATCH / sub).mkdir(parents=True, exist_ok=True)
    if need_redis and not _port_open(REDIS_PORT):
        _run(
            [
                "redis-server",
                "--port",
                str(REDIS_PORT),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--pidfile",
                str(SCRATCH / "redis" / "redis.pid"),
                "--dir",
                str(SCRATCH / "redis"),
                "--logfile",
                str(SCRATCH / "logs" / "redis.log"),
            ]
        )
        _wait_port(REDIS_PORT)
        started.append("redis")
    if need_pg and not _port_open(PG_PORT):
        pgbin = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        data = SCRATCH / "pg" / "data"
        if not data.exists():
            _run(["chown", "-R", "postgres:postgres", str(SCRATCH / "pg")])
            _run(
                [
                    "su",
                    "postgres",
                    "-c",
                    f"{pgbin}/initdb -D {data} -U postgres --auth=trust -E UTF8 >/dev/null",
                ]
            )
        options = (
            f"-p {PG_PORT} -k {SCRATCH / 'pg'} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=512MB"
        )
        _run(
            [
                "su",
                "postgres",
                "-c",
                f"{pgbin}/pg_ctl -D {data} -l {SCRATCH / 'pg' / 'pg.log'} -o '{options}' -w start",
            ]
        )
        started.append("pg")
    if need_pg:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{PG_PORT}/postgres", autocommit=True
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'procr'").fetchone():
                conn.execute("CREATE DATABASE procr")
    return started


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.1)


def stop_services(started: list[str]) -> None:
    if "redis" in started:
        pid = int((SCRATCH / "redis" / "redis.pid").read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
    if "pg" in started:
        pgbin = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        _run(["su", "postgres", "-c", f"{pgbin}/pg_ctl -D {SCRATCH / 'pg' / 'data'} stop -m fast"])


def ensure_venv(name: str) -> Path:
    venv = SCRATCH / "venvs" / name
    python = venv / "bin" / "python"
    if not python.exists():
        base = shutil.which("python3") or sys.executable
        _run([base, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "--quiet", *VENV_PACKAGES[name]])
    return python


# -- running --------------------------------------------------------------------------------


def run_harness(venv: str, script: str, args: list[str], out: Path) -> dict[str, Any] | None:
    """One harness script in its venv; the JSON it wrote (into `out`), or None."""
    before = set(out.glob("*.json"))
    env = {
        **os.environ,
        "PEERBENCH_DIR": str(PEERS_DIR),
        "PEERBENCH_OUT": str(out),
        "PEERBENCH_SCRATCH": str(SCRATCH),
    }
    cmd = [str(ensure_venv(venv)), str(BENCH_DIR / "peer_case.py"), script, *args]
    print(f"\n== {venv}: {script} {' '.join(args)}", flush=True)
    code = subprocess.call(cmd, env=env, cwd=PEERS_DIR)
    written = sorted(set(out.glob("*.json")) - before)
    if code != 0 or not written:
        print(f"   failed (exit {code})", flush=True)
        return None
    return json.loads(written[-1].read_text())


def run_nightshift(script: str, args: list[str], out: Path) -> list[dict[str, Any]]:
    path = out / f"nightshift-{script}-{time.monotonic_ns()}.jsonl"
    cmd = [sys.executable, str(BENCH_DIR / f"bench_{script}.py"), *args, "--json", str(path)]
    print(f"\n== nightshift: {' '.join(cmd[1:])}", flush=True)
    subprocess.call(cmd)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# -- the tables -----------------------------------------------------------------------------


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def throughput_tables(peers: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| run | system (backend) | setup | enqueue jobs/s | drain jobs/s (incl. start-up) "
        "| steady jobs/s | 1st completion s | load 1m |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[int, int, str]] = []  # (run, order within the run, line): as they ran
    for k, p in enumerate(peers):
        rows.append(
            (
                p.get("run", 1),
                k,
                f"| {p.get('run', 1)} | {p['label']} | {p['describe']} | "
                f"{_f(p['enqueue_jobs_per_s'])} | {_f(p['drain_jobs_per_s'])} | "
                f"{_f(p.get('steady_jobs_per_s'))} | {_f(p.get('first_progress_s'), 2)} | "
                f"{p.get('load1', '-')} |",
            )
        )
    for k, r in enumerate(ours, start=len(peers)):
        f = r["figures"]
        rows.append(
            (
                r.get("run", 1),
                k,
                f"| {r.get('run', 1)} | **Nightshift ({r['backend']})** | "
                f"{report.mode_label(r)}; {_bulk(f)}"
                f"{'all runs recorded' if f['verified'] else 'NOT all recorded'} | "
                f"{_f(f['enqueue_per_s'])} | {_f(f['drain_per_s'])} | "
                f"{_f(f.get('steady_per_s'))} | {_f(f.get('first_completion_s'), 2)} | "
                f"{r.get('load1_before')} → {r['load1']} |",
            )
        )
    lines += [line for _run, _k, line in sorted(rows)]
    lines += ["", *ratio_table(peers, ours)]
    return lines


def ratio_table(peers: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[str]:
    """Nightshift / peer, each Nightshift row against the peer rows of the same run (the
    machine's speed drifts by tens of percent over minutes); with several runs, the median
    ratio and the range. The verdict goes by the median."""
    runs = len({r.get("run", 1) for r in ours})
    how = "median of the runs' ratios [lowest-highest]" if runs > 1 else "one run"
    cases = list(dict.fromkeys(p["case"] for p in peers))
    labels = {p["case"]: p["label"] for p in peers}
    backend_of = {p["case"]: p["backend"] for p in peers}
    lines = [
        f"Ratios, Nightshift / peer, drain (enqueue in brackets), {how}:",
        "",
        "| Nightshift | " + " | ".join(labels[c] for c in cases) + " | target | met |",
        "|---|" + "---|" * (len(cases) + 2),
    ]
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in ours:
        groups.setdefault((r["backend"], r.get("mode")), []).append(r)
    for (backend, _mode_name), rows in groups.items():
        cells, target, met = [], "-", "-"
        for case in cases:
            if backend_of[case] != backend:
                cells.append("")
                continue
            drain, enqueue = [], []
            for r in rows:
                for p in peers:
                    if p["case"] == case and p.get("run", 1) == r.get("run", 1):
                        drain.append(r["figures"]["drain_per_s"] / p["drain_jobs_per_s"])
                        enqueue.append(r["figures"]["enqueue_per_s"] / p["enqueue_jobs_per_s"])
            if not drain:
                cells.append("-")
                continue
            spread = f" [{min(drain):.2f}-{max(drain):.2f}]" if len(drain) > 1 else ""
            cells.append(f"{median(drain):.2f}x{spread} ({median(enqueue):.2f}x)")
            goal = TARGET_RATIO.get(case)
            if goal:
                target = f"≥ {goal:g}x {labels[case].split(',')[0]}"
                met = "yes" if median(drain) >= goal else "**no**"
        lines.append(
            f"| {backend}, {report.mode_label(rows[0])} | "
            + " | ".join(cells)
            + f" | {target} | {met} |"
        )
    return lines


def _bulk(figures: dict[str, Any]) -> str:
    bulk = figures.get("enqueue_bulk_per_s")
    return f"bulk enqueue_many {bulk:,.0f}/s; " if bulk else ""


def lateness_table(peers: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| system | schedules x period | lateness p50 / p99 / max ms | missed / expected "
        "| duplicates |",
        "|---|---|---|---|---|",
    ]
    for p in peers:
        lines.append(
            f"| {p['label']} | {p['jobs']:,} x 1 s, {p['duration_s']} s | "
            f"{_f(p['lateness_ms_p50'], 1)} / {_f(p['lateness_ms_p99'], 1)} / "
            f"{_f(p['lateness_ms_max'], 1)} | {p['missed_fires']:,} / {p['expected_fires']:,} | "
            f"{p['duplicate_fires']} |"
        )
    for r in ours:
        f = r["figures"]
        lines.append(
            f"| **Nightshift ({r['backend']})**, start - scheduled | {r['jobs']:,} x 1 s, "
            f"{r['duration_s']} s | {_f(f['start_p50_ms'], 1)} / {_f(f['start_p99_ms'], 1)} / "
            f"{_f(f['start_max_ms'], 1)} | {f['missed']:,} / {f['expected']:,} "
            f"({f['skipped']:,} skipped by overlap) | {f['duplicates']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--modes", choices=["inprocess", "subprocess", "worker", "both", "all"], default="all"
    )
    parser.add_argument("--lateness", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if not PEERS_DIR.is_dir():
        sys.exit(f"the peer harness is not at {PEERS_DIR} (set PEERBENCH_DIR)")
    info = machine()
    started_at = time.perf_counter()
    need_redis = any(CASES[c][1] in ("huey", "dramatiq") and c != "huey_sqlite" for c in cases)
    need_pg = "procrastinate" in cases or args.lateness
    started = ensure_services(need_redis, need_pg)
    peers: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    lat_peers: list[dict[str, Any]] = []
    lat_ours: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ns-bench-peers-") as tmp:
            out = Path(tmp)
            for run in range(1, args.runs + 1):
                for case in cases:
                    adapter, venv, variant, label, backend = CASES[case]
                    load = round(os.getloadavg()[0], 2)
                    res = run_harness(
                        venv,
                        "tp_run",
                        [adapter, "--n", str(args.n), "--run", str(run), "--variant", variant],
                        out,
                    )
                    if res:
                        res.update(case=case, label=label, backend=backend, load1=load, run=run)
                        peers.append(res)
                rows = run_nightshift(
                    "throughput",
                    [
                        "--n",
                        str(args.n),
                        "--mode",
                        args.modes,
                        "--backend",
                        "sqlite",
                        "--backend",
                        "postgresql",
                    ],
                    out,
                )
                ours += [{**row, "run": run} for row in rows]
            if args.lateness:
                lat_ours += run_nightshift(
                    "lateness",
                    ["--jobs", "1000", "--duration", "60", "--backend", "sqlite"],
                    out,
                )
                res = run_harness("aps3", "lat_aps3", ["--store", "memory", "--run", "1"], out)
                if res:
                    res["label"] = "APScheduler 3, memory store, thread pool"
                    lat_peers.append(res)
                res = run_harness(
                    "procrastinate", "lat_procrastinate", ["--jobs", "100", "--run", "1"], out
                )
                if res:
                    res["label"] = "Procrastinate periodic, 2 workers c=10"
                    lat_peers.append(res)
    finally:
        stop_services(started)
    total = time.perf_counter() - started_at
    lines = report.header(
        f"`make bench-peers` (N = {args.n:,}, {args.runs} run(s), {total:.0f} s)",
        " ".join([Path(sys.executable).name, *sys.argv]),
        info,
    )
    versions = sorted({f"{k} {v}" for p in peers for k, v in p.get("versions", {}).items() if v})
    lines += [
        f"- Peers: the shared harness ({PEERS_DIR.name}/tp_run.py), {', '.join(versions)}; "
        f"Redis on :{REDIS_PORT} without persistence, their PostgreSQL on :{PG_PORT}; "
        "Nightshift's PostgreSQL rows use the local server on :5432 (both fsync on).",
        "- Drain = from starting the workers until all N are done (start-up included), as the "
        "harness measures its peers; Nightshift's in-process rows stop at the N-th committed "
        "completion, its process rows (`nightshift up`, `nightshift worker`: what the harness "
        "starts of its peers) are polled every 50 ms like the peers.",
        "",
    ]
    lines += throughput_tables(peers, ours)
    if args.lateness:
        lines += ["", "Scheduling lateness, same run:", "", *lateness_table(lat_peers, lat_ours)]
    print("\n" + "\n".join(lines))
    if not args.no_record:
        report.append(lines)
        print(f"\nappended to {report.RESULTS_MD}")


if __name__ == "__main__":
    main()
