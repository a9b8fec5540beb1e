"""Use cases shared by the API, the CLI and the runtime: every change to jobs goes through here."""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.declared import describe
from nightshift.domain.models import JSON, App, Job, JobKind, RetryPolicy, Run
from nightshift.errors import InvalidInput
from nightshift.jobspec import JobSpec, parse_spec
from nightshift.schedules import preview as schedule_preview
from nightshift.stats import RESERVED_APP, SYSTEM_APP
from nightshift.store.base import NewRun, Store
from nightshift.timing import fire_after, is_reboot, schedule_of, zone_of
from nightshift.worker.executor import Executor
from nightshift.worker.kinds.http_request import build_request
from nightshift.worker.kinds.registry import validate_config

APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # as JobSpec.app
NOT_DECLARED = "no longer declared in code or nightshift.toml"
_NOT_DECLARED_REASONS = (NOT_DECLARED, "no longer declared in code")
#: Changing any of these re-computes the timer; any other edit keeps it (seed 004's reload rule).
TIMING_FIELDS = ("schedule", "timezone", "start_at", "end_at")


@dataclass(slots=True)
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


class Service:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        executors: dict[JobKind, Executor],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.executors = executors
        self._on_change = on_change  # wakes an in-process scheduler; other processes poll

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, data: JSON, *, declared: bool = False, system: bool = False) -> Job:
        job = self._new_job(self._validate(data), self.clock.now(), declared=declared)
        job.system = system
        created = self.store.create_job(job)
        self._on_change()
        return created

    def create_jobs(self, items: Sequence[Any]) -> list[Job]:
        """Create every job of `items` (each as `create_job` takes it) in one transaction, or
        none. Each item is validated as one `create_job` validates it; the first error names
        the item: InvalidInput for a bad field (`jobs[3].schedule`) or a name given twice in
        `items` (`jobs[7].name`), Conflict for a name its app has already. Returns the jobs
        with their ids, in the order given."""
        now = self.clock.now()
        new: list[Job] = []
        first: dict[tuple[str, str], int] = {}
        with _cyclic_gc_paused():
            for i, data in enumerate(items):
                try:
                    if not isinstance(data, dict):
                        raise InvalidInput("must be a job object")
                    job = self._new_job(self._validate(data), now)
                except InvalidInput as exc:
                    field = f"jobs[{i}].{exc.field}" if exc.field else f"jobs[{i}]"
                    raise InvalidInput(exc.message, field=field) from None
                earlier = first.setdefault((job.app, job.name), i)
                if earlier != i:
                    message = f"jobs[{earlier}] has the same app and name ({job.app}/{job.name})"
                    raise InvalidInput(message, field=f"jobs[{i}].name")
                new.append(job)
            return self._insert(new)

    def update_job(self, job_id: int, changes: JSON) -> Job:
        current = self.store.get_job(job_id)
        merged = {**spec_dict(current), **changes}
        spec = self._validate(merged)
        now = self.clock.now()
        target = _job_from_spec(spec, self.settings.timezone, now)
        values = _column_changes(current, target)
        if any(k in values for k in TIMING_FIELDS) or (target.enabled and not current.enabled):
            if "schedule" in values:
                target.anchor_at = values["anchor_at"] = now  # intervals count from the change
            else:
                target.anchor_at = current.anchor_at
            values["next_fire_at"] = self._timer(target, now)
        if target.enabled and not current.enabled:
            values.update(deactivated_reason=None, hold=None)
        if current.enabled and not target.enabled:
            values["next_fire_at"] = None  # a disabled job has no next fire (as after EXIT)
        if not values:
            return current
        values["updated_at"] = now
        updated = self.store.update_job(job_id, values)
        self._on_change()
        return updated

    def delete_job(self, job_id: int) -> None:
        self.store.delete_job(job_id)
        self._on_change()

    def run_now(
        self,
        job_id: int,
        *,
        params: JSON | None = None,
        run_by: str | None = None,
        low_priority: bool | None = None,
        is_test: bool = False,
        job: Job | None = None,
    ) -> Run:
        """Enqueue a run now. A test run (`is_test`) is never retried and ignores the job's
        exclusive slot. For http jobs, `params` may override the query, headers and body.
        `job`: the job when the caller has just read it (saves reading it again)."""
        now = self.clock.now()

        def make(job: Job) -> NewRun:
            if params is not None and job.kind == JobKind.HTTP:
                build_request(job.config, params)  # a bad override fails here, naming params.x
            return NewRun(
                job_id=job.id,
                run_at=now,
                params=dict(params if params is not None else job.config.get("params") or {}),
                run_by=run_by,
                low_priority=job.low_priority if low_priority is None else low_priority,
                is_test=is_test,
            )

        if job is None or job.id != job_id:
            run = self.store.enqueue_job(job_id, make, now)  # reads the job in the same trip
        else:
            run = self.store.enqueue(make(job), now)
        self._on_change()  # wakes an in-process worker at once
        return run

    def changed(self) -> None:
        """Wake the in-process scheduler and worker after a change made beside the service
        (run operations: a resumed or restarted run is due now)."""
        self._on_change()

    # -- apps ---------------------------------------------------------------------------------
    def create_app(self, name: str) -> App:
        if not APP_NAME.match(name):
            raise InvalidInput(
                "must start with a letter or digit and hold only letters, digits, _ . - "
                "(100 at most)",
                field="name",
            )
        if name == SYSTEM_APP:
            raise InvalidInput(RESERVED_APP, field="name")
        return self.store.create_app(name, self.clock.now())

    def update_app(self, name: str, changes: JSON) -> App:
        """Apply `schedules_enabled` and / or `retention_days` (None: the service default)."""
        app = self.store.get_app(name)
        if "retention_days" in changes:
            app = self.store.set_app_retention(name, changes["retention_days"])
        enabled = changes.get("schedules_enabled")
        if enabled is not None and enabled != app.schedules_enabled:
            app = self.set_schedules_enabled(name, enabled)
        return app

    def delete_app(self, name: str) -> None:
        """Delete the app, its jobs with their runs and logs, its tokens and its secrets."""
        self.store.delete_app(name)
        self._on_change()

    def set_schedules_enabled(self, app: str, enabled: bool) -> App:
        now = self.clock.now()
        # Switching back on starts from now: the paused span neither bursts nor records misses.
        updated = self.store.set_app_schedules(app, enabled, lambda job: self._timer(job, now))
        self._on_change()
        return updated

    # -- declared jobs and reload --------------------------------------------------------------
    def sync_declared(self, declared: Iterable[Any]) -> SyncReport:
        """Create or update jobs declared in code, matched by app and name; disable declared
        jobs that the code no longer declares. Timers are kept unless the timing changed."""
        report = SyncReport()
        seen: set[tuple[str, str]] = set()
        prepared = []
        for item in declared:  # validate everything first: a bad declaration changes nothing
            data = {"name": item.name, "app": item.app, "kind": item.kind, **item.fields}
            data["config"] = dict(item.config)
            if (item.app, item.name) in seen:
                raise InvalidInput(f"{describe(item)}: declared twice", field="name")
            try:
                spec = self._validate(data)
            except InvalidInput as exc:
                raise InvalidInput(f"{describe(item)}: {exc.message}", exc.field) from None
            seen.add((item.app, item.name))
            prepared.append((item, data, spec))
        now = self.clock.now()
        new: list[Job] = []
        for item, data, spec in prepared:
            existing = self.store.find_job(item.app, item.name)
            if existing is None:
                # Collected and created together below: one transaction, however many.
                new.append(self._new_job(spec, now, declared=True))
                report.created.append(f"{item.app}/{item.name}")
                continue
            data.pop("enabled", None)  # a job disabled by EXIT or by hand stays disabled
            if existing.deactivated_reason in _NOT_DECLARED_REASONS:
                data["enabled"] = True
            after = self.update_job(existing.id, data)
            if spec_dict(after) != spec_dict(existing):
                report.updated.append(f"{item.app}/{item.name}")
            if not existing.declared:
                self.store.update_job(existing.id, {"declared": True})
        self._insert(new)
        for job in self.store.list_jobs(system=None):
            if job.declared and job.enabled and (job.app, job.name) not in seen:
                self.store.update_job(
                    job.id,
                    {"enabled": False, "deactivated_reason": NOT_DECLARED, "next_fire_at": None},
                )
                report.disabled.append(f"{job.app}/{job.name}")
        self._on_change()
        return report

    def release_holds(self) -> int:
        """Wake jobs that returned STOP (a reload does this); their timers restart from now."""
        now = self.clock.now()
        count = self.store.release_holds(lambda job: self._timer(job, now))
        self._on_change()
        return count

    # -- schedules ----------------------------------------------------------------------------
    def preview(
        self, schedule: str, timezone: str | None, count: int, start: datetime | None = None
    ) -> list[datetime]:
        return schedule_preview(
            schedule, timezone or self.settings.timezone, count, start or self.clock.now()
        )

    def next_fires(self, job_id: int, count: int, start: datetime | None = None) -> list[datetime]:
        job = self.store.get_job(job_id)
        if not job.schedule:
            return []
        start = start or self.clock.now()
        fires: list[datetime] = []
        after = start
        while len(fires) < count and (nxt := fire_after(job, after)) is not None:
            fires.append(nxt.astimezone(zone_of(job.timezone)))
            after = nxt
        return fires

    # -- helpers ------------------------------------------------------------------------------
    def _validate(self, data: JSON) -> JobSpec:
        spec = parse_spec(data)
        if spec.app == SYSTEM_APP:
            raise InvalidInput(RESERVED_APP, field="app")
        if spec.schedule is not None:
            schedule_of(spec.schedule)
        zone_of(spec.timezone or self.settings.timezone)
        spec.config = validate_config(self.executors, spec.kind, spec.config)
        return spec

    def _new_job(self, spec: JobSpec, now: datetime, *, declared: bool = False) -> Job:
        """The job a validated spec makes, with its first timer: what every creation stores."""
        job = _job_from_spec(spec, self.settings.timezone, now)
        job.declared = declared
        job.next_fire_at = self._timer(job, now)
        return job

    def _insert(self, new: list[Job]) -> list[Job]:
        if not new:
            return []
        for job, job_id in zip(new, self.store.create_jobs(new), strict=True):
            job.id = job_id
        self._on_change()
        return new

    def _timer(self, job: Job, now: datetime) -> datetime | None:
        if not job.enabled or not job.schedule or is_reboot(job):
            return None
        return fire_after(job, now)


