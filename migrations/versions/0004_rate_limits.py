"""shared rate-limit budgets, per-user quota windows, and how each request was sent

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ct_rate_limits",
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("limit_requests", sa.Integer(), nullable=True),
        sa.Column("limit_tokens", sa.BigInteger(), nullable=True),
        sa.Column("remaining_requests", sa.Integer(), nullable=True),
        sa.Column("remaining_tokens", sa.BigInteger(), nullable=True),
        sa.Column("reset_requests_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reset_tokens_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ct_rate_limits")),
    )
    op.create_table(
        "ct_user_windows",
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("window", sa.String(32), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user", "window", name=op.f("pk_ct_user_windows")),
    )
    op.create_table(
        "ct_attempts",
        sa.Column("request_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("rate_limited", sa.Integer(), nullable=False),
        sa.Column("waited_ms", sa.Integer(), nullable=False),
        sa.Column("fallback_model", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"], ["ct_requests.id"], name=op.f("fk_ct_attempts_request_id_ct_requests")
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_ct_attempts")),
    )
    op.create_index("ix_ct_attempts_created_at", "ct_attempts", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_ct_attempts_created_at", "ct_attempts")
    op.drop_table("ct_attempts")
    op.drop_table("ct_user_windows")
    op.drop_table("ct_rate_limits")
