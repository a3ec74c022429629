"""hashes stored as their 32 bytes instead of 64 hex characters; SQLite's token counts
without a rowid (the table is its primary key's b-tree)

Every hash column (messages, token counts, summaries and their failures, the ledger's
head, prompt compressions, API keys) becomes BLOB / BYTEA; existing rows are converted.

- PostgreSQL: ``ALTER COLUMN ... TYPE BYTEA USING decode(column, 'hex')`` (the one
  foreign key between two hash columns is dropped around it).
- SQLite cannot change a column's type in place: each table is rebuilt (Alembic's batch
  mode, which keeps every column, index and constraint the table has). The app keeps
  foreign keys on, and dropping a table other rows refer to would break them, so the
  rows of every table involved (those converted and those referring to them) are first
  set aside in temporary tables, the tables rebuilt empty, and the rows put back
  converted, parents first.

The recall index (``ct_message_search``) keeps its own hex copy; it is not changed here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlite3
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HASH_COLUMNS = {
    "ct_messages": ("hash", "parent_hash"),
    "ct_token_counts": ("message_hash",),
    "ct_summaries": ("anchor_hash", "covers_hash"),
    "ct_summary_failures": ("anchor_hash", "covers_hash"),
    "ct_requests": ("head_hash",),
    "ct_prompt_compressions": ("key",),
    "ct_api_keys": ("key_hash",),
}
WITHOUT_ROWID = {"ct_token_counts"}
COUNTS_FK = ("fk_ct_token_counts_message_hash_ct_messages", "ct_token_counts", "ct_messages")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgresql("decode({column}, 'hex')", sa.LargeBinary())
    else:
        _sqlite_binary(True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgresql("encode({column}, 'hex')", sa.String(64))
    else:
        _sqlite_binary(False)


def _postgresql(using: str, type_: sa.types.TypeEngine[object]) -> None:
    name, table, referred = COUNTS_FK
    op.drop_constraint(name, table, type_="foreignkey")
    for table_name, columns in HASH_COLUMNS.items():
        for column in columns:
            op.alter_column(
                table_name, column, type_=type_, postgresql_using=using.format(column=column)
            )
    op.create_foreign_key(name, table, referred, ["message_hash"], ["hash"])


def _sqlite_binary(binary: bool) -> None:
    """Rebuild the tables with hash columns as BLOB (``binary``) or VARCHAR(64) again."""
    connection = op.get_bind()
    _register_unhex(connection.connection.driver_connection)
    convert = "ct_unhex({0})" if binary else "lower(hex({0}))"
    metadata = sa.MetaData()
    metadata.reflect(connection, only=lambda name, _m: name.startswith("ct_"))
    involved = [
        table
        for table in metadata.sorted_tables  # parents first
        if table.name in HASH_COLUMNS
        or any(key.column.table.name in HASH_COLUMNS for key in table.foreign_keys)
    ]
    for table in involved:
        op.execute(f"CREATE TEMP TABLE ct_hold_{table.name} AS SELECT * FROM {table.name}")
    for table in reversed(involved):  # children first
        op.execute(f"DELETE FROM {table.name}")
    for name, columns in HASH_COLUMNS.items():
        rowid = {"sqlite_with_rowid": not binary} if name in WITHOUT_ROWID else {}
        with op.batch_alter_table(name, recreate="always", table_kwargs=rowid) as batch:
            for column in columns:
                batch.alter_column(
                    column,
                    type_=sa.LargeBinary() if binary else sa.String(64),
                    existing_type=sa.String(64) if binary else sa.LargeBinary(),
                )
    for table in involved:
        hashes = HASH_COLUMNS.get(table.name, ())
        names = [f'"{column.name}"' for column in table.columns]
        values = [
            f"CASE WHEN {name} IS NULL THEN NULL ELSE {convert.format(name)} END"
            if column.name in hashes
            else name
            for column, name in zip(table.columns, names, strict=True)
        ]
        op.execute(
            f"INSERT INTO {table.name} ({', '.join(names)}) "
            f"SELECT {', '.join(values)} FROM ct_hold_{table.name}"
        )
        op.execute(f"DROP TABLE ct_hold_{table.name}")


def _register_unhex(driver: Any) -> None:
    """``ct_unhex(text)`` on this SQLite connection (SQLite 3.41's ``unhex`` is not
    everywhere). Registered once: SQLite refuses to replace a function while a
    statement is still open on the connection (a downgrade then upgrade in one run)."""
    try:
        driver.execute("SELECT ct_unhex('00')").fetchall()
    except sqlite3.OperationalError:
        driver.create_function("ct_unhex", 1, bytes.fromhex, deterministic=True)
