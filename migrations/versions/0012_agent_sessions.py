"""agent sessions: the newest stored message of each Agents SDK session

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from context_trimmer._store.schema import HASH

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ct_sessions",
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("head_hash", HASH, nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", "session_id", name=op.f("pk_ct_sessions")),
    )


def downgrade() -> None:
    op.drop_table("ct_sessions")
