"""The store interface. Each method says what it changes, what it raises, and how it orders.

Every method is one transaction: it either changes everything it describes or nothing. Times are
aware UTC datetimes. Methods that may not find a row raise `nightshift.errors.NotFound`.
The store persists decisions; it never makes them: schedule maths, misfire and retry policies
are passed in as values or as pure callbacks evaluated inside the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nightshift.domain.access import ApiToken, SecretEntry, SecretKind
from nightshift.domain.alerts import AlertDelivery, AlertRule, NewDelivery
from nightshift.domain.misfire import FirePlan
from nightshift.domain.models import JSON, App, Job, LogLine, Run
from nightshift.domain.status import RunStatus


@dataclass(slots=True)
class NewRun:
    """A run to insert. `attempt > 1` rows continue an earlier attempt (`retry_of` = first)."""

    job_id: int
    run_at: datetime
    params: JSON = field(default_factory=dict)
    scheduled_for: datetime | None = None
    low_priority: bool = False
    run_by: str | None = None
    parent_id: int | None = None
    is_test: bool = False
    attempt: int = 1
    retry_of: int | None = None
    state: Any = None
    lost_streak: int = 0
    status: RunStatus = RunStatus.PENDING
    reason: str | None = None


@dataclass(slots=True)
class ClaimedRun:
    run: Run
    #: The job's definition as the claim saw it; its timer, hold and counters may be older
    #: (the store reads a job once per change of the catalog: store.sql.job_cache).
    job: Job


@dataclass(slots=True)
class RunProgress:
    """What a worker learned about one of its runs since the last sync."""

    run_id: int
    progress: float | None = None
    state: Any = None
    state_changed: bool = False
    logs: list[tuple[datetime, str, str]] = field(default_factory=list)  # (at, level, message)


@dataclass(slots=True)
class SyncResult:
    stopping: set[int] = field(default_factory=set)  # a graceful stop was asked for
    kill: dict[int, str] = field(default_factory=dict)  # force stop or replace: id -> reason
    lost: set[int] = field(default_factory=set)  # no longer ours: fenced out, stop working on it


@dataclass(slots=True)
class Completion:
    """A finished execution, fenced by the lease owner, with everything it implies."""

    run_id: int
    owner: str
    status: RunStatus
    finished_at: datetime
    result: Any = None
    error: JSON | None = None
    state: Any = None
    progress: float | None = None
    reason: str | None = None
    logs: list[tuple[datetime, str, str]] = field(default_factory=list)
    job_changes: JSON = field(
        default_factory=dict
    )  # e.g. {"enabled": False, "deactivated_reason": ...}
    retry: NewRun | None = None  # the next attempt, when the policy retries
    #: When the execution really began, if later than the claim (it waited for a slot).
    started_at: datetime | None = None


@dataclass(slots=True)
class RunChange:
    """A status change an operation decided (see `nightshift.operations`), applied by
    `Store.change_run` only while the run still has the `expected` status."""

    expected: RunStatus
    status: RunStatus
    reason: str | None = None
    kill: bool = False  # the executing worker ends the run at its next heartbeat
    log: str | None = None  # a line for the run's own log (who asked for what)


@dataclass(slots=True)
class StatsRow:
    """Summed figures of one app over one span starting at `start` (a minute when stored)."""

    start: datetime
    app: str
    created: int = 0
    started: int = 0
    wait_sum: float = 0.0
    succeeded: int = 0
    failed: int = 0
    executions: int = 0
    run_seconds: float = 0.0
    wait_min: float | None = None
    wait_max: float | None = None
    duration_max: float | None = None


@dataclass(slots=True)
class MetricsSnapshot:
    """What a Prometheus scrape reads, bounded in cost (see nightshift.metrics)."""

    open_runs: list[tuple[str, str, int]]  # (app, status, count) of pending .. stopped runs
    due: list[tuple[str, int]]  # (app, pending runs due now)
    finished: list[tuple[str, str, int]]  # (app, terminal status, count) in the window
    waits: list[float]  # created -> started, seconds, of runs started in the window
    lateness: list[float]  # scheduled_for -> started, seconds, of scheduled runs among them


Planner = Callable[[Job], FirePlan]
#: A group of kinds to claim: (kinds, limit of due runs[, limit of runs ahead of their time]).
ClaimSlot = tuple[Sequence[str], int] | tuple[Sequence[str], int, int | None]
Retimer = Callable[[Job], "datetime | None"]


class Store(Protocol):
    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to the newest version; safe when several processes start at once."""

    def close(self) -> None:
        """Release connections."""

    def ping(self) -> None:
        """Raise when the database cannot be reached."""

    # -- apps ---------------------------------------------------------------------------------
    def ensure_app(self, name: str, now: datetime) -> App:
        """Return the app, creating it (schedules enabled) when missing."""

    def get_app(self, name: str) -> App:
        """Raise NotFound when missing."""

    def list_apps(self) -> list[App]:
        """All apps, by name."""

    def set_app_schedules(self, name: str, enabled: bool, retime: Retimer) -> App:
        """Switch an app's schedules. Switching on re-times every enabled job of the app with
        `retime(job)`, so the paused span neither bursts nor leaves skipped records."""

    def create_app(self, name: str, now: datetime) -> App:
        """Insert an app with its schedules on. Raise Conflict when it exists."""

    def set_app_retention(self, name: str, days: int | None) -> App:
        """Set how many days of run history the app keeps (None: the service default).
        Raise NotFound when missing."""

    def delete_app(self, name: str) -> None:
        """Delete the app with everything it owns, in one transaction: its jobs, their runs
        (in flight or not) and log lines, its tokens, secrets and data sources. A worker still
        executing one of its runs learns at its next `sync` that the run is lost. Raise
        NotFound when missing."""

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, job: Job) -> Job:
        """Insert `job` (its id is ignored) and return it with its id. Raises Conflict when the
        app already has a job of that name; creates the app when missing."""

    def create_jobs(self, new: Sequence[Job]) -> list[int]:
        """Insert every job of `new` in one transaction (their ids are ignored), creating the
        apps that are missing; return their ids in the same order. All or nothing: when a name
        is taken — by a job of the app, or by an earlier job of `new` — raise Conflict naming
        the first such job (`field` = `jobs[i].name`) and insert none."""

    def get_job(self, job_id: int) -> Job:
        """Raise NotFound when missing."""

    def find_job(self, app: str, name: str) -> Job | None:
        """The job named `name` in `app`, or None."""

    def list_jobs(
        self,
        *,
        app: str | None = None,
        tag: str | None = None,
        kind: str | None = None,
        enabled: bool | None = None,
        system: bool | None = False,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs matching every filter given, by ascending id, after `after_id` (a cursor)."""

    def update_job(self, job_id: int, changes: JSON) -> Job:
        """Apply column changes and return the job. Raise NotFound when missing."""

    def delete_job(self, job_id: int) -> None:
        """Delete the job with its runs and logs. Raise NotFound when missing."""

    def next_fire_due(self) -> datetime | None:
        """The earliest next_fire_at among jobs the scheduler would fire (enabled, not held,
        app schedules on), or None."""

    def reboot_jobs(self) -> list[Job]:
        """Enabled `@reboot` jobs of apps whose schedules are on."""

    def release_holds(self, retime: Retimer) -> int:
        """Clear every job's hold (STOP) and re-time it with `retime`; returns how many."""

    def schedule_version(self) -> int:
        """A number that changes whenever a job's timing may have changed (for pollers)."""

    # -- firing -------------------------------------------------------------------------------
    def fire_due(
        self, now: datetime, planner: Planner, limit: int, horizon: datetime | None = None
    ) -> int:
        """Take up to `limit` due jobs (oldest fire first; on PostgreSQL rows other schedulers
        hold are skipped), ask `planner(job)` what to do and, in the same transaction, insert
        the runs and skipped records it plans, stop what it replaces and advance the timer.
        A (job, scheduled_for) pair that exists already is not inserted again. Returns the
        number of jobs handled.

        `horizon` (later than `now`): jobs due by then count as due too, when no run of theirs
        is active or their overlap is `allow`: firing them ahead cannot change what their
        overlap policy decides."""

    # -- runs ---------------------------------------------------------------------------------
    def enqueue(self, new: NewRun, now: datetime) -> Run:
        """Insert a pending run (a child when `parent_id` is set: root and rank are derived and
        the parent's children count grows). Raise NotFound for an unknown job or parent."""

    def enqueue_job(self, job_id: int, make: Callable[[Job], NewRun], now: datetime) -> Run:
        """Read the job and insert the run `make(job)` builds, in one transaction (a run by
        hand: one round trip to the database instead of two). Raise NotFound for an unknown
        job; whatever `make` raises leaves nothing written."""

    def get_run(self, run_id: int) -> Run:
        """Raise NotFound when missing."""

    def list_runs(
        self,
        *,
        job_id: int | None = None,
        app: str | None = None,
        status: Sequence[str] | None = None,
        root_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        system: bool | None = False,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs matching every filter given, newest first (descending id), before `before_id`."""

    def get_runs(self, run_ids: Iterable[int]) -> dict[int, Run]:
        """The runs among `run_ids` that exist, by id (missing ids are left out, not raised)."""

    def count_runs(self, *, job_id: int | None = None, status: Sequence[str] | None = None) -> int:
        """How many runs match."""

    def next_run_due(self, now: datetime) -> datetime | None:
        """The earliest run_at among pending runs that are not due yet, or None."""

    # -- execution ----------------------------------------------------------------------------
    def claim(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        limit: int,
        kinds: Iterable[str],
        horizon: datetime | None = None,
    ) -> list[ClaimedRun]:
        """Move up to `limit` due pending runs of the given kinds to running under a lease held
        by `owner`: normal before low priority, then lower rank (fair share between roots), then
        oldest due. A run of a job with an exclusive slot (overlap queue / replace) is claimed
        only when it can take that slot. With a `horizon`, runs due by then count as due: the
        worker holds them until their time (Settings.fire_ahead_s)."""

    def claim_slots(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        slots: Sequence[ClaimSlot],
        horizon: datetime | None = None,
    ) -> list[ClaimedRun]:
        """`claim` for several groups of kinds at once, each with its own limit (a worker's
        process slots and its event-loop slots), in one transaction. A group's third item,
        when given, limits its runs taken ahead of their time (by `horizon`) apart from its
        due ones; without it they share the limit. Runs are taken ahead only when fewer than
        the limit were due: a backlog is served first."""

    def sync(
        self, owner: str, now: datetime, lease_s: float, updates: Sequence[RunProgress]
    ) -> SyncResult:
        """Extend the leases of `owner`'s runs named in `updates` to `now + lease_s` (those of
        which a tenth has passed: a renewal is a row write), store their progress, state and
        log lines, and report which of them were asked to stop, to die, or are no longer held.
        Log lines of a run no longer held are still stored (they are its own); progress and
        state are not."""

    def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Record finished executions in one transaction. A completion whose run is no longer
        executing under its owner is fenced out (False) and changes nothing. Otherwise the run
        ends, its exclusive slot is freed, job changes apply, the retry is inserted, and the
        parent's finished / failed counts grow when the run is final. Raises `Refused` (and
        records nothing) when the database refuses a value of the batch."""

    def release(
        self,
        owner: str,
        run_ids: Sequence[int],
        states: dict[int, Any],
        now: datetime | None = None,
    ) -> int:
        """Hand back `owner`'s executing runs at a graceful shutdown, keeping their checkpoints:
        running ones return to pending; ones asked to stop end stopped (at `now`). Returns how
        many."""

    def recover_expired(self, now: datetime, max_lost: int) -> int:
        """Runs whose lease expired: end each as failed with reason `worker lost` and insert the
        next attempt (keeping the checkpoint) unless `max_lost` attempts in a row were lost; a run
        that was stopping ends as stopped. Returns how many runs were recovered."""

    def expire_leases(self, owners: Iterable[str], now: datetime) -> int:
        """Make the leases of the given owners expire now (their processes are known dead)."""

    def lease_owners(self) -> list[str]:
        """Distinct owners of executing runs."""

    def held_runs(self, owner: str) -> list[int]:
        """The runs executing under `owner`'s lease."""

    # -- logs ---------------------------------------------------------------------------------
    def get_logs(
        self,
        run_id: int,
        *,
        q: str | None = None,
        level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[LogLine]:
        """A run's log lines in order; `q` matches text case-insensitively, `level` is a minimum."""

    # -- operations (run control) -------------------------------------------------------------
    def change_run(self, run_id: int, change: RunChange, now: datetime) -> Run | None:
        """Compare-and-set a run's status: only while it is `change.expected`, move it to
        `change.status` and return it; return None (changing nothing) when its status is another
        by now. Raise NotFound when missing. Implied effects, in the same transaction:
        to `pending` (resume) the run is due now, its lease, finish time and kill flag clear and
        its checkpoint `state` and progress stay; to `cancelled` it is finished now and its
        parent's finished count grows; `kill` sets the flag a worker's `sync` reports as
        `SyncResult.kill` with `reason`; `log` is added to the run's log at `now`."""

    def restart_run(
        self, run_id: int, expected: RunStatus, new: NewRun, now: datetime
    ) -> Run | None:
        """Insert `new` (a fresh run of the finished run's job) and return it, only while the
        finished run is still `expected`; None, inserting nothing, otherwise. A `stopped` run
        that is restarted becomes `cancelled` (reason "restarted as run N"), so that it cannot
        be resumed as well. Both runs' logs name the other. Raise NotFound when missing."""

    def set_run_low_priority(self, run_id: int, low_priority: bool) -> Run:
        """Set or clear a run's low-priority flag, whatever its status (claims read it while the
        run is pending). Raise NotFound when missing."""

    def enqueue_many(self, news: Sequence[NewRun], now: datetime) -> int:
        """Insert many pending runs in one transaction, as `enqueue` inserts one (children get
        their root, consecutive ranks and their parents' counts); returns how many. Raise
        NotFound, inserting nothing, for an unknown job or parent."""

    # -- statistics, pruning, metrics ----------------------------------------------------------
    def stats_watermark(self) -> datetime | None:
        """The end of the rolled-up span (a whole UTC minute): figures of earlier minutes are in
        the roll-up, later ones are aggregated live from runs. None before the first roll-up."""

    def first_run_at(self) -> datetime | None:
        """The earliest created_at of any run, or None when there are none."""

    def run_figures(
        self,
        size_s: int,
        since: datetime,
        until: datetime,
        *,
        app: str | None = None,
        exclude_app: str | None = None,
    ) -> tuple[list[StatsRow], list[tuple[str, datetime, int, int]]]:
        """What runs did in [since, until), summed per app and UTC-aligned bucket of `size_s`
        seconds (a divisor of a day), of `app` when given, else of every app but `exclude_app`.
        Each event counts in the bucket of its own time (see nightshift.stats): the rows, and the
        duration histogram as (app, bucket start, bin, count); in no particular order."""

    def rolled_stats(
        self,
        size_s: int,
        since: datetime,
        until: datetime,
        *,
        app: str | None = None,
        exclude_app: str | None = None,
    ) -> tuple[list[StatsRow], list[tuple[datetime, int, int]]]:
        """Rolled-up minutes in [since, until) summed per UTC-aligned bucket of `size_s` seconds
        (a divisor of a day) and per app (app filter as `run_figures`): the rows, and the duration
        histogram as (bucket start, bin, count) summed over apps; in no particular order."""

    def save_rollup(
        self,
        previous: datetime | None,
        until: datetime,
        rows: Sequence[StatsRow],
        bins: Sequence[tuple[str, datetime, int, int]],
    ) -> bool:
        """Insert the per-(app, minute) `rows` and histogram `bins` (app, minute, bin, count) and
        move the watermark from `previous` to `until`, by compare-and-set: False, and nothing
        changed, when the watermark is no longer `previous` (another roll-up got there first)."""

    def prune_runs(self, app: str, before: datetime, limit: int) -> int:
        """Delete up to `limit` of the app's terminal runs (succeeded, failed, cancelled, skipped)
        that finished (or, without a finish, were created) before `before`, with their log lines;
        pending, executing and stopped runs stay. Returns how many runs were deleted."""

    def metrics_snapshot(self, now: datetime, window_s: float, limit: int) -> MetricsSnapshot:
        """Counts of open runs by app and status, due pending runs by app, runs finished in the
        last `window_s` by app and status, and the waiting times and lateness of at most `limit`
        runs (the newest) started in that window."""

    # -- API tokens ---------------------------------------------------------------------------
    def create_token(self, name: str, app: str | None, token_hash: str, now: datetime) -> ApiToken:
        """Insert an active token (`app` None: an admin token). Raise NotFound when `app` is
        given and missing; Conflict when the hash exists already."""

    def ensure_bootstrap_token(self, name: str, token_hash: str, now: datetime) -> bool:
        """Insert the generated admin token unless an active one exists; True when inserted.
        Of several processes starting together on one database, exactly one inserts."""

    def find_token(self, token_hash: str) -> ApiToken | None:
        """The active (not revoked) token with this hash, or None."""

    def list_tokens(
        self, *, app: str | None = None, after_id: int | None = None, limit: int | None = None
    ) -> list[ApiToken]:
        """Active tokens (of `app` when given), by ascending id, after `after_id`."""

    def revoke_token(self, token_id: int, now: datetime) -> ApiToken:
        """Revoke an active token: it stops authenticating at once. A revoked bootstrap token
        frees its slot, so the next start generates a new one. Raise NotFound when missing or
        revoked already."""

    # -- secrets and data sources -------------------------------------------------------------
    def put_secret(
        self, app: str, kind: SecretKind, name: str, value: str, info: JSON, now: datetime
    ) -> SecretEntry:
        """Insert or replace a secret's ciphertext (`value`) and its showable `info`.
        Raise NotFound when the app is missing."""

    def list_secrets(self, app: str, kind: SecretKind) -> list[SecretEntry]:
        """The app's secrets of `kind`, by name, without their values."""

    def get_secret_value(self, app: str, kind: SecretKind, name: str) -> str:
        """A secret's ciphertext. Raise NotFound when missing."""

    def delete_secret(self, app: str, kind: SecretKind, name: str) -> None:
        """Delete a secret. Raise NotFound when missing."""

    # -- alerts -------------------------------------------------------------------------------
    def create_alert_rule(self, rule: AlertRule) -> AlertRule:
        """Insert `rule` (its id is ignored) and return it with its id. Raise NotFound when its
        app is missing, or when `job_id` is set and names no job of that app."""

    def get_alert_rule(self, rule_id: int) -> AlertRule:
        """Raise NotFound when missing."""

    def list_alert_rules(
        self,
        *,
        app: str | None = None,
        job_id: int | None = None,
        enabled: bool | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[AlertRule]:
        """Rules matching every filter given, by ascending id, after `after_id` (a cursor)."""

    def update_alert_rule(self, rule: AlertRule) -> AlertRule:
        """Store every field of `rule` but its app, id and created_at (the rule's app stays).
        Raise NotFound when the rule is missing, or `job_id` names no job of its app."""

    def delete_alert_rule(self, rule_id: int) -> None:
        """Delete the rule and its deliveries. Raise NotFound when missing."""

    def final_failures(
        self,
        apps: Sequence[str],
        since: datetime,
        after: tuple[datetime, int] | None = None,
        limit: int = 500,
    ) -> list[Run]:
        """Runs of `apps` that failed for good and finished at or after `since`: status failed,
        not a test run, and no run continues it (none with retry_of = the first attempt's id
        and a higher attempt; a retry is inserted in the transaction that fails its attempt).
        Ordered by (finished_at, id), after the keyset `after`, at most `limit`."""

    def long_running(
        self, apps: Sequence[str], started_before: datetime, limit: int = 1000
    ) -> list[Run]:
        """Executing (running or stopping) runs of `apps`, not test runs, that started at or
        before `started_before`, by (started_at, id), at most `limit`."""

    def alert_keys(self, run_ids: Iterable[int]) -> set[tuple[int, int, str]]:
        """(rule_id, run_id, event) of every delivery recorded for the given runs."""

    def alert_scan_cursor(self) -> datetime | None:
        """How far the failure scan got (a finished_at), or None before the first scan."""

    def advance_alert_scan_cursor(self, at: datetime) -> None:
        """Move the failure scan's cursor to `at`; never moves it back."""

    def add_alert_deliveries(self, new: Sequence[NewDelivery], now: datetime) -> int:
        """Insert pending deliveries due at `now`; one that exists already for its (rule, run,
        event, channel) is left alone, so concurrent dispatchers record each alert once.
        Returns how many were inserted."""

    def claim_alert_deliveries(
        self, owner: str, now: datetime, lease_s: float, limit: int
    ) -> list[AlertDelivery]:
        """Move up to `limit` deliveries of enabled rules that are due (pending with
        next_attempt_at <= now, or sending under a lease that expired) to sending under a lease
        held by `owner`, counting the attempt; oldest due first. On PostgreSQL rows other
        dispatchers hold are skipped. Each comes with its rule's current webhook_url and
        emails."""

    def finish_alert_delivery(
        self,
        delivery_id: int,
        owner: str,
        now: datetime,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        """Record an attempt of a delivery `owner` holds: delivered when `error` is None, else
        pending again at `retry_at`, or failed for good when `retry_at` is None. False (and no
        change) when `owner` no longer holds it."""

    def list_alert_deliveries(
        self, rule_id: int, *, before_id: int | None = None, limit: int = 100
    ) -> list[AlertDelivery]:
        """A rule's deliveries, newest first (descending id), before `before_id`."""
