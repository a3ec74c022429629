"""compressed system prompts (shared by every process) and per-request compression savings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ct_prompt_compressions",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("original_tokens", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ct_prompt_compressions")),
    )
    op.create_index(
        "ix_ct_prompt_compressions_created_at", "ct_prompt_compressions", ["created_at"]
    )
    with op.batch_alter_table("ct_requests") as batch:
        batch.add_column(
            sa.Column("compression_saved_tokens", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("ct_requests") as batch:
        batch.drop_column("compression_saved_tokens")
    op.drop_index("ix_ct_prompt_compressions_created_at", "ct_prompt_compressions")
    op.drop_table("ct_prompt_compressions")
