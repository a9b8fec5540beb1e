"""The run-control part of the store's contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from nightshift.clock import FakeClock
from nightshift.domain.status import RunStatus
from nightshift.errors import NotFound
from nightshift.store import Completion, NewRun, RunProgress, SqlStore
from nightshift.store.base import RunChange
from tests.factories import make_job

S = RunStatus
KINDS = ["python"]


def claimed(store: SqlStore, clock: FakeClock, owner: str = "w1") -> int:
    """Enqueue a run of a fresh job and claim it: its id, running under `owner`."""
    job = store.create_job(make_job(clock.now(), name=f"job-{owner}-{clock.now().timestamp()}"))
    run = store.enqueue(NewRun(job_id=job.id, run_at=clock.now()), clock.now())
    assert [c.run.id for c in store.claim(owner, clock.now(), 30, 1, KINDS)] == [run.id]
    return run.id


def test_stop_and_force_stop_are_compare_and_set_and_reach_the_worker(
    store: SqlStore, clock: FakeClock
) -> None:
    run_id = claimed(store, clock)
    stop = RunChange(expected=S.RUNNING, status=S.STOPPING, log="stop requested by ops")
    assert store.change_run(run_id, stop, clock.now()).status == S.STOPPING
    assert store.change_run(run_id, stop, clock.now()) is None  # it is stopping by now
    seen = store.sync("w1", clock.now(), 30, [RunProgress(run_id)])
    assert seen.stopping == {run_id} and seen.kill == {}
    kill = RunChange(S.STOPPING, S.STOPPING, reason="force-stopped", kill=True)
    store.change_run(run_id, kill, clock.now())
    assert store.sync("w1", clock.now(), 30, [RunProgress(run_id)]).kill == {
        run_id: "force-stopped"
    }
    assert [line.message for line in store.get_logs(run_id)] == ["stop requested by ops"]
    with pytest.raises(NotFound):
        store.change_run(10_000, stop, clock.now())


def test_resume_keeps_the_checkpoint_and_makes_the_run_due_now(
    store: SqlStore, clock: FakeClock
) -> None:
    run_id = claimed(store, clock)
    store.change_run(run_id, RunChange(S.RUNNING, S.STOPPING), clock.now())
    done = Completion(run_id, "w1", S.STOPPED, clock.now(), state=300, progress=30.0)
    assert store.complete([done]) == [True]
    clock.advance(300)
    resumed = store.change_run(
        run_id, RunChange(S.STOPPED, S.PENDING, reason="resumed"), clock.now()
    )
    assert resumed is not None
    assert (resumed.status, resumed.state, resumed.progress) == (S.PENDING, 300, 30.0)
    assert resumed.run_at == clock.now() and resumed.finished_at is None
    again = store.claim("w2", clock.now(), 30, 1, KINDS)
    assert [(c.run.id, c.run.state) for c in again] == [(run_id, 300)]


def test_cancelling_a_child_counts_as_finished_for_its_parent(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    parent = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    child = store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=parent.id), now)
    cancel = RunChange(S.PENDING, S.CANCELLED, reason="cancelled")
    assert store.change_run(child.id, cancel, now).finished_at == now
    after = store.get_run(parent.id)
    assert (after.children_total, after.children_finished, after.children_failed) == (1, 1, 0)
    assert store.change_run(child.id, cancel, now) is None  # counted once
    assert store.get_run(parent.id).children_finished == 1


def test_restart_inserts_a_linked_run_and_retires_a_stopped_one(
    store: SqlStore, clock: FakeClock
) -> None:
    run_id = claimed(store, clock)
    store.change_run(run_id, RunChange(S.RUNNING, S.STOPPING), clock.now())
    store.complete([Completion(run_id, "w1", S.STOPPED, clock.now(), state=5)])
    old = store.get_run(run_id)
    new = NewRun(job_id=old.job_id, run_at=clock.now(), params={"a": 1}, run_by="ops",
                 reason=f"restart of run {run_id}")  # fmt: skip
    assert store.restart_run(run_id, S.SUCCEEDED, new, clock.now()) is None  # not its status
    fresh = store.restart_run(run_id, S.STOPPED, new, clock.now())
    assert fresh is not None and fresh.id != run_id
    assert (fresh.status, fresh.params, fresh.run_by, fresh.state) == (
        S.PENDING,
        {"a": 1},
        "ops",
        None,
    )
    assert fresh.reason == f"restart of run {run_id}"
    retired = store.get_run(run_id)
    assert (retired.status, retired.reason) == (S.CANCELLED, f"restarted as run {fresh.id}")
    assert [ln.message for ln in store.get_logs(fresh.id)] == [f"restart of run {run_id} by ops"]
    assert store.restart_run(run_id, S.STOPPED, new, clock.now()) is None  # once only
    assert store.count_runs(job_id=old.job_id) == 2


def test_claims_take_normal_runs_before_low_priority_ones(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    low = store.enqueue(NewRun(job_id=job.id, run_at=now, low_priority=True), now)
    clock.advance(1)
    normal = [store.enqueue(NewRun(job_id=job.id, run_at=clock.now()), clock.now()) for _ in "ab"]
    first = store.claim("w1", clock.now(), 30, 2, KINDS)
    assert [c.run.id for c in first] == [r.id for r in normal]  # the older low one waits
    assert store.get_run(low.id).status == S.PENDING
    # Flags move both ways, any time.
    extra = store.enqueue(NewRun(job_id=job.id, run_at=clock.now()), clock.now())
    assert store.set_run_low_priority(extra.id, True).low_priority is True
    assert store.set_run_low_priority(low.id, False).low_priority is False
    assert [c.run.id for c in store.claim("w1", clock.now(), 30, 1, KINDS)] == [low.id]
    with pytest.raises(NotFound):
        store.set_run_low_priority(10_000, True)


def test_enqueue_many_gives_children_ranks_as_enqueue_does(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    root = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    news = [NewRun(job_id=job.id, run_at=now, parent_id=root.id, params={"n": n}) for n in range(5)]
    assert store.enqueue_many(news, now) == 5
    single = store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=root.id), now)
    children = sorted(store.list_runs(root_id=root.id), key=lambda r: r.id)[1:]
    assert [(r.rank, r.root_id) for r in children] == [(n, root.id) for n in range(1, 7)]
    assert [r.params for r in children[:5]] == [{"n": n} for n in range(5)]
    assert single.rank == 6 and store.get_run(root.id).children_total == 6
    with pytest.raises(NotFound):
        store.enqueue_many([NewRun(job_id=job.id, run_at=now, parent_id=10_000)], now)
    assert store.count_runs(job_id=job.id) == 7  # nothing of the failed batch
