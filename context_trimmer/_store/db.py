"""The database: one engine holder for every part of the store.

:class:`Database` owns the SQLAlchemy engines of one URL (on SQLite a second, reading
engine whose deferred transactions never wait for a writer in WAL mode), runs the
migrations, and hands out transactions: :meth:`Database.writing` and
:meth:`Database.reading`. Each concern of the store (history, summaries, leases,
ledger, keys, rate-limit budgets, prompt compressions) owns its SQL in its own module
and takes a ``Database``.

``Database`` is also the store's failure boundary: every error a driver, SQLAlchemy,
Alembic or the operating system raises while opening, migrating, reading or writing
leaves it as :class:`~._exceptions.StoreError`, naming the URL (without its password)
and what to check, so every concern module is covered without handling errors itself.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from .. import _inline
from .._exceptions import StoreError
from .batch import defer_begin
from .deadlines import WATCHDOG, bound, connect_args, store_timeout
from .fastsql import Fast
from .lane import StoreLane
from .outage import PROBE_SECONDS, Outage

T = TypeVar("T")
log = logging.getLogger("context_trimmer")
DB_ENV = "CONTEXT_TRIMMER_DB"
BUSY_TIMEOUT_MS = 30_000
"""How long SQLite waits for another process's write lock."""
CHECKPOINT_EVERY = 200
"""Commits between WAL checkpoints (each commit writes a few pages: about SQLite's own
1,000-page default)."""
_SQLITE_BUSY = 5  # the primary result code of "database is locked"


_FAILURES: tuple[type[BaseException], ...] = (
    DBAPIError,
    PoolTimeoutError,
    DisconnectionError,
    sqlite3.Error,
)


