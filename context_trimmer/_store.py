"""The SQL history store: append-only, content-addressed conversation history.

Every message is stored once, under its prefix chain hash (see ``_hashing``), with its
parent's hash and its depth, so a conversation is a path through a tree and sending
the same list again writes nothing. Token counts are stored per message *and* as the
running total of the path up to it (``path_tokens``), one row per counting key, so the
prompt tokens of a 10,000-message list are one lookup, not 10,000 encodings.

Two facts keep the hot path to a handful of queries:

- Counts are written for a whole path suffix in one transaction, so for a given key
  the counted messages of a path always form a prefix of it; the boundary is found by
  probing the newest hashes, then by binary search.
- Summaries carry the hash and depth of the last message they cover; the deepest one
  on the current path is a short indexed scan by the path's anchor (its first
  non-system message) and a comparison with the in-memory hashes.

Nothing here updates or deletes a stored message. Writes that may race between
workers are inserts that ignore conflicts on the content hash.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from . import _migrate
from ._compress import Compression
from ._exceptions import StoreError
from ._schema import (
    Attempt,
    Lease,
    Message,
    PromptCompression,
    Request,
    Summary,
    SummaryFailure,
    TokenCount,
    Usage,
    utcnow,
)

DB_ENV = "CONTEXT_TRIMMER_DB"
_PROBE = 16

MESSAGES: Table = Message.__table__  # type: ignore[assignment]
COUNTS: Table = TokenCount.__table__  # type: ignore[assignment]
SUMMARIES: Table = Summary.__table__  # type: ignore[assignment]
FAILURES: Table = SummaryFailure.__table__  # type: ignore[assignment]
LEASES: Table = Lease.__table__  # type: ignore[assignment]
REQUESTS: Table = Request.__table__  # type: ignore[assignment]
USAGE: Table = Usage.__table__  # type: ignore[assignment]
COMPRESSIONS: Table = PromptCompression.__table__  # type: ignore[assignment]
ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]


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


def make_engine(url: str | None = None, *, for_writes: bool = True) -> Engine:
    """An engine for ``url`` tuned for this store (SQLite: WAL, busy timeout, foreign keys).

    On SQLite, write transactions take the write lock up front (``BEGIN IMMEDIATE``);
    ``for_writes=False`` gives an engine for reads, whose deferred transactions never
    wait for a writer in WAL mode (so a read may run while this thread holds a write).
    """
    resolved = resolve_url(url)
    try:
        parsed = make_url(resolved)
    except ArgumentError as error:
        raise StoreError(f"not a database URL: {resolved!r} ({error})") from error
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(resolved, parsed.database, immediate=for_writes)
    try:
        return create_engine(resolved, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as error:
        raise StoreError(
            f"no driver for {parsed.drivername!r} ({error}). For PostgreSQL install "
            "context-trimmer[postgres] and use a postgresql+psycopg:// URL."
        ) from error


def _sqlite_engine(url: str, database: str | None, *, immediate: bool) -> Engine:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions; see SQLAlchemy's
        # "Serializable isolation / Savepoints / Transactional DDL" recipe for pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later writes
        # can fail with "database is locked" without waiting for the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(engine: Engine) -> threading.Lock:
    """One lock per SQLite file, shared by every engine of this process on it."""
    name = os.path.abspath(engine.url.database or ":memory:")
    with _write_locks_guard:
        return _write_locks.setdefault(name, threading.Lock())


def _insert_or_ignore(connection: Connection, table: Table) -> Any:
    dialect = sqlite if connection.dialect.name == "sqlite" else postgresql
    return dialect.insert(table).on_conflict_do_nothing()


def insert_ignoring_conflicts(
    connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows``, skipping any whose key is already stored."""
    if rows:
        connection.execute(_insert_or_ignore(connection, table), list(rows))


def insert_if_absent(connection: Connection, table: Table, row: Mapping[str, Any]) -> bool:
    """Insert one row unless its key is stored; True if it was inserted."""
    statement = _insert_or_ignore(connection, table).returning(*table.primary_key.columns)
    return connection.execute(statement, dict(row)).first() is not None


