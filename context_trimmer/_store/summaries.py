"""Stored summaries and summarizer failures.

Summaries are immutable rows keyed by the hash of the last message they cover (and
its depth), under the conversation's anchor (its first non-system message). Serving a
summary is a lookup of the deepest one on the current path: a short indexed scan by
anchor, checked against the in-memory hashes of the path. A new summary supersedes
an old one by covering more; the old one's text is then kept as a delta against the
new one's (``_store.summary_text``), decoded only when a path is served it again.
Failures are recorded with what they cost, never stored as summaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, select

from . import summary_text as _text
from .batch import Batch, Pending
from .db import Database, insert_if_absent
from .fastsql import Fast
from .schema import Summary, SummaryFailure, TokenCount, utcnow

SUMMARIES: Table = Summary.__table__  # type: ignore[assignment]
FAILURES: Table = SummaryFailure.__table__  # type: ignore[assignment]
_c = SUMMARIES.c
_DEEPEST = (  # built once: prepare() runs it
    select(
        _c.id,
        _c.covers_hash,
        _c.covers_depth,
        _c.text,
        _c.summarizer,
        _c.messages_folded,
        _c.tokens_in,
        _c.tokens_out,
        _c.base_id,
    )
    .where(_c.anchor_hash == bindparam("anchor"), _c.covers_depth < bindparam("depth"))
    .order_by(_c.covers_depth.desc())
    .limit(64)
)
_DEEPEST_FAST = Fast(_DEEPEST)
_COUNTS = TokenCount.__table__
_DEEPEST_COUNTED = Fast(  # and the token row of the last message each one covers
    select(*_DEEPEST.selected_columns, _COUNTS.c.tokens, _COUNTS.c.path_tokens)
    .select_from(
        SUMMARIES.outerjoin(
            _COUNTS,
            (_COUNTS.c.message_hash == _c.covers_hash)
            & (_COUNTS.c.counting_key == bindparam("key")),
        )
    )
    .where(_c.anchor_hash == bindparam("anchor"), _c.covers_depth < bindparam("depth"))
    .order_by(_c.covers_depth.desc())
    .limit(64)
)


@dataclass(frozen=True)
class StoredSummary:
    """A summary as stored: what it covers and what it cost."""

    id: int
    covers_hash: str
    covers_depth: int
    text: str
    summarizer: str
    messages_folded: int
    tokens_in: int
    tokens_out: int
    base_id: int | None = field(default=None, compare=False)
    """Not None while ``text`` is still to be decoded (see :meth:`Summaries.whole`)."""

    @property
    def next_index(self) -> int:
        """Index of the first message after the span this summary covers."""
        return self.covers_depth + 1


class Summaries:
    """Read and write summaries and summarizer failures in ``db``."""

    def __init__(self, db: Database):
        self._db = db

    def deepest(
        self, connection: Connection, anchor: str, hashes: Sequence[str]
    ) -> StoredSummary | None:
        """The summary covering the most of this path, or None."""
        with Batch(connection) as batch:
            pending = self.send_deepest(batch, anchor, hashes)
        return self.whole(connection, self.read_deepest(pending, hashes))

    @staticmethod
    def send_deepest(
        batch: Batch, anchor: str, hashes: Sequence[str], key: str | None = None
    ) -> Pending:
        """:meth:`deepest`'s lookup, added to ``batch``; with ``key``, each summary's
        row also has the token row (``tokens``, ``path_tokens``: None when not counted)
        of the last message it covers, which planning reads (see :func:`covered_rows`)."""
        params = {"anchor": anchor, "depth": len(hashes)}
        if key is None:
            return batch.rows(_DEEPEST_FAST, params)
        return batch.rows(_DEEPEST_COUNTED, {**params, "key": key})

    @staticmethod
    def read_deepest(pending: Pending, hashes: Sequence[str]) -> StoredSummary | None:
        """:meth:`deepest` from the result of :meth:`send_deepest`; a superseded one's
        text still to be decoded by :meth:`whole`."""
        for row in pending.rows():
            if hashes[row.covers_depth] == row.covers_hash:
                return StoredSummary(*row[:_FIELDS])
        return None

    @staticmethod
    def whole(connection: Connection, summary: StoredSummary | None) -> StoredSummary | None:
        """``summary`` with its text decoded if it was superseded (a query then; the
        newest summary of a path, what prepare() serves but after an edit, is whole)."""
        if summary is None or summary.base_id is None:
            return summary
        return replace(summary, text=_text.text_of(connection, summary.id), base_id=None)

    def add(self, values: Mapping[str, Any]) -> int | None:
        """Store a summary; returns its id, or None if that span was already summarized.
        Its parent's text is then kept as a delta against this one's."""
        with self._db.writing() as connection:
            if not insert_if_absent(connection, SUMMARIES, {**values, "created_at": utcnow()}):
                return None
            summary_id = int(
                connection.execute(
                    select(_c.id).where(_c.covers_hash == values["covers_hash"])
                ).scalar_one()
            )
            if values.get("parent_id") is not None:
                _text.supersede(connection, values["parent_id"], summary_id, values["text"])
            return summary_id

    def add_failure(self, values: Mapping[str, Any]) -> None:
        """Record a summarizer call that failed (its text is never stored as a summary)."""
        with self._db.writing() as connection:
            connection.execute(insert(FAILURES), [{**values, "created_at": utcnow()}])


_FIELDS = len(_DEEPEST.selected_columns)


def covered_rows(pending: Pending) -> dict[str, tuple[int, int]]:
    """(tokens, running path total) of the last message each summary read by
    ``send_deepest(..., key=...)`` covers, by its hash (those counted under the key)."""
    return {
        row.covers_hash: (row.tokens, row.path_tokens)
        for row in pending.rows()
        if row.tokens is not None
    }
