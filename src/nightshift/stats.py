"""Statistics (seed 002) and usage per app (seed 003): the use cases over the store's sums.

Each figure falls in the bucket of its own event, in UTC: a run counts as *created* in the bucket
of its created_at; its *waiting* time (created -> started) in the bucket where it started; it
counts as *succeeded* / *failed* where it finished; an *execution* (a run that started and ended
succeeded, failed or stopped) gives its *duration* (started -> finished) and run-seconds where it
finished.

Whole minutes older than the roll-up watermark are read from `run_stats` (summed per bucket in
SQL); newer ones are summed live from the runs' timestamps by `Store.run_figures`, per bucket in
SQL too. The roll-up stores what `run_figures` gives per minute, so it holds exactly what live
aggregation gives. The roll-up also writes, for each hour it closes, that hour's sums of its
minute rows (`run_stats_hourly`, `run_stats_hist_hourly`): hour and day buckets read whole hours
from there and only the last, unfinished hour from minute rows, so a day costs 24 rows per app
instead of 1,440 (and ~500 histogram rows instead of ~30,000).

The p95 of durations comes from a histogram of fixed log-spaced bins (ratio 2**0.25 from 1 ms,
nightshift.domain.histogram): the reported value is the geometric middle of the bin holding the
nearest-rank p95, capped at the bucket's longest duration, so it is within 9 % of the exact
figure (or 1 ms below one millisecond).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.histogram import bin_value
from nightshift.errors import InvalidInput
from nightshift.store.base import StatsRow, Store

BUCKETS = {"minute": 60, "hour": 3600, "day": 86_400}
DEFAULT_SPAN = {"minute": timedelta(hours=1), "hour": timedelta(days=1), "day": timedelta(days=30)}
MAX_BUCKETS = 1500
SYSTEM_APP = "system"  # the app of Nightshift's own jobs (nightshift.system_jobs)
RESERVED_APP = "app 'system' is reserved for Nightshift's own jobs"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_time(when: datetime, size_s: int) -> datetime:
    seconds = int((when - _EPOCH).total_seconds() // size_s) * size_s
    return _EPOCH + timedelta(seconds=seconds)


def ceil_minute(when: datetime) -> datetime:
    floored = floor_time(when, 60)
    return floored if floored == when else floored + timedelta(minutes=1)


@dataclass(slots=True)
class Figures:
    """Mergeable sums of one span: one app-minute, one bucket, or one app's usage."""

    row: StatsRow
    bins: Counter[int] = field(default_factory=Counter)

    def merge(self, other: StatsRow) -> None:
        r = self.row
        r.created += other.created
        r.started += other.started
        r.wait_sum += other.wait_sum
        r.succeeded += other.succeeded
        r.failed += other.failed
        r.executions += other.executions
        r.run_seconds += other.run_seconds
        r.wait_min = _pick(min, r.wait_min, other.wait_min)
        r.wait_max = _pick(max, r.wait_max, other.wait_max)
        r.duration_max = _pick(max, r.duration_max, other.duration_max)


