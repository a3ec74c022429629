"""Alembic environment: always online, on the connection handed over by _migrate."""

from alembic import context

from context_trimmer._store.migrate import VERSION_TABLE, serialize_migrations
from context_trimmer._store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    serialize_migrations(connection)
    context.run_migrations()
