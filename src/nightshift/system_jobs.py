"""Nightshift's own jobs: history pruning, recovery of expired leases, statistics roll-up.

They are real jobs, with runs, in the app `system` (reserved: no user may create it, put jobs in
it or hold a token for it) with `system=true`, so lists show them only with `system=true`. Each
start registers them by name, as declared jobs are synced: a new one is created, a changed
schedule re-times it, anything else keeps its timer. Their kind, `system`, is internal: it runs in
the worker's event loop, and the API refuses it for users' jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.models import Job, JobKind, Overlap
from nightshift.errors import Conflict
from nightshift.stats import SYSTEM_APP, StatsService
from nightshift.store.base import Store
from nightshift.timing import fire_after

log = logging.getLogger("nightshift.system")


@dataclass(frozen=True, slots=True)
class SystemJob:
    name: str
    task: str
    schedule: str
    description: str


def system_jobs(settings: Settings) -> list[SystemJob]:
    return [
        SystemJob(
            "prune-history",
            "prune",
            settings.prune_schedule,
            "Delete finished runs and their logs older than each app's retention",
        ),
        SystemJob(
            "recover-leases",
            "recover",
            settings.recover_schedule,
            "Run again the runs whose worker died (expired leases)",
        ),
        SystemJob(
            "stats-rollup",
            "rollup",
            settings.rollup_schedule,
            "Roll closed minutes of run statistics up into per-minute and per-hour figures",
        ),
    ]


class SystemTasks:
    """What the system jobs do; each task is one call, synchronous (run it in a thread)."""

    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.stats = StatsService(store, clock, settings)
        self.tasks: dict[str, Callable[[], dict[str, Any]]] = {
            "prune": self.prune,
            "recover": self.recover,
            "rollup": self.stats.roll_up,
        }

    def run(self, task: str) -> dict[str, Any]:
        return self.tasks[task]()

    def register(self) -> list[Job]:
        """Create or update the system jobs (matched by name); timers are kept unless the
        schedule changed. Safe when several processes start together."""
        now = self.clock.now()
        self.store.ensure_app(SYSTEM_APP, now)
        return [self._register_one(spec, now) for spec in system_jobs(self.settings)]

    def _register_one(self, spec: SystemJob, now: datetime) -> Job:
        config = {"task": spec.task}
        existing = self.store.find_job(SYSTEM_APP, spec.name)
        if existing is None:
            job = Job(
                id=0,
                app=SYSTEM_APP,
                name=spec.name,
                kind=JobKind.SYSTEM,
                config=config,
                description=spec.description,
                schedule=spec.schedule,
                overlap=Overlap.SKIP,
                system=True,
                anchor_at=now,
                created_at=now,
                updated_at=now,
            )
            job.next_fire_at = fire_after(job, now)
            try:
                return self.store.create_job(job)
            except Conflict:  # another process registered it a moment ago
                existing = self.store.find_job(SYSTEM_APP, spec.name)
                assert existing is not None
        changes: dict[str, Any] = {}
        if existing.config != config:
            changes["config"] = config
        if existing.description != spec.description:
            changes["description"] = spec.description
        if not existing.system:
            changes["system"] = True
        if existing.schedule != spec.schedule or (existing.enabled and not existing.next_fire_at):
            existing.schedule, existing.anchor_at = spec.schedule, now
            changes.update(
                schedule=spec.schedule, anchor_at=now, next_fire_at=fire_after(existing, now)
            )
        if not changes:
            return existing
        changes["updated_at"] = now
        return self.store.update_job(existing.id, changes)

    # -- the tasks ----------------------------------------------------------------------------
    def prune(self) -> dict[str, Any]:
        """Each app's terminal runs (and their logs) older than its retention, in batches."""
        now = self.clock.now()
        deleted: dict[str, int] = {}
        for app in self.store.list_apps():
            default = (
                self.settings.system_retention_days
                if app.name == SYSTEM_APP
                else self.settings.retention_days
            )
            before = now - timedelta(days=app.retention_days or default)
            total = 0
            while total < self.settings.prune_max_per_run:
                batch = min(self.settings.prune_batch, self.settings.prune_max_per_run - total)
                n = self.store.prune_runs(app.name, before, batch)
                total += n
                if n < batch:
                    break
            if total:
                deleted[app.name] = total
        if deleted:
            log.info("pruned run history: %s", deleted)
        return {"deleted": deleted}

    def recover(self) -> dict[str, Any]:
        """Expired leases: the worker's heartbeat does the same; this covers a cluster whose
        workers are all gone or busy. Idempotent."""
        count = self.store.recover_expired(self.clock.now(), self.settings.max_lost_attempts)
        return {"recovered": count}
