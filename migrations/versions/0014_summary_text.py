"""superseded summaries kept as deltas against their first child; on SQLite each
message's time as an integer (microseconds since the epoch) instead of 26 characters

Revision ID: 0014_summary_text
Revises: 0013
Create Date: 2026-12-07

Each fold stored its whole summary, most of which is its parent's text again; a
superseded summary's text is now a zlib delta against its first child's
(``ct_summaries.base_id`` and ``delta``, ``text`` ''; see ``_store.summary_text``).
Upgrading encodes the summaries already superseded, oldest first (a child is still
whole when its parent is encoded against it); downgrading decodes them, newest first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection

from context_trimmer._store.summary_text import encode, text_of

revision: str = "0014_summary_text"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHUNK = 200
# 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's SQLite DateTime, UTC) <-> microseconds.
_TO_MICROS = (
    "UPDATE ct_messages SET created_at = "
    "CAST(strftime('%s', substr(created_at, 1, 19)) AS INTEGER) * 1000000 "
    "+ CAST(substr(substr(created_at, 21) || '000000', 1, 6) AS INTEGER) "
    "WHERE typeof(created_at) = 'text'"
)
_TO_TEXT = (
    "UPDATE ct_messages SET created_at = "
    "strftime('%Y-%m-%d %H:%M:%S', created_at / 1000000, 'unixepoch') "
    "|| '.' || printf('%06d', created_at % 1000000) "
    "WHERE typeof(created_at) = 'integer'"
)


def upgrade() -> None:
    # Plain ALTER TABLE on both stores: a batch rebuild would drop ct_summaries, which
    # ct_requests references.
    op.add_column("ct_summaries", sa.Column("base_id", sa.Integer(), nullable=True))
    op.add_column("ct_summaries", sa.Column("delta", sa.LargeBinary(), nullable=True))
    connection = op.get_bind()
    _encode_superseded(connection)
    if connection.dialect.name == "sqlite":
        op.execute(_TO_MICROS)


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":
        op.execute(_TO_TEXT)
    _decode_all(connection)
    op.execute("ALTER TABLE ct_summaries DROP COLUMN delta")
    op.execute("ALTER TABLE ct_summaries DROP COLUMN base_id")


def _encode_superseded(connection: Connection) -> None:
    """Each summary with a child: its text as a delta against its first child's."""
    pairs = connection.execute(
        sa.text(
            "SELECT parent_id, min(id) FROM ct_summaries WHERE parent_id IS NOT NULL "
            "GROUP BY parent_id ORDER BY parent_id"
        )
    ).all()
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start : start + _CHUNK]
        ids = sorted({i for pair in chunk for i in pair})
        texts = dict(
            connection.execute(
                sa.text("SELECT id, text FROM ct_summaries WHERE id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": ids},
            ).all()
        )
        rows = [
            {"id": parent, "base": child, "delta": encode(texts[parent], texts[child])}
            for parent, child in chunk
            if texts.get(parent) and texts.get(child)  # neither erased
        ]
        if rows:
            connection.execute(
                sa.text(
                    "UPDATE ct_summaries SET text = '', delta = :delta, base_id = :base "
                    "WHERE id = :id"
                ),
                rows,
            )


def _decode_all(connection: Connection) -> None:
    """Every delta back to its whole text, newest first (its base is whole by then)."""
    ids = connection.execute(
        sa.text("SELECT id FROM ct_summaries WHERE base_id IS NOT NULL ORDER BY id DESC")
    ).scalars()
    for summary_id in list(ids):
        connection.execute(
            sa.text(
                "UPDATE ct_summaries SET text = :text, base_id = NULL, delta = NULL WHERE id = :id"
            ),
            {"id": summary_id, "text": text_of(connection, summary_id)},
        )
