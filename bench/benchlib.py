"""Shared helpers of the benchmarks: machine facts, temporary databases, timing, results.

Every benchmark script is run as `python bench/<name>.py` (this directory is then on sys.path,
which the python pool's spawned children inherit, so `bench_jobs:noop` imports there too).
Scripts print their figures and, with `--json PATH`, append one JSON object per result to PATH;
`bench/run.py` collects those into `bench/RESULTS.md`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NIGHTSHIFT = str(Path(sys.executable).with_name("nightshift"))
PG_URL = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA_PREFIX = "ns_bench_"


# -- machine --------------------------------------------------------------------------------


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def machine(pg_url: str | None = PG_URL) -> dict[str, Any]:
    """What a result row needs to be read later: the machine, the versions, the source tree."""
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "mem_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": None,
        "kernel": platform.release(),
    }
    if pg_url:
        with contextlib.suppress(Exception):
            import psycopg

            with psycopg.connect(pg_url, connect_timeout=3) as conn:
                info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
                info["pg_fsync"] = conn.execute("SHOW fsync").fetchone()[0]
                info["pg_synchronous_commit"] = conn.execute("SHOW synchronous_commit").fetchone()[
                    0
                ]
    info.update(source_tree())
    return info


def source_tree() -> dict[str, Any]:
    """The commit and how many files under src/ differ from it (read-only git commands)."""
    out: dict[str, Any] = {"commit": None, "src_changes": None}
    with contextlib.suppress(Exception):
        out["commit"] = _git("rev-parse", "--short", "HEAD").strip()
        status = _git("status", "--porcelain", "--", "src")
        out["src_changes"] = len([line for line in status.splitlines() if line.strip()])
    return out


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
    ).stdout


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of one process, from /proc (no psutil needed)."""
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, grandchildren...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += rss_mb(member)
    return round(total, 1)


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of a process and its descendants: pages shared between them (the
    fork server's imports, inherited by every process forked from it) counted once in all,
    where the sum of their RSS counts them in each."""
    total = 0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{member}/smaps_rollup") as fh:
            total += next(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
    return round(total / 1024, 1)


# -- statistics ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile of `values` (q in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def spread_ms(seconds: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max in milliseconds of durations given in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": _round(pct(ms, 0.5)),
        "p99_ms": _round(pct(ms, 0.99)),
        "max_ms": _round(max(ms) if ms else None),
    }


def timed(fn: Any, reps: int, warmup: int = 1) -> dict[str, float | None]:
    """Call `fn()` `warmup` + `reps` times; the median / p95 / max of the timed calls in ms."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": _round(statistics.median(samples)),
        "p95_ms": _round(pct(samples, 0.95)),
        "max_ms": _round(max(samples)),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- databases -------------------------------------------------------------------------------


@dataclass
class TempDatabase:
    """A fresh database for one benchmark: a SQLite file in a temporary directory, or a
    PostgreSQL schema of its own (`ns_bench_<hex>`) on the local server, dropped afterwards.
    Only schemas this object created are ever dropped."""

    backend: str
    pg_url: str = PG_URL
    url: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ns-bench-")))
    schema: str | None = None

    def __enter__(self) -> TempDatabase:
        if self.backend == "sqlite":
            self.url = f"sqlite:///{self.workdir / 'nightshift.db'}"
        elif self.backend == "postgresql":
            import psycopg

            self.schema = f"{SCHEMA_PREFIX}{secrets.token_hex(4)}"
            with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"CREATE SCHEMA {self.schema}")
            sep = "&" if "?" in self.pg_url else "?"
            self.url = f"{self.pg_url}{sep}options=-csearch_path%3D{self.schema}"
        else:
            raise ValueError(f"unknown backend {self.backend!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()

    def drop(self) -> None:
        if self.schema is not None and self.schema.startswith(SCHEMA_PREFIX):
            import psycopg

            with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=5) as conn:
                # End our own leftover sessions on this schema first (a killed subprocess).
                conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self.schema = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def size_mb(self) -> float | None:
        if self.backend == "sqlite":
            total = sum(p.stat().st_size for p in self.workdir.glob("nightshift.db*"))
            return round(total / 2**20, 1)
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r'",
                (self.schema,),
            ).fetchone()
        return round(row[0] / 2**20, 1)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the service from a scratch directory: no nightshift.toml or key files are read or
    written in the repository."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_logging() -> None:
    """Warnings and errors only: the service's INFO lines would be timed along."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("nightshift").setLevel(logging.WARNING)


def bench_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `nightshift` subprocess: bench_jobs importable, no toml read."""
    env = {
        **os.environ,
        "NIGHTSHIFT_DATABASE_URL": database_url,
        "NIGHTSHIFT_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM our own child (its process group), SIGKILL after `grace`."""
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- results ---------------------------------------------------------------------------------


class Results:
    """Collects result rows, prints each one, and appends them to `--json` as JSON lines."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def add(self, bench: str, backend: str, figures: dict[str, Any], **context: Any) -> None:
        row = {"bench": bench, "backend": backend, "figures": figures, **context}
        row.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        row.setdefault("load1", load1())
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        print(f"[{bench} / {backend}] {shown}", flush=True)
        for key in ("cpu_us_per_job", "notes"):
            if context.get(key):
                print(f"    {key}: {context[key]}", flush=True)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")


def add_common_args(parser: Any) -> None:
    parser.add_argument("--json", help="append result rows (JSON lines) to this file")
    parser.add_argument(
        "--backend",
        action="append",
        choices=["sqlite", "postgresql"],
        help="repeatable; default: sqlite and postgresql",
    )


def backends(args: Any) -> list[str]:
    return args.backend or ["sqlite", "postgresql"]


class CpuMeter:
    """CPU seconds spent by the parts of a drain, read from /proc (exact, unlike sampling):
    this process's threads by name, its child processes (the python pool), and PostgreSQL's
    server processes. `start()` and `stop()` bracket the drain; `per_job_us(n)` divides."""

    def __init__(self, named: dict[str, Any] | None = None) -> None:
        #: Child processes counted apart from the pool's: part name -> a function giving the
        #: PID or PIDs (e.g. the worker's store process).
        self.named = named or {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._start: dict[str, float] = {}
        self.parts: dict[str, float] = {}

    def _proc_cpu(self, path: str) -> float:
        try:
            with open(path) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime

    def read(self) -> dict[str, float]:
        import threading

        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {}
        for tid in os.listdir("/proc/self/task"):
            name = names.get(int(tid), "other threads")
            name = "main thread" if name == "MainThread" else name.rstrip("_0123456789")
            out[name] = out.get(name, 0.0) + self._proc_cpu(f"/proc/self/task/{tid}/stat")
        parents: dict[int, int] = {}
        postgres: list[int] = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    head, tail = fh.read().rsplit(")", 1)
            except OSError:
                continue
            parents[int(pid)] = int(tail.split()[1])
            if head.split("(", 1)[1].startswith("postgres"):
                postgres.append(int(pid))
        # The pool's processes descend from this one (its children fork from a fork server).
        mine, me = set(), os.getpid()
        for pid in parents:
            up, seen = parents.get(pid), 0
            while up and up != me and seen < 64:
                up, seen = parents.get(up), seen + 1
            if up == me:
                mine.add(pid)
        for name, pids in self.named.items():
            found = pids()
            for pid in [found] if isinstance(found, int) else found or ():
                out[name] = out.get(name, 0.0) + self._proc_cpu(f"/proc/{pid}/stat")
                mine.discard(pid)
        for part, pids in (("pool children", mine), ("postgresql server", postgres)):
            for pid in pids:
                out[part] = out.get(part, 0.0) + self._proc_cpu(f"/proc/{pid}/stat")
        return out

    def start(self) -> None:
        self._start = self.read()

    def stop(self) -> None:
        end = self.read()
        # A child that exited during the drain is lost to this count (its time went to us
        # only once reaped): the pool's children live through the drain.
        self.parts = {k: max(0.0, v - self._start.get(k, 0.0)) for k, v in end.items()}

    def per_job_us(self, n: int) -> dict[str, float]:
        per = {k: round(1e6 * v / n) for k, v in sorted(self.parts.items()) if v > 0}
        per["total"] = round(1e6 * sum(self.parts.values()) / n)
        return per
