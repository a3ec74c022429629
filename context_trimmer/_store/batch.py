"""Statements sent together: on PostgreSQL, one round trip for several statements.

Each statement the driver runs on its own is a round trip to the server: the request
waits for the answer before it sends the next. Most of a warm prepare()'s wall time on
PostgreSQL was those waits (11 per call), not the server's work. A :class:`Batch`
sends the statements added to it in one go, with psycopg 3's pipeline mode: they are
queued, sent with one Sync when the batch ends, and their results are read after it
(:meth:`Pending.rows`). Only statements that need no result of another statement of
the same batch belong in one (the writes of new messages and the reads that do not
depend on them); the transaction is the caller's, and a statement that fails fails
the batch (a StoreError, as any).

On SQLite (in-process, no round trip) each statement simply runs when it is added.
The wait for the Sync is guarded by the store's watchdog (``_store.deadlines``), as
every other wait on the server is.

A transaction's ``BEGIN`` is sent with its first statement too (:func:`defer_begin`):
psycopg, left to open transactions itself, sends it alone and waits for its answer
(in pipeline mode as well). The driver's connections are in autocommit mode, and the
``BEGIN`` of a transaction SQLAlchemy begins is sent right before its first statement,
queued with it when that statement is in a batch; the driver's own ``commit()`` and
``rollback()`` end the transaction (they act whenever the server reports one open).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, event

from .deadlines import watched
from .fastsql import BEGIN_DUE, Fast, Sent, on_driver

__all__ = ["Batch", "Pending", "defer_begin"]


class Pending:
    """The result of a statement added to a batch: read it once the batch has ended."""

    __slots__ = ("_rows", "_sent")

    def __init__(self, sent: Sent):
        self._sent = sent
        self._rows: list[Any] | None = None

    def rows(self) -> list[Any]:
        """Every row the statement returned (named tuples for a :class:`Fast` one)."""
        if self._rows is None:
            self._rows = self._sent.rows()
        return self._rows

    def first(self) -> Any:
        """The first row, or None."""
        rows = self.rows()
        return rows[0] if rows else None


class Batch:
    """Statements run in ``connection``'s transaction, sent together on PostgreSQL.

    Use it as a context manager; read each :class:`Pending` after the ``with`` block."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self._pipelining = False
        self._pipeline: Any = None
        self._dbapi: Any = None

    @property
    def pipelined(self) -> bool:
        """Whether statements wait for the end of the batch (PostgreSQL)."""
        return self._pipelining

    def __enter__(self) -> Batch:
        self._pipelining = self.connection.dialect.name == "postgresql"
        return self

    def _open(self) -> None:
        """Enter pipeline mode at the first statement (a batch left empty costs no Sync)."""
        if self._pipelining and self._pipeline is None:
            self._dbapi = self.connection.connection.dbapi_connection
            self._pipeline = self._dbapi.pipeline()
            self._pipeline.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pipeline is None:
            return
        pipeline, self._pipeline = self._pipeline, None
        with watched(self.connection.engine, self._dbapi):
            pipeline.__exit__(kind, error, traceback)

    def rows(self, fast: Fast, params: Mapping[str, Any]) -> Pending:
        """Add ``fast`` with ``params``; its rows once the batch has ended."""
        self._open()
        return Pending(fast.send(self.connection, params))

    def run(self, fast: Fast, params: Mapping[str, Any]) -> None:
        """Add ``fast`` with ``params``, for its effect only."""
        self._open()
        sent = fast.send(self.connection, params)
        if self._pipeline is None:
            sent.close()

    def sql(self, statement: str, params: Any) -> Pending:
        """Add the driver's own ``statement`` (its parameter style) with ``params``."""
        self._open()
        return Pending(Sent(None, on_driver(self.connection, statement, params)))


def defer_begin(engine: Engine) -> None:
    """Send the BEGIN of each of ``engine``'s transactions with its first statement
    (``engine``'s driver connections must be in autocommit mode; see the module)."""

    def begin(connection: Connection) -> None:
        connection.info[BEGIN_DUE] = True

    def ended(connection: Connection, *_args: Any) -> None:
        if not connection.invalidated:  # an invalidated one is checked in: forgotten then
            connection.info.pop(BEGIN_DUE, None)

    def before_statement(connection: Connection, cursor: Any, *_args: Any) -> None:
        if connection.info.pop(BEGIN_DUE, False):
            cursor.connection.execute("BEGIN")

    def returned(_dbapi_connection: Any, record: Any) -> None:
        record.info.pop(BEGIN_DUE, None)

    event.listen(engine, "begin", begin)
    event.listen(engine, "commit", ended)
    event.listen(engine, "rollback", ended)
    event.listen(engine, "before_cursor_execute", before_statement)
    event.listen(engine.pool, "checkin", returned)
