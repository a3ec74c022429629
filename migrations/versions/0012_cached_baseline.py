"""each request's prompt-cache figures, stored once the report has computed them

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-06

The report aggregates the ledger in SQL; what OpenAI's prompt cache would have served
each request (the baseline side, and the estimate for the sent side) depends on the
requests before it, so it is computed once per request by the report (rows left NULL
here, old ones included, are computed on the next report) and stored in these columns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ct_requests") as batch:
        batch.add_column(sa.Column("cache_baseline_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cache_sent_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ct_requests") as batch:
        batch.drop_column("cache_sent_tokens")
        batch.drop_column("cache_baseline_tokens")
