"""A user's conversations out of the store: what ``context-trimmer export`` writes.

One dict per conversation (user and conversation id): the messages of its newest path
in order with their timestamps, the summary covering the most of that path, and the
times of its first and last requests. The dicts replay as they are
(``context-trimmer replay`` reads ``{"messages", "conversation_id", "user"}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, select

from .._exceptions import ConfigurationError
from . import sessions as _session_store
from .db import Database, as_utc
from .history import MESSAGES
from .ledger import REQUESTS
from .summaries import SUMMARIES
from .summary_text import text_of

_CHUNK = 500


def _user_is(column: Any, user: str | None) -> Any:
    return column.is_(None) if user is None else column == user


def export(
    db: Database, user: str | None, conversation_id: str | None = None
) -> Iterator[dict[str, Any]]:
    """Each conversation of ``user`` (or the one named): its newest path's messages in
    order with their timestamps, the current summary, and its request times."""
    if user is None and conversation_id is None:
        raise ConfigurationError("export needs a user or a conversation_id")
    r = REQUESTS.c
    conditions = [r.conversation_id == conversation_id] if conversation_id is not None else []
    if user is not None:
        conditions.append(_user_is(r.user, user))
    with db.reading() as connection:
        rows = connection.execute(
            select(r.conversation_id, r.user, r.head_hash, r.created_at)
            .where(*conditions)
            .order_by(r.id)
        ).all()
        latest: dict[tuple[str | None, str], list[Any]] = {}
        for row in rows:
            latest.setdefault((row.user, row.conversation_id), []).append(row)
        # An agent session's history is its head's path (requests sent for it through a
        # wrapped client hold the trimmed views it handed out).
        sessions = {
            (row.owner or None, row.session_id): row.head_hash
            for row in _session_store.heads(connection, conversation_id, user)
        }
        for key in sessions.keys() - latest.keys():
            latest[key] = []
        for (owner, conversation), requests in latest.items():
            head = sessions.get((owner, conversation)) or (
                requests[-1].head_hash if requests else None
            )
            yield _conversation(connection, owner, conversation, requests, head)


def _conversation(
    connection: Connection,
    user: str | None,
    conversation: str,
    requests: list[Any],
    head: str | None,
) -> dict[str, Any]:
    path = [] if head is None else _path_rows(connection, head)
    hashes = [row.hash for row in path]
    summary = _current_summary(connection, hashes)
    return {
        "conversation_id": conversation,
        "user": user,
        "messages": [json.loads(row.body) for row in path],
        "timestamps": [as_utc(row.created_at).isoformat() for row in path],
        "summary": summary,
        "requests": len(requests),
        "first_request_at": _time(requests[0].created_at) if requests else None,
        "last_request_at": _time(requests[-1].created_at) if requests else None,
    }


def _time(value: Any) -> str:
    return as_utc(value).isoformat()


def _path_rows(connection: Connection, head: str) -> list[Any]:
    m = MESSAGES.c
    anchor = select(m.hash, m.parent_hash, m.depth, m.body, m.created_at).where(m.hash == head)
    path = anchor.cte("path", recursive=True)
    parent = MESSAGES.alias("parent")
    path = path.union_all(
        select(
            parent.c.hash, parent.c.parent_hash, parent.c.depth, parent.c.body, parent.c.created_at
        ).where(parent.c.hash == path.c.parent_hash)
    )
    return list(connection.execute(select(path).order_by(path.c.depth)))


def _current_summary(connection: Connection, hashes: list[str]) -> dict[str, Any] | None:
    if not hashes:
        return None
    s = SUMMARIES.c
    best = None
    for start in range(0, len(hashes), _CHUNK):
        chunk = hashes[start : start + _CHUNK]
        row = connection.execute(
            select(s.id, s.text, s.base_id, s.covers_depth, s.summarizer, s.created_at)
            .where(s.covers_hash.in_(chunk))
            .order_by(s.covers_depth.desc())
            .limit(1)
        ).first()
        if row is not None and (best is None or row.covers_depth > best.covers_depth):
            best = row
    if best is None:
        return None
    return {
        "text": best.text if best.base_id is None else text_of(connection, best.id),
        "covers_messages": best.covers_depth + 1,
        "summarizer": best.summarizer,
        "created_at": as_utc(best.created_at).isoformat(),
    }
