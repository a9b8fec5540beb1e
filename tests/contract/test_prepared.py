"""Statements run on the driver (store/sql/prepared.py) read and write exactly as
`Connection.execute` does, and fail as it does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import bindparam, exc, insert, select, text, update
from sqlalchemy.schema import CreateIndex

from nightshift.clock import FakeClock
from nightshift.domain.alerts import AlertEvent, AlertRule, Channel, NewDelivery
from nightshift.domain.misfire import FirePlan
from nightshift.domain.status import RunStatus
from nightshift.errors import Refused
from nightshift.store import SqlStore, open_store
from nightshift.store.base import Completion, NewRun, RunProgress
from nightshift.store.sql import engine as engine_module
from nightshift.store.sql import firing, leases
from nightshift.store.sql.prepared import Prepared, one_of
from nightshift.store.tables import alert_deliveries, apps, jobs, runs
from tests.conftest import PG_URL
from tests.factories import make_job
from tests.plans import explain, statements_sent


def test_claimed_runs_and_jobs_read_as_through_sqlalchemy(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    job = store.create_job(
        make_job(now, config={"function": "m:f", "nested": {"a": [1, 2.5, None]}}, timeout_s=1.5)
    )
    run = store.enqueue(
        NewRun(job_id=job.id, run_at=now, params={"x": 1, "y": "é"}, state={"s": [1]}), now
    )
    (claimed,) = store.claim("w1", now, 30, 10, ["python"])
    # Every field of the run and the job the worker gets equals the store's own read of them.
    assert claimed.run == store.get_run(run.id)
    # (last_run_id is not a column: the catalog computes it; a claim does not need it.)
    assert claimed.job == replace(store.get_job(job.id), last_run_id=None)
    assert claimed.run.params == {"x": 1, "y": "é"}
    assert claimed.run.started_at == now
    assert claimed.run.lease_expires_at == now + timedelta(seconds=30)
    assert claimed.job.timeout_s == 1.5

    done = Completion(
        run_id=run.id,
        owner="w1",
        status="succeeded",  # type: ignore[arg-type]
        finished_at=now + timedelta(seconds=2),
        result={"ok": True, "n": 2.5},
        state={"s": [2]},
        progress=1.0,
    )
    assert store.complete([done]) == [True]
    after = store.get_run(run.id)
    assert after is not None
    assert (after.status, after.result, after.state) == (
        "succeeded",
        {"ok": True, "n": 2.5},
        {"s": [2]},
    )
    assert after.finished_at == now + timedelta(seconds=2)
    assert after.started_at == now  # kept: the completion left it out
    assert after.lease_owner is None


def test_json_values_most_runs_hold_read_as_through_sqlalchemy(
    store: SqlStore, clock: FakeClock
) -> None:
    """Empty params and absent result / state / error (JSON {} and null, decoded without the
    parser) read as `Connection.execute` reads them, each run with a dict of its own; JSON that
    merely starts like them is parsed."""
    now = clock.now()
    job = store.create_job(make_job(now))
    plain = [store.enqueue(NewRun(job_id=job.id, run_at=now), now).id for _ in range(2)]
    odd = store.enqueue(NewRun(job_id=job.id, run_at=now, params={"null": {}}, state="{}"), now)
    claimed = {c.run.id: c.run for c in store.claim("w1", now, 30, 10, ["python"])}
    with store.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(runs).where(runs.c.id.in_(claimed)))}
    for run_id, run in claimed.items():
        row = rows[run_id]
        assert (run.params, run.result, run.state, run.error) == (
            row.params,
            row.result,
            row.state,
            row.error,
        )
    a, b = (claimed[i] for i in plain)
    assert a.params == {} and a.result is None and a.state is None and a.error is None
    a.params["x"] = 1
    assert b.params == {}
    assert (claimed[odd.id].params, claimed[odd.id].state) == ({"null": {}}, "{}")


def test_fixed_values_lists_and_named_parameters(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    job = store.create_job(make_job(now))
    ids = [store.enqueue(NewRun(job_id=job.id, run_at=now), now).id for _ in range(3)]
    dialect = store.engine.dialect
    query = (
        select(runs.c.id, runs.c.created_at)
        .where(one_of(runs.c.id, "ids", dialect.name))
        .where(one_of(runs.c.status, "open", dialect.name, ["pending", "running"]))
        .where(runs.c.kind == "python")
        .order_by(runs.c.id)
    )
    prepared = Prepared(query, dialect)
    with store.engine.begin() as conn:
        rows = prepared.rows(conn, {"ids": [*ids[:2], 10_000]})
        # One text for every list length; a fixed list can still be overridden by name.
        assert [r["id"] for r in rows] == ids[:2]
        assert all(r["created_at"] == now for r in rows)
        assert prepared.rows(conn, {"ids": ids, "open": ["running"]}) == []
        assert prepared.rows(conn, {"ids": []}) == []


def test_expanding_in_is_refused(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="one_of"):
        Prepared(select(runs.c.id).where(runs.c.id.in_([1, 2])), store.engine.dialect)


def test_driver_errors_are_sqlalchemys_and_roll_back(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    store.create_job(make_job(now, name="taken"))
    dialect = store.engine.dialect
    rename = Prepared(
        update(jobs).where(jobs.c.name == bindparam("old")).values(name=bindparam("new")), dialect
    )
    add_app = Prepared(insert(apps).values(name=bindparam("app"), created_at=now), dialect)
    store.create_job(make_job(now, name="other"))

    def both() -> None:
        with store.engine.begin() as conn:
            add_app.many(conn, [{"app": "first-new-app"}])
            rename.rows(conn, {"old": "other", "new": "taken"})  # the (app, name) key is taken

    with pytest.raises(exc.IntegrityError):
        both()
    # The transaction rolled back as a whole: nothing of it is left.
    assert {j.name for j in store.list_jobs()} >= {"taken", "other"}
    with store.engine.connect() as conn:
        assert conn.scalar(select(apps.c.name).where(apps.c.name == "first-new-app")) is None


@pytest.mark.postgres
def test_a_connection_killed_while_idle_is_replaced_before_use(
    pg_store_session: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only idle pooled connections are pinged (engine.PING_IDLE_S); one the server dropped
    meanwhile never reaches a caller."""
    monkeypatch.setattr(engine_module, "PING_IDLE_S", 0.0)
    store = open_store(pg_store_session.url, migrate=False)
    try:
        with store.engine.connect() as conn:
            pid = conn.scalar(text("SELECT pg_backend_pid()"))
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        with store.engine.connect() as conn:  # the same pooled connection, pinged first
            assert conn.scalar(text("SELECT pg_backend_pid()")) != pid
    finally:
        store.close()


