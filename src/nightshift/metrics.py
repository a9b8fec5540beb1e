"""Prometheus metrics, collected when scraped: nothing in the engine observes or branches.

Database-wide families come from one bounded read per scrape (`Store.metrics_snapshot`): counts by
indexed statuses, and the waiting times and lateness of the runs started in the last
`metrics_window_s` (at most `metrics_sample_limit` of them), exposed as gauge histograms — they
describe that window, they are not ever-growing counters. Worker utilisation is per process: the
runs this process's worker executes against its slots (nothing in a process without the worker
role). `GET /metrics` needs the admin token (`Authorization: Bearer ...` in the scrape config).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.models import JobKind
from nightshift.store.base import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WAIT_BOUNDS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_PROCESS_KINDS = frozenset({JobKind.PYTHON})  # as the worker: kinds that take a process slot


class Inflight(Protocol):
    @property
    def inflight(self) -> dict[int, Any]: ...

    @property
    def withdrawn_total(self) -> int: ...

    @property
    def processes_up(self) -> int: ...


def _histogram(name: str, doc: str, values: Sequence[float]) -> GaugeHistogramMetricFamily:
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in WAIT_BOUNDS]
    buckets.append(("+Inf", float(len(values))))
    return GaugeHistogramMetricFamily(name, doc, buckets=buckets, gsum_value=float(sum(values)))


class StoreCollector(Collector):
    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        window = self.settings.metrics_window_s
        snap = self.store.metrics_snapshot(
            self.clock.now(), window, self.settings.metrics_sample_limit
        )
        runs = GaugeMetricFamily(
            "nightshift_runs",
            "Runs not yet final (pending, running, stopping, stopped), by app and status",
            labels=["app", "status"],
        )
        for app, status, n in snap.open_runs:
            runs.add_metric([app, status], n)
        yield runs
        finished = GaugeMetricFamily(
            "nightshift_runs_finished_recent",
            f"Runs that became final in the last {window:g} s, by app and status",
            labels=["app", "status"],
        )
        for app, status, n in snap.finished:
            finished.add_metric([app, status], n)
        yield finished
        depth = GaugeMetricFamily(
            "nightshift_queue_depth", "Pending runs that are due now, by app", labels=["app"]
        )
        for app, n in snap.due:
            depth.add_metric([app], n)
        yield depth
        yield _histogram(
            "nightshift_run_waiting_seconds",
            f"Created -> started, of runs started in the last {window:g} s",
            snap.waits,
        )
        yield _histogram(
            "nightshift_run_lateness_seconds",
            f"Scheduled fire time -> started, of scheduled runs started in the last {window:g} s",
            snap.lateness,
        )


class WorkerCollector(Collector):
    """This process's worker: busy slots against its slots, per pool; its python processes
    that are up; runs it gave back."""

    def __init__(self, worker: Inflight, settings: Settings) -> None:
        self.worker = worker
        self.slots = {"process": settings.worker_processes, "loop": settings.worker_concurrency}

    def collect(self) -> Iterator[Metric]:
        busy = {"process": 0, "loop": 0}
        for chan in self.worker.inflight.values():
            # Runs held for a process or for their time (claimed ahead) do not occupy a slot.
            if chan.started_at is not None:
                busy["process" if chan.job.kind in _PROCESS_KINDS else "loop"] += 1
        families = {
            "busy": GaugeMetricFamily(
                "nightshift_worker_busy_slots", "Runs executing in this process", labels=["pool"]
            ),
            "slots": GaugeMetricFamily(
                "nightshift_worker_slots", "Slots of this process's worker", labels=["pool"]
            ),
            "util": GaugeMetricFamily(
                "nightshift_worker_utilisation", "Busy slots / slots, 0..1", labels=["pool"]
            ),
        }
        for pool, slots in self.slots.items():
            families["busy"].add_metric([pool], busy[pool])
            families["slots"].add_metric([pool], slots)
            families["util"].add_metric([pool], busy[pool] / slots)
        yield from families.values()
        yield GaugeMetricFamily(
            "nightshift_worker_processes_up",
            "Python worker processes of this process's worker ready for runs (0 while they "
            "start: its python runs wait, pending, for any worker)",
            value=self.worker.processes_up,
        )
        yield CounterMetricFamily(
            "nightshift_worker_runs_withdrawn",
            "Runs held for their time that had not begun fire_ahead_s after it: back to pending",
            value=self.worker.withdrawn_total,
        )


class Metrics:
    """The service's metrics registry; `render()` is the /metrics body."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def build_metrics(
    store: Store, clock: Clock, settings: Settings, workers: Iterable[Inflight] = ()
) -> Metrics:
    """Store-wide families, plus one worker collector per local worker (none without the role)."""
    return Metrics(
        [StoreCollector(store, clock, settings), *(WorkerCollector(w, settings) for w in workers)]
    )
