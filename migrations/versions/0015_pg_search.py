"""recall index without term counts on PostgreSQL: recall counts a question's terms in
the GIN index (up to its cap) instead of a table every append updated for every term
of every new message; SQLite unchanged

Revision ID: 0015_pg_search
Revises: 0014_summary_text
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from context_trimmer._store import recall_index as _recall_index

revision: str = "0015_pg_search"
down_revision: str | None = "0014_summary_text"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _recall_index.drop_counts(op.get_bind())


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        _recall_index.create_counts(connection, fill=True)
