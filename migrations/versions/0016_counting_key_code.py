"""token counts keyed by a short code of their counting key: "0" where every row carried
"o200k_base/85/170" in its primary key (``_store.schema.CountingKey``)

Revision ID: 0016_counting_key_code
Revises: 0015_pg_search
Create Date: 2026-12-07

The column keeps its type (VARCHAR(64)) on both stores; each distinct key's rows are
updated to its code (a store holds a handful of keys), and back on downgrade.
"""

from collections.abc import Callable, Sequence

from alembic import op
from sqlalchemy import text

from context_trimmer._store.schema import key_code, key_of_code

revision: str = "0016_counting_key_code"
down_revision: str | None = "0015_pg_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _recode(key_code)


def downgrade() -> None:
    _recode(key_of_code)


def _recode(change: Callable[[str], str]) -> None:
    connection = op.get_bind()
    stored = connection.execute(text("SELECT DISTINCT counting_key FROM ct_token_counts"))
    for (value,) in list(stored):
        connection.execute(
            text("UPDATE ct_token_counts SET counting_key = :new WHERE counting_key = :old"),
            {"new": change(value), "old": value},
        )
