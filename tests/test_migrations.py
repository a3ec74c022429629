"""Migrations: blank database on both engines, idempotent, in step with the models."""

from __future__ import annotations

import subprocess
import sys

import hypothesis.strategies as st
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import given
from sqlalchemy import create_engine, inspect, text
from warm_workers import warm_workers

from context_trimmer._models import ENCODINGS
from context_trimmer._store.db import Database, make_engine
from context_trimmer._store.migrate import (
    VERSION_TABLE,
    current_revision,
    downgrade,
    head_revision,
    newest_script,
)
from context_trimmer._store.schema import SEARCH_TABLE, Base, key_code, key_of_code


def test_blank_database_upgrades_to_head_and_again_is_a_no_op(db_url: str) -> None:
    store = Database(db_url, migrate=False)
    assert store.upgrade() is True
    assert store.upgrade() is False
    with store.engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        tables = set(inspect(connection).get_table_names())
    assert {"ct_messages", "ct_summaries", "ct_requests", VERSION_TABLE} <= tables
    store.close()


def test_the_newest_script_read_without_alembic_is_alembics_head() -> None:
    assert newest_script() == head_revision()


def test_opening_a_store_at_head_does_not_load_alembic(db_url: str) -> None:
    """Every open but the first finds the schema current with one query; Alembic (about
    half a second of import) loads only to migrate. A store behind head still migrates."""
    Database(db_url).close()
    probe = (
        "import sys\n"
        "from context_trimmer._store.db import Database\n"
        f"Database({db_url!r}).close()\n"
        "print('alembic' in sys.modules)\n"
    )
    opened = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.split() == ["False"]
    store = Database(db_url, migrate=False)
    downgrade(store.engine, "0011")
    assert store.upgrade() is True  # behind head: Alembic migrates it
    with store.engine.connect() as connection:
        assert current_revision(connection) == head_revision()
    store.close()


def test_models_and_migrations_agree(db_url: str) -> None:
    store = Database(db_url)
    with store.engine.connect() as connection:
        # The recall index (FTS5 / tsvector) is made in SQL, not modelled.
        context = MigrationContext.configure(
            connection,
            opts={
                "include_name": lambda name, _kind, _parent: (
                    name != VERSION_TABLE and not str(name).startswith(SEARCH_TABLE)
                )
            },
        )
        differences = compare_metadata(context, Base.metadata)
    store.close()
    assert differences == []


def test_models_and_migrations_agree_on_sqlite_tables_without_rowid(sqlite_url: str) -> None:
    """compare_metadata does not look at WITHOUT ROWID: the migrated tables must be
    exactly those the models declare so (a table rebuilt by a later migration keeps it)."""
    store = Database(sqlite_url)
    with store.engine.connect() as connection:
        schema = dict(
            connection.execute(
                text(
                    "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name LIKE 'ct_%'"
                )
            ).all()
        )
    store.close()
    migrated = {
        name
        for name, sql in schema.items()
        if sql.rstrip().endswith("WITHOUT ROWID") and not name.startswith(SEARCH_TABLE)
    }  # (FTS5 makes some of its own tables so)
    declared = {
        table.name
        for table in Base.metadata.sorted_tables
        if table.dialect_options["sqlite"]["with_rowid"] is False
    }
    assert migrated == declared == {"ct_token_counts"}


def test_downgrade_to_base_and_up_again(db_url: str) -> None:
    store = Database(db_url)
    downgrade(store.engine, "base")
    with store.engine.connect() as connection:
        assert "ct_messages" not in inspect(connection).get_table_names()
    assert store.upgrade() is True
    store.close()


def test_host_applications_alembic_history_is_untouched(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('hostapp42')"))
    Database(db_url).close()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("hostapp42",)
        ]
    engine.dispose()


def _upgrade(url: str) -> bool:
    store = Database(url, migrate=False)
    try:
        return store.upgrade()
    finally:
        store.close()


def test_concurrent_upgrades_on_postgresql(postgres_schema_url: str) -> None:
    context = warm_workers()
    with context.Pool(4) as pool:
        results = pool.map_async(_upgrade, [postgres_schema_url] * 4).get(timeout=120)
    assert results.count(True) >= 1
    engine = create_engine(postgres_schema_url)
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
    engine.dispose()


def test_object_owners_table_upgrades_with_data_and_downgrades(db_url: str) -> None:
    """0010 adds ct_owned_objects to a database at 0009 that holds keys and history, and
    drops it again on the way down, the rest untouched."""
    from context_trimmer._store.keys import authenticate, create_key
    from context_trimmer._store.migrate import upgrade
    from context_trimmer._store.ownership import Ownership

    store = Database(db_url, migrate=False)
    upgrade(store.engine, "0009")
    key, _ = create_key(store, "acme")
    upgrade(store.engine)
    owners = Ownership(store)
    owners.record("acme", [("file-1", "file"), ("resp_1", "response")])
    owners.record("bob", [("file-1", "file"), ("file-2", "file")])  # a second claim is ignored
    assert owners.owners(["file-1", "file-2", "resp_1", "nope"]) == {
        "file-1": "acme",
        "file-2": "bob",
        "resp_1": "acme",
    }
    info = authenticate(store, key)
    assert info is not None and info.user == "acme"
    downgrade(store.engine, "0009")
    with store.engine.connect() as connection:
        assert "ct_owned_objects" not in inspect(connection).get_table_names()
    assert authenticate(store, key) is not None
    assert store.upgrade() is True
    assert Ownership(store).owners(["file-1"]) == {}
    store.close()


def test_counting_keys_are_stored_as_codes_and_keys_again_on_downgrade(db_url: str) -> None:
    """0016 stores each token count's counting key as its short code ("0" for gpt-4o's
    "o200k_base/85/170", "1" for gpt-4's cl100k_base), and turns them back into keys on
    the way down; the app finds its counts either side of it (nothing counted again)."""
    from context_trimmer import Trimmer
    from context_trimmer._store.migrate import upgrade

    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2 + 2?"},
    ]

    def stored_keys() -> list[str]:
        with store.engine.connect() as connection:
            rows = connection.execute(text("SELECT DISTINCT counting_key FROM ct_token_counts"))
            return sorted(rows.scalars())

    def prepare_both() -> list[int]:
        with Trimmer(db_url, recall_tokens=0, summarizer="extractive") as trimmer:
            return [trimmer.prepare(chat, model=m).prompt_tokens for m in ("gpt-4o", "gpt-4")]

    store = Database(db_url)
    tokens = prepare_both()
    assert stored_keys() == ["0", "1"]
    downgrade(store.engine, "0015_pg_search")
    assert stored_keys() == ["cl100k_base/85/170", "o200k_base/85/170"]
    upgrade(store.engine)
    assert stored_keys() == ["0", "1"]
    assert prepare_both() == tokens
    with store.engine.connect() as connection:
        counts = connection.execute(text("SELECT count(*) FROM ct_token_counts")).scalar()
    assert counts == 2 * len(chat)  # the second prepare() found every count stored
    store.close()


@given(
    encoding=st.sampled_from(ENCODINGS),
    base=st.integers(0, 1_000_000),
    tile=st.integers(0, 1_000_000),
)
def test_a_counting_key_and_its_code_map_one_to_one(encoding: str, base: int, tile: int) -> None:
    key = f"{encoding}/{base}/{tile}"
    assert key_of_code(key_code(key)) == key
    assert key_code(key).isdigit()
