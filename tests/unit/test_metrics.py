"""The worker's metrics, from what it holds."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from nightshift.config import Settings
from nightshift.domain.models import JobKind
from nightshift.metrics import WorkerCollector


def test_busy_slots_count_the_runs_that_began_only() -> None:
    now = datetime.now(UTC)

    def chan(kind: JobKind, started_at: datetime | None) -> SimpleNamespace:
        return SimpleNamespace(job=SimpleNamespace(kind=kind), started_at=started_at)

    worker = SimpleNamespace(
        inflight={
            1: chan(JobKind.PYTHON, now),
            2: chan(JobKind.PYTHON, None),  # waiting for a process, or held for its time
            3: chan(JobKind.PYTHON, None),
            4: chan(JobKind.HTTP, now),
            5: chan(JobKind.HTTP, None),  # held for its time
        },
        withdrawn_total=3,
        processes_up=1,  # one of two: the other is being replaced
    )
    settings = Settings(worker_processes=2, worker_concurrency=10)
    families = {f.name: f for f in WorkerCollector(worker, settings).collect()}  # type: ignore[arg-type]
    busy = {s.labels["pool"]: s.value for s in families["nightshift_worker_busy_slots"].samples}
    util = {s.labels["pool"]: s.value for s in families["nightshift_worker_utilisation"].samples}
    assert busy == {"process": 1, "loop": 1}
    assert util == {"process": 0.5, "loop": 0.1}
    [withdrawn] = families["nightshift_worker_runs_withdrawn"].samples
    assert withdrawn.name == "nightshift_worker_runs_withdrawn_total" and withdrawn.value == 3
    [up] = families["nightshift_worker_processes_up"].samples
    assert up.value == 1
