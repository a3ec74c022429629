"""SQLAlchemy models of the history store. Alembic migrations in ``migrations/`` create
them; ``tests/test_migrations.py`` fails if the two disagree.

- ``ct_messages``: every message ever seen, keyed by its prefix chain hash; append-only.
  Every hash column holds the digest's 32 bytes (:class:`Hash`; hex to Python code).
- ``ct_token_counts``: each message's tokens, and the running total of its path, per
  counting key (encoding + image pricing, stored as a short code: :class:`CountingKey`),
  so stored history is never recounted.
- ``ct_summaries``: rolling summaries, each keyed by the hash of the last message it
  covers; immutable, a newer one supersedes by covering more. A superseded summary's
  text is kept as a compressed delta against its first child (``_store.summary_text``).
- ``ct_summary_failures``: summarizer calls that failed (never stored as summaries).
- ``ct_leases``: short leases so two workers never summarize the same span at once.
- ``ct_requests``: the ledger, one row per prepared request; ``ct_usage`` adds the
  API's reported usage when the response is recorded; each request's prompt-cache
  figures are stored by the first report that computes them.
- ``ct_sessions``: the head of each Agents SDK session (``integrations.agents``).
- ``ct_message_search``: the full-text index recall searches (a contentless FTS5 table
  with ``ct_message_search_rows`` on SQLite, a tsvector table with a GIN index on
  PostgreSQL); made by migrations 0006, 0009, 0013 and 0015 in SQL, not modelled here
  (see ``_store.recall_index``).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .._models import ENCODINGS


class Hash(TypeDecorator[str]):
    """A sha256 digest, stored as its 32 bytes (BLOB / BYTEA) and seen by Python as its
    64-character hex string, so queries and the code around them deal in hex only.
    Raw digests (``bytes``) are accepted when binding too."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        return bytes.fromhex(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else bytes(value).hex()


HASH = Hash()


class CountingKey(TypeDecorator[str]):
    """A counting key (``ModelInfo.counting_key``: "o200k_base/85/170", the encoding and
    the image pricing), stored as a short code: the decimal of one integer that packs
    the encoding's index in ``ENCODINGS`` and how far each price is from gpt-4o's (85 and
    170 tokens), so the usual key is "0" and cl100k_base's "1". It is part of every
    token count's primary key: 1 byte where the key took 17 (a stored message's counts
    take 45 B instead of 62 on SQLite, 137 instead of 172 on PostgreSQL). Python code
    sees the key itself; a key stored whole (before migration 0016) is read as is."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else key_code(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else key_of_code(value)


_BASE_TOKENS, _TILE_TOKENS = 85, 170  # gpt-4o's image pricing: the usual key's


@lru_cache(maxsize=64)
def key_code(key: str) -> str:
    """The stored code of the counting key ``key`` (see :class:`CountingKey`;
    remembered: a store has a handful of keys, bound on every lookup of counts)."""
    encoding, base, tile = key.split("/")
    pair = _pair(_zigzag(int(base) - _BASE_TOKENS), _zigzag(int(tile) - _TILE_TOKENS))
    return str(ENCODINGS.index(encoding) + len(ENCODINGS) * pair)


@lru_cache(maxsize=64)
def key_of_code(code: str) -> str:
    """The counting key stored as ``code``."""
    if "/" in code:  # stored whole, before migration 0016
        return code
    encoding, pair = divmod(int(code), len(ENCODINGS))[::-1]
    base, tile = (_unzigzag(value) for value in _unpair(pair))
    return f"{ENCODINGS[encoding]}/{base + _BASE_TOKENS}/{tile + _TILE_TOKENS}"


def _zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def _pair(a: int, b: int) -> int:
    """Szudzik's pairing: small pairs get small numbers."""
    return a * a + a + b if a >= b else a + b * b


def _unpair(z: int) -> tuple[int, int]:
    root = math.isqrt(z)
    return (z - root * root, root) if z - root * root < root else (root, z - root * root - root)


class Timestamp(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)``; on SQLite stored as an integer, the microseconds
    since the Unix epoch (8 bytes where SQLAlchemy's DateTime writes 26 characters of
    text: 18 bytes of every stored message). Text written before migration 0014 is
    still read. Other dialects store their own timestamp type, untouched. Only for
    columns no query compares in SQL (``ct_messages.created_at``)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return _to_micros

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        text_processor = self.impl_instance.dialect_impl(dialect).result_processor(dialect, coltype)
        return lambda value: _from_micros(value, text_processor)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _to_micros(value: datetime | None) -> int | None:
    if value is None:
        return None
    moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: Any, text_processor: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # text: written before 0014
        moment: datetime = (
            text_processor(value) if text_processor else datetime.fromisoformat(value)
        )
        return moment
    return _EPOCH + timedelta(microseconds=int(value))


