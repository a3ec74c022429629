"""full-text index of stored messages for recall (filled for histories already stored);
recalled tokens per request

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from context_trimmer._store import recall_index as _recall_index

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    connection = op.get_bind()
    _recall_index.create(connection, "words")
    _recall_index.backfill(connection, layout="words")  # 0009 rebuilds it with stems
    with op.batch_alter_table("ct_requests") as batch:
        batch.add_column(
            sa.Column("recall_tokens", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("ct_requests") as batch:
        batch.drop_column("recall_tokens")
    _recall_index.drop(op.get_bind())
