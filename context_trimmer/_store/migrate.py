"""Apply the Alembic migrations programmatically, safely from many processes at once.

The scripts run with their own version table, so they coexist with a host
application's Alembic history in the same database. On PostgreSQL every upgrade takes
a transaction-scoped advisory lock first, so two app servers starting together
serialize: the second finds the schema at head and does nothing.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

VERSION_TABLE = "context_trimmer_alembic_version"
_LOCK_ID = 0x63745F6D6967  # "ct_mig": an arbitrary constant advisory-lock key
_in_process = threading.Lock()


def migrations_dir() -> Path:
    """Where the Alembic scripts are (inside the installed package)."""
    try:
        from .. import migrations  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # a source checkout: the scripts are at the repository's top
        return Path(__file__).resolve().parents[2] / "migrations"
    return Path(migrations.__file__).parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for our scripts, bound to ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def serialize_migrations(connection: Connection) -> None:
    """Called inside the migration transaction: one migrator at a time on PostgreSQL."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_ID})


def upgrade(engine: Engine, revision: str = "head") -> bool:
    """Bring the schema to ``revision``; returns False when it already was there."""
    # Alembic keeps its running context in module globals: one migration per process.
    # The check runs under the same lock, so threads opening a new SQLite file together
    # wait here for the first one's migration instead of on SQLite's file lock.
    with _in_process:
        if revision == "head" and _at_head(engine):
            return False
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
    return True


def _at_head(engine: Engine) -> bool:
    with engine.connect() as connection:
        return current_revision(connection) == head_revision()


def downgrade(engine: Engine, revision: str) -> None:
    with _in_process, engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)
