"""Apply the Alembic migrations programmatically, safely from many processes at once.

The scripts run with their own version table, so they coexist with a host
application's Alembic history in the same database. On PostgreSQL every upgrade takes
a transaction-scoped advisory lock first, so two app servers starting together
serialize: the second finds the schema at head and does nothing.

Opening a store that is already at head (every open but the first) reads the version
table with one query and compares it with the newest script's ``revision``, read from
the scripts' text: Alembic (with mako and its DDL modules, about half a second of
import) loads only when there is something to migrate, or for ``db current``.
"""

from __future__ import annotations

import re
import sys
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

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
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    """The newest revision, as Alembic finds it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


_REVISION = re.compile(r'^(down_revision|revision)\b[^=]*=\s*["\']([^"\']+)["\']', re.M)


@cache
def newest_script() -> str | None:
    """The revision no script revises, read from the scripts' ``revision`` and
    ``down_revision`` lines without Alembic (None if that is not exactly one: then
    :func:`upgrade` asks Alembic). ``tests/test_migrations.py`` checks it is Alembic's head."""
    revised: set[str] = set()
    revisions: set[str] = set()
    for script in (migrations_dir() / "versions").glob("*.py"):
        for name, value in _REVISION.findall(script.read_text(encoding="utf-8")):
            (revisions if name == "revision" else revised).add(value)
    heads = revisions - revised
    return next(iter(heads)) if len(heads) == 1 else None


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def is_alembic_refusal(error: BaseException) -> bool:
    """Whether Alembic refused to migrate (e.g. a revision newer than these scripts know)."""
    alembic_errors = sys.modules.get("alembic.util.exc")  # loaded if Alembic ran at all
    return alembic_errors is not None and isinstance(error, alembic_errors.CommandError)


def _stored_revisions(engine: Engine) -> set[str] | None:
    """The version table's revisions (None when there is no version table yet: the
    common case reads it with one query; only a failure asks whether it exists, since
    the server's error text depends on its language)."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            return {row[0] for row in rows}
    except DBAPIError:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None  # a new database
        raise


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
        from alembic import command

        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
    return True


def _at_head(engine: Engine) -> bool:
    newest = newest_script()
    if newest is not None:  # the common case, without Alembic
        return _stored_revisions(engine) == {newest}
    with engine.connect() as connection:
        return current_revision(connection) == head_revision()


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with _in_process, engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)
