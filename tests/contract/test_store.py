"""The store's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from nightshift.clock import FakeClock
from nightshift.domain.misfire import FirePlan, Skip
from nightshift.domain.models import Overlap, Run
from nightshift.domain.status import RunStatus
from nightshift.errors import Conflict, NotFound
from nightshift.store import Completion, NewRun, RunProgress, SqlStore, open_store
from tests.factories import make_job

S = RunStatus


def held_run(store: SqlStore, now: datetime, owner: str = "w") -> Run:
    """The one run of a new job, claimed by `owner` at `now` under a 30 s lease."""
    job = store.create_job(make_job(now))
    run = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    assert [c.run.id for c in store.claim(owner, now, 30, 1, ["python"])] == [run.id]
    return run


def test_jobs_round_trip_and_filters(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    a = store.create_job(make_job(now, name="a", tags=["x", "y"], app="shop"))
    b = store.create_job(make_job(now, name="b", kind="http", config={"url": "http://e"}))
    assert store.get_job(a.id).tags == ["x", "y"]
    assert store.get_app("shop").schedules_enabled is True
    assert [j.name for j in store.list_jobs()] == ["a", "b"]
    assert [j.name for j in store.list_jobs(app="shop")] == ["a"]
    assert [j.name for j in store.list_jobs(tag="y")] == ["a"]
    assert [j.name for j in store.list_jobs(kind="http")] == ["b"]
    assert [j.name for j in store.list_jobs(after_id=a.id)] == ["b"]
    with pytest.raises(Conflict):
        store.create_job(make_job(now, name="a", app="shop"))
    updated = store.update_job(b.id, {"description": "changed", "enabled": False})
    assert (updated.description, updated.enabled) == ("changed", False)
    assert [j.name for j in store.list_jobs(enabled=False)] == ["b"]
    store.delete_job(a.id)
    with pytest.raises(NotFound):
        store.get_job(a.id)
    with pytest.raises(NotFound):
        store.delete_job(a.id)


def test_a_claim_sees_every_change_to_its_job(store: SqlStore, clock: FakeClock) -> None:
    """Claims read a job once and reuse it until the catalog changes: any change, made through
    this store or another process's, shows in the next claim."""
    now = clock.now()

    def claim_a_run_of(job_id: int):  # type: ignore[no-untyped-def]
        store.enqueue(NewRun(job_id=job_id, run_at=now), now)
        (claimed,) = store.claim("w1", now, 30, 10, ["python"])
        return claimed.job

    job = store.create_job(make_job(now, config={"function": "m:a"}))
    first = claim_a_run_of(job.id)
    assert first.config == {"function": "m:a"}
    assert claim_a_run_of(job.id) is first  # read once

    store.update_job(job.id, {"config": {"function": "m:b"}, "timeout_s": 5.0})
    changed = claim_a_run_of(job.id)
    assert (changed.config, changed.timeout_s) == ({"function": "m:b"}, 5.0)

    other_process = open_store(store.url, migrate=False)
    try:
        other_process.update_job(job.id, {"name": "renamed", "retries": {"max": 3}})
    finally:
        other_process.close()
    renamed = claim_a_run_of(job.id)
    assert (renamed.name, renamed.retries.max) == ("renamed", 3)

    # Deleted, and another job created (SQLite may give it the same id).
    store.delete_job(job.id)
    new = store.create_job(make_job(now, name="new", config={"function": "m:c"}))
    fresh = claim_a_run_of(new.id)
    assert (fresh.id, fresh.name, fresh.config) == (new.id, "new", {"function": "m:c"})


def test_deleting_a_job_deletes_its_runs_and_logs(store: SqlStore, clock: FakeClock) -> None:
    job = store.create_job(make_job(clock.now()))
    run = store.enqueue(NewRun(job_id=job.id, run_at=clock.now()), clock.now())
    store.delete_job(job.id)
    with pytest.raises(NotFound):
        store.get_run(run.id)


def test_claim_order_normal_first_then_rank_then_oldest(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    low = store.enqueue(NewRun(job_id=job.id, run_at=now, low_priority=True), now)
    root = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    kids = [
        store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=root.id), now) for _ in range(3)
    ]
    later_root = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    future = store.enqueue(NewRun(job_id=job.id, run_at=now + timedelta(hours=1)), now)

    claimed = store.claim("w1", now, 30, 10, ["python"])
    order = [c.run.id for c in claimed]
    # Roots (rank 0) before the first root's children, children in order, low priority last;
    # the run due in an hour is not claimed.
    assert order == [root.id, later_root.id, *[k.id for k in kids], low.id]
    assert future.id not in order
    assert all(c.run.status == S.RUNNING and c.run.lease_owner == "w1" for c in claimed)
    assert store.next_run_due(now) == future.run_at
    assert store.claim("w2", now, 30, 10, ["python"]) == []
    assert store.claim("w2", now, 30, 10, ["http"]) == []


