"""which upstream answered each request (a label: name and host, never a key)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ct_attempts") as batch:
        batch.add_column(sa.Column("upstream", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ct_attempts") as batch:
        batch.drop_column("upstream")
