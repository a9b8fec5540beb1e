"""Result rows (JSON lines written by the benchmarks) to the Markdown appended to RESULTS.md."""

from __future__ import annotations

import time
from typing import Any

from benchlib import BENCH_DIR

RESULTS_MD = BENCH_DIR / "RESULTS.md"

DRAIN_TARGET = {"sqlite": 9200, "postgresql": 5000}


def header(title: str, command: str, info: dict[str, Any]) -> list[str]:
    pg = info.get("postgresql")
    pg_text = (
        f"PostgreSQL {pg} (fsync {info.get('pg_fsync')}, synchronous_commit "
        f"{info.get('pg_synchronous_commit')})"
        if pg
        else "PostgreSQL not reachable"
    )
    tree = f"commit {info.get('commit')}"
    if info.get("src_changes"):
        tree += f" + {info['src_changes']} uncommitted file(s) under src/"
    return [
        f"## {time.strftime('%Y-%m-%d %H:%M %Z')} · {title}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']} GiB RAM, "
        f"kernel {info['kernel']}; Python {info['python']}, SQLite {info['sqlite']}, {pg_text}",
        f"- Source: {tree}",
        "",
    ]


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value)


def _load(row: dict[str, Any]) -> str:
    before = row.get("load1_before")
    return f"{before} → {row.get('load1')}" if before is not None else str(row.get("load1"))


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _cpu_row(bench: str, backend: str, work: str, figure: str, cpu: dict, load: str) -> list:  # type: ignore[type-arg]
    """CPU per item by part (`CpuMeter.per_job_us`), as one row."""
    parts = ", ".join(f"{k} {v}" for k, v in cpu.items() if k != "total")
    figures = f"{cpu['total']} in all: {parts}"
    return [bench, backend, work, f"{figure} (µs, from /proc)", figures, "-", "-", load]


#: How a throughput row's `mode` reads in the tables.
MODE_LABELS = {
    "inprocess": "in-process Runtime",
    "subprocess": "`nightshift up` process",
    "worker": "`nightshift worker` process",
}


def mode_label(row: dict[str, Any]) -> str:
    return MODE_LABELS.get(row.get("mode") or "subprocess", str(row.get("mode")))


