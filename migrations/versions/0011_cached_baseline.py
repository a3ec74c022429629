"""each request's prompt-cache figures, stored once the report has computed them

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

The report aggregates the ledger in SQL; what OpenAI's prompt cache would have served
each request (the baseline side, and the estimate for the sent side) depends on the
requests before it, so it is computed once per request by the report (rows left NULL
here, old ones included, are computed on the next report) and stored in these columns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both stores (SQLite 3.35+ drops a column in place): a batch
# rebuild would drop ct_requests, which ct_usage and ct_attempts reference.
COLUMNS = ("cache_baseline_tokens", "cache_sent_tokens")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("ct_requests", sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.execute(f"ALTER TABLE ct_requests DROP COLUMN {name}")
