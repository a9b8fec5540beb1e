"""Query plans in tests: the statements a store call sends, and what the database plans for
them (SQLite's `EXPLAIN QUERY PLAN`, PostgreSQL's `EXPLAIN`), run on the same connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from nightshift.store import SqlStore


def statements_sent(
    store: SqlStore, call: Callable[[], object], keep: Callable[[str], bool] = lambda _: True
) -> list[tuple[str, Any]]:
    """The statements (with their parameters) SQLAlchemy sends for `call()`, those `keep`
    accepts. Statements the store runs on the driver itself (`Prepared`) are not among them."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if keep(statement):
            sent.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return sent


def explain(conn: Any, sql: str, params: Any) -> str:
    """The plan of `sql` with `params` (the driver's form), one line per row."""
    prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(prefix + sql, params)
        return "\n".join(str(row) for row in cursor.fetchall())
    finally:
        cursor.close()
