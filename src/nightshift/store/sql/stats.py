"""Statistics, history pruning and metrics: the reads behind nightshift.stats and
nightshift.metrics, and the few writes of the system jobs. The sums are grouped in SQL, so a
million runs never cross to Python; merging them into buckets is nightshift.stats' job."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Integer,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    type_coerce,
    update,
)

from nightshift.domain.histogram import BIN_BASE, LOG_RATIO
from nightshift.domain.status import EXECUTED, TERMINAL
from nightshift.store.base import MetricsSnapshot, StatsRow
from nightshift.store.sql.engine import Transactions, insert_or_ignore
from nightshift.store.tables import (
    UtcDateTime,
    meta,
    run_is_open,
    run_logs,
    run_stats,
    run_stats_hist,
    run_stats_hist_hourly,
    run_stats_hourly,
    runs,
)

STATS_WATERMARK = "stats_rolled_until"  # ns_meta: epoch microseconds, a whole UTC minute
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NONE = -1  # the watermark before the first roll-up
#: The runs not yet final by app and status (from runs_open alone: it holds both columns), and
#: the pending ones that are due by app. Both say runs_open's predicate, so that they read that
#: index whatever the number of finished runs: SQLite's planner does not infer it from `status
#: = 'pending'`, and scanned every run in runs_app's order instead (to group without sorting):
#: 234 ms a scrape at 1,000,000 runs, the two counts now ~0.3 ms each (bench_scale.py).
OPEN_COUNTS = (
    select(runs.c.app, runs.c.status, func.count())
    .where(run_is_open)
    .group_by(runs.c.app, runs.c.status)
)
DUE_COUNTS = (
    select(runs.c.app, func.count())
    .where(run_is_open, runs.c.status == "pending")
    .where(runs.c.run_at <= bindparam("now", type_=runs.c.run_at.type))
    .group_by(runs.c.app)
)
_FIGURES = (
    "created",
    "started",
    "wait_sum",
    "succeeded",
    "failed",
    "executions",
    "run_seconds",
)
_HOUR = 3600
# (figures table, histogram table, time column) per roll-up level
_MINUTES = (run_stats, run_stats_hist, "minute")
_HOURS = (run_stats_hourly, run_stats_hist_hourly, "hour")


def _us(when: datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _bucket(conn: Connection, column, size_s: int) -> ColumnElement[datetime]:  # type: ignore[no-untyped-def]
    """The UTC-aligned start of `size_s` buckets (a divisor of a day): the one statement that
    differs per dialect, since SQLite keeps integer microseconds and PostgreSQL timestamptz."""
    if conn.dialect.name == "postgresql":
        epoch = func.floor(func.extract("epoch", column) / size_s) * size_s
        return type_coerce(func.to_timestamp(epoch), UtcDateTime())
    raw = type_coerce(column, BigInteger())
    return type_coerce(raw - raw % (size_s * 1_000_000), UtcDateTime())


def _is_sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def _seconds(conn: Connection, later, earlier) -> ColumnElement[float]:  # type: ignore[no-untyped-def]
    """`later - earlier` in seconds, at least 0: the double Python's `timedelta.total_seconds()`
    gives (whole microseconds over 10**6, correctly rounded), so bins match the histogram's."""
    if _is_sqlite(conn):
        micros = type_coerce(later, BigInteger()) - type_coerce(earlier, BigInteger())
        return func.max(cast(micros, Float) / 1_000_000.0, 0.0)
    return func.greatest(cast(func.extract("epoch", later - earlier), Float), 0.0)


def _duration_bin(seconds: ColumnElement[float]) -> ColumnElement[Any]:
    """nightshift.domain.histogram.duration_bin in SQL (NULL for NULL): the same constants and
    the same steps (C `log`, a division, truncation of a positive value)."""
    steps = func.ln(seconds / BIN_BASE) / LOG_RATIO
    return case(
        (seconds.is_(None), null()),
        (seconds <= BIN_BASE, 0),
        else_=1 + cast(func.floor(steps), Integer),
    )


