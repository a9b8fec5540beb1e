"""Job definitions read once per change of the catalog, for the hot paths that read jobs by
the hundred: a claim (the jobs of the runs it takes) and a scheduler tick (the due jobs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select

from nightshift.domain.models import Job
from nightshift.store.sql.codec import job_from_row
from nightshift.store.sql.prepared import Prepares, one_of
from nightshift.store.tables import jobs

_JOBS = Prepares(lambda dialect: select(jobs).where(one_of(jobs.c.id, "ids", dialect)))


class JobCache:
    """Jobs by id, for as long as the catalog's version stands.

    Every change to a job's definition (create, update, delete, an app deleted or its
    schedules switched, holds released) bumps that version in the transaction that makes it,
    and a reader reads it in its own: it never gets a definition older than its transaction's
    view of the catalog. A job's timer, hold and counters (next_fire_at, hold, active_runs,
    last_run_id) and its `enabled` after a run's outcome change without a bump: a cached job
    does not keep them current, and its readers take them from their own rows. Runs of many
    jobs claim and fire at the cost of runs of one (bench/PROFILE.md, session 11)."""

    MAX_JOBS = 4096

    def __init__(self) -> None:
        # The version and its jobs, replaced together in one assignment: readers on other
        # threads (a claim, a tick) see a pair, never one version with another's jobs.
        self._state: tuple[Any, dict[int, Job]] = (None, {})

    def read(self, conn: Connection, version: Any, job_ids: Iterable[int]) -> dict[int, Job]:
        """The jobs of `job_ids` (and maybe others), as of `version`, which `conn`'s
        transaction read: those not cached are read through it. Shared objects: never
        change them."""
        seen, cached = self._state
        if version != seen or len(cached) > self.MAX_JOBS:
            # Replaced, never cleared: a reader still holding the old one keeps it whole.
            cached = {}
            self._state = (version, cached)
        missing = [i for i in job_ids if i not in cached]
        if missing:
            cached.update(read_jobs(conn, missing))
        return cached


def read_jobs(conn: Connection, job_ids: list[int]) -> dict[int, Job]:
    """The jobs of `job_ids` as `conn` reads them now (no cache)."""
    return {row["id"]: job_from_row(row) for row in _JOBS.rows(conn, {"ids": job_ids})}
