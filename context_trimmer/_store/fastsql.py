"""The request path's statements, run on the driver's cursor.

Each statement the request path runs on every call (token counts, new messages, the
deepest summary, the ledger's rows) is written once as a SQLAlchemy Core statement, so
there is one definition for both dialects. Executing a Core statement costs about
160 µs of Python per call (parameters processed and cache-keyed, an expanding ``IN``
re-rendered, a result object built); the driver's own ``execute`` about 40 µs. With a
dozen statements per request that difference was a fifth of the gateway's CPU, so
:class:`Fast` compiles a statement once per dialect (and per set of columns written,
and per ``IN`` list length on SQLite) into the driver's SQL and runs it on the
DBAPI cursor of the caller's SQLAlchemy connection, inside its transaction. A list
or tuple parameter is an ``IN`` list; one longer than :data:`MAX_LIST` goes through
Core instead (rows then are SQLAlchemy rows: both have attributes and ``_asdict``).

Values go through the column types' own bind and result processors, as the dialect
implements them (so a
:class:`~._schema.Hash` is still hex to Python, a date still a ``datetime``), taken
once per compilation. Rows come back as named tuples. Driver errors are the driver's
(``sqlite3.Error``, ``psycopg.Error``): :meth:`Database.failures` turns them into a
``StoreError`` like any other. A statement whose columns need a Python-side default
is refused when compiled: the caller passes every value. On PostgreSQL the
statement is guarded by the store's watchdog (``_store.deadlines``) as a Core one is: a
server frozen mid-request cannot hold the thread. :meth:`Fast.send` runs a statement
whose result is read later (:class:`Sent`): in a pipeline (``_store.batch``) it is
queued, and a list there is one array parameter whatever its length. On PostgreSQL an
array parameter is sent in binary (psycopg's ``%b``): in text each element is quoted and
escaped, which took 157 µs of the 9 arrays of a turn's new messages, 66 in binary.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.expression import Executable

from .deadlines import watched

BEGIN_DUE = "context_trimmer_begin_due"
"""In a pooled connection's ``info``: its transaction's BEGIN is still to be sent (see
``_store.batch.defer_begin``)."""

__all__ = ["Fast", "Sent", "driver_rows", "on_driver"]

_EXPANDING = re.compile(r"IN \(__\[POSTCOMPILE_(\w+)\]\)")
MAX_LIST = 32
"""Longer ``IN`` lists (a cold start's) go through Core, which renders them per call."""
Processor = Callable[[Any], Any] | None


class _Compiled(NamedTuple):
    sql: str
    names: tuple[str, ...]  # parameter order (positional drivers), else ()
    binds: Mapping[str, Processor]
    constants: Mapping[str, Any]  # the statement's own values (a LIMIT), processed
    results: tuple[Processor, ...]
    row: Any  # the named tuple class of a result row, or None


class Fast:
    """A Core statement run on the driver's cursor: ``rows``, ``first``, ``run``."""

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._core = cast(Executable, statement)
        self._compiled: dict[tuple[str, frozenset[str], tuple[int, ...]], _Compiled] = {}

    def rows(self, connection: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row the statement returns, as named tuples."""
        if _long_list(params):
            return list(connection.execute(self._core, dict(params)))
        compiled = self._compiled_for(connection.dialect, params)
        fetched = driver_rows(connection, compiled.sql, _driver_params(compiled, params))
        return [_row(compiled, values) for values in fetched]

    def first(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """The first row the statement returns, or None."""
        if _long_list(params):
            return connection.execute(self._core, dict(params)).first()
        compiled, cursor = self._execute(connection, params)
        values = cursor.fetchone()
        cursor.close()
        return None if values is None else _row(compiled, values)

    def run(self, connection: Connection, params: Mapping[str, Any]) -> None:
        """Run it, for its effect only."""
        if _long_list(params):
            connection.execute(self._core, dict(params))
            return
        self._execute(connection, params)[1].close()

    def send(self, connection: Connection, params: Mapping[str, Any]) -> Sent:
        """Run it without reading its result yet (in a pipeline, see ``_store.batch``:
        queued until the pipeline syncs). On PostgreSQL a list is one array parameter
        whatever its length, so even a long one runs on the driver."""
        if _long_list(params) and connection.dialect.name != "postgresql":
            return Sent(None, connection.execute(self._core, dict(params)))
        compiled, cursor = self._execute(connection, params)
        return Sent(compiled, cursor)

    def _execute(self, connection: Connection, params: Mapping[str, Any]) -> tuple[_Compiled, Any]:
        compiled = self._compiled_for(connection.dialect, params)
        return compiled, on_driver(connection, compiled.sql, _driver_params(compiled, params))

    def _compiled_for(self, dialect: Dialect, params: Mapping[str, Any]) -> _Compiled:
        lengths = tuple(len(value) for value in params.values() if isinstance(value, (list, tuple)))
        key = (dialect.name, frozenset(params), lengths)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(self.statement, dialect, params)
        return compiled


class Sent:
    """A statement run whose result is read later: its rows (named tuples when
    ``compiled``; else as the cursor gives them), read once."""

    __slots__ = ("compiled", "cursor")

    def __init__(self, compiled: _Compiled | None, cursor: Any):
        self.compiled, self.cursor = compiled, cursor

    def rows(self) -> list[Any]:
        if isinstance(self.cursor, CursorResult):  # run through Core
            return list(self.cursor) if self.cursor.returns_rows else []
        try:
            fetched = self.cursor.fetchall() if self.cursor.description is not None else []
        finally:
            self.cursor.close()
        compiled = self.compiled
        if compiled is None or compiled.row is None:
            return list(fetched)
        return [_row(compiled, values) for values in fetched]

    def close(self) -> None:
        self.cursor.close()


def on_driver(connection: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
    """The DBAPI cursor of ``connection`` having run ``sql`` (in the driver's parameter
    style) with ``params`` (a sequence of them with ``many``), watched on PostgreSQL."""
    dbapi_connection: Any = connection.connection.dbapi_connection
    cursor = dbapi_connection.cursor()
    try:
        with watched(connection.engine, dbapi_connection):
            if connection.info.get(BEGIN_DUE):  # PostgreSQL: see ``_store.batch``
                del connection.info[BEGIN_DUE]
                dbapi_connection.execute("BEGIN")
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
    except BaseException:
        cursor.close()
        raise
    return cursor


def driver_rows(connection: Connection, sql: str, params: Any) -> list[Any]:
    """Every row of ``sql`` run by :func:`on_driver`, its cursor closed."""
    cursor = on_driver(connection, sql, params)
    try:
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _long_list(params: Mapping[str, Any]) -> bool:
    """An ``IN`` list too long to compile a statement for its length: run through Core."""
    return any(isinstance(v, (list, tuple)) and len(v) > MAX_LIST for v in params.values())


def _row(compiled: _Compiled, values: Sequence[Any]) -> Any:
    return compiled.row._make(
        value if process is None or value is None else process(value)
        for process, value in zip(compiled.results, values, strict=True)
    )


def _driver_params(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
    binds = compiled.binds

    def value(name: str, raw: Any) -> Any:
        process = binds[name]
        if isinstance(raw, (list, tuple)):
            return [_processed(process, item) for item in raw]
        return _processed(process, raw)

    if not compiled.names:  # named parameters (PostgreSQL)
        return {**compiled.constants, **{name: value(name, raw) for name, raw in params.items()}}
    out: list[Any] = []
    for name in compiled.names:
        if name not in params:
            out.append(compiled.constants[name])
            continue
        processed = value(name, params[name])
        if isinstance(processed, list):
            out += processed
        else:
            out.append(processed)
    return out


def _compile(statement: ClauseElement, dialect: Dialect, params: Mapping[str, Any]) -> _Compiled:
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(params))
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        raise ValueError(f"pass every column's value: {statement} has Python-side defaults")
    sql = str(compiled)
    positional = dialect.paramstyle in ("qmark", "numeric", "format")
    if positional:
        sql = _EXPANDING.sub(lambda m: f"IN ({', '.join('?' * len(params[m[1]]))})", sql)
    else:
        sql = _EXPANDING.sub(lambda m: f"= ANY(%({m[1]})s)", sql)
        for name, value in params.items():  # arrays sent in binary: no text to escape
            if isinstance(value, (list, tuple)):
                sql = sql.replace(f"%({name})s", f"%({name})b")
    binds = {
        name: bind.type.dialect_impl(dialect).bind_processor(dialect)
        for name, bind in compiled.binds.items()
    }
    constants = {
        name: _processed(binds[name], bind.effective_value)
        for name, bind in compiled.binds.items()
        if name not in params
    }
    columns = compiled._result_columns  # (key, name, objects, type) of each result column
    results = tuple(
        column[3].dialect_impl(dialect).result_processor(dialect, None) for column in columns
    )
    row = namedtuple("Row", [column[0] for column in columns]) if columns else None
    names = tuple(compiled.positiontup) if positional else ()
    return _Compiled(sql, names, binds, constants, results, row)


def _processed(process: Processor, value: Any) -> Any:
    return value if process is None or value is None else process(value)
