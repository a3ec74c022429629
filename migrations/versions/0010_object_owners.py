"""object owners: which tenant created each upstream object (file, stored response,
conversation, batch, vector store...) through the gateway

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ct_owned_objects",
        sa.Column("object_id", sa.String(200), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("object_id", name=op.f("pk_ct_owned_objects")),
    )
    op.create_index(
        op.f("ix_ct_owned_objects_tenant"), "ct_owned_objects", ["tenant"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ct_owned_objects_tenant"), table_name="ct_owned_objects")
    op.drop_table("ct_owned_objects")
