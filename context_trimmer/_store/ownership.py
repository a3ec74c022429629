"""Who owns each upstream object the gateway has seen created (``ct_owned_objects``).

The gateway's tenants share one upstream key, so the upstream cannot tell them apart:
the gateway records, for each object id it saw created (a file, a stored response, a
conversation, a batch...), the tenant whose key created it. An id is recorded once and
never changes owner (a second claim is ignored). Lookups take many ids at once (a list
to filter, the references in a request body).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Table, select

from .db import Database, _insert_or_ignore
from .schema import OwnedObject, utcnow

__all__ = ["Ownership"]

OWNED: Table = OwnedObject.__table__  # type: ignore[assignment]
MAX_ID_CHARS = 200
"""Longer strings are not object ids: never recorded, owned by no one."""


class Ownership:
    """The owners of upstream objects in one store (sync; the gateway offloads calls)."""

    def __init__(self, db: Database):
        self.db = db

    def record(self, tenant: str, objects: Iterable[tuple[str, str]]) -> None:
        """Record ``tenant`` as the owner of each ``(object id, kind)`` not owned yet."""
        rows = [
            {"object_id": object_id, "tenant": tenant, "kind": kind[:32], "created_at": utcnow()}
            for object_id, kind in dict(objects).items()
            if 0 < len(object_id) <= MAX_ID_CHARS
        ]
        if not rows:
            return
        with self.db.writing() as connection:
            connection.execute(_insert_or_ignore(connection, OWNED), rows)

    def owners(self, object_ids: Iterable[str]) -> dict[str, str]:
        """The owner of each of ``object_ids`` that has one."""
        wanted = sorted({i for i in object_ids if 0 < len(i) <= MAX_ID_CHARS})
        if not wanted:
            return {}
        with self.db.reading() as connection:
            rows = connection.execute(
                select(OWNED.c.object_id, OWNED.c.tenant).where(OWNED.c.object_id.in_(wanted))
            ).all()
        return {row.object_id: row.tenant for row in rows}