def rows_for(row: dict[str, Any]) -> list[list[str]]:
    """Table rows: benchmark, backend, workload, figure, result, target, met, load."""
    bench, backend, f = row["bench"], row["backend"], row["figures"]
    load = _load(row)
    out: list[list[str]] = []
    if bench == "throughput":
        work = f"{f['n']:,} no-op python jobs, {mode_label(row)}"
        # The targets are for the peers' workload: runs of one job.
        target = DRAIN_TARGET[backend] if row.get("jobs", 1) == 1 else None
        if row.get("jobs", 1) > 1:
            work += f", runs spread over {row['jobs']:,} jobs"
        verified = "all recorded" if f.get("verified") else "**NOT all recorded**"
        out.append(
            [
                bench,
                backend,
                work,
                "enqueue (Service.run_now, 1 call/run)",
                f"{_n(f['enqueue_per_s'])} jobs/s",
                "-",
                "-",
                load,
            ]
        )
        if f.get("enqueue_bulk_per_s"):
            out.append(
                [
                    bench,
                    backend,
                    work,
                    "enqueue (store.enqueue_many, 1,000/call)",
                    f"{_n(f['enqueue_bulk_per_s'])} jobs/s",
                    "-",
                    "-",
                    load,
                ]
            )
        out.append(
            [
                bench,
                backend,
                work,
                "drain (incl. start-up)",
                f"{_n(f['drain_per_s'])} jobs/s (steady {_n(f.get('steady_per_s'))}/s, "
                f"1st after {_n(f.get('first_completion_s'), 2)} s; {verified})",
                f"≥ {target:,}/s" if target else "-",
                _yes((f["drain_per_s"] or 0) >= target) if target else "-",
                load,
            ]
        )
        if cpu := row.get("cpu_us_per_job"):
            out.append(_cpu_row(bench, backend, work, "CPU per job, steady drain", cpu, load))
    elif bench == "lateness":
        work = f"{row['jobs']:,} x every 1s for {row['duration_s']} s"
        if row.get("schedulers", 1) > 1:
            work += f", {row['schedulers']} schedulers"
        if row.get("history_runs"):
            work += f", {row['history_runs']:,} runs of history"
        ok = (f["start_p99_ms"] or 1e9) <= 20 and (f["start_max_ms"] or 1e9) <= 100
        out.append(
            [
                bench,
                backend,
                work,
                "start - scheduled p50 / p99 / max",
                f"{_n(f['start_p50_ms'], 1)} / {_n(f['start_p99_ms'], 1)} / "
                f"{_n(f['start_max_ms'], 1)} ms",
                "p99 ≤ 20, max ≤ 100 ms",
                _yes(ok),
                load,
            ]
        )
        if f.get("warm_p99_ms") is not None:
            out.append(
                [
                    bench,
                    backend,
                    work,
                    "start - scheduled p99 / max, without the first instant after start",
                    f"{_n(f['warm_p99_ms'], 1)} / {_n(f['warm_max_ms'], 1)} ms",
                    "-",
                    "-",
                    load,
                ]
            )
        out.append(
            [
                bench,
                backend,
                work,
                "created - scheduled p50 / p99 / max",
                f"{_n(f['fire_p50_ms'], 1)} / {_n(f['fire_p99_ms'], 1)} / "
                f"{_n(f['fire_max_ms'], 1)} ms",
                "-",
                "-",
                load,
            ]
        )
        if f.get("instant_last_ms") is not None:
            out.append(
                [
                    bench,
                    backend,
                    work,
                    "per instant (median): first / last start after it, starts/s between",
                    f"{_n(f['instant_first_ms'], 1)} / {_n(f['instant_last_ms'], 1)} ms, "
                    f"{_n(f['instant_starts_per_s'])}/s",
                    "-",
                    "-",
                    load,
                ]
            )
        if cpu := row.get("cpu_us_per_run"):
            out.append(_cpu_row(bench, backend, work, "CPU per fired run, window", cpu, load))
        out.append(
            [
                bench,
                backend,
                work,
                "missed (skipped, not started) / duplicates",
                f"{_n(f['missed'])} of {_n(f['expected'])} ({_n(f['skipped'])}, "
                f"{_n(f['not_started'])}) / {_n(f['duplicates'])}",
                "0 / 0",
                _yes(f["missed"] == 0 and f["duplicates"] == 0),
                load,
            ]
        )
    elif bench == "scale-schedules":
        n = f["schedules"]
        work = f"{n:,} schedules"
        created = row.get("creation", {})
        via_api = "created_via_api" in created  # older rows: one Service.create_job call each
        how = (
            f"{_n(created.get('created_via_api' if via_api else 'created_via_service'))} created "
            f"in {created.get('api_s' if via_api else 'service_s')} s, extrapolated"
            if created.get("extrapolated")
            else "all created"
        )
        path = (
            f"POST /jobs/bulk over HTTP, batches of {_n(created.get('batch'))}"
            if via_api
            else "Service.create_job, 1 call each"
        )
        full = n >= 100_000
        out.append(
            [
                bench,
                backend,
                work,
                f"create all ({path})",
                f"{_n(f['create_all_s'], 1)} s ({_n(f['create_per_s'])}/s; {how}"
                + (
                    f"; service CPU {_n(f['create_service_cpu_s'], 1)} s)"
                    if f.get("create_service_cpu_s") is not None
                    else ")"
                ),
                "< 10 s for 100k",
                _yes(f["create_all_s"] < 10)
                if full
                else "(scaled: " + _yes(f["create_all_s"] < 10 * n / 100_000) + ")",
                load,
            ]
        )
        out.append(
            [
                bench,
                backend,
                work,
                "RSS: `nightshift up` main (+ its processes: RSS, PSS) / bench process",
                f"{_n(f.get('service_rss_mb'))} ({_n(f.get('service_tree_rss_mb'))}, "
                f"{_n(f.get('service_tree_pss_mb'))}) / {_n(f.get('bench_rss_mb'))} MB",
                "< 300 MB",
                _yes((f.get("service_rss_mb") or 1e9) < 300),
                load,
            ]
        )
        out.append(
            [
                bench,
                backend,
                work,
                "store.next_fire_due (baseline: 10 schedules)",
                f"{_n(f['next_fire_due_ms'], 2)} ms ({_n(f['baseline_next_fire_due_ms'], 2)} ms)",
                "independent of idle count",
                _yes(f["next_fire_due_ms"] <= 2 * f["baseline_next_fire_due_ms"] + 0.5),
                load,
            ]
        )
        out.append(
            [
                bench,
                backend,
                work,
                "Scheduler.tick idle / with 10 due (baseline)",
                f"{_n(f['idle_tick_ms'], 2)} / {_n(f['due_tick_ms'], 2)} ms "
                f"({_n(f['baseline_idle_tick_ms'], 2)} / {_n(f['baseline_due_tick_ms'], 2)} ms)",
                "independent of idle count",
                _yes(
                    f["idle_tick_ms"] <= 2 * f["baseline_idle_tick_ms"] + 0.5
                    and f["due_tick_ms"] <= 2 * f["baseline_due_tick_ms"] + 0.5
                ),
                load,
            ]
        )
    elif bench == "scale-runs":
        work = f"{f['runs']:,} runs"
        reads = [f["list_ms"], f["list_failed_ms"], f["list_job_ms"], f["list_deep_page_ms"]]
        cases = "plain / failed / one job / deep page"
        if "list_running_ms" in f:  # recorded since session 19
            reads.insert(2, f["list_running_ms"])
            cases = "plain / failed / running / one job / deep page"
        out.append(
            [
                bench,
                backend,
                work,
                f"list_runs(limit=50): {cases}",
                " / ".join(_n(v, 2) for v in reads) + " ms (median)",
                "< 20 ms",
                _yes(max(reads) < 20),
                load,
            ]
        )
        out.append(
            [
                bench,
                backend,
                work,
                "get_run(random id) / count_runs()",
                f"{_n(f['get_run_ms'], 2)} / {_n(f['count_runs_ms'], 2)} ms",
                "< 20 ms",
                _yes(f["get_run_ms"] < 20),
                load,
            ]
        )
        if "metrics_ms" in f:  # recorded since session 19
            out.append(
                [
                    bench,
                    backend,
                    work,
                    "metrics_snapshot() (a scrape of /metrics) / recover_expired() (every "
                    "worker, every lease_s / 3)",
                    f"{_n(f['metrics_ms'], 2)} / {_n(f['recover_ms'], 2)} ms (median)",
                    "-",
                    "-",
                    load,
                ]
            )
        out.append(
            [
                bench,
                backend,
                work,
                "per-minute aggregate over a day straight from runs, no roll-up (bench SQL; "
                "the statistics target is the `stats` rows)",
                f"{_n(f['stats_minute_day_ms'], 1)} ms ({f['buckets']} buckets)",
                "-",
                "-",
                load,
            ]
        )
    elif bench == "stats":
        work = f"{f['runs']:,} runs, rolled up"
        cases = [
            ("hour_buckets_24h", "hourly, 24 h"),
            ("minute_buckets_1h", "per minute, 1 h"),
            ("day_buckets_30d", "daily, 30 days"),
            ("hour_buckets_24h_one_app", "hourly, 24 h, one app"),
        ]
        medians = [f[key]["median_ms"] for key, _ in cases]
        p95s = [f[key]["p95_ms"] for key, _ in cases]
        out.append(
            [
                bench,
                backend,
                work,
                "StatsService.stats (GET /api/v1/stats): "
                + " / ".join(label for _, label in cases)
                + ", median (p95)",
                " / ".join(f"{_n(m, 1)} ({_n(p, 1)})" for m, p in zip(medians, p95s, strict=True))
                + " ms",
                "< 200 ms",
                _yes(max(p95s) < 200),
                load,
            ]
        )
        out.append(
            [
                bench,
                backend,
                work,
                "roll-up of the day (the system job's work, once) / nothing rolled up",
                f"{_n(f['rollup_s'], 1)} s / {_n(f['live_hour_day_ms'], 0)} ms",
                "-",
                "-",
                load,
            ]
        )
    elif bench == "http":
        work = f"{f['n']:,} http jobs, server answers after 1 s"
        out.append(
            [
                bench,
                backend,
                work,
                f"total vs ideal (concurrency {f['concurrency']})",
                f"{_n(f['total_s'], 2)} s vs {_n(f['ideal_s'], 1)} s (x{f['total_over_ideal']}; "
                f"max in flight {f['max_inflight']})",
                "≈ ideal",
                _yes(f["total_over_ideal"] <= 1.3),
                load,
            ]
        )
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| benchmark | backend | workload | figure | result | target | met | load 1m |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for cells in rows_for(row):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def append(lines: list[str]) -> None:
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text(
            "# Benchmark results\n\nAppended by `make bench`, `make bench-quick` "
            "and `make bench-peers`; newest last.\n\n"
        )
    with RESULTS_MD.open("a") as fh:
        fh.write("\n".join(lines).rstrip() + "\n\n")
