"""Rows to domain models and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row

from nightshift.domain.models import (
    JSON,
    App,
    CatchUp,
    Job,
    JobHold,
    JobKind,
    LogLine,
    Overlap,
    RetryPolicy,
    Run,
)
from nightshift.domain.status import RunStatus

# Stored text to enum member by a dict: calling the enum costs ~1 us a value, and every
# claimed run and due job reads two to four. A value no member has still fails, in the call.
_KIND = {m.value: m for m in JobKind}
_STATUS = {m.value: m for m in RunStatus}
_OVERLAP = {m.value: m for m in Overlap}
_CATCH_UP = {m.value: m for m in CatchUp}


def app_from_row(row: Row[Any]) -> App:
    m = row._mapping
    return App(
        name=m["name"],
        schedules_enabled=bool(m["schedules_enabled"]),
        created_at=m["created_at"],
        retention_days=m["retention_days"],
    )


def job_from_row(row: Row[Any] | Mapping[str, Any]) -> Job:
    m = row._mapping if isinstance(row, Row) else row
    retries = m["retries"] or {}
    return Job(
        id=m["id"],
        app=m["app"],
        name=m["name"],
        kind=_KIND.get(m["kind"]) or JobKind(m["kind"]),
        config=m["config"] or {},
        description=m["description"] or "",
        tags=list(m["tags"] or []),
        schedule=m["schedule"],
        timezone=m["timezone"],
        enabled=bool(m["enabled"]),
        overlap=_OVERLAP.get(m["overlap"]) or Overlap(m["overlap"]),
        catch_up=_CATCH_UP.get(m["catch_up"]) or CatchUp(m["catch_up"]),
        max_lateness_s=m["max_lateness_s"],
        retries=RetryPolicy(max=retries.get("max", 0), backoff_s=retries.get("backoff_s", 10.0)),
        timeout_s=m["timeout_s"],
        low_priority=bool(m["low_priority"]),
        start_at=m["start_at"],
        end_at=m["end_at"],
        start_delay_s=m["start_delay_s"],
        jitter_s=m["jitter_s"],
        next_fire_at=m["next_fire_at"],
        deactivated_reason=m["deactivated_reason"],
        hold=JobHold(m["hold"]) if m["hold"] else None,
        declared=bool(m["declared"]),
        system=bool(m["system"]),
        anchor_at=m["anchor_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_run_id=m.get("last_run_id"),
        active_runs=m.get("active_runs") or 0,
    )


def job_values(job: Job) -> JSON:
    """Column values of a job, as inserted (no id, no computed columns)."""
    return {
        "app": job.app,
        "name": job.name,
        "description": job.description,
        "tags": list(job.tags),
        "kind": str(job.kind),
        "config": job.config,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "enabled": job.enabled,
        "overlap": str(job.overlap),
        "catch_up": str(job.catch_up),
        "max_lateness_s": job.max_lateness_s,
        "retries": job.retries.as_dict(),
        "timeout_s": job.timeout_s,
        "low_priority": job.low_priority,
        "start_at": job.start_at,
        "end_at": job.end_at,
        "start_delay_s": job.start_delay_s,
        "jitter_s": job.jitter_s,
        "next_fire_at": job.next_fire_at,
        "deactivated_reason": job.deactivated_reason,
        "hold": str(job.hold) if job.hold else None,
        "declared": job.declared,
        "system": job.system,
        "anchor_at": job.anchor_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def encode_job_changes(changes: JSON) -> JSON:
    """Domain values in a job change set to column values."""
    out = dict(changes)
    for key in ("kind", "overlap", "catch_up", "hold"):
        if out.get(key) is not None:
            out[key] = str(out[key])
    if isinstance(out.get("retries"), RetryPolicy):
        out["retries"] = out["retries"].as_dict()
    if "tags" in out:
        out["tags"] = list(out["tags"])
    return out


def run_from_row(row: Row[Any] | Mapping[str, Any]) -> Run:
    m = row._mapping if isinstance(row, Row) else row
    return Run(
        id=m["id"],
        job_id=m["job_id"],
        app=m["app"],
        kind=_KIND.get(m["kind"]) or JobKind(m["kind"]),
        status=_STATUS.get(m["status"]) or RunStatus(m["status"]),
        created_at=m["created_at"],
        run_at=m["run_at"],
        scheduled_for=m["scheduled_for"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        attempt=m["attempt"],
        retry_of=m["retry_of"],
        error=m["error"],
        low_priority=bool(m["low_priority"]),
        run_by=m["run_by"],
        progress=m["progress"],
        parent_id=m["parent_id"],
        root_id=m["root_id"],
        rank=m["rank"],
        params=m["params"] or {},
        result=m["result"],
        state=m["state"],
        reason=m["reason"],
        skip_count=m["skip_count"],
        last_scheduled_for=m["last_scheduled_for"],
        exclusive=bool(m["exclusive"]),
        is_test=bool(m["is_test"]),
        lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"],
        lost_streak=m["lost_streak"],
        children_total=m["children_total"],
        children_finished=m["children_finished"],
        children_failed=m["children_failed"],
        job_name=m.get("job_name"),
    )


def log_from_row(row: Row[Any]) -> LogLine:
    m = row._mapping
    return LogLine(
        id=m["id"], run_id=m["run_id"], at=m["at"], level=m["level"], message=m["message"]
    )