@pytest.mark.postgres
def test_a_busy_connection_is_not_pinged(pg_store_session: SqlStore) -> None:
    """Used within PING_IDLE_S, a connection goes straight to its caller: no extra round trip."""
    store = open_store(pg_store_session.url, migrate=False)
    pings: list[object] = []
    original = store.engine.dialect.do_ping

    def counting(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return original(dbapi_connection)

    store.engine.dialect.do_ping = counting  # type: ignore[method-assign]
    try:
        for _ in range(5):
            with store.engine.connect() as conn:
                conn.scalar(text("SELECT 1"))
        assert pings == []
    finally:
        store.close()


def test_a_runs_family_is_found_through_the_partial_lineage_index(
    store: SqlStore, clock: FakeClock
) -> None:
    """runs_root holds only runs with a root (migration 0006); `root_id = :id` still uses it."""
    now = clock.now()
    job = store.create_job(make_job(now))
    root = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    kids = [
        store.enqueue(NewRun(job_id=job.id, run_at=now, parent_id=root.id), now) for _ in range(3)
    ]
    store.enqueue_many([NewRun(job_id=job.id, run_at=now) for _ in range(3000)], now)
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE runs")
        query = select(runs.c.id).where(runs.c.root_id == bindparam("root"))
        compiled = query.compile(dialect=store.engine.dialect)
        params: object = (root.id,) if compiled.positional else {"root": root.id}
        plan = explain(conn, str(compiled), params)
        assert "runs_root" in plan, plan
        assert sorted(conn.scalars(query, {"root": root.id})) == [k.id for k in kids]


@pytest.mark.parametrize("column", ["started_at", "finished_at"])
def test_runs_are_found_by_time_through_the_partial_time_indexes(
    store: SqlStore, clock: FakeClock, column: str
) -> None:
    """runs_started / runs_finished hold only runs that have the time (migration 0007); the
    statistics' range scans (`column >= :since AND column < :until`) still use them."""
    now = clock.now()
    job = store.create_job(make_job(now))
    store.enqueue_many([NewRun(job_id=job.id, run_at=now) for _ in range(3000)], now)
    claimed = store.claim("w1", now, 30, 10, ["python"])
    done = now + timedelta(seconds=1)
    outcomes = [
        Completion(run_id=c.run.id, owner="w1", status=RunStatus.SUCCEEDED, finished_at=done)
        for c in claimed[:4]
    ]
    assert store.complete(outcomes) == [True] * 4
    index = {"started_at": "runs_started", "finished_at": "runs_finished"}[column]
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE runs")
        time = runs.c[column]
        query = select(runs.c.id).where(time >= bindparam("since"), time < bindparam("until"))
        window = {"since": now, "until": done + timedelta(seconds=1)}
        prepared = Prepared(query, store.engine.dialect)
        plan = explain(conn, prepared.sql, prepared._encode(window))
        assert index in plan, plan
        if store.dialect == "postgresql":
            definition = conn.scalar(
                text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
                    " AND schemaname = current_schema()"
                ),
                {"name": index},
            )
        else:
            definition = conn.scalar(
                text("SELECT sql FROM sqlite_master WHERE name = :name"), {"name": index}
            )
        assert f"{column} IS NOT NULL" in definition, definition
        found = sorted(conn.scalars(query, window))
    expected = (
        [c.run.id for c in claimed] if column == "started_at" else [c.run.id for c in claimed[:4]]
    )
    assert found == sorted(expected)


