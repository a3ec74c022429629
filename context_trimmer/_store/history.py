"""Stored messages and their token counts: append-only, content-addressed history.

Every message is stored once, under its prefix chain hash (see ``_trimming.hashing``), with its
parent's hash and its depth, so a conversation is a path through a tree and sending
the same list again writes nothing. Token counts are stored per message *and* as the
running total of the path up to it (``path_tokens``), one row per counting key, so the
prompt tokens of a 10,000-message list are one lookup, not 10,000 encodings.

Counts are written for a whole path suffix in one transaction, so for a given key the
counted messages of a path always form a prefix of it; the boundary is found by
probing the newest hashes, then by binary search. Nothing here updates or deletes a
stored message; writes that may race between workers are inserts that ignore
conflicts on the content hash.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, text

from . import recall_index as _recall_index
from .batch import Batch, Pending
from .db import insert_ignoring_conflicts, insert_new
from .fastsql import Fast
from .schema import CountingKey, Message, TokenCount, utcnow

MESSAGES: Table = Message.__table__  # type: ignore[assignment]
COUNTS: Table = TokenCount.__table__  # type: ignore[assignment]
_PROBE = 16


@dataclass(frozen=True)
class TokenRow:
    """A stored message's tokens and the running total of its path up to it."""

    tokens: int
    path_tokens: int


# Paths this process stored with their counts, by database, counting key and newest
# hash (a chain hash names the whole path): at most STORED_REMEMBERED, the oldest
# forgotten first. Only a hint (see ``known_stored``): an erasure in this process
# forgets them all, one elsewhere or a rolled-back transaction costs a round trip.
_STORED: OrderedDict[tuple[Any, str, str], None] = OrderedDict()
STORED_REMEMBERED = 4096
_STORED_LOCK = threading.Lock()  # prepare() runs on many threads (the gateway)


def note_stored(connection: Connection, key: str, head: str) -> None:
    """Remember that the path ending at ``head`` is stored, counted under ``key``, in
    ``connection``'s database (by this process, in the transaction under way)."""
    entry = (connection.engine.url, key, head)
    with _STORED_LOCK:
        _STORED[entry] = None
        _STORED.move_to_end(entry)
        while len(_STORED) > STORED_REMEMBERED:
            _STORED.popitem(last=False)


def known_stored(connection: Connection, key: str, head: str) -> bool:
    """Whether this process stored the path ending at ``head`` with counts under ``key``
    in ``connection``'s database (as another Trimmer on the same database, a second
    server in the process, does): a PostgreSQL call need not send its messages as new
    before the lookup of what is stored says so. A hint: the lookup still decides."""
    return (connection.engine.url, key, head) in _STORED


def forget_stored() -> None:
    """Forget every path :func:`note_stored` remembered (an erasure removed messages)."""
    with _STORED_LOCK:
        _STORED.clear()


def send_probe(
    batch: Batch, hashes: Sequence[str], key: str, seen: int = 0, also: Sequence[str] = ()
) -> Pending:
    """The first lookup of how many leading messages of the path have counts under
    ``key`` (see :func:`finish_probe`), added to ``batch``; the token rows of
    the hashes ``also`` come with it (:func:`read_token_rows` of the result)."""
    start = _probe_start(hashes, seen)
    wanted = list(dict.fromkeys([*hashes[start:], *also]))
    return batch.rows(_TOKEN_ROWS_FAST, {"key": key, "hashes": wanted})


def _probe_start(hashes: Sequence[str], seen: int) -> int:
    """The first of the messages :func:`send_probe` looks up."""
    return max(len(hashes) - _PROBE, seen - 1, 0)


