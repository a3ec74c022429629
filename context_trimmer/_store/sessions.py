"""Where each Agents SDK session's history ends (``ct_sessions``): one row per
(owner, session id) naming the newest stored message, so the session's history is the
stored path ending there. Appending moves the head forward; ``pop_item`` moves it back
to the parent (the popped message stays stored, as every message does, until an
erasure); ``clear_session`` erases the paths and deletes the row (``_store.erasure``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update

from .history import MESSAGES
from .schema import SessionHead, utcnow
from .tenants import tenant_users

SESSIONS: Table = SessionHead.__table__  # type: ignore[assignment]


def owner_of(user: str | None) -> str:
    """The owner column's value for ``user`` (the empty string: no user)."""
    return user or ""


def head(connection: Connection, session_id: str, user: str | None) -> str | None:
    """The newest message hash of the session, or None when it has none."""
    s = SESSIONS.c
    query = select(s.head_hash).where(s.owner == owner_of(user), s.session_id == session_id)
    return connection.execute(query).scalar()


def move(
    connection: Connection, session_id: str, user: str | None, to: str | None, model: str
) -> None:
    """Point the session at ``to`` (made when new)."""
    s = SESSIONS.c
    values: dict[str, Any] = {"head_hash": to, "model": model, "updated_at": utcnow()}
    key = (s.owner == owner_of(user), s.session_id == session_id)
    if connection.execute(update(SESSIONS).where(*key).values(**values)).rowcount:
        return
    connection.execute(
        insert(SESSIONS).values(owner=owner_of(user), session_id=session_id, **values)
    )


def parent(connection: Connection, message: str) -> str | None:
    """The hash of the message before ``message`` on its path."""
    query = select(MESSAGES.c.parent_hash).where(MESSAGES.c.hash == message)
    return connection.execute(query).scalar()


def heads(
    connection: Connection, session_id: str | None, user: str | None, tenant: str | None = None
) -> list[Any]:
    """(owner, session_id, head_hash) of ``user``'s sessions, or of the one named (of
    any owner when ``user`` is None), or of ``tenant``'s and its end users'."""
    s = SESSIONS.c
    conditions = [] if session_id is None else [s.session_id == session_id]
    if tenant is not None:
        conditions.append(tenant_users(s.owner, tenant))
    elif user is not None or session_id is None:
        conditions.append(s.owner == owner_of(user))
    return list(connection.execute(select(s.owner, s.session_id, s.head_hash).where(*conditions)))


def drop(connection: Connection, rows: list[Any]) -> int:
    """Delete the named session rows; how many."""
    s = SESSIONS.c
    count = 0
    for row in rows:
        done = connection.execute(
            delete(SESSIONS).where(s.owner == row.owner, s.session_id == row.session_id)
        )
        count += done.rowcount or 0
    return count
