"""The full-text index of stored messages, which recall searches (see ``_recall``).

Each conversational message is indexed once, when it is first stored, in the same
transaction, under the hash of its path's first conversational message (its
*anchor*: every branch of a conversation shares it, and hashes are per user, so no
other user's or tenant's messages share it) and its depth (its index on the path).
The indexed text is the message's words as sent (text parts, tool calls' names and
arguments), lower-cased with accents folded, so "Málaga" and "malaga" match:

- SQLite: an FTS5 table (``tokenize='unicode61 remove_diacritics 2'``), ranked with
  ``bm25()``; the anchor is an indexed column that the query requires (weight 0).
- PostgreSQL: a ``tsvector`` column (``'simple'`` configuration, no stemming, so any
  language) with a GIN index, and a btree index on (anchor, depth).

Migration 0006 creates the index and fills it for histories already stored.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, text

from ._schema import SEARCH_TABLE

Message = Mapping[str, Any]
CONTROL_ROLES = frozenset({"system", "developer"})


def message_text(message: Message) -> str:
    """The words of ``message`` as one line: text parts, tool calls' names and arguments."""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, Mapping)
        )
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    # NUL is valid message text but not PostgreSQL text: index it as a space.
    return " ".join(" ".join(p.replace("\x00", " ").split()) for p in parts if p).strip()


def fold(words: str) -> str:
    """Lower-cased, accents removed (NFKD without combining marks): how text is indexed."""
    decomposed = unicodedata.normalize("NFKD", words.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def create(connection: Connection) -> None:
    """Create the index (empty) on this connection's database."""
    if connection.dialect.name == "sqlite":
        connection.execute(
            text(
                f"CREATE VIRTUAL TABLE {SEARCH_TABLE} USING fts5(words, anchor, "
                "hash UNINDEXED, depth UNINDEXED, "
                "tokenize='unicode61 remove_diacritics 2')"
            )
        )
        return
    connection.execute(
        text(
            f"CREATE TABLE {SEARCH_TABLE} (hash VARCHAR(64) PRIMARY KEY, "
            "anchor_hash VARCHAR(64) NOT NULL, depth INTEGER NOT NULL, "
            "document TSVECTOR NOT NULL)"
        )
    )
    connection.execute(
        text(f"CREATE INDEX ix_{SEARCH_TABLE}_document ON {SEARCH_TABLE} USING GIN (document)")
    )
    connection.execute(
        text(f"CREATE INDEX ix_{SEARCH_TABLE}_anchor ON {SEARCH_TABLE} (anchor_hash, depth)")
    )


def drop(connection: Connection) -> None:
    connection.execute(text(f"DROP TABLE {SEARCH_TABLE}"))


def add(connection: Connection, rows: Sequence[tuple[str, str, int, str]]) -> None:
    """Index ``(hash, anchor_hash, depth, text)`` rows of messages stored just now."""
    values = [
        {"hash": h, "anchor": a, "depth": d, "words": fold(t)} for h, a, d, t in rows if t.strip()
    ]
    if not values:
        return
    if connection.dialect.name == "sqlite":
        statement = (
            f"INSERT INTO {SEARCH_TABLE} (words, anchor, hash, depth) "
            "VALUES (:words, :anchor, :hash, :depth)"
        )
    else:
        statement = (
            f"INSERT INTO {SEARCH_TABLE} (hash, anchor_hash, depth, document) "
            "VALUES (:hash, :anchor, :depth, to_tsvector('simple', :words)) "
            "ON CONFLICT (hash) DO NOTHING"
        )
    connection.execute(text(statement), values)


def remove(connection: Connection, hashes: Sequence[str]) -> None:
    """Take erased messages out of the index, leaving no trace of their words (on SQLite
    the index's segments are merged, so no deleted token lingers in an older one)."""
    if not hashes:
        return
    marks = ", ".join(f":h{i}" for i in range(len(hashes)))
    values = {f"h{i}": h for i, h in enumerate(hashes)}
    connection.execute(text(f"DELETE FROM {SEARCH_TABLE} WHERE hash IN ({marks})"), values)
    if connection.dialect.name == "sqlite":
        connection.execute(text(f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}) VALUES ('optimize')"))


def rows_for(
    messages: Sequence[Message], hashes: Sequence[str], indexes: Iterable[int]
) -> list[tuple[str, str, int, str]]:
    """Index rows for ``messages[i]`` (i in ``indexes``) of one path."""
    anchor = next((i for i, m in enumerate(messages) if m["role"] not in CONTROL_ROLES), None)
    if anchor is None:
        return []
    return [
        (hashes[i], hashes[anchor], i, message_text(messages[i]))
        for i in indexes
        if i >= anchor and messages[i]["role"] not in CONTROL_ROLES
    ]


def backfill(connection: Connection, batch: int = 1000) -> None:
    """Index every stored conversational message (migration 0006): each message's
    anchor is inherited from its parent, or is itself when it is the first
    conversational message of its path."""
    anchors: dict[str, str | None] = {}
    pending: list[tuple[str, str, int, str]] = []
    stored = connection.execute(
        text("SELECT hash, parent_hash, depth, role, body FROM ct_messages ORDER BY depth, hash")
    ).all()
    for hash_, parent, depth, role, body in stored:
        inherited = anchors.get(parent) if parent is not None else None
        conversational = role not in CONTROL_ROLES
        anchor = inherited or (hash_ if conversational else None)
        anchors[hash_] = anchor
        if conversational and anchor is not None:
            pending.append((hash_, anchor, depth, message_text(json.loads(body))))
        if len(pending) >= batch:
            add(connection, pending)
            pending = []
    add(connection, pending)