def finish_probe(
    connection: Connection, pending: Pending, hashes: Sequence[str], key: str, seen: int = 0
) -> tuple[int, int]:
    """How many leading messages of the path have counts under ``key``, and the path's
    running token total at the last of them, from the result of :func:`send_probe`:
    the last ``_PROBE`` messages are looked up first, from the last ``seen`` one on (the
    caller's guess: a lookup of 16 costs ~190 µs, of 2 ~40 µs); else a binary search
    over the rest, one statement per step."""
    start = _probe_start(hashes, seen)
    probe = hashes[start:]
    found = read_token_rows(pending)  # may hold the rows of other messages too
    index = max((i for i, h in enumerate(probe) if h in found), default=None)
    if index is not None:
        return start + index + 1, found[probe[index]].path_tokens
    low, high = 0, start
    while low < high:
        middle = (low + high) // 2
        if token_rows(connection, key, [hashes[middle]]):
            low = middle + 1
        else:
            high = middle
    if low == 0:
        return 0, 0
    return low, token_rows(connection, key, [hashes[low - 1]])[hashes[low - 1]].path_tokens


# Built once: the hot path's statements are compiled once per engine (SQLAlchemy's
# compiled cache), not rebuilt and keyed on every call.
_TOKEN_ROWS = select(COUNTS.c.message_hash, COUNTS.c.tokens, COUNTS.c.path_tokens).where(
    COUNTS.c.counting_key == bindparam("key"),
    COUNTS.c.message_hash.in_(bindparam("hashes", expanding=True)),
)
_TOKEN_ROWS_FAST = Fast(_TOKEN_ROWS)


def token_rows(connection: Connection, key: str, hashes: Iterable[str]) -> dict[str, TokenRow]:
    """The stored counts under ``key`` of those of ``hashes`` that have one."""
    with Batch(connection) as batch:
        pending = send_token_rows(batch, key, hashes)
    return read_token_rows(pending)


def send_token_rows(batch: Batch, key: str, hashes: Iterable[str]) -> Pending | None:
    """:func:`token_rows` added to ``batch`` (None: nothing to look up)."""
    wanted = list(dict.fromkeys(hashes))
    if not wanted:
        return None
    return batch.rows(_TOKEN_ROWS_FAST, {"key": key, "hashes": wanted})


def read_token_rows(pending: Pending | None) -> dict[str, TokenRow]:
    """The result of :func:`send_token_rows`."""
    rows = [] if pending is None else pending.rows()
    return {row.message_hash: TokenRow(row.tokens, row.path_tokens) for row in rows}


def send_append(
    batch: Batch,
    messages: Sequence[Mapping[str, Any]],
    bodies: Sequence[str],
    hashes: Sequence[str],
    start: int,
    key: str,
    tokens: Sequence[int],
    path_tokens_before: int,
) -> None:
    """Store messages ``start:`` of a path (those already stored are skipped) and their
    token counts under ``key``, the statements added to ``batch``; the messages stored
    now are indexed for recall. On PostgreSQL two statements
    whatever the number of messages, none of whose results is read: the messages with
    their counts, and their index rows (the index skips a message indexed already, so
    it needs no list of the messages stored now)."""
    if start >= len(hashes):
        return
    connection = batch.connection
    if batch.pipelined:
        _send_arrays(
            batch, _APPEND, messages, bodies, hashes, start, key, tokens, path_tokens_before, {}
        )
        rows = _recall_index.rows_for(messages, hashes, range(start, len(hashes)))
        _recall_index.add(connection, rows)
        return
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
    _index_new(connection, messages, hashes, start, insert_new(connection, MESSAGES, message_rows))
    insert_ignoring_conflicts(connection, COUNTS, count_rows)


