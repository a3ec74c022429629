"""The ledger: one row per prepared request, the usage the API reported for it, how it
was sent, and the tokens the library spent itself (summaries, failures, rewrites).

Reports are queries over these rows (see ``_reports.report``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select

from .batch import Batch
from .db import Database, as_utc, insert_if_absent, period
from .fastsql import Fast
from .schema import Attempt, PromptCompression, Request, Usage, utcnow
from .summaries import FAILURES, SUMMARIES

REQUESTS: Table = Request.__table__  # type: ignore[assignment]
USAGE: Table = Usage.__table__  # type: ignore[assignment]
ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
COMPRESSIONS: Table = PromptCompression.__table__  # type: ignore[assignment]
_ADD_REQUEST = Fast(insert(REQUESTS).returning(REQUESTS.c.id))  # prepare() runs it


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
    recall_tokens: int = 0
    rate_limited: int = 0
    waited_ms: int = 0
    fallback_model: str | None = None
    outcome: str | None = None
    upstream: str | None = None
    head_hash: str = ""
    summary_id: int | None = None
    summary_tokens: int = 0
    summary_covers: str | None = None
    cache_baseline_tokens: int | None = None
    cache_sent_tokens: int | None = None


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


def _ledger_query(since: datetime | None, until: datetime | None) -> Any:
    r, u, a = REQUESTS.c, USAGE.c, ATTEMPTS.c
    return (
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
            u.model.label("usage_model"),
            u.prompt_tokens.label("usage_prompt_tokens"),
            u.cached_tokens,
            u.completion_tokens,
            u.estimated.label("usage_estimated"),
            r.compression_saved_tokens,
            r.recall_tokens,
            a.rate_limited,
            a.waited_ms,
            a.fallback_model,
            a.outcome,
            a.upstream,
            r.head_hash,
            r.summary_id,
            r.summary_tokens,
            SUMMARIES.c.covers_hash.label("summary_covers"),
            r.cache_baseline_tokens,
            r.cache_sent_tokens,
        )
        .select_from(
            REQUESTS.outerjoin(USAGE, u.request_id == r.id)
            .outerjoin(ATTEMPTS, a.request_id == r.id)
            .outerjoin(SUMMARIES, SUMMARIES.c.id == r.summary_id)
        )
        .where(*period(r.created_at, since, until))
        .order_by(r.id)
    )


def _ledger_row(values: Mapping[Any, Any]) -> LedgerRow:
    return LedgerRow(
        **{
            **values,
            "created_at": as_utc(values["created_at"]),
            "rate_limited": values["rate_limited"] or 0,
            "waited_ms": values["waited_ms"] or 0,
        }
    )


class Ledger:
    """Write and read the ledger in ``db``."""

    def __init__(self, db: Database):
        self._db = db

    @property
    def db(self) -> Database:
        """The store this ledger is kept in."""
        return self._db

    def add_request(
        self, connection: Connection, values: Mapping[str, Any], *, last: bool = False
    ) -> int:
        """A prepared request, inside the caller's transaction; returns its id. With
        ``last`` (nothing else is written in this transaction) on PostgreSQL the row and
        the commit go in one round trip (``_store.batch``): the caller's transaction
        then ends here, and its own commit finds nothing left to do."""
        row = {**values, "created_at": utcnow()}
        with Batch(connection) as batch:
            added = batch.rows(_ADD_REQUEST, row)
            if last and batch.pipelined:
                batch.sql("COMMIT", None)
        return int(added.first().id)

    def writing(self) -> AbstractContextManager[Connection]:
        """One write transaction, for recording a request's outcome in one commit."""
        return self._db.writing()

    def add_usage(self, values: Mapping[str, Any], connection: Connection | None = None) -> bool:
        """Store the API's usage for a request (in ``connection``'s transaction, else its
        own); False when it was recorded already."""
        if connection is None:
            with self._db.writing() as connection:
                return self.add_usage(values, connection)
        return insert_if_absent(connection, USAGE, {**values, "recorded_at": utcnow()})

    def add_attempt(self, values: Mapping[str, Any], connection: Connection | None = None) -> None:
        """How a prepared request was sent (once per request)."""
        if connection is None:
            with self._db.writing() as connection:
                return self.add_attempt(values, connection)
        insert_if_absent(connection, ATTEMPTS, {**values, "created_at": utcnow()})

    def rows(self, since: datetime | None, until: datetime | None) -> list[LedgerRow]:
        """Prepared requests created in ``[since, until)``, with their recorded usage."""
        with self._db.reading() as connection:
            rows = connection.execute(_ledger_query(since, until)).mappings().all()
        return [_ledger_row(row) for row in rows]

    def spend(self, since: datetime | None, until: datetime | None) -> list[SpendRow]:
        """Summaries, summarizer failures and prompt rewrites made in ``[since, until)``."""
        spend = []
        with self._db.reading() as connection:
            for table, kind in ((SUMMARIES, "summary"), (FAILURES, "failure")):
                c = table.c
                rows = connection.execute(
                    select(
                        c.created_at,
                        c.conversation_id,
                        c.user,
                        c.summarizer.label("model"),
                        c.tokens_in,
                        c.tokens_out,
                    ).where(*period(c.created_at, since, until))
                ).mappings()
                spend += [
                    SpendRow(**{**row, "created_at": as_utc(row["created_at"]), "kind": kind})
                    for row in rows
                ]
            c = COMPRESSIONS.c
            compressions = connection.execute(
                select(c.created_at, c.model, c.tokens_in, c.tokens_out).where(
                    *period(c.created_at, since, until)
                )
            )
            spend += [
                SpendRow(
                    as_utc(row.created_at),
                    None,
                    None,
                    f"openai:{row.model}",
                    row.tokens_in,
                    row.tokens_out,
                    "compression",
                )
                for row in compressions
            ]
        return spend

    def last_head(
        self, conversation_id: str, user: str | None = None
    ) -> tuple[str, str | None] | None:
        """The newest head hash and user prepared for ``conversation_id`` (of ``user``,
        when given: conversation ids are the app's labels and may repeat across users)."""
        query = select(REQUESTS.c.head_hash, REQUESTS.c.user).where(
            REQUESTS.c.conversation_id == conversation_id
        )
        if user is not None:
            query = query.where(REQUESTS.c.user == user)
        with self._db.reading() as connection:
            row = connection.execute(query.order_by(REQUESTS.c.id.desc()).limit(1)).first()
        return None if row is None else (row.head_hash, row.user)
