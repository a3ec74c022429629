"""summaries and summary failures record their conversation and user, for the report

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("ct_summaries", "ct_summary_failures")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("conversation_id", sa.String(200), nullable=True))
            batch.add_column(sa.Column("user", sa.String(200), nullable=True))
            batch.create_index(f"ix_{table}_conversation_id", ["conversation_id"])


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_conversation_id")
            batch.drop_column("user")
            batch.drop_column("conversation_id")