def _floor(when: datetime, size_s: int) -> datetime:
    return _EPOCH + timedelta(seconds=int((when - _EPOCH).total_seconds() // size_s) * size_s)


def _ceil(when: datetime, size_s: int) -> datetime:
    floored = _floor(when, size_s)
    return floored if floored == when else floored + timedelta(seconds=size_s)


def _app_filter(column, app: str | None, exclude_app: str | None, *, no_index: bool = False):  # type: ignore[no-untyped-def]
    if app is not None:
        # no_index: `app || ''` cannot use an index on app, so SQLite keeps to the time index
        # of the range (it would otherwise scan the app's whole history through runs_app).
        return (column.op("||")(literal("")) if no_index else column) == app
    if exclude_app is not None:
        return column != exclude_app
    return true()


class _Overtaken(Exception):
    """Another roll-up moved the watermark first."""


class StatsStore:
    _tx: Transactions

    # -- statistics ---------------------------------------------------------------------------
    def stats_watermark(self) -> datetime | None:
        with self._tx.read() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == STATS_WATERMARK)).scalar()
        if value is None or value == _NONE:
            return None
        return _EPOCH + timedelta(microseconds=int(value))

    def first_run_at(self) -> datetime | None:
        with self._tx.read() as conn:
            return conn.execute(select(func.min(runs.c.created_at))).scalar()

    def run_figures(
        self,
        size_s: int,
        since: datetime,
        until: datetime,
        *,
        app: str | None = None,
        exclude_app: str | None = None,
    ) -> tuple[list[StatsRow], list[tuple[str, datetime, int, int]]]:
        # One grouped range scan per event column, each on its index: the database sums, and
        # only one row per (app, bucket[, bin]) crosses to Python.
        rows: dict[tuple[str, datetime], StatsRow] = {}
        bins: list[tuple[str, datetime, int, int]] = []

        def row(name: str, at: datetime) -> StatsRow:
            found = rows.get((name, at))
            if found is None:
                found = rows[(name, at)] = StatsRow(at, name)
            return found

        with self._tx.read() as conn:
            # On SQLite `app || ''` keeps the planner on the time index of the range.
            scope = _app_filter(runs.c.app, app, exclude_app, no_index=_is_sqlite(conn))

            def grouped(column, *figures, where=(), by=()):  # type: ignore[no-untyped-def]
                at = _bucket(conn, column, size_s).label("bucket")
                query = select(runs.c.app, at, *by, *figures).where(
                    column >= since, column < until, scope, *where
                )
                return conn.execute(query.group_by(runs.c.app, at, *by))

            for name, at, n in grouped(runs.c.created_at, func.count()):
                row(name, at).created += n

            wait = _seconds(conn, runs.c.started_at, runs.c.created_at)
            figures = (func.count(), func.sum(wait), func.min(wait), func.max(wait))
            for name, at, n, total, shortest, longest in grouped(runs.c.started_at, *figures):
                r = row(name, at)
                r.started += n
                r.wait_sum += total
                r.wait_min, r.wait_max = shortest, longest

            took = _seconds(conn, runs.c.finished_at, runs.c.started_at)
            index = _duration_bin(took).label("bin")  # NULL for a run that never started
            figures = (
                func.count(),
                func.sum(case((runs.c.status == "succeeded", 1), else_=0)),
                func.sum(case((runs.c.status == "failed", 1), else_=0)),
                func.sum(took),
                func.max(took),
            )
            executed = (runs.c.status.in_(list(EXECUTED)),)
            for name, at, k, n, ok, bad, total, longest in grouped(
                runs.c.finished_at, *figures, where=executed, by=(index,)
            ):
                r = row(name, at)
                r.succeeded += ok
                r.failed += bad
                if k is not None:
                    r.executions += n
                    r.run_seconds += total
                    if r.duration_max is None or longest > r.duration_max:
                        r.duration_max = longest
                    bins.append((name, at, int(k), n))
        return list(rows.values()), bins

    def rolled_stats(
        self,
        size_s: int,
        since: datetime,
        until: datetime,
        *,
        app: str | None = None,
        exclude_app: str | None = None,
    ) -> tuple[list[StatsRow], list[tuple[datetime, int, int]]]:
        # Whole hours from the hourly level when buckets are hours or days; minute rows for the
        # rest (per-minute buckets, and the rolled-up minutes of the last, unfinished hour).
        spans = [(_MINUTES, since, until)]
        if size_s % _HOUR == 0:
            lo, hi = _ceil(since, _HOUR), _floor(until, _HOUR)
            if lo < hi:
                spans = [(_MINUTES, since, lo), (_HOURS, lo, hi), (_MINUTES, hi, until)]
        rows: list[StatsRow] = []
        bins: list[tuple[datetime, int, int]] = []
        with self._tx.read() as conn:
            for level, frm, to in spans:
                if frm < to:
                    self._rolled(conn, level, size_s, frm, to, app, exclude_app, rows, bins)
        return rows, bins

    @staticmethod
    def _rolled(  # type: ignore[no-untyped-def]
        conn: Connection,
        level,
        size_s: int,
        since: datetime,
        until: datetime,
        app: str | None,
        exclude_app: str | None,
        rows: list[StatsRow],
        bins: list[tuple[datetime, int, int]],
    ) -> None:
        table, hist_table, at = level
        column = table.c[at]
        bucket = _bucket(conn, column, size_s).label("bucket")
        sums = [func.sum(getattr(table.c, name)) for name in _FIGURES]
        query = (
            select(
                bucket,
                table.c.app,
                *sums,
                func.min(table.c.wait_min),
                func.max(table.c.wait_max),
                func.max(table.c.duration_max),
            )
            .where(column >= since, column < until, _app_filter(table.c.app, app, exclude_app))
            .group_by(bucket, table.c.app)
        )
        rows.extend(StatsRow(*row) for row in conn.execute(query))
        hcolumn = hist_table.c[at]
        hbucket = _bucket(conn, hcolumn, size_s).label("bucket")
        hist = select(hbucket, hist_table.c.bin, func.sum(hist_table.c.count)).where(
            hcolumn >= since,
            hcolumn < until,
            _app_filter(hist_table.c.app, app, exclude_app),
        )
        bins.extend(
            (b, int(k), int(n))
            for b, k, n in conn.execute(hist.group_by(hbucket, hist_table.c.bin))
        )

    def save_rollup(
        self,
        previous: datetime | None,
        until: datetime,
        rows: Sequence[StatsRow],
        bins: Sequence[tuple[str, datetime, int, int]],
    ) -> bool:
        try:
            with self._tx.write() as conn:
                self._save_rollup(conn, previous, until, rows, bins)
        except _Overtaken:
            return False
        return True

    @staticmethod
    def _save_rollup(
        conn: Connection,
        previous: datetime | None,
        until: datetime,
        rows: Sequence[StatsRow],
        bins: Sequence[tuple[str, datetime, int, int]],
    ) -> None:
        # Compare-and-set from the previous watermark, or from NONE before the first roll-up.
        conn.execute(insert_or_ignore(conn, meta).values(key=STATS_WATERMARK, value=_NONE))
        moved = conn.execute(
            update(meta)
            .where(
                meta.c.key == STATS_WATERMARK,
                meta.c.value == (_NONE if previous is None else _us(previous)),
            )
            .values(value=_us(until))
        ).rowcount
        if moved != 1:  # another roll-up got there first: this one changes nothing
            raise _Overtaken
        if rows:
            conn.execute(
                insert(run_stats),
                [
                    {
                        "app": r.app,
                        "minute": r.start,
                        **{name: getattr(r, name) for name in _FIGURES},
                        "wait_min": r.wait_min,
                        "wait_max": r.wait_max,
                        "duration_max": r.duration_max,
                    }
                    for r in rows
                ],
            )
        if bins:
            conn.execute(
                insert(run_stats_hist),
                [{"app": a, "minute": m, "bin": k, "count": n} for a, m, k, n in bins],
            )
        # The hours this roll-up closes, summed from their minute rows (earlier roll-ups' too).
        hi = _floor(until, _HOUR)
        lo = None if previous is None else _floor(previous, _HOUR)
        if lo is None or lo < hi:
            StatsStore._roll_hours(conn, lo, hi)

    @staticmethod
    def _roll_hours(conn: Connection, lo: datetime | None, hi: datetime) -> None:
        def span(column):  # type: ignore[no-untyped-def]
            return (column < hi,) if lo is None else (column >= lo, column < hi)

        hour = _bucket(conn, run_stats.c.minute, _HOUR).label("hour")
        figures = select(
            run_stats.c.app,
            hour,
            *[func.sum(getattr(run_stats.c, name)) for name in _FIGURES],
            func.min(run_stats.c.wait_min),
            func.max(run_stats.c.wait_max),
            func.max(run_stats.c.duration_max),
        ).where(*span(run_stats.c.minute))
        conn.execute(
            insert(run_stats_hourly).from_select(
                ["app", "hour", *_FIGURES, "wait_min", "wait_max", "duration_max"],
                figures.group_by(run_stats.c.app, hour),
            )
        )
        hhour = _bucket(conn, run_stats_hist.c.minute, _HOUR).label("hour")
        counts = select(
            run_stats_hist.c.app, hhour, run_stats_hist.c.bin, func.sum(run_stats_hist.c.count)
        ).where(*span(run_stats_hist.c.minute))
        conn.execute(
            insert(run_stats_hist_hourly).from_select(
                ["app", "hour", "bin", "count"],
                counts.group_by(run_stats_hist.c.app, hhour, run_stats_hist.c.bin),
            )
        )

    # -- history pruning ----------------------------------------------------------------------
    def prune_runs(self, app: str, before: datetime, limit: int) -> int:
        old = or_(
            runs.c.finished_at < before,
            and_(runs.c.finished_at.is_(None), runs.c.created_at < before),
        )
        with self._tx.write() as conn:
            ids = list(
                conn.execute(
                    select(runs.c.id)
                    .where(runs.c.app == app, runs.c.status.in_(list(TERMINAL)), old)
                    .limit(limit)
                ).scalars()
            )
            if ids:
                conn.execute(delete(run_logs).where(run_logs.c.run_id.in_(ids)))
                conn.execute(delete(runs).where(runs.c.id.in_(ids)))
        return len(ids)

    # -- metrics ------------------------------------------------------------------------------
    def metrics_snapshot(self, now: datetime, window_s: float, limit: int) -> MetricsSnapshot:
        since = now - timedelta(seconds=window_s)
        with self._tx.read() as conn:
            open_counts = conn.execute(OPEN_COUNTS).all()
            due = conn.execute(DUE_COUNTS, {"now": now}).all()
            finished = conn.execute(
                select(runs.c.app, runs.c.status, func.count())
                .where(runs.c.finished_at >= since, runs.c.status.in_(list(TERMINAL)))
                .group_by(runs.c.app, runs.c.status)
            ).all()
            started = conn.execute(
                select(runs.c.created_at, runs.c.started_at, runs.c.scheduled_for)
                .where(runs.c.started_at >= since)
                .order_by(runs.c.started_at.desc())
                .limit(limit)
            ).all()
        return MetricsSnapshot(
            open_runs=[(a, s, int(n)) for a, s, n in open_counts],
            due=[(a, int(n)) for a, n in due],
            finished=[(a, s, int(n)) for a, s, n in finished],
            waits=[(s - c).total_seconds() for c, s, _ in started],
            lateness=[(s - f).total_seconds() for _, s, f in started if f is not None],
        )
