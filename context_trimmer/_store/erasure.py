"""A user's data gone: erasure (forget) and retention (prune); export is in ``_store.export``.

Erasure removes text and identifiers and keeps numbers. For the chosen requests:

- Every message on their paths that no other request still uses is removed; in its
  place stays an anonymous skeleton node (a new random hash, parent, depth and token
  counts; no role, no text), so the report's prompt-cache baseline, which reads path
  shapes, gives the same figures. Histories are hashed per user, so another user's
  messages are never touched; within one user (or among requests with no user) a
  shared prefix, such as the same system prompt, stays while a kept request uses it.
- Summaries covering those messages, and summarizer failures, keep their token
  figures but lose their text (a kept summary stored as a delta against an erased
  one is first written whole again, see ``_store.summary_text``); LLM rewrites of a
  system prompt nobody else sends lose theirs. Their hashes and identifiers become opaque.
- Ledger rows keep every figure; the user and conversation become opaque tokens
  (``erased-...``), so report totals do not change. Fold leases of the erased paths and
  (when a whole user is forgotten) their quota windows are deleted.

On SQLite the work runs with ``secure_delete`` on and the write-ahead log is
checkpointed, so freed pages hold no trace of the text.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from .._exceptions import ConfigurationError
from .._text.compress import VERSION as COMPRESSION_VERSION
from . import history as _history
from . import recall_index as _recall_index
from . import sessions as _session_store
from . import summary_text as _summary_text
from .db import Database
from .history import COUNTS, MESSAGES
from .leases import LEASES
from .ledger import COMPRESSIONS, REQUESTS
from .ratelimit import WINDOWS
from .summaries import FAILURES, SUMMARIES
from .tenants import tenant_users

ERASED = "erased-"
_CHUNK = 500


@dataclass
class Erasure:
    """What an erasure removed (counts of rows)."""

    conversations: int = 0
    requests_anonymised: int = 0
    messages: int = 0
    messages_kept_shared: int = 0
    summaries: int = 0
    summary_failures: int = 0
    compressions: int = 0
    leases: int = 0
    quota_windows: int = 0
    sessions: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Target:
    ids: list[int]
    heads: set[str]
    users: set[str | None]
    conversations: set[tuple[str | None, str]]
    sessions: set[tuple[str, str]] = field(default_factory=set)
    """(owner, session_id) of the agent sessions erased."""


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _user_is(column: Any, user: str | None) -> Any:
    return column.is_(None) if user is None else column == user


# -- erasure ------------------------------------------------------------------------


def forget(
    db: Database,
    user: str | None,
    conversation_id: str | None = None,
    *,
    tenant: str | None = None,
    compression_keys: Callable[[str], Iterable[str]] = lambda _text: (),
) -> Erasure:
    """Erase ``user``'s conversations (or the one named), or those of ``tenant`` and all
    its end users (stored as ``tenant:end-user``, see ``_store.tenants``), as the module says."""
    if user is None and conversation_id is None and tenant is None:
        raise ConfigurationError("forget needs a user, a tenant or a conversation_id")
    if user is not None and tenant is not None:
        raise ConfigurationError(
            "forget takes a user or a tenant, not both: a tenant's end users are erased "
            "with it (tenant=...), one end user alone by its stored name (user='acme:alice')"
        )
    r = REQUESTS.c
    conditions = [r.conversation_id == conversation_id] if conversation_id is not None else []
    if user is not None:
        conditions.append(_user_is(r.user, user))
    if tenant is not None:
        conditions.append(tenant_users(r.user, tenant))
    with db.writing() as connection:
        _secure(connection)
        target = _target(connection, conditions)
        sessions = _with_sessions(connection, target, conversation_id, user, tenant)
        erasure = _erase(connection, target, compression_keys)
        erasure.conversations = len(target.conversations)
        erasure.sessions = _session_store.drop(connection, sessions)
        if conversation_id is None and (user is not None or tenant is not None):
            owner = (
                WINDOWS.c.user == user if tenant is None else tenant_users(WINDOWS.c.user, tenant)
            )
            erasure.quota_windows = _rowcount(connection.execute(delete(WINDOWS).where(owner)))
    _checkpoint(db)
    return erasure


def prune(
    db: Database,
    older_than: datetime,
    *,
    compression_keys: Callable[[str], Iterable[str]] = lambda _text: (),
) -> Erasure:
    """Erase every conversation whose newest request is older than ``older_than``."""
    r = REQUESTS.c
    idle = (
        select(r.user, r.conversation_id)
        .where(~r.conversation_id.startswith(ERASED))
        .group_by(r.user, r.conversation_id)
        .having(func.max(r.created_at) < older_than)
    )
    with db.writing() as connection:
        _secure(connection)
        pairs = connection.execute(idle).all()
        ids: list[int] = []
        for pair in pairs:
            ids += connection.execute(
                select(r.id).where(
                    r.conversation_id == pair.conversation_id, _user_is(r.user, pair.user)
                )
            ).scalars()
        target = _target(connection, [r.id.in_(ids)] if ids else [r.id.is_(None)])
        erasure = _erase(connection, target, compression_keys)
    _checkpoint(db)
    return erasure


def _target(connection: Connection, conditions: list[Any]) -> _Target:
    r = REQUESTS.c
    rows = connection.execute(
        select(r.id, r.head_hash, r.user, r.conversation_id).where(
            *conditions, ~r.conversation_id.startswith(ERASED)
        )
    ).all()
    return _Target(
        [row.id for row in rows],
        {row.head_hash for row in rows},
        {row.user for row in rows},
        {(row.user, row.conversation_id) for row in rows},
    )


def _erase(
    connection: Connection, target: _Target, compression_keys: Callable[[str], Iterable[str]]
) -> Erasure:
    erasure = Erasure(conversations=len(target.conversations))
    if not target.ids and not target.heads:
        return erasure
    candidates = _ancestors(connection, target.heads)
    kept = _kept_ancestors(connection, target, candidates)
    erased = sorted(candidates - kept)
    erasure.messages_kept_shared = len(kept)
    salt = secrets.token_bytes(32)

    def opaque(value: str) -> str:
        return hashlib.sha256(salt + value.encode()).hexdigest()

    tokens = _Tokens(
        {owner: ERASED + secrets.token_hex(8) for owner in target.users},
        {pair: ERASED + secrets.token_hex(8) for pair in target.conversations},
    )
    erasure.compressions = _erase_compressions(connection, erased, compression_keys, opaque)
    erasure.summaries, erasure.summary_failures = _erase_summaries(
        connection, erased, opaque, tokens
    )
    erasure.leases = _erase_leases(connection, erased)
    erasure.messages = _skeletonise(connection, erased, opaque)
    erasure.requests_anonymised = _anonymise_requests(
        connection, target, set(erased), opaque, tokens
    )
    return erasure


@dataclass(frozen=True)
class _Tokens:
    """The opaque identifiers that replace users and conversations."""

    users: dict[str | None, str]
    conversations: dict[tuple[str | None, str], str]

    def user(self, user: str | None) -> str | None:
        return None if user is None else self.users.setdefault(user, ERASED + secrets.token_hex(8))

    def conversation(self, user: str | None, conversation: str | None) -> str:
        key = (user, conversation or "")
        return self.conversations.setdefault(key, ERASED + secrets.token_hex(8))


def _ancestors(connection: Connection, heads: Iterable[str]) -> set[str]:
    found: set[str] = set()
    m = MESSAGES.c
    for chunk in _chunks(sorted(heads)):
        path = select(m.hash, m.parent_hash).where(m.hash.in_(chunk)).cte("up", recursive=True)
        parent = MESSAGES.alias("parent")
        path = path.union(
            select(parent.c.hash, parent.c.parent_hash).where(parent.c.hash == path.c.parent_hash)
        )
        found.update(connection.execute(select(path.c.hash)).scalars())
    return found


def _with_sessions(
    connection: Connection,
    target: _Target,
    session_id: str | None,
    user: str | None,
    tenant: str | None = None,
) -> list[Any]:
    """Add the agent sessions named to ``target`` (their paths, and every message below
    them: what ``pop_item`` left, a run that never saved); their rows. With ``tenant``:
    the sessions of the tenant and of each of its end users."""
    sessions = _session_store.heads(connection, session_id, user, tenant)
    heads = {row.head_hash for row in sessions if row.head_hash is not None}
    if heads:
        target.heads.update(heads, _descendants(connection, _ancestors(connection, heads)))
    target.conversations.update((row.owner or None, row.session_id) for row in sessions)
    target.users.update(row.owner or None for row in sessions)
    target.sessions.update((row.owner, row.session_id) for row in sessions)
    return sessions


def _descendants(connection: Connection, roots: set[str]) -> set[str]:
    """Every stored message below ``roots`` (their children, and theirs...)."""
    found: set[str] = set()
    m = MESSAGES.c
    for chunk in _chunks(sorted(roots)):
        down = select(m.hash).where(m.parent_hash.in_(chunk)).cte("down", recursive=True)
        child = MESSAGES.alias("child")
        down = down.union(select(child.c.hash).where(child.c.parent_hash == down.c.hash))
        found.update(connection.execute(select(down.c.hash)).scalars())
    return found


def _kept_ancestors(connection: Connection, target: _Target, candidates: set[str]) -> set[str]:
    """The candidates that a request or an agent session outside the target still uses
    (same user root)."""
    r = REQUESTS.c
    heads: set[str] = set()
    for owner in target.users:
        heads.update(
            connection.execute(
                select(r.head_hash).where(_user_is(r.user, owner), r.id.not_in(target.ids))
            ).scalars()
        )
        heads.update(
            row.head_hash
            for row in _session_store.heads(connection, None, owner)
            if row.head_hash is not None and (row.owner, row.session_id) not in target.sessions
        )
    return _ancestors(connection, heads) & candidates if heads else set()


def _erase_compressions(
    connection: Connection,
    erased: list[str],
    compression_keys: Callable[[str], Iterable[str]],
    opaque: Callable[[str], str],
) -> int:
    """Blank the LLM rewrites of system prompts that only erased messages carry."""
    m = MESSAGES.c
    control = ("system", "developer")
    bodies: set[str] = set()
    for chunk in _chunks(erased):
        bodies.update(
            connection.execute(
                select(m.body).where(m.hash.in_(chunk), m.role.in_(control))
            ).scalars()
        )
    count = 0
    for body in sorted(bodies):
        still_sent = connection.execute(
            select(m.hash).where(m.body == body, m.hash.not_in(erased)).limit(1)
        ).first()
        if still_sent is not None:
            continue
        content = json.loads(body).get("content")
        texts = [content] if isinstance(content, str) else _part_texts(content)
        for text in texts:
            for key in compression_keys(text):
                count += _rowcount(
                    connection.execute(
                        update(COMPRESSIONS)
                        .where(COMPRESSIONS.c.key == key)
                        .values(key=opaque(key), text="", reason=None)
                    )
                )
    return count


def _part_texts(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]


def compression_key(model: str, protect: Sequence[str], text: str) -> str:
    """The key an LLM rewrite of ``text`` is stored under (see ``_trimming.system_prompt``)."""
    material = "\0".join(["llm", COMPRESSION_VERSION, model, *protect, text])
    return hashlib.sha256(material.encode()).hexdigest()


def rewrite_keys(db: Database, protect: Sequence[str]) -> Callable[[str], list[str]]:
    """The keys LLM rewrites of a prompt text may be stored under in ``db``: one per
    rewriter model seen, with these ``protect`` patterns."""
    with db.reading() as connection:
        found = connection.execute(select(COMPRESSIONS.c.model).distinct()).scalars()
        models = sorted(model for model in found if model)
    return lambda text: [compression_key(model, protect, text) for model in models]


def _erase_summaries(
    connection: Connection, erased: list[str], opaque: Callable[[str], str], tokens: _Tokens
) -> tuple[int, int]:
    summaries = failures = 0
    for chunk in _chunks(erased):
        for table in (SUMMARIES, FAILURES):
            c = table.c
            rows = connection.execute(
                select(c.id, c.anchor_hash, c.covers_hash, c.user, c.conversation_id).where(
                    c.covers_hash.in_(chunk)
                )
            ).all()
            blank: dict[str, Any] = {"error": ""}
            if table is SUMMARIES:
                blank = {"text": "", "delta": None, "base_id": None}
                _summary_text.rewrite_whole(connection, [row.id for row in rows])
            for row in rows:
                connection.execute(
                    update(table)
                    .where(c.id == row.id)
                    .values(
                        anchor_hash=opaque(row.anchor_hash),
                        covers_hash=opaque(row.covers_hash),
                        conversation_id=tokens.conversation(row.user, row.conversation_id),
                        user=tokens.user(row.user),
                        **blank,
                    )
                )
            if table is SUMMARIES:
                summaries += len(rows)
            else:
                failures += len(rows)
    return summaries, failures


def _erase_leases(connection: Connection, erased: list[str]) -> int:
    count = 0
    for chunk in _chunks(erased):
        keys = [f"fold:{h}" for h in chunk]
        count += _rowcount(connection.execute(delete(LEASES).where(LEASES.c.key.in_(keys))))
    return count


def _skeletonise(connection: Connection, erased: list[str], opaque: Callable[[str], str]) -> int:
    """Replace each erased message by a node with no role and no text, keeping its shape
    and token counts under a new hash."""
    m, c = MESSAGES.c, COUNTS.c
    erased_set = set(erased)
    _history.forget_stored()
    for chunk in _chunks(erased):
        _recall_index.remove(connection, list(chunk))  # reads the messages: before they go
        nodes = connection.execute(
            select(m.hash, m.parent_hash, m.depth, m.created_at).where(m.hash.in_(chunk))
        ).all()
        connection.execute(
            insert(MESSAGES),
            [
                {
                    "hash": opaque(n.hash),
                    "parent_hash": opaque(n.parent_hash)
                    if n.parent_hash in erased_set
                    else n.parent_hash,
                    "depth": n.depth,
                    "role": "",
                    "body": "",
                    "created_at": n.created_at,
                }
                for n in nodes
            ],
        )
        counts = connection.execute(
            select(c.message_hash, c.counting_key, c.tokens, c.path_tokens).where(
                c.message_hash.in_(chunk)
            )
        ).all()
        if counts:
            connection.execute(
                insert(COUNTS),
                [{**row._mapping, "message_hash": opaque(row.message_hash)} for row in counts],
            )
        connection.execute(delete(COUNTS).where(c.message_hash.in_(chunk)))
        connection.execute(delete(MESSAGES).where(m.hash.in_(chunk)))
    return len(erased)


def _anonymise_requests(
    connection: Connection,
    target: _Target,
    erased: set[str],
    opaque: Callable[[str], str],
    tokens: _Tokens,
) -> int:
    r = REQUESTS.c
    rows = connection.execute(
        select(r.id, r.user, r.conversation_id, r.head_hash).where(r.id.in_(target.ids))
    ).all()
    for row in rows:
        connection.execute(
            update(REQUESTS)
            .where(r.id == row.id)
            .values(
                user=tokens.user(row.user),
                conversation_id=tokens.conversation(row.user, row.conversation_id),
                head_hash=opaque(row.head_hash) if row.head_hash in erased else row.head_hash,
            )
        )
    return len(rows)


def _rowcount(result: Any) -> int:
    return max(0, int(result.rowcount or 0))


def _secure(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA secure_delete=ON")


def _checkpoint(db: Database) -> None:
    """On SQLite, move the write-ahead log into the file and empty it."""
    if db.is_sqlite:
        raw = db.engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
