"""compact recall index: contentless FTS5 on SQLite (the terms' postings, not the
text, no prefix index: long stems indexed cut), and on PostgreSQL no anchor column or
index (read by nothing) and the hash in bytes; rebuilt from the stored messages

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from context_trimmer._store import recall_index as _recall_index

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _recall_index.rebuild(op.get_bind(), "compact")


def downgrade() -> None:
    _recall_index.rebuild(op.get_bind(), "stems")
