"""Table definitions, shared by the store's statements and the Alembic migrations."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    or_,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TIMESTAMP, TypeDecorator

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python; `timestamptz` on PostgreSQL, integer microseconds on SQLite.

    SQLite has no time type: integers keep ordering and index range scans exact and cheap,
    where text would depend on one formatting convention everywhere.
    """

    impl = BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect):  # type: ignore[no-untyped-def]
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(BigInteger())

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        if dialect.name == "postgresql":
            return value
        return (value - _EPOCH) // _MICROSECOND  # exact integer microseconds (C arithmetic)

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if dialect.name == "postgresql":
            return value.astimezone(UTC)
        return _EPOCH + timedelta(microseconds=value)


# PostgreSQL stores no NUL character in text or JSON and rejects the whole statement, and with
# it every other outcome of the batch. Text that jobs produce (log lines, errors, results)
# keeps everything else: NUL becomes U+FFFD, the replacement character, on PostgreSQL only.
_REPLACEMENT = "\ufffd"
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # \u0000 not itself escaped


def json_for_postgresql(value: Any) -> str:
    """The engine's JSON serialiser on PostgreSQL: `json.dumps`, NUL as U+FFFD."""
    text = json.dumps(value)
    if "\\u0000" in text:  # one scan in C; the expression only where there is one
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    return text


class _Storable(TypeDecorator[str]):
    """Text bound with NUL as U+FFFD on PostgreSQL (see above), as it is on SQLite elsewhere."""

    impl = Text
    cache_ok = True

    def bind_processor(self, dialect):  # type: ignore[no-untyped-def]
        if dialect.name != "postgresql":  # nothing to do: no call per value on the hot paths
            return self.impl_instance.bind_processor(dialect)
        return super().bind_processor(dialect)

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and dialect.name == "postgresql" and "\x00" in value:
            return value.replace("\x00", _REPLACEMENT)
        return value


class StoredText(_Storable):
    """Text that jobs produce (log lines, reasons, errors), storable on every database."""

    impl = Text
    cache_ok = True


class StoredString(_Storable):
    """A name, a key or a status, storable and comparable on every database: a lookup by a
    value holding NUL (a query parameter, a path) finds nothing on PostgreSQL, as on SQLite,
    instead of failing the statement."""

    impl = String
    cache_ok = True


Json = JSON().with_variant(JSONB(), "postgresql")
Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite's rowid alias must be INTEGER

metadata = MetaData()

