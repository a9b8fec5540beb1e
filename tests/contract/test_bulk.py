"""Creating many jobs at once (store and service), and the due-jobs index, on every backend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from nightshift.clock import FakeClock
from nightshift.config import Settings
from nightshift.declare import DeclaredJob
from nightshift.errors import Conflict, InvalidInput
from nightshift.service import Service, spec_dict
from nightshift.store import SqlStore
from nightshift.store.sql import firing
from nightshift.store.tables import jobs
from nightshift.worker.kinds.registry import build_executors
from tests.factories import make_job
from tests.plans import explain, statements_sent

FN = {"function": "tests.jobs_sample:echo"}


@pytest.fixture
def service(store: SqlStore, clock: FakeClock, settings: Settings) -> Service:
    return Service(store, clock, settings, build_executors(settings))


def py(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "python", "config": FN, **fields}


# -- store ------------------------------------------------------------------------------------


def test_store_creates_many_jobs_in_order_with_their_apps(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    batch = [
        make_job(now, name="a", app="shop", tags=["x"], config={"function": "m:f", "params": {}}),
        make_job(now, name="b", app="blog", schedule="every 1h", next_fire_at=now),
        make_job(now, name="c", app="shop", description="third"),
    ]
    ids = store.create_jobs(batch)
    assert len(ids) == 3 and ids == sorted(ids)
    for job_id, job in zip(ids, batch, strict=True):
        stored = store.get_job(job_id)
        assert spec_dict(stored) == spec_dict(job)
        assert stored.next_fire_at == job.next_fire_at and stored.created_at == now
    assert {a.name for a in store.list_apps()} >= {"shop", "blog"}
    assert store.create_jobs([]) == []


def test_store_bulk_create_is_all_or_nothing_on_a_taken_name(
    store: SqlStore, clock: FakeClock
) -> None:
    now = clock.now()
    store.create_job(make_job(now, name="taken", app="shop"))
    with pytest.raises(Conflict) as caught:
        store.create_jobs(
            [make_job(now, name="new", app="shop"), make_job(now, name="taken", app="shop")]
        )
    assert caught.value.field == "jobs[1].name" and "'taken'" in str(caught.value)
    with pytest.raises(Conflict) as caught:
        store.create_jobs([make_job(now, name="twice"), make_job(now, name="twice")])
    assert caught.value.field == "jobs[1].name"
    assert [j.name for j in store.list_jobs()] == ["taken"]  # nothing of either batch
    # The same name in another app is no collision.
    assert len(store.create_jobs([make_job(now, name="taken", app="blog")])) == 1


# -- service ----------------------------------------------------------------------------------


def test_a_bulk_job_is_the_job_a_single_create_makes(service: Service, store: SqlStore) -> None:
    fields = {
        "schedule": "every 10m",
        "timezone": "Europe/Paris",
        "retries": 2,
        "tags": ["t"],
        "start_at": "2026-03-02T10:00:00+00:00",
        "overlap": "allow",
    }
    single = service.create_job(py("single", **fields))
    [bulk] = service.create_jobs([py("bulk", **fields)])
    stored = store.get_job(bulk.id)
    assert {**spec_dict(stored), "name": "single"} == spec_dict(single)
    assert stored.next_fire_at == single.next_fire_at == bulk.next_fire_at
    assert (stored.anchor_at, stored.declared, stored.system) == (single.anchor_at, False, False)
    assert stored.timezone == "Europe/Paris" and stored.retries.max == 2


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ({"schedule": "61 * * * *"}, "jobs[2].schedule", "61 is out of range"),
        ({"timezone": "Mars/Base"}, "jobs[2].timezone", "unknown timezone"),
        ({"config": {"function": "nope"}}, "jobs[2].config.function", "module:function"),
        ({"colour": "red"}, "jobs[2].colour", "is not a job field"),
        ({"app": "system"}, "jobs[2].app", "reserved"),
        ({"name": "a"}, "jobs[2].name", "jobs[0] has the same app and name"),
    ],
)
def test_one_bad_item_names_itself_and_nothing_is_written(
    service: Service, store: SqlStore, bad: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.create_jobs([py("a"), py("b"), {**py("c"), **bad}, py("d")])
    assert caught.value.field == field and message in caught.value.message
    assert store.list_jobs() == []


def test_a_bulk_create_colliding_with_an_existing_job_writes_nothing(
    service: Service, store: SqlStore
) -> None:
    service.create_job(py("old", app="shop"))
    with pytest.raises(Conflict) as caught:
        service.create_jobs([py("new", app="shop"), py("old", app="shop")])
    assert caught.value.field == "jobs[1].name"
    assert [j.name for j in store.list_jobs()] == ["old"]
    with pytest.raises(InvalidInput) as not_a_job:
        service.create_jobs([py("x"), "not a job"])
    assert not_a_job.value.field == "jobs[1]"


def test_bulk_created_schedules_fire(service: Service, store: SqlStore, clock: FakeClock) -> None:
    made = service.create_jobs([py(f"s{i}", schedule="every 1m") for i in range(3)])
    assert store.next_fire_due() == clock.now() + timedelta(minutes=1)
    assert all(j.next_fire_at == clock.now() + timedelta(minutes=1) for j in made)


def test_declared_jobs_are_created_in_one_bulk_insert(
    service: Service, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = store.create_jobs
    monkeypatch.setattr(store, "create_jobs", lambda new: calls.append(len(new)) or real(new))
    monkeypatch.setattr(store, "create_job", lambda job: pytest.fail("one insert per job"))
    declared = [
        DeclaredJob(name=f"d{i}", app="code", fields={}, function=FN["function"], config=FN)
        for i in range(5)
    ]
    report = service.sync_declared(declared)
    assert calls == [5] and report.created == [f"code/d{i}" for i in range(5)]
    assert all(j.declared for j in store.list_jobs(app="code"))
    again = service.sync_declared(declared)  # nothing new: no insert at all
    assert calls == [5] and again.created == []


# -- the due-jobs index ------------------------------------------------------------------------


def test_the_due_queries_use_the_jobs_due_index(
    store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler's wake-up must not read every idle schedule: its two queries (the next
    fire, and the due jobs) go through the partial index. Checked on the statements the store
    really sends, with enough idle rows (and statistics) for PostgreSQL to prefer the index."""
    now = clock.now()
    idle = [
        make_job(
            now,
            name=f"idle-{i}",
            schedule="every 1h",
            next_fire_at=now + timedelta(hours=1, seconds=i),
        )
        for i in range(5000)
    ]
    store.create_jobs(idle)
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE jobs")
            conn.exec_driver_sql("ANALYZE apps")

    def on_jobs(sql: str) -> bool:
        return sql.lstrip().upper().startswith("SELECT") and "FROM jobs" in sql

    queries = statements_sent(store, store.next_fire_due, keep=on_jobs)
    assert len(queries) == 1
    # The due jobs are read by a statement on the driver (prepared.py): caught on its way.
    due = firing._DUE

    class Caught:
        def rows(self, conn: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
            prepared = due.on(conn)
            queries.append((prepared.sql, prepared._encode(params)))
            return due.rows(conn, params)

    monkeypatch.setattr(firing, "_DUE", Caught())
    store.fire_due(now, lambda job: pytest.fail("nothing is due"), 500)
    assert len(queries) == 2
    with store.engine.connect() as conn:
        for statement, parameters in queries:
            plan = explain(conn, statement, parameters)
            assert "jobs_due" in plan, f"{statement}\n{plan}"
    assert store.next_fire_due() == now + timedelta(hours=1)


def test_the_index_predicate_is_what_the_queries_say() -> None:
    """The ORM-side definition matches migration 0005 (what `metadata.create_all` would make)."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex

    (index,) = [i for i in jobs.indexes if i.name == "jobs_due"]
    assert str(CreateIndex(index).compile(dialect=sqlite.dialect())).endswith("WHERE enabled = 1")