def _mostly_finished(store: SqlStore, now: datetime) -> int:
    """3,000 runs due now and 2 an hour later, all but 10 of the first finished; of those 10,
    one stopping, one stopped and three claimed by w1. Returns the job's id."""
    job = store.create_job(make_job(now))
    store.enqueue_many([NewRun(job_id=job.id, run_at=now) for _ in range(3000)], now)
    later = now + timedelta(hours=1)
    store.enqueue_many([NewRun(job_id=job.id, run_at=later) for _ in range(2)], now)
    with store.engine.begin() as conn:
        first = conn.scalar(select(runs.c.id).order_by(runs.c.id))
        finished = runs.c.id < first + 2990
        ended = {"status": "succeeded", "started_at": now, "finished_at": now}
        conn.execute(update(runs).where(finished).values(ended))
        for offset, status in ((2990, "stopping"), (2991, "stopped")):
            changed = {"status": status, "started_at": now}
            conn.execute(update(runs).where(runs.c.id == first + offset).values(changed))
    store.claim("w1", now, 30, 3, ["python"])
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return job.id


def test_open_runs_are_counted_from_runs_open_whatever_the_finished_runs(
    store: SqlStore, clock: FakeClock
) -> None:
    """The metrics' counts of the runs not yet final, by status and of the pending ones due,
    read runs_open (migration 0008). On SQLite they had scanned every run: 234 ms a scrape at
    1,000,000 runs."""
    now = clock.now()
    _mostly_finished(store, now)
    snapshots = []
    sent = statements_sent(store, lambda: snapshots.append(store.metrics_snapshot(now, 60, 10)))
    (snapshot,) = snapshots
    assert sorted(snapshot.open_runs) == [
        ("default", "pending", 7),  # 10 left of the 3,000, less the 3 claimed; 2 not yet due
        ("default", "running", 3),
        ("default", "stopped", 1),
        ("default", "stopping", 1),
    ]
    assert snapshot.due == [("default", 5)]
    # The open runs by status, and the pending ones due (the third count is of finished runs).
    counts = [(sql, params) for sql, params in sent if "count(" in sql and "finished_at" not in sql]
    assert len(counts) == 2, sent
    with store.engine.begin() as conn:
        for sql, params in counts:
            plan = explain(conn, sql, params)
            assert "runs_open" in plan, f"{sql}\n{plan}"