SEARCH_TABLE = "ct_message_search"
WITHOUT_ROWID = {"sqlite_with_rowid": False}
"""SQLite: the table is its primary key's b-tree (no second copy of the key)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Message(Base):
    __tablename__ = "ct_messages"

    hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    parent_hash: Mapped[str | None] = mapped_column(HASH)
    depth: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class TokenCount(Base):
    __tablename__ = "ct_token_counts"
    __table_args__ = WITHOUT_ROWID

    message_hash: Mapped[str] = mapped_column(
        HASH, ForeignKey("ct_messages.hash"), primary_key=True
    )
    counting_key: Mapped[str] = mapped_column(CountingKey(), primary_key=True)
    tokens: Mapped[int] = mapped_column(Integer)
    path_tokens: Mapped[int] = mapped_column(BigInteger)


class Summary(Base):
    __tablename__ = "ct_summaries"
    __table_args__ = (Index("ix_ct_summaries_anchor_depth", "anchor_hash", "covers_depth"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    anchor_hash: Mapped[str] = mapped_column(HASH)
    covers_hash: Mapped[str] = mapped_column(HASH, unique=True)
    covers_depth: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ct_summaries.id"))
    conversation_id: Mapped[str | None] = mapped_column(String(200), index=True)
    user: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)  # '' when kept as a delta (or erased)
    summarizer: Mapped[str] = mapped_column(String(200))
    prompt_version: Mapped[str] = mapped_column(String(32))
    messages_folded: Mapped[int] = mapped_column(Integer)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A superseded summary: its text as a zlib delta against the text of ``base_id``
    # (its first child), see ``_store.summary_text``; both NULL while the text is whole.
    base_id: Mapped[int | None] = mapped_column(Integer)
    delta: Mapped[bytes | None] = mapped_column(LargeBinary)


class SummaryFailure(Base):
    __tablename__ = "ct_summary_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    anchor_hash: Mapped[str] = mapped_column(HASH, index=True)
    covers_hash: Mapped[str] = mapped_column(HASH)
    conversation_id: Mapped[str | None] = mapped_column(String(200), index=True)
    user: Mapped[str | None] = mapped_column(String(200))
    summarizer: Mapped[str] = mapped_column(String(200))
    error: Mapped[str] = mapped_column(Text)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lease(Base):
    __tablename__ = "ct_leases"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Request(Base):
    __tablename__ = "ct_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    conversation_id: Mapped[str] = mapped_column(String(200), index=True)
    user: Mapped[str | None] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(String(200))
    head_hash: Mapped[str] = mapped_column(HASH)
    message_count: Mapped[int] = mapped_column(Integer)
    messages_sent: Mapped[int] = mapped_column(Integer)
    baseline_tokens: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    summary_id: Mapped[int | None] = mapped_column(ForeignKey("ct_summaries.id"))
    summary_tokens: Mapped[int] = mapped_column(Integer)
    max_tokens_requested: Mapped[int | None] = mapped_column(Integer)
    max_tokens_baseline: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    summarizer_tokens_in: Mapped[int] = mapped_column(Integer)
    summarizer_tokens_out: Mapped[int] = mapped_column(Integer)
    folded_synchronously: Mapped[bool] = mapped_column(Boolean)
    summary_failures: Mapped[int] = mapped_column(Integer)
    compression_saved_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    recall_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    # What OpenAI's prompt cache would have served (see _prompt_cache), written by the
    # report the first time it sees the request; NULL until then.
    cache_baseline_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_sent_tokens: Mapped[int | None] = mapped_column(Integer)


class Usage(Base):
    __tablename__ = "ct_usage"

    request_id: Mapped[int] = mapped_column(
        ForeignKey("ct_requests.id"), primary_key=True, autoincrement=False
    )
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    estimated: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromptCompression(Base):
    """One compressed system prompt, keyed by the hash of (mode, settings, prompt)."""

    __tablename__ = "ct_prompt_compressions"

    key: Mapped[str] = mapped_column(HASH, primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    original_tokens: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class RateLimitState(Base):
    """What is left of one API key's limits for one model, shared by every worker."""

    __tablename__ = "ct_rate_limits"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    limit_requests: Mapped[int | None] = mapped_column(Integer)
    limit_tokens: Mapped[int | None] = mapped_column(BigInteger)
    remaining_requests: Mapped[int | None] = mapped_column(Integer)
    remaining_tokens: Mapped[int | None] = mapped_column(BigInteger)
    reset_requests_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reset_tokens_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserWindow(Base):
    """Tokens one user spent in one quota window (a minute or a UTC day)."""

    __tablename__ = "ct_user_windows"

    user: Mapped[str] = mapped_column(String(200), primary_key=True)
    window: Mapped[str] = mapped_column(String(32), primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger)


class Attempt(Base):
    """How a prepared request was sent: retries, 429s, waits, fallback, outcome, and the
    upstream that answered (its label: a name and host, never a key)."""

    __tablename__ = "ct_attempts"

    request_id: Mapped[int] = mapped_column(
        ForeignKey("ct_requests.id"), primary_key=True, autoincrement=False
    )
    attempts: Mapped[int] = mapped_column(Integer)
    rate_limited: Mapped[int] = mapped_column(Integer)
    waited_ms: Mapped[int] = mapped_column(Integer)
    fallback_model: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32))
    upstream: Mapped[str | None] = mapped_column(String(200))  # label, never a key
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class ApiKey(Base):
    """A gateway API key: only its sha256 is stored; ``prefix`` identifies it to people."""

    __tablename__ = "ct_api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(HASH, unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    user: Mapped[str] = mapped_column(String(200))
    admin: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OwnedObject(Base):
    """An upstream object (file, stored response, conversation, batch, vector store...)
    created through the gateway, and the tenant (the key's user) that created it: only
    that tenant may reach it through the passthrough (``gateway._objects``)."""

    __tablename__ = "ct_owned_objects"

    object_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionHead(Base):
    """An Agents SDK session's newest stored message (``integrations.agents``): the
    session's history is the path ending there (None: emptied by ``pop_item``)."""

    __tablename__ = "ct_sessions"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    head_hash: Mapped[str | None] = mapped_column(HASH)
    model: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
