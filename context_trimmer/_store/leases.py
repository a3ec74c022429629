"""Leases: at most one worker, in any process on the same database, does a piece of work.

A lease is a row keyed by what is being done (``fold:<hash>``, ``compress:<hash>``)
with its owner and an expiry. Taking it is an insert that ignores conflicts, or an
update of an expired row, so the database arbitrates between workers; a crashed
worker's lease is taken over once it expires.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Table, delete, update

from .db import Database, insert_if_absent
from .schema import Lease, utcnow

LEASES: Table = Lease.__table__  # type: ignore[assignment]


class Leases:
    """Take and release leases in ``db``."""

    def __init__(self, db: Database):
        self._db = db

    def acquire(self, key: str, owner: str, seconds: float) -> bool:
        """Take the lease ``key`` unless another owner holds an unexpired one."""
        now = utcnow()
        expires = now + timedelta(seconds=seconds)
        with self._db.writing() as connection:
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

    def release(self, key: str, owner: str) -> None:
        """Give the lease back (only if ``owner`` still holds it)."""
        with self._db.writing() as connection:
            connection.execute(delete(LEASES).where(LEASES.c.key == key, LEASES.c.owner == owner))

    def release_all(self, owner: str) -> int:
        """Drop every lease ``owner`` holds (a dead worker's, whose job runs again); the
        number dropped."""
        with self._db.writing() as connection:
            result = connection.execute(delete(LEASES).where(LEASES.c.owner == owner))
            return max(0, int(result.rowcount or 0))