_gc_lock = threading.Lock()
_gc_pauses = 0


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a bulk create runs.

    Every job of a batch keeps a few containers alive until the batch is inserted; with
    100,000 jobs the collector scans the whole heap a dozen times for nothing (measured: 12 to
    20 % of a bulk create). Reference counting still frees everything, and the collector runs
    as usual once the last concurrent bulk create is done."""
    global _gc_pauses
    with _gc_lock:
        ours = _gc_pauses > 0 or gc.isenabled()  # else someone else switched it off
        if ours:
            _gc_pauses += 1
            gc.disable()
    try:
        yield
    finally:
        if ours:
            with _gc_lock:
                _gc_pauses -= 1
                if _gc_pauses == 0:
                    gc.enable()


def _job_from_spec(spec: JobSpec, default_tz: str, now: datetime) -> Job:
    return Job(
        id=0,
        app=spec.app,
        name=spec.name,
        kind=spec.kind,
        config=spec.config,
        description=spec.description,
        tags=list(spec.tags),
        schedule=spec.schedule,
        timezone=spec.timezone or default_tz,
        enabled=spec.enabled,
        overlap=spec.overlap,
        catch_up=spec.catch_up,
        max_lateness_s=spec.max_lateness_s,
        retries=RetryPolicy(max=spec.retries.max, backoff_s=spec.retries.backoff_s),
        timeout_s=spec.timeout_s,
        low_priority=spec.low_priority,
        start_at=spec.start_at,
        end_at=spec.end_at,
        start_delay_s=spec.start_delay_s,
        jitter_s=spec.jitter_s,
        anchor_at=spec.start_at or now,
        created_at=now,
        updated_at=now,
    )


def spec_dict(job: Job) -> JSON:
    """The user-facing fields of a stored job, as JobSpec takes them."""
    return {
        "name": job.name,
        "app": job.app,
        "kind": job.kind,
        "config": job.config,
        "description": job.description,
        "tags": list(job.tags),
        "schedule": job.schedule,
        "timezone": job.timezone,
        "enabled": job.enabled,
        "overlap": job.overlap,
        "catch_up": job.catch_up,
        "max_lateness_s": job.max_lateness_s,
        "retries": job.retries.as_dict(),
        "timeout_s": job.timeout_s,
        "low_priority": job.low_priority,
        "start_at": job.start_at,
        "end_at": job.end_at,
        "start_delay_s": job.start_delay_s,
        "jitter_s": job.jitter_s,
    }


def _column_changes(current: Job, target: Job) -> JSON:
    before, after = spec_dict(current), spec_dict(target)
    changes = {k: v for k, v in after.items() if before[k] != v}
    if "app" in changes:
        raise InvalidInput("a job cannot move to another app; create it there instead", "app")
    if "retries" in changes:
        changes["retries"] = target.retries
    return changes
