"""Core statements compiled once per dialect and executed on the driver's cursor.

For the statements every run goes through (claim, complete), SQLAlchemy's per-execution
machinery (parameter construction, result proxies, row objects) costs more than SQLite's own
work and as much as a PostgreSQL round trip (bench/PROFILE.md). A `Prepared` keeps SQLAlchemy
as the one definition of the statement and of every value's encoding: the text is compiled
once, and each value goes through its column type's own bind and result processors, so a
row reads and writes exactly as through `Connection.execute`. Driver errors are raised as
SQLAlchemy's exceptions, and a connection the error shows is dead is invalidated, as
`Connection.execute` does.

Statements must compile to a fixed text: lists are one parameter (an array on PostgreSQL,
`json_each` on SQLite, see `one_of`), never an expanding IN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ARRAY, JSON, Connection, any_, bindparam, exc, func, select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.base import Executable

Processor = Callable[[Any], Any] | None
_REQUIRED = object()
_NONE = object()  # no such encoding


def one_of(column: Any, name: str, dialect: str, value: Any = _REQUIRED) -> Any:
    """`column IN (:name)` with the list as one parameter, so the statement's text is the same
    whatever the list's length (and PostgreSQL reuses its prepared plan)."""
    kwargs = {} if value is _REQUIRED else {"value": list(value)}
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type), **kwargs))
    each = func.json_each(bindparam(name, type_=JSON, **kwargs)).table_valued("value")
    return column.in_(select(each.c.value))


#: PostgreSQL, for the rest of the transaction: walk an index in its order rather than read and
#: sort every match. The planner works from table statistics, and queues and timers outrun
#: them (ANALYZE runs at most once a minute): it then expects a handful of matches where there
#: are thousands, and reads and sorts them all to return the first few. Claims and the
#: scheduler's due jobs take the first rows in an index's order (leases.py, firing.py).
IN_INDEX_ORDER = func.set_config("enable_sort", "off", True)


def _json_shortcuts(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A JSON column's result processor, with the two texts most values are decoded without
    the JSON parser: a run's `params` is mostly {}, its `result`, `state` and `error` mostly
    JSON null (as SQLAlchemy writes None into a JSON column)."""

    def decode(value: Any) -> Any:
        if value == "null":
            return None
        if value == "{}":
            return {}  # a new dict each time: the caller may change it
        return process(value)

    return decode


class Prepared:
    """One statement for one dialect: `rows()` runs it and returns its rows as dicts keyed
    by column key; `many()` runs it once per parameter set (the driver's executemany)."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        if "POSTCOMPILE" in self.sql:
            raise ValueError("a prepared statement cannot hold an expanding IN: use one_of()")
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        names = list(compiled.positiontup or ()) if compiled.positional else list(by_name)
        self._positional = compiled.positional
        # (name, fixed value or _REQUIRED, processor, what the processor makes of None, of {}
        # for a JSON value): values given at execution override. None and {} are encoded once
        # here: most optional values are None, most runs' params {}, and a JSON column would
        # serialise each one again.
        self._binds: list[tuple[str, Any, Processor, Any, Any]] = []
        for name in names:
            bind = by_name[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            fixed = _REQUIRED
            if not bind.required and bind.callable is None:  # a literal of the statement
                fixed = process(bind.value) if process else bind.value
            none = process(None) if process is not None else None
            empty = process({}) if process is not None and isinstance(bind.type, JSON) else _NONE
            self._binds.append((name, fixed, process, none, empty))
        self._names = [b[0] for b in self._binds]
        self._dialect = dialect
        self._columns = list(getattr(statement, "exported_columns", ()))
        self._keys = [column.key for column in self._columns]
        self._results: list[tuple[int, Processor, Any]] | None = None  # from the first result

    def _encode(self, params: Mapping[str, Any]) -> Any:
        values = []
        for name, fixed, process, none, empty in self._binds:
            if fixed is not _REQUIRED and name not in params:
                values.append(fixed)
                continue
            value = params[name]
            if value is None:
                values.append(none)
            elif process is None:
                values.append(value)
            elif empty is not _NONE and value == {}:
                values.append(empty)
            else:
                values.append(process(value))
        if self._positional:
            return tuple(values)
        return dict(zip(self._names, values, strict=True))

    def _result_processors(self, description: Sequence[Any]) -> list[tuple[int, Processor, Any]]:
        """Each column's result processor, for the type the driver reports (as SQLAlchemy
        picks them: some depend on it, e.g. PostgreSQL's numeric types), with what it makes
        of NULL (worked out once: most optional columns are NULL)."""
        dialect = self._dialect
        processors = []
        for i, column in enumerate(self._columns):
            impl = column.type.dialect_impl(dialect)
            process = impl.result_processor(dialect, description[i][1])
            if process is not None:
                if isinstance(column.type, JSON):
                    process = _json_shortcuts(process)
                processors.append((i, process, process(None)))
        return processors

    def _decode(self, row: Sequence[Any]) -> dict[str, Any]:
        values = list(row)
        for i, process, null in self._results or ():
            value = values[i]
            values[i] = null if value is None else process(value)
        return dict(zip(self._keys, values, strict=True))

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        encoded = self._encode(params)
        with driver_cursor(conn, self.sql, encoded) as cursor:
            cursor.execute(self.sql, encoded)
            if not self._keys:
                return []
            if self._results is None:
                self._results = self._result_processors(cursor.description)
            return [self._decode(row) for row in cursor.fetchall()]

    def many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> int:
        """Returns how many rows the statements changed, in all."""
        if not params:
            return 0
        encoded = [self._encode(p) for p in params]
        with driver_cursor(conn, self.sql, encoded) as cursor:
            cursor.executemany(self.sql, encoded)
            return int(cursor.rowcount)


@contextmanager
def driver_cursor(conn: Connection, sql: str, params: Any) -> Iterator[Any]:
    """A cursor on the connection's current transaction; a driver error leaves it as
    SQLAlchemy's exception (the connection invalidated when the error says it is gone)."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    dialect = conn.dialect
    cursor = dbapi.cursor()
    try:
        yield cursor
    except dialect.loaded_dbapi.Error as error:
        gone = dialect.is_disconnect(error, dbapi, cursor)  # type: ignore[arg-type]
        if gone:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            sql,
            params,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=gone,
            dialect=dialect,
        ) from error
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


class Prepares:
    """A statement prepared for each dialect it meets, on first use (statements are defined at
    import, before an engine says which dialect it speaks). `statement` is the statement, or
    a function that builds it for a dialect's name when the text must differ (`one_of`)."""

    def __init__(self, statement: Executable | Callable[[str], Executable]) -> None:
        self._build = statement if callable(statement) else lambda _name: statement
        self._by_dialect: dict[str, Prepared] = {}

    def on(self, conn: Connection) -> Prepared:
        dialect = conn.dialect
        prepared = self._by_dialect.get(dialect.name)
        if prepared is None:
            prepared = Prepared(self._build(dialect.name), dialect)
            self._by_dialect[dialect.name] = prepared
        return prepared

    def many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> int:
        return self.on(conn).many(conn, params)

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.on(conn).rows(conn, params)

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        rows = self.on(conn).rows(conn, params)
        return rows[0] if rows else None