@dataclass(frozen=True)
class StoredSummary:
    id: int
    covers_hash: str
    covers_depth: int
    text: str
    summarizer: str
    messages_folded: int
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True)
class LedgerRow:
    """One prepared request with the usage recorded for it (None when not recorded)."""

    id: int
    created_at: datetime
    conversation_id: str
    user: str | None
    model: str
    baseline_tokens: int
    prompt_tokens: int
    max_tokens_baseline: int
    max_tokens: int
    usage_model: str | None
    usage_prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None
    usage_estimated: bool | None
    compression_saved_tokens: int = 0
    rate_limited: int = 0
    waited_ms: int = 0
    fallback_model: str | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class SpendRow:
    """Tokens the library spent itself: a ``summary``, a summary ``failure``, or a
    system-prompt ``compression``; ``model`` is the summarizer or rewriter label."""

    created_at: datetime
    conversation_id: str | None
    user: str | None
    model: str
    tokens_in: int
    tokens_out: int
    kind: str


@dataclass(frozen=True)
class TokenRow:
    tokens: int
    path_tokens: int


class HistoryStore:
    """Owns the engine and every SQL statement of the library."""

    def __init__(self, url: str | None = None, *, migrate: bool = True):
        self.url = resolve_url(url)
        self.engine = make_engine(self.url)
        self.reader = make_engine(self.url, for_writes=False) if self.is_sqlite else self.engine
        if migrate:
            self.upgrade()

    def upgrade(self) -> bool:
        """Apply pending migrations; returns False when the schema was already current."""
        try:
            return _migrate.upgrade(self.engine)
        except OperationalError as error:
            raise StoreError(
                f"cannot open or migrate the database {self.engine.url!r}: {error.orig}"
            ) from error

    def revision(self) -> str | None:
        """The schema revision the database is at (None: not migrated yet)."""
        with self.reader.connect() as connection:
            return _migrate.current_revision(connection)

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, threads of this process queue on a lock first:
        waiting there is prompt, while SQLite's own busy handler sleeps in growing steps."""
        lock = _write_lock(self.engine) if self.is_sqlite else None
        if lock is not None and not lock.acquire(timeout=60):
            raise StoreError(f"the database {self.display_url} stayed busy for 60 s")
        try:
            with self.engine.begin() as connection:
                yield connection
        finally:
            if lock is not None:
                lock.release()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def dispose(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # -- messages and token counts ---------------------------------------------------

    def counted_prefix(
        self, connection: Connection, hashes: Sequence[str], key: str
    ) -> tuple[int, int]:
        """How many leading messages of the path have counts under ``key``, and the
        path's running token total at the last of them."""
        probe = hashes[-_PROBE:]
        found = self.token_rows(connection, key, probe)
        if found:
            index = max(i for i, h in enumerate(probe) if h in found)
            return len(hashes) - len(probe) + index + 1, found[probe[index]].path_tokens
        low, high = 0, len(hashes) - len(probe)
        while low < high:
            middle = (low + high) // 2
            if self.token_rows(connection, key, [hashes[middle]]):
                low = middle + 1
            else:
                high = middle
        if low == 0:
            return 0, 0
        return low, self.token_rows(connection, key, [hashes[low - 1]])[hashes[low - 1]].path_tokens

    def token_rows(
        self, connection: Connection, key: str, hashes: Iterable[str]
    ) -> dict[str, TokenRow]:
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        rows = connection.execute(
            select(COUNTS.c.message_hash, COUNTS.c.tokens, COUNTS.c.path_tokens).where(
                COUNTS.c.counting_key == key, COUNTS.c.message_hash.in_(wanted)
            )
        )
        return {h: TokenRow(t, p) for h, t, p in rows}

    def append(
        self,
        connection: Connection,
        messages: Sequence[Mapping[str, Any]],
        bodies: Sequence[str],
        hashes: Sequence[str],
        start: int,
        key: str,
        tokens: Sequence[int],
        path_tokens_before: int,
    ) -> None:
        """Store messages ``start:`` of a path (those already stored are skipped) and
        their token counts under ``key``."""
        now = utcnow()
        message_rows, count_rows = [], []
        running = path_tokens_before
        for offset, index in enumerate(range(start, len(hashes))):
            running += tokens[offset]
            message_rows.append(
                {
                    "hash": hashes[index],
                    "parent_hash": hashes[index - 1] if index else None,
                    "depth": index,
                    "role": messages[index]["role"],
                    "body": bodies[offset],
                    "created_at": now,
                }
            )
            count_rows.append(
                {
                    "message_hash": hashes[index],
                    "counting_key": key,
                    "tokens": tokens[offset],
                    "path_tokens": running,
                }
            )
        insert_ignoring_conflicts(connection, MESSAGES, message_rows)
        insert_ignoring_conflicts(connection, COUNTS, count_rows)

    def load_path(self, connection: Connection, head: str) -> list[str]:
        """The stored bodies (canonical JSON) of the path ending at ``head``, oldest first."""
        columns = (MESSAGES.c.hash, MESSAGES.c.parent_hash, MESSAGES.c.depth, MESSAGES.c.body)
        anchor = select(*columns).where(MESSAGES.c.hash == head).cte("path", recursive=True)
        parent = MESSAGES.alias("parent")
        path = anchor.union_all(
            select(parent.c.hash, parent.c.parent_hash, parent.c.depth, parent.c.body).where(
                parent.c.hash == anchor.c.parent_hash
            )
        )
        rows = connection.execute(select(path.c.body).order_by(path.c.depth))
        return [body for (body,) in rows]

    # -- summaries ---------------------------------------------------------------------

    def deepest_summary(
        self, connection: Connection, anchor: str, hashes: Sequence[str]
    ) -> StoredSummary | None:
        """The summary covering the most of this path, or None."""
        rows = connection.execute(
            select(SUMMARIES)
            .where(SUMMARIES.c.anchor_hash == anchor, SUMMARIES.c.covers_depth < len(hashes))
            .order_by(SUMMARIES.c.covers_depth.desc())
            .limit(64)
        )
        for row in rows:
            if hashes[row.covers_depth] == row.covers_hash:
                return StoredSummary(
                    id=row.id,
                    covers_hash=row.covers_hash,
                    covers_depth=row.covers_depth,
                    text=row.text,
                    summarizer=row.summarizer,
                    messages_folded=row.messages_folded,
                    tokens_in=row.tokens_in,
                    tokens_out=row.tokens_out,
                )
        return None

    def add_summary(self, values: Mapping[str, Any]) -> int | None:
        """Store a summary; returns its id, or None if that span was already summarized."""
        with self.writing() as connection:
            if not insert_if_absent(connection, SUMMARIES, {**values, "created_at": utcnow()}):
                return None
            summary_id = connection.execute(
                select(SUMMARIES.c.id).where(SUMMARIES.c.covers_hash == values["covers_hash"])
            ).scalar_one()
            return int(summary_id)

    def add_failure(self, values: Mapping[str, Any]) -> None:
        with self.writing() as connection:
            connection.execute(insert(FAILURES), [{**values, "created_at": utcnow()}])

    # -- leases --------------------------------------------------------------------------

    def acquire_lease(self, key: str, owner: str, seconds: float) -> bool:
        """Take the lease ``key`` unless another owner holds an unexpired one."""
        now = utcnow()
        expires = now + timedelta(seconds=seconds)
        with self.writing() as connection:
            row = {"key": key, "owner": owner, "expires_at": expires}
            if insert_if_absent(connection, LEASES, row):
                return True
            taken = connection.execute(
                update(LEASES)
                .where(LEASES.c.key == key, LEASES.c.expires_at < now)
                .values(owner=owner, expires_at=expires)
                .returning(LEASES.c.key)
            )
            return taken.first() is not None

    def release_lease(self, key: str, owner: str) -> None:
        with self.writing() as connection:
            connection.execute(delete(LEASES).where(LEASES.c.key == key, LEASES.c.owner == owner))

    # -- ledger ----------------------------------------------------------------------------

    def add_request(self, connection: Connection, values: Mapping[str, Any]) -> int:
        result = connection.execute(
            insert(REQUESTS).values(**values, created_at=utcnow()).returning(REQUESTS.c.id)
        )
        return int(result.scalar_one())

    def add_usage(self, values: Mapping[str, Any]) -> bool:
        """Store the API's usage for a request; False when it was recorded already."""
        with self.writing() as connection:
            return insert_if_absent(connection, USAGE, {**values, "recorded_at": utcnow()})

    def ledger_rows(self, since: datetime | None, until: datetime | None) -> list[LedgerRow]:
        """Prepared requests created in ``[since, until)``, with their recorded usage."""
        r, u, a = REQUESTS.c, USAGE.c, ATTEMPTS.c
        query = (
            select(
                r.id,
                r.created_at,
                r.conversation_id,
                r.user,
                r.model,
                r.baseline_tokens,
                r.prompt_tokens,
                r.max_tokens_baseline,
                r.max_tokens,
                u.model,
                u.prompt_tokens,
                u.cached_tokens,
                u.completion_tokens,
                u.estimated,
                r.compression_saved_tokens,
                a.rate_limited,
                a.waited_ms,
                a.fallback_model,
                a.outcome,
            )
            .select_from(
                REQUESTS.outerjoin(USAGE, u.request_id == r.id).outerjoin(
                    ATTEMPTS, a.request_id == r.id
                )
            )
            .where(*_period(r.created_at, since, until))
            .order_by(r.id)
        )
        with self.reader.connect() as connection:
            rows = connection.execute(query).all()
        return [
            LedgerRow(
                id=row[0],
                created_at=as_utc(row[1]),
                conversation_id=row[2],
                user=row[3],
                model=row[4],
                baseline_tokens=row[5],
                prompt_tokens=row[6],
                max_tokens_baseline=row[7],
                max_tokens=row[8],
                usage_model=row[9],
                usage_prompt_tokens=row[10],
                cached_tokens=row[11],
                completion_tokens=row[12],
                usage_estimated=row[13],
                compression_saved_tokens=row[14],
                rate_limited=row[15] or 0,
                waited_ms=row[16] or 0,
                fallback_model=row[17],
                outcome=row[18],
            )
            for row in rows
        ]

    def spend(self, since: datetime | None, until: datetime | None) -> list[SpendRow]:
        """Summaries, summarizer failures and prompt rewrites made in ``[since, until)``."""
        spend = []
        with self.reader.connect() as connection:
            for table, kind in ((SUMMARIES, "summary"), (FAILURES, "failure")):
                c = table.c
                rows = connection.execute(
                    select(
                        c.created_at,
                        c.conversation_id,
                        c.user,
                        c.summarizer,
                        c.tokens_in,
                        c.tokens_out,
                    ).where(*_period(c.created_at, since, until))
                )
                spend += [SpendRow(as_utc(r[0]), r[1], r[2], r[3], r[4], r[5], kind) for r in rows]
            c = COMPRESSIONS.c
            rows = connection.execute(
                select(c.created_at, c.model, c.tokens_in, c.tokens_out).where(
                    *_period(c.created_at, since, until)
                )
            )
            spend += [
                SpendRow(as_utc(r[0]), None, None, f"openai:{r[1]}", r[2], r[3], "compression")
                for r in rows
            ]
        return spend

    def prompt_compression(self, key: str) -> Compression | None:
        """The stored compression for ``key``: the accepted rewrite, or the safe version
        with the reason the rewrite was rejected."""
        c = COMPRESSIONS.c
        with self.reader.connect() as connection:
            row = connection.execute(
                select(c.text, c.mode, c.original_tokens, c.tokens, c.reason).where(c.key == key)
            ).first()
        if row is None:
            return None
        return Compression(row.text, row.mode, row.original_tokens, row.tokens, row.reason)

    def add_prompt_compression(self, values: Mapping[str, Any]) -> bool:
        with self.writing() as connection:
            return insert_if_absent(connection, COMPRESSIONS, {**values, "created_at": utcnow()})

    def add_attempt(self, values: Mapping[str, Any]) -> None:
        """How a prepared request was sent (once per request)."""
        with self.writing() as connection:
            insert_if_absent(connection, ATTEMPTS, {**values, "created_at": utcnow()})

    def last_head(self, conversation_id: str) -> tuple[str, str | None] | None:
        """The newest head hash and user prepared for ``conversation_id``."""
        with self.reader.connect() as connection:
            row = connection.execute(
                select(REQUESTS.c.head_hash, REQUESTS.c.user)
                .where(REQUESTS.c.conversation_id == conversation_id)
                .order_by(REQUESTS.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else (row[0], row[1])


def _period(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return conditions


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
