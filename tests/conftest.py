"""Shared fixtures: one store contract, every backend.

PostgreSQL tests use the real server (NIGHTSHIFT_TEST_PG_URL, default the local `test` database),
each session in a schema of its own so that concurrent test runs never collide. They fail, never
skip, when the server cannot be reached.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import text

from nightshift.clock import FakeClock
from nightshift.config import Settings
from nightshift.store import SqlStore, open_store
from nightshift.store.tables import metadata

PG_URL = os.environ.get("NIGHTSHIFT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    schema = f"ns_test_{secrets.token_hex(4)}"
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests and unreachable at {PG_URL}: {exc}")
    with conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="session")
def pg_store_session(pg_schema: str) -> Iterator[SqlStore]:
    store = open_store(pg_schema_url(pg_schema))
    yield store
    store.close()


def _truncate(store: SqlStore) -> None:
    names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A fresh, migrated database of each backend; the URL, for code that opens its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nightshift.db'}"
    store = request.getfixturevalue("pg_store_session")
    _truncate(store)
    return store.url


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    store = open_store(database_url)
    yield store
    store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        worker_processes=2,
        heartbeat_s=0.1,
        lease_s=5,
        shutdown_grace_s=2,
        http_allow_private=True,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec and callspec.params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)