def test_children_carry_root_and_counts(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    root = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    child = store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=root.id), now)
    grandchild = store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=child.id), now)
    assert (child.parent_id, child.root_id) == (root.id, root.id)
    assert (grandchild.parent_id, grandchild.root_id) == (child.id, root.id)
    assert grandchild.rank == 2
    assert store.get_run(root.id).children_total == 1
    claimed = {c.run.id for c in store.claim("w", now, 30, 10, ["python"])}
    assert {child.id, grandchild.id} <= claimed
    store.complete(
        [
            Completion(child.id, "w", S.SUCCEEDED, now),
            Completion(grandchild.id, "w", S.FAILED, now),
        ]
    )
    parent = store.get_run(root.id)
    assert (parent.children_total, parent.children_finished, parent.children_failed) == (1, 1, 0)
    mid = store.get_run(child.id)
    assert (mid.children_total, mid.children_finished, mid.children_failed) == (1, 1, 1)
    assert {r.id for r in store.list_runs(root_id=root.id)} == {root.id, child.id, grandchild.id}
    with pytest.raises(NotFound):
        store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=999_999), now)


def test_exclusive_runs_take_the_job_slot_one_at_a_time(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    job = store.create_job(make_job(now, overlap=Overlap.QUEUE))
    first = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    second = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    assert first.exclusive and second.exclusive
    assert [c.run.id for c in store.claim("w", now, 30, 10, ["python"])] == [first.id]
    assert store.claim("w", now, 30, 10, ["python"]) == []
    assert store.complete([Completion(first.id, "w", S.SUCCEEDED, now)]) == [True]
    assert [c.run.id for c in store.claim("w", now, 30, 10, ["python"])] == [second.id]


def test_completion_is_fenced_by_the_lease_owner(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    run = held_run(store, now, "w1")
    assert store.complete([Completion(run.id, "intruder", S.SUCCEEDED, now)]) == [False]
    assert store.get_run(run.id).status == S.RUNNING
    done = Completion(
        run.id, "w1", S.SUCCEEDED, now, result={"returned": "OK"}, logs=[(now, "INFO", "hi")]
    )
    assert store.complete([done]) == [True]
    finished = store.get_run(run.id)
    assert (finished.status, finished.result, finished.lease_owner) == (
        S.SUCCEEDED,
        {"returned": "OK"},
        None,
    )
    assert [line.message for line in store.get_logs(run.id)] == ["hi"]
    assert store.complete([done]) == [False]  # twice: the second is fenced out


def test_sync_renews_leases_stores_progress_and_reports_requests(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    a = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    b = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    store.claim("w", now, 10, 10, ["python"])
    later = now + timedelta(seconds=8)
    update = RunProgress(
        a.id,
        progress=40.0,
        state={"i": 4},
        state_changed=True,
        logs=[(later, "INFO", "working"), (later, "ERROR", "oops")],
    )
    result = store.sync("w", later, 10, [update, RunProgress(b.id)])
    assert result.lost == set() and result.stopping == set()
    run = store.get_run(a.id)
    assert (run.progress, run.state) == (40.0, {"i": 4})
    assert run.lease_expires_at == later + timedelta(seconds=10)
    assert [x.message for x in store.get_logs(a.id, level="error")] == ["oops"]
    assert [x.message for x in store.get_logs(a.id, q="WORK")] == ["working"]
    assert store.sync("other", later, 10, [RunProgress(a.id)]).lost == {a.id}


def test_sync_renews_a_lease_once_a_tenth_of_it_has_passed(
    store: SqlStore, clock: FakeClock
) -> None:
    """A renewal rewrites the run's row: a heartbeat every 0.5 s renews a 30 s lease every 3 s."""
    now = clock.now()
    run = held_run(store, now)
    soon = now + timedelta(seconds=2.5)
    assert store.sync("w", soon, 30, [RunProgress(run.id, progress=10.0)]).lost == set()
    held = store.get_run(run.id)
    assert held.lease_expires_at == now + timedelta(seconds=30)  # as claimed
    assert held.progress == 10.0  # what the heartbeat carries is stored all the same
    later = now + timedelta(seconds=3.5)
    store.sync("w", later, 30, [RunProgress(run.id)])
    assert store.get_run(run.id).lease_expires_at == later + timedelta(seconds=30)


def test_expired_leases_become_next_attempts_three_times_then_fail(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    first = store.enqueue(NewRun(job_id=job.id, run_at=now, params={"p": 1}), now)
    attempts = []
    for i in range(3):
        claimed = store.claim(f"w{i}", clock.now(), 5, 10, ["python"])
        assert len(claimed) == 1
        attempts.append(claimed[0].run)
        store.sync(
            f"w{i}",
            clock.now(),
            5,
            [RunProgress(claimed[0].run.id, state={"at": i}, state_changed=True)],
        )
        clock.advance(6)
        assert store.recover_expired(clock.now(), 3) == 1
    assert [r.attempt for r in attempts] == [1, 2, 3]
    assert attempts[1].retry_of == first.id and attempts[1].params == {"p": 1}
    assert attempts[2].state == {"at": 1}  # each attempt starts from the last checkpoint
    runs = store.list_runs(job_id=job.id)
    assert [r.status for r in runs] == [S.FAILED, S.FAILED, S.FAILED]
    assert runs[0].error["message"] == "worker lost 3 times in a row"
    assert all(r.reason == "worker lost" for r in runs)
    assert store.count_runs(job_id=job.id, status=["pending"]) == 0


def test_dead_owners_leases_expire_now_and_release_returns_runs(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    a = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    b = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    store.claim("dead", now, 300, 1, ["python"])
    store.claim("alive", now, 300, 1, ["python"])
    assert sorted(store.lease_owners()) == ["alive", "dead"]
    assert store.expire_leases(["dead"], now) == 1
    assert store.recover_expired(now, 3) == 1
    assert store.get_run(a.id).status == S.FAILED
    assert store.release("alive", [b.id], {b.id: {"cursor": 7}}) == 1
    back = store.get_run(b.id)
    assert (back.status, back.state, back.started_at, back.lease_owner) == (
        S.PENDING,
        {"cursor": 7},
        None,
        None,
    )


def test_fire_due_inserts_runs_and_skips_and_advances_the_timer(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    slot = now - timedelta(seconds=1)
    job = store.create_job(make_job(now, schedule="every 1m", next_fire_at=slot))

    def plan(_job):  # type: ignore[no-untyped-def]
        return FirePlan(
            runs=[(slot, slot)],
            skips=[Skip("missed", slot - timedelta(minutes=3), slot - timedelta(minutes=1), 3)],
            next_fire_at=slot + timedelta(minutes=1),
        )

    assert store.fire_due(now, plan, 100) == 1
    runs = store.list_runs(job_id=job.id)
    assert [(r.status, r.scheduled_for) for r in runs] == [
        (S.PENDING, slot),
        (S.SKIPPED, slot - timedelta(minutes=3)),
    ]
    assert runs[1].skip_count == 3 and runs[1].reason == "missed"
    assert store.get_job(job.id).next_fire_at == slot + timedelta(minutes=1)
    assert store.fire_due(now, plan, 100) == 0  # not due any more
    # A second scheduler holding a stale plan for the same slot cannot insert it twice.
    store.update_job(job.id, {"next_fire_at": slot})
    store.fire_due(
        now, lambda j: FirePlan(runs=[(slot, slot)], next_fire_at=slot + timedelta(minutes=1)), 100
    )
    assert store.count_runs(job_id=job.id, status=["pending"]) == 1


def test_consecutive_skips_coalesce_into_one_record(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    job = store.create_job(make_job(now, schedule="every 1m", next_fire_at=now))
    for i in range(3):
        t = now + timedelta(minutes=i)
        store.update_job(job.id, {"next_fire_at": t})
        store.fire_due(
            t,
            lambda j, t=t: FirePlan(
                skips=[Skip("overlap", t, t, 1)], next_fire_at=t + timedelta(minutes=1)
            ),
            10,
        )
    skipped = store.list_runs(job_id=job.id)
    assert len(skipped) == 1
    assert (skipped[0].skip_count, skipped[0].last_scheduled_for) == (3, now + timedelta(minutes=2))


def test_disabled_app_schedules_are_not_due_and_retime_on_enable(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now, app="shop", schedule="every 1m", next_fire_at=now))
    assert store.next_fire_due() == now
    store.set_app_schedules("shop", False, lambda j: None)
    assert store.next_fire_due() is None
    assert store.fire_due(now, lambda j: FirePlan(), 10) == 0
    later = now + timedelta(hours=1)
    store.set_app_schedules("shop", True, lambda j: later)
    assert store.get_job(job.id).next_fire_at == later
    with pytest.raises(NotFound):
        store.set_app_schedules("nope", True, lambda j: None)


def test_holds_are_released_with_a_new_timer(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    job = store.create_job(make_job(now, schedule="every 1m", next_fire_at=now, hold="stop"))
    assert store.next_fire_due() is None
    version = store.schedule_version()
    assert store.release_holds(lambda j: now + timedelta(minutes=5)) == 1
    assert store.get_job(job.id).hold is None
    assert store.next_fire_due() == now + timedelta(minutes=5)
    assert store.schedule_version() > version


def test_completion_applies_job_changes_and_inserts_the_retry(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    run = held_run(store, now)
    retry = NewRun(job_id=run.job_id, run_at=now + timedelta(seconds=5), attempt=2, retry_of=run.id)
    store.complete(
        [
            Completion(
                run.id,
                "w",
                S.FAILED,
                now,
                error={"type": "E", "message": "m"},
                job_changes={"deactivated_reason": "x", "enabled": False},
                retry=retry,
            )
        ]
    )
    assert store.get_job(run.job_id).enabled is False
    runs = store.list_runs(job_id=run.job_id)
    assert [(r.attempt, r.status, r.retry_of) for r in runs] == [
        (2, S.PENDING, run.id),
        (1, S.FAILED, None),
    ]


def test_list_runs_filters_and_cursor(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    a = store.create_job(make_job(now, name="a", app="one"))
    b = store.create_job(make_job(now, name="b", app="two", system=True))
    ra = [
        store.enqueue(NewRun(job_id=a.id, run_at=now), now + timedelta(seconds=i)) for i in range(3)
    ]
    rb = store.enqueue(NewRun(job_id=b.id, run_at=now), now)
    assert [r.id for r in store.list_runs()] == [r.id for r in reversed(ra)]
    assert [r.id for r in store.list_runs(system=None)] == [rb.id, *[r.id for r in reversed(ra)]]
    assert [r.id for r in store.list_runs(system=True)] == [rb.id]
    assert [r.id for r in store.list_runs(app="one", limit=2)] == [ra[2].id, ra[1].id]
    assert [r.id for r in store.list_runs(before_id=ra[1].id)] == [ra[0].id]
    assert [
        r.id
        for r in store.list_runs(since=now + timedelta(seconds=1), until=now + timedelta(seconds=2))
    ] == [ra[1].id]
    assert store.list_runs(status=["running"]) == []
    assert store.get_run(ra[0].id).job_name == "a"


def test_migrate_is_idempotent(store: SqlStore) -> None:
    store.migrate()
    store.migrate()
    store.ping()


def test_the_known_head_is_alembics_head() -> None:
    """`migrate.HEAD` lets a process skip Alembic when the schema is current: it must be the
    newest migration."""
    from alembic.script import ScriptDirectory

    from nightshift.store.migrate import HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def test_an_older_schema_is_brought_to_head(store: SqlStore) -> None:
    from alembic import command

    from nightshift.store.migrate import HEAD, alembic_config, current_revision

    cfg = alembic_config()
    with store.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
        conn.commit()
    assert current_revision(store.engine) == "0005"
    store.migrate()
    assert current_revision(store.engine) == HEAD


def test_release_ends_runs_asked_to_stop_as_stopped(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    run = held_run(store, now)
    with store.engine.begin() as conn:  # what the stop operation writes
        from sqlalchemy import update

        from nightshift.store.tables import runs

        conn.execute(update(runs).where(runs.c.id == run.id).values(status="stopping"))
    later = now + timedelta(seconds=3)
    assert store.release("w", [run.id], {run.id: {"i": 3}}, later) == 1
    stopped = store.get_run(run.id)
    assert (stopped.status, stopped.state, stopped.finished_at) == (S.STOPPED, {"i": 3}, later)
    assert stopped.started_at == now


def test_log_lines_synced_after_the_completion_are_kept_but_progress_is_fenced(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    run = held_run(store, now)
    # The completion commits before the heartbeat that carries the run's last log line.
    assert store.complete([Completion(run.id, "w", S.SUCCEEDED, now, progress=100.0)]) == [True]
    late = RunProgress(run.id, progress=10.0, logs=[(now, "INFO", "running v1")])
    assert store.sync("w", now, 30, [late]).lost == {run.id}
    assert [line.message for line in store.get_logs(run.id)] == ["running v1"]
    assert store.get_run(run.id).progress == 100.0
    # A run that no longer exists (its job was deleted) is simply reported lost.
    store.delete_job(run.job_id)
    assert store.sync("w", now, 30, [late]).lost == {run.id}


def test_one_batch_of_completions_records_each_as_its_own(
    store: SqlStore, clock: FakeClock
) -> None:
    """A worker records many outcomes in one call: each keeps its own values and extras, and a
    fenced-out one changes nothing."""
    now = clock.now()
    job = store.create_job(make_job(now))
    queued = store.create_job(make_job(now, name="queued", overlap=Overlap.QUEUE))
    root = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    store.claim("w", now, 30, 1, ["python"])
    kid = store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=root.id), now)
    lone = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    exclusive = store.enqueue(NewRun(job_id=queued.id, run_at=now), now)
    outsider = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    next_in_line = store.enqueue(NewRun(job_id=queued.id, run_at=now), now)
    claimed = {c.run.id for c in store.claim("w", now, 30, 10, ["python"])}
    assert claimed == {kid.id, lone.id, exclusive.id, outsider.id}  # the slot holds the next
    began = now + timedelta(seconds=1)  # a run that waited for a process records its real start
    done_at = now + timedelta(seconds=2)
    results = store.complete(
        [
            Completion(kid.id, "w", S.SUCCEEDED, done_at, result={"n": 1}, started_at=began),
            Completion(
                lone.id,
                "w",
                S.FAILED,
                done_at,
                error={"type": "E", "message": "m"},
                logs=[(done_at, "ERROR", "lone failed")],
            ),
            Completion(exclusive.id, "w", S.SUCCEEDED, done_at, progress=100.0),
            Completion(outsider.id, "intruder", S.SUCCEEDED, done_at),
        ]
    )
    assert results == [True, True, True, False]
    k, lo, ex, out = (store.get_run(r.id) for r in (kid, lone, exclusive, outsider))
    assert (k.status, k.result, k.started_at, k.finished_at) == (
        S.SUCCEEDED, {"n": 1}, began, done_at
    )  # fmt: skip
    assert (lo.status, lo.error["type"], lo.started_at, lo.finished_at) == (
        S.FAILED, "E", now, done_at
    )  # fmt: skip
    assert [line.message for line in store.get_logs(lone.id)] == ["lone failed"]
    assert (ex.status, ex.progress) == (S.SUCCEEDED, 100.0)
    # the exclusive slot is free again: the next run of that job can be claimed
    assert [c.run.id for c in store.claim("w", now, 30, 10, ["python"])] == [next_in_line.id]
    assert (out.status, out.lease_owner) == (S.RUNNING, "w")  # fenced out: untouched
    parent = store.get_run(root.id)
    assert (parent.children_finished, parent.children_failed) == (1, 0)
    assert store.complete([Completion(kid.id, "w", S.FAILED, done_at)]) == [False]  # only once


def test_enqueue_job_reads_the_job_and_inserts_in_one_transaction(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(make_job(now, low_priority=True))
    seen = []

    def make(current):  # type: ignore[no-untyped-def]
        seen.append(current)
        return NewRun(job_id=current.id, run_at=now, low_priority=current.low_priority)

    run = store.enqueue_job(job.id, make, now)
    assert [j.id for j in seen] == [job.id] and seen[0].name == job.name
    assert run == store.get_run(run.id)
    assert (run.status, run.low_priority, run.job_name) == ("pending", True, job.name)

    def refuse(current):  # type: ignore[no-untyped-def]
        raise Conflict("no")

    with pytest.raises(Conflict):
        store.enqueue_job(job.id, refuse, now)
    with pytest.raises(NotFound):
        store.enqueue_job(job.id + 1000, make, now)
    assert [r.id for r in store.list_runs(job_id=job.id)] == [run.id]  # nothing else written


def test_a_new_run_is_inserted_with_every_value_run_values_gives() -> None:
    from nightshift.store.sql.runs import NEW_RUN_COLUMNS, run_values

    values = run_values(
        NewRun(job_id=1, run_at=None), {"app": "a", "kind": "python", "overlap": "allow"}, None
    )  # type: ignore[arg-type]
    assert {*values, "root_id", "rank"} == set(NEW_RUN_COLUMNS)
