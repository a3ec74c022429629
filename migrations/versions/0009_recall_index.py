"""recall index of stems: each word indexed without its common endings, so recall looks
up exact terms instead of prefixes (rebuilt from the stored messages)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

from context_trimmer._store import recall_index as _recall_index

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _recall_index.rebuild(op.get_bind(), "stems")


def downgrade() -> None:
    _recall_index.rebuild(op.get_bind(), "words")