def _pick(fn: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


def p95(bins: Counter[int], longest: float | None) -> float | None:
    total = sum(bins.values())
    if not total:
        return None
    rank = math.ceil(0.95 * total)
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            value = bin_value(index)
            return min(value, longest) if longest is not None else value
    return None  # not reached


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class StatsService:
    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings

    # -- the query ----------------------------------------------------------------------------
    def stats(
        self,
        bucket: str = "hour",
        since: datetime | None = None,
        until: datetime | None = None,
        app: str | None = None,
    ) -> dict[str, Any]:
        """Buckets of [since, until) and usage per app. `app` None: every app but the system's.
        Buckets are UTC-aligned: `since` goes down to its bucket's start, `until` up to a minute."""
        size = BUCKETS.get(bucket)
        if size is None:
            raise InvalidInput(f"one of {', '.join(BUCKETS)}", field="bucket")
        end = ceil_minute(until or self.clock.now())
        start = floor_time(since or end - DEFAULT_SPAN[bucket], size)
        if start >= end:
            raise InvalidInput("must be before until", field="since")
        if (end - start).total_seconds() / size > MAX_BUCKETS:
            raise InvalidInput(
                f"at most {MAX_BUCKETS} buckets per request; use a larger bucket", field="since"
            )
        scope = {"app": app, "exclude_app": None if app is not None else SYSTEM_APP}
        buckets: dict[datetime, Figures] = {}
        usage: dict[str, Figures] = {}

        def add(at: datetime, row: StatsRow) -> None:
            key = floor_time(at, size)
            buckets.setdefault(key, Figures(StatsRow(key, ""))).merge(row)
            usage.setdefault(row.app, Figures(StatsRow(start, row.app))).merge(row)

        mark = self.store.stats_watermark()
        live_from = start
        if mark is not None and mark > start:
            live_from = min(mark, end)
            rows, hist = self.store.rolled_stats(size, start, live_from, **scope)
            for row in rows:
                add(row.start, row)
            for at, index, count in hist:
                buckets.setdefault(at, Figures(StatsRow(at, ""))).bins[index] += count
        if live_from < end:
            rows, live_bins = self.store.run_figures(size, live_from, end, **scope)
            for row in rows:
                add(row.start, row)
            for _app, at, index, count in live_bins:
                buckets.setdefault(at, Figures(StatsRow(at, ""))).bins[index] += count

        out = []
        at = start
        while at < end:
            f = buckets.get(at) or Figures(StatsRow(at, ""))
            r = f.row
            out.append(
                {
                    "start": at,
                    "created": r.created,
                    "waiting_s": {
                        "avg": _r(r.wait_sum / r.started) if r.started else None,
                        "min": _r(r.wait_min),
                        "max": _r(r.wait_max),
                    },
                    "succeeded": r.succeeded,
                    "failed": r.failed,
                    "duration_s": {
                        "avg": _r(r.run_seconds / r.executions) if r.executions else None,
                        "p95": _r(p95(f.bins, r.duration_max)),
                    },
                }
            )
            at += timedelta(seconds=size)
        apps = [
            {"app": name, "executions": f.row.executions, "run_seconds": _r(f.row.run_seconds)}
            for name, f in sorted(usage.items())
        ]
        return {
            "bucket": bucket,
            "since": start,
            "until": end,
            "rolled_up_until": mark,
            "buckets": out,
            "apps": apps,
        }

    # -- the roll-up (a system job) -----------------------------------------------------------
    def roll_up(self) -> dict[str, Any]:
        """Roll closed minutes up: from the watermark (or the first run) to `stats_lag_s` ago, in
        batches of at most `stats_rollup_batch_minutes`, until caught up or past
        `stats_rollup_budget_s` (one batch at least). Safe to run concurrently (compare-and-set)."""
        started = self.clock.monotonic()
        done: dict[str, Any] = {"rolled_minutes": 0, "batches": 0, "rows": 0}
        while step := self._roll_up_batch():
            done["rolled_minutes"] += step["rolled_minutes"]
            done["batches"] += 1
            done["rows"] += step["rows"]
            done["until"] = step["until"]
            if self.clock.monotonic() - started >= self.settings.stats_rollup_budget_s:
                break
        return done

    def _roll_up_batch(self) -> dict[str, Any] | None:
        """One batch, in one transaction; None when nothing is closed or another roll-up moved
        the watermark first."""
        previous = self.store.stats_watermark()
        frm = previous
        if frm is None:
            first = self.store.first_run_at()
            if first is None:
                return None
            frm = floor_time(first, 60)
        closed = floor_time(self.clock.now() - timedelta(seconds=self.settings.stats_lag_s), 60)
        to = min(closed, frm + timedelta(minutes=self.settings.stats_rollup_batch_minutes))
        if to <= frm:
            return None
        rows, bins = self.store.run_figures(60, frm, to)
        if not self.store.save_rollup(previous, to, rows, bins):
            return None
        minutes = int((to - frm).total_seconds() // 60)
        return {"rolled_minutes": minutes, "until": to.isoformat(), "rows": len(rows)}