def test_lease_alert_and_run_list_reads_use_their_partial_indexes(
    store: SqlStore, clock: FakeClock
) -> None:
    """Every worker recovers expired leases every lease_s / 3; dispatchers claim alert
    deliveries every alert_poll_s; the monitor lists the running runs, or the cancelled ones.
    Said with bound statuses, SQLite read every run (83 ms, 68 ms at 1,000,000 runs) or every
    delivery for them."""
    now = clock.now()
    job_id = _mostly_finished(store, now)
    rule = store.create_alert_rule(
        AlertRule(
            0, "default", None, True, False, None, "https://hooks.example/x", [], True, now, now
        )
    )
    finished = store.list_runs(status=["succeeded"], limit=3000)
    made = [
        NewDelivery(rule.id, run.id, AlertEvent.FAILED, Channel.WEBHOOK, {}) for run in finished
    ]
    assert store.add_alert_deliveries(made, now) == len(finished)
    failed, cancelled = [r.id for r in finished[100:103]], [r.id for r in finished[200:202]]
    with store.engine.begin() as conn:
        delivered = {"status": "delivered", "delivered_at": now}
        conn.execute(update(alert_deliveries).where(alert_deliveries.c.id > 5).values(delivered))
        conn.execute(update(runs).where(runs.c.id.in_(failed)).values(status="failed"))
        conn.execute(update(runs).where(runs.c.id.in_(cancelled)).values(status="cancelled"))
        if store.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE")
    before = now - timedelta(minutes=1)
    cases: list[tuple[str, Callable[[], object], str, str]] = [
        (
            "recover_expired",
            lambda: store.recover_expired(before, 3),
            "lease_expires_at <",
            "runs_lease",
        ),
        ("lease_owners", store.lease_owners, "DISTINCT", "runs_lease"),
        ("held_runs", lambda: store.held_runs("w1"), "lease_owner =", "runs_lease"),
        ("expire_leases", lambda: store.expire_leases(["w9"], now), "UPDATE", "runs_lease"),
        (
            "long_running",
            lambda: store.long_running(["default"], now),
            "started_at <=",
            "runs_lease",
        ),
        (
            "list running",
            lambda: store.list_runs(status=["running"], limit=50),
            "DESC",
            "runs_open",
        ),
        (
            "list cancelled",
            lambda: store.list_runs(status=["cancelled"], limit=50),
            "DESC",
            "runs_unsuccessful",
        ),
        (
            "claim_alert_deliveries",
            lambda: store.claim_alert_deliveries("d1", now, 30, 10),
            "next_attempt_at <=",
            "alert_deliveries_due",
        ),
    ]
    for name, call, marker, index in cases:
        (statement,) = [(sql, p) for sql, p in statements_sent(store, call) if marker in sql]
        with store.engine.begin() as conn:
            plan = explain(conn, *statement)
        if store.dialect == "sqlite":  # what the statement says decides SQLite's choice
            assert index in plan, f"{name}: {statement[0]}\n{plan}"
        else:  # PostgreSQL's planner picks among the indexes by its statistics
            assert "Seq Scan on runs" not in plan, f"{name}: {statement[0]}\n{plan}"
            assert "Seq Scan on alert_deliveries" not in plan, f"{name}: {statement[0]}\n{plan}"
    assert [r.id for r in store.list_runs(status=["running"], limit=50)] == sorted(
        store.held_runs("w1"), reverse=True
    )
    assert all(r.job_id == job_id for r in store.list_runs(status=["running"], limit=50))
    listed = store.list_runs(status=["failed", "cancelled"], limit=50)
    assert [r.id for r in listed] == sorted(failed + cancelled, reverse=True)
    assert [r.id for r in store.list_runs(status=["cancelled"], limit=1)] == [max(cancelled)]


def test_a_change_of_a_runs_status_builds_no_temporary_table(tmp_path: Any) -> None:
    """SQLite checks the predicate of every partial index on a run's status against the row's
    old and new version at each claim and completion. A list of three or more constants there
    costs a temporary table built each time (runs_open's: 3.6 us of a claim+complete pair's
    47.3, migration 0008); the predicates must be what it compares in place."""
    store = open_store(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        with store.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            for change in (
                "status = 'running', started_at = 1, lease_owner = 'w', lease_expires_at = 2",
                "status = 'succeeded', finished_at = 3, lease_owner = NULL",
            ):
                program = raw.execute(f"EXPLAIN UPDATE runs SET {change} WHERE id = 1").fetchall()
                opcodes = {row[1] for row in program}
                assert "IdxInsert" in opcodes  # the indexes on status are written...
                assert "OpenEphemeral" not in opcodes, change  # ...without a temporary table
            # What the migrations made is what the table's definition says (queries use it).
            for index in runs.indexes:
                made = raw.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index.name,))
                defined = str(CreateIndex(index).compile(dialect=conn.dialect))
                assert made.fetchone() == (defined,), index.name
    finally:
        store.close()