def store_failures() -> tuple[type[BaseException], ...]:
    """What a database failure may be raised as, before it becomes a StoreError: the
    raw driver errors too (raised outside SQLAlchemy's wrapping, e.g. in events).
    psycopg's count once it is loaded (a PostgreSQL store loads it; until then none can
    be raised), so importing the package does not load it."""
    psycopg = sys.modules.get("psycopg")
    return _FAILURES if psycopg is None else (*_FAILURES, psycopg.Error)


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/context-trimmer/history.db`` (``~/.local/share/...`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "context-trimmer" / "history.db"


def resolve_url(url: str | None = None) -> str:
    """The database URL: ``url``, else ``$CONTEXT_TRIMMER_DB``, else the default SQLite file."""
    url = url or os.environ.get(DB_ENV)
    if not url:
        return f"sqlite:///{default_db_path()}"
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases, memory or ``file:`` URIs)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else Path(database).expanduser()


def url_origin(url: str | None) -> str:
    """Where the store's URL came from, for messages: the argument, the variable, or
    the default."""
    if url:
        return "--db"
    return f"${DB_ENV}" if os.environ.get(DB_ENV) else "the default"


def make_engine(
    url: str | None = None, *, for_writes: bool = True, timeout: float | None = None
) -> Engine:
    """An engine for ``url`` tuned for this store (SQLite: WAL, busy timeout, foreign keys).

    On SQLite, write transactions take the write lock up front (``BEGIN IMMEDIATE``);
    ``for_writes=False`` gives an engine for reads, whose deferred transactions never
    wait for a writer in WAL mode (so a read may run while this thread holds a write).
    Elsewhere connecting, waiting for a pooled connection and each statement are bounded
    by ``timeout`` seconds (see ``_store.deadlines.store_timeout``).
    """
    resolved = resolve_url(url)
    try:
        parsed = make_url(resolved)
    except ArgumentError as error:
        raise StoreError(f"not a database URL: {resolved!r} ({error})") from error
    if parsed.get_backend_name() == "sqlite":
        try:
            return _sqlite_engine(resolved, parsed.database, immediate=for_writes)
        except OSError as error:
            raise StoreError(
                f"cannot create the folder of the SQLite database {parsed.database}: "
                f"{error.strerror or error}. Check that the path is a folder you may write "
                "to (no part of it may be a file).",
                url=parsed.render_as_string(hide_password=True),
            ) from error
    seconds = store_timeout(timeout)
    postgres = parsed.get_backend_name() == "postgresql"
    try:
        engine = create_engine(
            resolved,
            pool_timeout=seconds,
            pool_pre_ping=not postgres,  # PostgreSQL: pinged on checkout under a deadline
            connect_args=connect_args(parsed, seconds) if postgres else {},
            # PostgreSQL: each BEGIN is sent with its transaction's first statement
            **({"isolation_level": "AUTOCOMMIT"} if postgres else {}),
        )
    except (NoSuchModuleError, ModuleNotFoundError) as error:
        raise StoreError(
            f"no driver for {parsed.drivername!r} ({error}). For PostgreSQL install the "
            "postgres extra (pip install '.[postgres]' from the checkout) and use a "
            "postgresql+psycopg:// URL."
        ) from error
    if postgres:
        bound(engine, seconds)
        defer_begin(engine)  # after bound(): the watchdog is armed before a BEGIN is sent
    return engine


def _sqlite_engine(url: str, database: str | None, *, immediate: bool) -> Engine:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions; see SQLAlchemy's
        # "Serializable isolation / Savepoints / Transactional DDL" recipe for pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            if immediate:  # Database.writing() checkpoints, off any event loop
                cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later writes
        # can fail with "database is locked" without waiting for the busy timeout.
        # On the driver's connection: SQLAlchemy's own execution costs ~60 µs more, on
        # every transaction of the request path.
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None
        if immediate and _inline.no_wait():
            _begin_without_waiting(dbapi_connection)
        else:
            dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _begin_without_waiting(dbapi_connection: Any) -> None:
    """``BEGIN IMMEDIATE``, or :class:`WouldWait` at once if another process holds the
    write lock (run inline, see ``_inline``: SQLite's busy handler would sleep)."""
    dbapi_connection.execute("PRAGMA busy_timeout = 0")
    try:
        dbapi_connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if getattr(error, "sqlite_errorcode", _SQLITE_BUSY) & 0xFF != _SQLITE_BUSY:
            raise
        raise _inline.WouldWait("the database is locked by another process") from None
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _acquire(lock: threading.Lock) -> bool:
    """Take this process's write lock: at once or not at all inline, else within 60 s."""
    return lock.acquire(blocking=False) if _inline.no_wait() else lock.acquire(timeout=60)


_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(engine: Engine) -> threading.Lock:
    """One lock per SQLite file, shared by every engine of this process on it."""
    name = os.path.abspath(engine.url.database or ":memory:")
    with _write_locks_guard:
        return _write_locks.setdefault(name, threading.Lock())


class Database:
    """The engines of one store URL; migrated on open unless ``migrate=False``.

    Use it as a context manager (or call :meth:`close`) to release its connections.
    """

    def __init__(
        self, url: str | None = None, *, migrate: bool = True, timeout: float | None = None
    ):
        self.url = resolve_url(url)
        self.timeout = store_timeout(timeout)
        self.engine = make_engine(self.url, timeout=self.timeout)
        self.reader = make_engine(self.url, for_writes=False) if self.is_sqlite else self.engine
        self._lane: StoreLane | None = None
        self._commits = itertools.count(1)
        self._checkpoint_due = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._outage = None if self.is_sqlite else Outage(self._probe)
        if migrate:
            try:
                self.upgrade()
            except StoreError:
                self.close()
                raise

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def display_url(self) -> str:
        """The URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    def upgrade(self) -> bool:
        """Apply pending migrations; returns False when the schema was already current."""
        from . import migrate as _migrate

        with self.failures("open or migrate"):
            try:
                return _migrate.upgrade(self.engine)
            except Exception as error:
                if not _migrate.is_alembic_refusal(error):
                    raise
                raise StoreError(
                    f"cannot migrate the database {self.display_url}: {error}. Check that "
                    "this context-trimmer is at least as new as the one that last migrated it.",
                    url=self.display_url,
                ) from error

    @contextmanager
    def failures(self, doing: str) -> Iterator[None]:
        """Turn every database failure inside into a StoreError saying what to check."""
        try:
            yield
        except store_failures() as error:
            raise self.store_error(doing, error) from error

    def store_error(self, doing: str, error: BaseException) -> StoreError:
        """The StoreError for ``error`` met while trying to ``doing`` the database."""
        cause = getattr(error, "orig", None) or error
        detail = re.sub(r"\s+", " ", str(cause)).strip() or type(cause).__name__
        cut = WATCHDOG.take_cut()
        if cut:
            detail = f"no answer within {self.timeout:g} s store_timeout ({detail})"
        if self._outage is not None and (cut or _timed_out(error, cause)):
            self._outage.begin(detail)
        password = self.engine.url.password
        if password:
            detail = detail.replace(str(password), "***")
        return StoreError(
            f"cannot {doing} the database {self.display_url}: {detail}. {self._advice()}",
            url=self.display_url,
        )

    def _advice(self) -> str:
        if self.is_sqlite:
            return (
                "Check that the file's folder exists and is writable, that the file is "
                "writable, and that it is an SQLite database (not a corrupt or foreign file)."
            )
        return (
            "Check that the server is running and reachable at that address, and the "
            "user, password and database name in the URL (each wait is bounded by "
            f"store_timeout, {self.timeout:g} s)."
        )

    def _fail_fast(self) -> None:
        """A StoreError at once while the store is known down (see ``_store.outage``)."""
        down = None if self._outage is None else self._outage.down_for()
        if down is None:
            return
        assert self._outage is not None
        raise StoreError(
            f"cannot reach the database {self.display_url}: it gave no answer "
            f"{down:.0f} s ago ({self._outage.reason}) and no probe has reached it since; "
            f"failing at once until one does (every {PROBE_SECONDS:g} s). {self._advice()}",
            url=self.display_url,
        )

    def _probe(self) -> None:
        """One round trip past the outage check (the background probe's)."""
        with self.failures("reach"), self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1").all()

    def revision(self) -> str | None:
        """The schema revision the database is at (None: not migrated yet)."""
        from . import migrate as _migrate

        with self.reading() as connection:
            return _migrate.current_revision(connection)

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, threads of this process queue on a lock first:
        waiting there is prompt, while SQLite's own busy handler sleeps in growing steps."""
        self._fail_fast()
        lock = _write_lock(self.engine) if self.is_sqlite else None
        if lock is not None and not _acquire(lock):
            _inline.refuse("another thread is writing")
            raise StoreError(f"the database {self.display_url} stayed busy for 60 s")
        try:
            with self.failures("write to"), self.engine.begin() as connection:
                yield connection
        finally:
            if lock is not None:
                lock.release()
        if lock is not None:
            self._count_commit()

    def _count_commit(self) -> None:
        """Every ``CHECKPOINT_EVERY`` commits, checkpoint the WAL (SQLite's own
        auto-checkpoint is off: it would run inside a commit, on an event loop for work
        run inline, where a checkpoint's copy and fsync take tens of milliseconds).
        Inline, the checkpoint is left to the lane (see :meth:`offload`)."""
        if next(self._commits) % CHECKPOINT_EVERY == 0:  # next(): atomic across threads
            if _inline.no_wait():
                self._checkpoint_due = True
            else:
                self.checkpoint_quietly()

    def checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database file (SQLite, PASSIVE: it
        waits for no one, and what readers still use is left for the next one)."""
        with self.failures("checkpoint"), self.engine.connect() as connection:
            dbapi_connection = connection.connection.dbapi_connection  # no transaction
            assert dbapi_connection is not None
            dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def checkpoint_quietly(self) -> None:
        """:meth:`checkpoint`; a failure is logged (the commits are safe in the WAL)."""
        try:
            self.checkpoint()
        except StoreError as error:
            log.warning("context-trimmer: WAL checkpoint failed: %s", error)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only connection (never waits for a writer on SQLite)."""
        self._fail_fast()
        with self.failures("read from"), self.reader.connect() as connection:
            yield connection

    async def offload(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` for an async caller without blocking its event loop: on
        SQLite run right here unless it would wait (see ``_inline``), else on this
        store's lane (``_store.lane``); on other stores, on asyncio's default pool."""
        if not self.is_sqlite:
            return await asyncio.to_thread(function, *args)
        done, result = _inline.attempt(function, *args)
        if self._lane is None:
            self._lane = StoreLane()
        if self._checkpoint_due:
            self._checkpoint_due = False
            self._background(self._lane.run(self.checkpoint_quietly))
        if done:
            return cast(T, result)
        return await self._lane.run(function, *args)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` without waiting for it (kept referenced until it ends)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Release every pooled connection."""
        if self._outage is not None:
            self._outage.close()
        self.engine.dispose()
        self.reader.dispose()


def _timed_out(error: BaseException, cause: BaseException) -> bool:
    """Whether a failure means the server did not answer in time (a frozen or hung
    server), as opposed to refusing at once or cancelling a slow statement itself."""
    if isinstance(error, PoolTimeoutError):
        return True
    text = str(cause).lower()
    return "timeout expired" in text or "timed out" in text


def _insert_or_ignore(connection: Connection, table: Table) -> Any:
    return _ignoring(connection.dialect.name == "sqlite", table)


@functools.cache
def _ignoring(on_sqlite: bool, table: Table) -> Any:
    """Built once per table: the hot path's inserts are not rebuilt on every call."""
    return (sqlite if on_sqlite else postgresql).insert(table).on_conflict_do_nothing()


@functools.cache
def _fast_ignoring(on_sqlite: bool, table: Table, returning: bool) -> Fast:
    statement = _ignoring(on_sqlite, table)
    return Fast(statement.returning(*table.primary_key.columns) if returning else statement)


def insert_ignoring_conflicts(
    connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows``, skipping any whose key is already stored."""
    if len(rows) == 1:  # the request path's case: on the driver's cursor
        _fast_ignoring(connection.dialect.name == "sqlite", table, False).run(connection, rows[0])
    elif rows:
        connection.execute(_insert_or_ignore(connection, table), list(rows))


def insert_new(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> set[Any]:
    """Insert the ``rows`` whose key is not stored yet; the keys of those inserted (a
    one-column primary key)."""
    on_sqlite = connection.dialect.name == "sqlite"
    fast = _fast_ignoring(on_sqlite, table, True)
    if len(rows) == 1:  # the request path's case: on the driver's cursor
        row = fast.first(connection, rows[0])
        return set() if row is None else {row[0]}
    if not rows:
        return set()
    return set(connection.execute(fast.statement, list(rows)).scalars())  # type: ignore[call-overload]


def insert_if_absent(connection: Connection, table: Table, row: Mapping[str, Any]) -> bool:
    """Insert one row unless its key is stored; True if it was inserted."""
    return bool(insert_new(connection, table, [row]))


def period(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    """Conditions selecting ``column`` in ``[since, until)``."""
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return conditions


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
