"""Gateway API keys: shown once when created, stored only as a sha256, revocable."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, select, update

from .._exceptions import ConfigurationError
from .db import Database, as_utc
from .schema import ApiKey, utcnow

KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
KEY_PREFIX = "ctk-"


@dataclass(frozen=True)
class KeyInfo:
    """A gateway API key's record (the key itself is never stored, only its sha256)."""

    id: int
    prefix: str
    user: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, user: str, *, admin: bool = False) -> tuple[str, KeyInfo]:
    """A new key for ``user``; the key itself is returned here and never again."""
    if not user.strip():
        raise ConfigurationError("a key needs a user name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    values = {
        "key_hash": _digest(key),
        "prefix": key[:12],
        "user": user,
        "admin": admin,
        "created_at": utcnow(),
        "revoked_at": None,
    }
    with db.writing() as connection:
        row = connection.execute(insert(KEYS).values(**values).returning(KEYS)).one()
    return key, _info(row)


def authenticate(db: Database, key: str) -> KeyInfo | None:
    """The key's owner, or None for an unknown or revoked key."""
    with db.reading() as connection:
        row = connection.execute(select(KEYS).where(KEYS.c.key_hash == _digest(key))).first()
    if row is None or row.revoked_at is not None:
        return None
    return _info(row)


def list_keys(db: Database) -> list[KeyInfo]:
    with db.reading() as connection:
        return [_info(row) for row in connection.execute(select(KEYS).order_by(KEYS.c.id))]


def revoke_key(db: Database, key_id_or_prefix: str) -> int:
    """Revoke by id or by the prefix shown in ``keys list``; returns keys revoked."""
    column = KEYS.c.id if key_id_or_prefix.isdigit() else KEYS.c.prefix
    value: int | str = int(key_id_or_prefix) if key_id_or_prefix.isdigit() else key_id_or_prefix
    with db.writing() as connection:
        done = connection.execute(
            update(KEYS)
            .where(column == value, KEYS.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .returning(KEYS.c.id)
        ).all()
    return len(done)


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        row.id,
        row.prefix,
        row.user,
        row.admin,
        as_utc(row.created_at),
        as_utc(row.revoked_at) if row.revoked_at else None,
    )


class GatewayKeys:
    """The gateway's API keys in one store: ``trimmer.keys``."""

    def __init__(self, db: Database):
        self._db = db

    def create(self, user: str, *, admin: bool = False) -> tuple[str, KeyInfo]:
        """A new key for ``user``: the key (shown this once) and its record."""
        return create_key(self._db, user, admin=admin)

    def list(self) -> list[KeyInfo]:
        """Every key's record (keys themselves are never stored)."""
        return list_keys(self._db)

    def revoke(self, key_id_or_prefix: str) -> int:
        """Revoke keys by id or prefix; returns how many were revoked."""
        return revoke_key(self._db, key_id_or_prefix)

    def authenticate(self, key: str) -> KeyInfo | None:
        """The record of an active key, or None."""
        return authenticate(self._db, key)