_ARRAY_CHUNK = 2000  # messages per statement: each bounded in time
_STORE_MESSAGES = (  # a statement's first part: the messages, skipping those stored
    "WITH stored AS (INSERT INTO ct_messages (hash, parent_hash, depth, role, body, "
    "created_at) SELECT * FROM unnest(CAST(:hashes AS BYTEA[]), CAST(:parents AS BYTEA[]), "
    "CAST(:depths AS INTEGER[]), CAST(:roles AS VARCHAR[]), CAST(:bodies AS TEXT[]), "
    "CAST(:times AS TIMESTAMPTZ[])) ON CONFLICT DO NOTHING) "
)
_KEY = bindparam("key", type_=CountingKey())  # stored as its code, as the column is
_APPEND = Fast(  # then their counts, from the running totals given
    text(
        _STORE_MESSAGES
        + "INSERT INTO ct_token_counts (message_hash, counting_key, tokens, path_tokens) "
        "SELECT hash, :key, tokens, total FROM unnest(CAST(:hashes AS BYTEA[]), "
        "CAST(:tokens AS INTEGER[]), CAST(:totals AS BIGINT[])) AS row (hash, tokens, total) "
        "ON CONFLICT DO NOTHING"
    ).bindparams(_KEY)
)
_APPEND_AFTER = Fast(  # then their counts, only if the message before them is counted
    text(
        _STORE_MESSAGES
        + "INSERT INTO ct_token_counts (message_hash, counting_key, tokens, path_tokens) "
        "SELECT row.hash, :key, row.tokens, base.path_tokens + row.total "
        "FROM unnest(CAST(:hashes AS BYTEA[]), CAST(:tokens AS INTEGER[]), "
        "CAST(:totals AS BIGINT[])) AS row (hash, tokens, total) "
        "CROSS JOIN (SELECT path_tokens FROM ct_token_counts WHERE message_hash = "
        "CAST(:base AS BYTEA) AND counting_key = :key) AS base ON CONFLICT DO NOTHING"
    ).bindparams(_KEY)
)


def send_append_after(
    batch: Batch,
    messages: Sequence[Mapping[str, Any]],
    bodies: Sequence[str],
    hashes: Sequence[str],
    start: int,
    key: str,
    tokens: Sequence[int],
) -> None:
    """PostgreSQL: store messages ``start:`` of a path (``start`` > 0) as :func:`send_append`
    does, before knowing whether the one before them is counted: their counts are
    written only if it is (from its running total, in the statement), so the counted
    messages of a path stay a prefix of it; the messages and their index rows are
    written in any case (each skips what is stored)."""
    base = {"base": bytes.fromhex(hashes[start - 1])}
    _send_arrays(batch, _APPEND_AFTER, messages, bodies, hashes, start, key, tokens, 0, base)
    _recall_index.add(
        batch.connection, _recall_index.rows_for(messages, hashes, range(start, len(hashes)))
    )


def _send_arrays(
    batch: Batch,
    statement: Fast,
    messages: Sequence[Mapping[str, Any]],
    bodies: Sequence[str],
    hashes: Sequence[str],
    start: int,
    key: str,
    tokens: Sequence[int],
    total_before: int,
    extra: Mapping[str, Any],
) -> None:
    """PostgreSQL: messages ``start:`` of a path and their counts (running totals from
    ``total_before``), one statement of arrays per chunk."""
    now = utcnow()
    running, totals = total_before, []
    for count in tokens:
        running += count
        totals.append(running)
    for first in range(start, len(hashes), _ARRAY_CHUNK):
        last = min(first + _ARRAY_CHUNK, len(hashes))
        raw = [bytes.fromhex(h) for h in hashes[max(first - 1, 0) : last]]
        own = raw[1:] if first else raw
        offsets = range(first - start, last - start)
        batch.run(
            statement,
            {
                **extra,
                "hashes": own,
                "parents": raw[:-1] if first else [None, *raw[:-1]],
                "depths": list(range(first, last)),
                "roles": [messages[i]["role"] for i in range(first, last)],
                "bodies": [bodies[o] for o in offsets],
                "times": [now] * (last - first),
                "key": key,
                "tokens": [tokens[o] for o in offsets],
                "totals": [totals[o] for o in offsets],
            },
        )


def _index_new(
    connection: Connection,
    messages: Sequence[Mapping[str, Any]],
    hashes: Sequence[str],
    start: int,
    new: set[str],
) -> None:
    """Index the messages stored just now, in the same transaction."""
    if new:
        indexes = [i for i in range(start, len(hashes)) if hashes[i] in new]
        _recall_index.add(connection, _recall_index.rows_for(messages, hashes, indexes))


def load_path(connection: Connection, head: str) -> list[str]:
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