meta = Table(
    "ns_meta",
    metadata,
    Column("key", StoredString(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

apps = Table(
    "apps",
    metadata,
    Column("name", StoredString(100), primary_key=True),
    Column("schedules_enabled", Boolean, nullable=False, server_default=text("true")),
    Column("retention_days", Integer),
    Column("created_at", UtcDateTime, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("app", StoredString(100), ForeignKey("apps.name", ondelete="CASCADE"), nullable=False),
    Column("name", StoredString(200), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("tags", Json, nullable=False),
    Column("kind", StoredString(20), nullable=False),
    Column("config", Json, nullable=False),
    Column("schedule", StoredString(200)),
    Column("timezone", StoredString(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("overlap", StoredString(10), nullable=False),
    Column("catch_up", StoredString(10), nullable=False),
    Column("max_lateness_s", Float),
    Column("retries", Json, nullable=False),
    Column("timeout_s", Float),
    Column("low_priority", Boolean, nullable=False),
    Column("start_at", UtcDateTime),
    Column("end_at", UtcDateTime),
    Column("start_delay_s", Float, nullable=False),
    Column("jitter_s", Float, nullable=False),
    Column("next_fire_at", UtcDateTime),
    Column("deactivated_reason", StoredText),
    Column("hold", StoredString(10)),
    Column("declared", Boolean, nullable=False),
    Column("system", Boolean, nullable=False),
    Column("anchor_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # The run holding the job's exclusive slot (overlap queue / replace): a compare-and-set target.
    Column("active_run_id", BigInteger),
    UniqueConstraint("app", "name", name="jobs_app_name_key"),
)
# The predicate must be written as the queries' WHERE is rendered, or SQLite's planner cannot
# use the partial index: SQLite renders `jobs.c.enabled` as `enabled = 1` (migration 0005).
Index(
    "jobs_due",
    jobs.c.next_fire_at,
    postgresql_where=jobs.c.enabled,
    sqlite_where=jobs.c.enabled == true(),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("app", StoredString(100), nullable=False),
    Column("kind", StoredString(20), nullable=False),
    Column("status", StoredString(10), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("run_at", UtcDateTime, nullable=False),
    Column("scheduled_for", UtcDateTime),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("attempt", Integer, nullable=False),
    Column("retry_of", BigInteger),
    Column("error", Json),
    Column("low_priority", Boolean, nullable=False),
    Column("run_by", StoredString(200)),
    Column("progress", Float),
    Column("parent_id", BigInteger),
    Column("root_id", BigInteger),
    # Fair share between roots: a child's rank is its position among its root's descendants;
    # claims take lower ranks first, so a root with 10,000 children cannot starve a new root.
    Column("rank", BigInteger, nullable=False),
    Column("descendants", BigInteger, nullable=False, server_default=text("0")),
    Column("params", Json, nullable=False),
    Column("result", Json),
    Column("state", Json),
    Column("reason", StoredText),
    Column("skip_count", Integer, nullable=False, server_default=text("0")),
    Column("last_scheduled_for", UtcDateTime),
    Column("exclusive", Boolean, nullable=False),
    Column("is_test", Boolean, nullable=False),
    Column("kill_requested", Boolean, nullable=False, server_default=text("false")),
    Column("lease_owner", StoredString(200)),
    Column("lease_expires_at", UtcDateTime),
    Column("lost_streak", Integer, nullable=False, server_default=text("0")),
    Column("children_total", Integer, nullable=False, server_default=text("0")),
    Column("children_finished", Integer, nullable=False, server_default=text("0")),
    Column("children_failed", Integer, nullable=False, server_default=text("0")),
    # One run per (job, fire time, attempt): two schedulers, or a scheduler restarted after a
    # crash, cannot fire one slot twice. Runs started by hand have no scheduled_for.
    UniqueConstraint("job_id", "scheduled_for", "attempt", name="runs_fire_key"),
)


def _one_of(column: Column[Any], *values: str) -> Any:
    """`column IN (...)` with the values written into the statement, not bound: SQLite's
    planner never matches bound values in a list to the constants of an index's predicate,
    PostgreSQL's not in a generic plan. Queries that should read a partial index say its
    predicate through the same expression."""
    return column.in_(bindparam(None, list(values), expanding=True, literal_execute=True))


_pending = runs.c.status == "pending"
#: Runs a worker executes, as runs_lease holds them: the lease queries say it in these words,
#: so that both planners see that they imply the index's predicate. Said with bound statuses,
#: SQLite's planner read every run instead: recovering expired leases, which every worker does
#: every `lease_s / 3`, took 83 ms at 1,000,000 runs (now under 1).
run_is_executing = _one_of(runs.c.status, "running", "stopping")
Index(
    "runs_claim",
    runs.c.low_priority,
    runs.c.rank,
    runs.c.run_at,
    runs.c.id,
    postgresql_where=_pending,
    sqlite_where=_pending,
)
Index(
    "runs_lease",
    runs.c.lease_expires_at,
    postgresql_where=run_is_executing,
    sqlite_where=run_is_executing,
)
Index("runs_job", runs.c.job_id, runs.c.id)
Index("runs_job_status", runs.c.job_id, runs.c.status)
Index("runs_app", runs.c.app, runs.c.id)
# Roots (most runs) have neither: partial, so their claims and completions write no entry
# here (migration 0006); `root_id = :id` implies the predicate.
_has_parent = runs.c.parent_id.is_not(None)
_has_root = runs.c.root_id.is_not(None)
Index("runs_parent", runs.c.parent_id, postgresql_where=_has_parent, sqlite_where=_has_parent)
Index("runs_root", runs.c.root_id, postgresql_where=_has_root, sqlite_where=_has_root)
Index("runs_created", runs.c.created_at)
# Statistics and pruning read runs by the time of each event (see nightshift.stats).
# Partial (migration 0007): a pending run writes no entry, a running one none in runs_finished;
# `started_at >= :since` implies the predicate on both databases.
_started = runs.c.started_at.is_not(None)
_finished = runs.c.finished_at.is_not(None)
Index("runs_started", runs.c.started_at, postgresql_where=_started, sqlite_where=_started)
Index("runs_finished", runs.c.finished_at, postgresql_where=_finished, sqlite_where=_finished)


#: Runs not yet final, as runs_open holds them: queries say it in these words, so that both
#: planners see that they imply the index's predicate. Two lists of two statuses, not one of
#: four: SQLite checks the predicate against a row's old and new version at each change of its
#: status (every claim and completion), and it evaluates a list of three or more constants
#: through a temporary table built each time (a claim+complete pair: 47.3 us, 43.7 with two
#: lists); a list of two it compares in place (migration 0008).
run_is_open = or_(
    _one_of(runs.c.status, "pending", "running"), _one_of(runs.c.status, "stopping", "stopped")
)
Index(
    "runs_open", runs.c.status, runs.c.app, postgresql_where=run_is_open, sqlite_where=run_is_open
)
#: Runs that ended failed, cancelled or skipped, as runs_unsuccessful holds them: the final
#: statuses most runs do not end in. A list of only these reads the index in id order; SQLite
#: walked every run from the newest back until it found enough (the cancelled runs, none among
#: 1,000,000: 66 ms; migration 0009). Successful runs write no entry.
run_is_unsuccessful = or_(
    _one_of(runs.c.status, "failed", "cancelled"), _one_of(runs.c.status, "skipped")
)
Index(
    "runs_unsuccessful",
    runs.c.status,
    runs.c.id,
    postgresql_where=run_is_unsuccessful,
    sqlite_where=run_is_unsuccessful,
)

run_logs = Table(
    "run_logs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("level", StoredString(10), nullable=False),
    Column("message", StoredText, nullable=False),
)
Index("run_logs_run", run_logs.c.run_id, run_logs.c.id)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", StoredString(200), nullable=False),
    # NULL: an admin token; otherwise the one app the token may see and touch.
    Column("app", StoredString(100), ForeignKey("apps.name", ondelete="CASCADE")),
    # SHA-256 of the token (hex): tokens are 256-bit random strings, so a fast hash suffices.
    Column("token_hash", StoredString(64), nullable=False),
    # "admin" on the admin token generated at first start, NULL otherwise: the unique key lets
    # several processes starting together generate one, and only one, of them.
    Column("bootstrap", StoredString(20)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    UniqueConstraint("token_hash", name="api_tokens_hash_key"),
    UniqueConstraint("bootstrap", name="api_tokens_bootstrap_key"),
)
Index("api_tokens_app", api_tokens.c.app)

app_secrets = Table(
    "app_secrets",
    metadata,
    Column(
        "app",
        StoredString(100),
        ForeignKey("apps.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("kind", StoredString(10), primary_key=True),  # "secret" | "source"
    Column("name", StoredString(128), primary_key=True),
    Column("value", Text, nullable=False),  # Fernet ciphertext; the key never reaches the database
    Column("info", Json, nullable=False),  # what may be shown: a source's driver and host
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)


def _stats_table(name: str, at: str) -> Table:
    return Table(
        name,
        metadata,
        Column(
            "app", StoredString(100), ForeignKey("apps.name", ondelete="CASCADE"), primary_key=True
        ),
        Column(at, UtcDateTime, primary_key=True),
        Column("created", Integer, nullable=False),
        Column("started", Integer, nullable=False),
        Column("wait_sum", Float, nullable=False),
        Column("wait_min", Float),
        Column("wait_max", Float),
        Column("succeeded", Integer, nullable=False),
        Column("failed", Integer, nullable=False),
        Column("executions", Integer, nullable=False),
        Column("run_seconds", Float, nullable=False),
        Column("duration_max", Float),
    )


def _hist_table(name: str, at: str) -> Table:
    return Table(
        name,
        metadata,
        Column(
            "app", StoredString(100), ForeignKey("apps.name", ondelete="CASCADE"), primary_key=True
        ),
        Column(at, UtcDateTime, primary_key=True),
        Column("bin", Integer, primary_key=True),
        Column("count", Integer, nullable=False),
    )


# Statistics roll-up (nightshift.stats): one row per (app, UTC minute) that had an event, written
# once when the minute is closed; the newest minutes are aggregated live from `runs`.
run_stats = _stats_table("run_stats", "minute")
Index("run_stats_minute", run_stats.c.minute)

# The durations of those executions, as counts per fixed log-spaced bin (sparse: bins with runs).
run_stats_hist = _hist_table("run_stats_hist", "minute")

# The same figures per (app, UTC hour), written by the roll-up in the transaction that closes the
# hour's last minute (sums of that hour's minute rows): hour and day buckets read these for whole
# rolled-up hours, and minute rows only for the rolled-up minutes of the last, unfinished hour.
run_stats_hourly = _stats_table("run_stats_hourly", "hour")
Index("run_stats_hourly_hour", run_stats_hourly.c.hour)
run_stats_hist_hourly = _hist_table("run_stats_hist_hourly", "hour")

# -- alerts (revision 0004) -------------------------------------------------------------------
# The alert dispatcher asks of each failed run whether a later attempt follows it (its scans by
# finished_at and started_at use runs_finished and runs_started).
_retry = runs.c.retry_of.is_not(None)
Index("runs_retry_of", runs.c.retry_of, postgresql_where=_retry, sqlite_where=_retry)

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("app", StoredString(100), ForeignKey("apps.name", ondelete="CASCADE"), nullable=False),
    # NULL: every job of the app.
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE")),
    Column("on_failed", Boolean, nullable=False),
    Column("on_long_running", Boolean, nullable=False),
    Column("max_duration_s", Float),
    Column("webhook_url", Text),
    Column("emails", Json, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
Index("alert_rules_app", alert_rules.c.app, alert_rules.c.id)
Index("alert_rules_job", alert_rules.c.job_id)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("rule_id", BigInteger, ForeignKey("alert_rules.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("event", StoredString(20), nullable=False),
    Column("channel", StoredString(10), nullable=False),
    Column("status", StoredString(10), nullable=False),  # pending | sending | delivered | failed
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", StoredText),
    Column("payload", Json, nullable=False),  # the alert as sent: secrets masked, no params
    Column("lease_owner", StoredString(200)),
    Column("lease_expires_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    # Each alert is sent once per channel, however many dispatchers detect it.
    UniqueConstraint("rule_id", "run_id", "event", "channel", name="alert_deliveries_key"),
)
#: Deliveries still to be made, as alert_deliveries_due holds them (see _one_of): the dispatchers'
#: claim says it too, or SQLite's planner scanned every delivery ever made to find the due ones.
delivery_is_undelivered = _one_of(alert_deliveries.c.status, "pending", "sending")
Index(
    "alert_deliveries_due",
    alert_deliveries.c.next_attempt_at,
    postgresql_where=delivery_is_undelivered,
    sqlite_where=delivery_is_undelivered,
)
Index("alert_deliveries_run", alert_deliveries.c.run_id)
Index("alert_deliveries_rule", alert_deliveries.c.rule_id, alert_deliveries.c.id)