def _explained(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[str]:
    """Replace the module's prepared statement `name` by one that is first explained in the
    same transaction; returns the list its plans are appended to."""
    plans: list[str] = []
    statement = getattr(module, name)

    class Explained:
        def rows(self, conn: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
            prepared = statement.on(conn)
            plans.append(explain(conn, prepared.sql, prepared._encode(params)))
            return statement.rows(conn, params)

    monkeypatch.setattr(module, name, Explained())
    return plans


def test_a_claim_walks_the_claim_index_in_order_whatever_the_statistics_say(
    store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of runs outruns the table statistics (here: none yet), which say hardly any
    run is pending. A claim must still take the first runs of runs_claim in order, never read
    and sort the whole backlog: PostgreSQL's planner did (10-17 ms per claim of 64 with 20,000
    pending, against 0.1 ms)."""
    now = clock.now()
    job = store.create_job(make_job(now))
    store.enqueue_many([NewRun(job_id=job.id, run_at=now) for _ in range(20_000)], now)
    now += timedelta(seconds=1)

    plans = _explained(monkeypatch, leases, "_CANDIDATES")
    claimed = store.claim("w1", now, 30, 64, ["python"])
    (plan,) = plans
    assert "runs_claim" in plan, plan
    assert "Sort" not in plan and "B-TREE FOR ORDER BY" not in plan, plan
    ids = [c.run.id for c in claimed]
    assert len(ids) == 64 and ids == sorted(ids) and ids[0] == 1


def test_a_tick_walks_the_due_index_in_order_whatever_the_statistics_say(
    store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big instant outruns the statistics too: with 4,000 jobs due together, PostgreSQL
    read and sorted all of them for every batch of 64 (227-267 ms of due-job queries a tick,
    growing with the square of the instant). Each batch takes the first due jobs of jobs_due
    in its order instead."""
    now = clock.now()
    slot = now - timedelta(seconds=1)
    store.create_jobs(
        [make_job(now, name=f"j{i}", schedule="every 1m", next_fire_at=slot) for i in range(4000)]
    )

    def plan(_job):  # type: ignore[no-untyped-def]
        return FirePlan(runs=[(slot, slot)], next_fire_at=slot + timedelta(minutes=1))

    plans = _explained(monkeypatch, firing, "_DUE")
    assert store.fire_due(now, plan, 64) == 64
    (explained,) = plans
    assert "jobs_due" in explained, explained
    assert "Sort" not in explained and "B-TREE FOR ORDER BY" not in explained, explained
    assert store.count_runs(status=["pending"]) == 64


def test_a_batch_of_completions_writes_each_outcome_exactly(
    store: SqlStore, clock: FakeClock
) -> None:
    """One statement records a whole batch (on PostgreSQL the batch travels as one JSON
    document): every value of every run reads back as given, a value left out keeps the
    column, and a run another owner holds is left alone."""
    now = clock.now()
    job = store.create_job(make_job(now))
    ids = [
        store.enqueue(NewRun(job_id=job.id, run_at=now, state={"n": k}), now).id for k in range(4)
    ]
    store.claim("w1", now, 30, 3, ["python"])
    store.claim("w2", now, 30, 1, ["python"])
    later = now + timedelta(seconds=1, microseconds=123_457)
    done = [
        Completion(
            run_id=ids[0],
            owner="w1",
            status=RunStatus.SUCCEEDED,
            finished_at=later,
            result={"text": 'quote " backslash \\ é 日本', "list": [1, 2.5, None, True]},
            state=["replaced"],
            progress=0.75,
        ),
        Completion(
            run_id=ids[1],
            owner="w1",
            status=RunStatus.FAILED,
            finished_at=later,
            started_at=now + timedelta(microseconds=1),  # began later than its claim
            error={"type": "ValueError", "message": "no\nway"},
            reason="because",
        ),
        Completion(
            run_id=ids[2], owner="w1", status=RunStatus.SUCCEEDED, finished_at=later, result="s"
        ),
        Completion(  # held by w2: fenced out
            run_id=ids[3], owner="w1", status=RunStatus.SUCCEEDED, finished_at=later
        ),
    ]
    assert store.complete(done) == [True, True, True, False]
    first, second, third, fourth = (store.get_run(i) for i in ids)
    assert (first.status, first.result, first.state, first.progress) == (
        "succeeded",
        {"text": 'quote " backslash \\ é 日本', "list": [1, 2.5, None, True]},
        ["replaced"],
        0.75,
    )
    assert (first.started_at, first.finished_at, first.error, first.reason) == (
        now,
        later,
        None,
        None,
    )
    assert (second.status, second.error, second.reason, second.result) == (
        "failed",
        {"type": "ValueError", "message": "no\nway"},
        "because",
        None,
    )
    assert second.started_at == now + timedelta(microseconds=1)
    assert (third.result, third.state, third.progress) == ("s", None, None)
    assert (fourth.status, fourth.lease_owner, fourth.state) == ("running", "w2", {"n": 3})
    assert all(r.lease_owner is None and r.lease_expires_at is None for r in (first, second))

    naive = Completion(
        run_id=ids[3],
        owner="w2",
        status=RunStatus.SUCCEEDED,
        finished_at=later.replace(tzinfo=None),
    )
    with pytest.raises(Refused, match="naive"):
        store.complete([naive])
    assert store.get_run(ids[3]).status == "running"  # nothing of the batch was written


def test_a_completion_finds_its_runs_by_key_whatever_the_statistics_say(
    store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is a function's rows to the planner: the runs must still be found through the
    primary key, never by scanning the table (with 1,000,000 runs, a scan per completion)."""
    now = clock.now()
    job = store.create_job(make_job(now))
    store.enqueue_many([NewRun(job_id=job.id, run_at=now) for _ in range(20_000)], now)
    claimed = store.claim("w1", now, 30, 64, ["python"])
    plans: list[str] = []
    real = leases._COMPLETE[False]

    class Explained:
        def on(self, conn: object) -> object:
            return real.on(conn)  # type: ignore[arg-type]

        def rows(self, conn: object, params: dict[str, object]) -> list[dict[str, object]]:
            plans.append(explain(conn, real.on(conn).sql, real.on(conn)._encode(params)))  # type: ignore[arg-type]
            return real.rows(conn, params)  # type: ignore[arg-type]

        def many(self, conn: object, params: list[dict[str, object]]) -> int:
            plans.append(explain(conn, real.on(conn).sql, real.on(conn)._encode(params[0])))  # type: ignore[arg-type]
            return real.many(conn, params)  # type: ignore[arg-type]

    monkeypatch.setitem(leases._COMPLETE, False, Explained())
    outcomes = [
        Completion(run_id=c.run.id, owner="w1", status=RunStatus.SUCCEEDED, finished_at=now)
        for c in claimed
    ]
    assert store.complete(outcomes) == [True] * 64
    (plan,) = plans
    assert "Seq Scan" not in plan and "SCAN runs" not in plan, plan
    assert "runs_pkey" in plan or "INTEGER PRIMARY KEY" in plan, plan
    assert store.count_runs(job_id=job.id, status=["succeeded"]) == 64


def test_text_with_nul_is_stored_everywhere_and_unchanged_where_it_can_be(
    store: SqlStore, clock: FakeClock
) -> None:
    """Log lines, progress state, reasons and outcomes a job produced reach the database:
    PostgreSQL cannot hold NUL in text or JSON (U+FFFD replaces it), SQLite keeps it."""
    now = clock.now()
    job = store.create_job(make_job(now))
    run = store.enqueue(NewRun(job_id=job.id, run_at=now), now)
    store.claim("w1", now, 30, 1, ["python"])
    update = RunProgress(
        run.id, state={"k\x00": "v\x00"}, state_changed=True, logs=[(now, "INFO", "a\x00b")]
    )
    store.sync("w1", now, 30, [update])
    nul = "\ufffd" if store.dialect == "postgresql" else "\x00"
    assert store.get_run(run.id).state == {f"k{nul}": f"v{nul}"}
    done = Completion(
        run_id=run.id,
        owner="w1",
        status=RunStatus.FAILED,
        finished_at=now,
        error={"message": "x\x00y", "literal": "\\u0000 stays"},
        reason="r\x00",
        logs=[(now, "ERROR", "c\x00d")],
    )
    assert store.complete([done]) == [True]
    after = store.get_run(run.id)
    assert after.error == {"message": f"x{nul}y", "literal": "\\u0000 stays"}
    assert after.reason == f"r{nul}"
    assert [line.message for line in store.get_logs(run.id)] == [f"a{nul}b", f"c{nul}d"]
