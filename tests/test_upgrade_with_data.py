"""Upgrading a database that already holds data, from revision 0001 to head, on SQLite
and PostgreSQL: at each revision every table that revision creates gets rows; at head
every row is still there, and the app carries on with it (prepare() continues the old
conversation from its old summary, the report counts the old requests).

The 0001 rows are what the app itself wrote: a conversation prepared, folded and
recorded with today's code on a scratch database, copied over in 0001's columns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    Table,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)

from context_trimmer import Prepared, Trimmer, count_tokens
from context_trimmer._store.db import make_engine
from context_trimmer._store.migrate import alembic_config, current_revision, downgrade, upgrade
from context_trimmer._store.schema import Base, Hash, Timestamp, key_of_code

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
SYSTEM = {"role": "system", "content": "You are a concise assistant for Acme Travel."}


def chat(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Book flight AC{100 + turn} for Maria."})
        messages.append({"role": "assistant", "content": f"Booked AC{100 + turn}."})
    return messages


def revisions() -> list[str]:
    scripts = ScriptDirectory.from_config(alembic_config())
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]


def plain(value: Any, column: str = "") -> Any:
    """Datetimes compared as UTC instants (SQLite hands them back naive); hashes as hex,
    whether a revision stores them as hex text or (0008 on) as their bytes; counting keys
    as keys, whether stored whole or (0016 on) as their code."""
    if column == "counting_key":
        return key_of_code(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return value


def reflect(bind: Engine | Connection) -> MetaData:
    metadata = MetaData()
    event.listen(metadata, "column_reflect", _times)
    metadata.reflect(bind, only=lambda name, _m: name.startswith("ct_"))
    return metadata


def _times(_inspector: Any, table: Table, column: dict[str, Any]) -> None:
    """ct_messages.created_at is read and written with the model's type: on SQLite it
    holds microseconds (an integer) from 0014 on, which it reads as well as the text
    before (``schema.Timestamp``); elsewhere it is the dialect's DateTime."""
    if (table.name, column["name"]) == ("ct_messages", "created_at"):
        column["type"] = Timestamp()


def rows_of(engine: Engine, table: Table, columns: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(
            select(*(table.c[c] for c in columns)).order_by(*table.primary_key.columns)
        )
        return [{k: plain(v, k) for k, v in row._mapping.items()} for row in result]


def advance_sequences(engine: Engine) -> None:
    """Rows copied with their ids leave PostgreSQL's serial counters behind; the app,
    which wrote them, would have moved them on."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        for table in inspect(connection).get_table_names():
            if table.startswith("ct_") and "id" in {
                c["name"] for c in inspect(connection).get_columns(table)
            }:
                connection.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )


def handmade(request_id: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Rows for the tables (and columns) the app did not fill on the scratch database,
    keyed by the revision that creates them."""
    return {
        "0001": {
            "ct_leases": [{"key": "fold:" + "e" * 64, "owner": "old", "expires_at": NOW}],
            "ct_summary_failures": [
                {
                    "id": 100,
                    "anchor_hash": "a" * 64,
                    "covers_hash": "b" * 64,
                    "summarizer": "openai:gpt-4o-mini",
                    "error": "timeout",
                    "tokens_in": 900,
                    "tokens_out": 0,
                    "created_at": NOW,
                }
            ],
        },
        "0002": {
            "ct_summary_failures": [
                {
                    "id": 101,
                    "anchor_hash": "a" * 64,
                    "covers_hash": "c" * 64,
                    "conversation_id": "c-old",
                    "user": "ann",
                    "summarizer": "openai:gpt-4o-mini",
                    "error": "not a summary",
                    "tokens_in": 800,
                    "tokens_out": 20,
                    "created_at": NOW,
                }
            ]
        },
        "0003": {
            "ct_prompt_compressions": [
                {
                    "key": "d" * 64,
                    "mode": "safe",
                    "model": None,
                    "text": "Be brief.",
                    "accepted": True,
                    "reason": None,
                    "original_tokens": 12,
                    "tokens": 4,
                    "tokens_in": 0,
                    "tokens_out": 0,
                    "created_at": NOW,
                }
            ]
        },
        "0004": {
            "ct_rate_limits": [
                {
                    "key": "budget-key",
                    "limit_requests": 500,
                    "limit_tokens": 30_000,
                    "remaining_requests": 499,
                    "remaining_tokens": 29_000,
                    "reset_requests_at": NOW,
                    "reset_tokens_at": NOW + timedelta(seconds=2),
                    "updated_at": NOW,
                }
            ],
            "ct_user_windows": [{"user": "ann", "window": "day:2026-01-05", "tokens": 1234}],
            "ct_attempts": [
                {
                    "request_id": request_id,
                    "attempts": 2,
                    "rate_limited": 1,
                    "waited_ms": 30,
                    "fallback_model": None,
                    "outcome": "ok",
                    "created_at": NOW,
                }
            ],
        },
        "0005": {
            "ct_api_keys": [
                {
                    "id": 7,
                    "key_hash": hashlib.sha256(b"ctk-old-key").hexdigest(),
                    "prefix": "ctk-old",
                    "user": "ann",
                    "admin": False,
                    "created_at": NOW,
                    "revoked_at": None,
                }
            ]
        },
        "0010": {
            "ct_owned_objects": [
                {"object_id": "file-abc", "tenant": "ann", "kind": "file", "created_at": NOW}
            ]
        },
        "0012": {
            "ct_sessions": [
                {
                    "owner": "ann",
                    "session_id": "agent-old",
                    "head_hash": None,  # emptied by pop_item
                    "model": "gpt-4o",
                    "updated_at": NOW,
                }
            ]
        },
    }


@pytest.fixture
def written_by_the_app(tmp_path: Path) -> Iterator[Engine]:
    """A scratch database holding one conversation: prepared, folded, prepared again
    (with the summary) and its usage recorded."""
    url = f"sqlite:///{tmp_path / 'scratch.db'}"
    with Trimmer(
        url, keep_last=4, fold_every=2, recall_tokens=0, summarizer="extractive", background=False
    ) as trimmer:
        messages = chat(6)
        trimmer.prepare(messages, user="ann", conversation_id="c-old")
        assert trimmer.compact(messages, user="ann", conversation_id="c-old").summary_id
        prepared = trimmer.prepare(messages, user="ann", conversation_id="c-old")
        assert prepared.summary_id is not None
        usage = {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129}
        trimmer.record(prepared, {"model": "gpt-4o", "usage": usage})
    engine = create_engine(url)
    yield engine
    engine.dispose()


def copy_tables(source: Engine, target: Engine) -> dict[str, list[dict[str, Any]]]:
    """Copy every row of each table the target has, in the target's columns."""
    source_tables, copied = reflect(source).tables, {}
    with target.begin() as connection:
        for table in reflect(connection).sorted_tables:
            columns = [column.name for column in table.columns]
            rows = rows_of(source, source_tables[table.name], columns)
            if rows:
                connection.execute(insert(table), rows)
            copied[table.name] = rows
    return copied


@pytest.fixture
def target(db_url: str) -> Iterator[Engine]:
    """The database upgraded, on the app's own engine (on SQLite: foreign keys on)."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def populate(target: Engine, written_by_the_app: Engine) -> dict[str, list[dict[str, Any]]]:
    """Upgrade ``target`` from 0001 to head, giving every table rows at the revision that
    creates it; the rows written, per table (hashes as hex)."""
    steps = revisions()
    assert steps[0] == "0001"
    upgrade(target, "0001")
    expected = copy_tables(written_by_the_app, target)
    written = {"ct_messages", "ct_token_counts", "ct_summaries", "ct_requests", "ct_usage"}
    assert {name for name, rows in expected.items() if rows} == written
    extra = handmade(expected["ct_requests"][-1]["id"])
    for revision in steps:
        upgrade(target, revision)
        with target.begin() as connection:
            tables = reflect(connection).tables
            for name, rows in extra.get(revision, {}).items():
                connection.execute(insert(tables[name]), rows)
                expected.setdefault(name, []).extend(rows)
        advance_sequences(target)
    with target.connect() as connection:
        assert current_revision(connection) == steps[-1]
    return expected


def assert_rows_intact(target: Engine, expected: dict[str, list[dict[str, Any]]]) -> None:
    """Every table holds rows, and every row written on the way is intact: the same
    values column by column (hashes compared as hex, however they are stored)."""
    tables = reflect(target).tables
    # The full-text index of 0006 is derived: the migration fills it from the messages.
    derived = {name for name in tables if name.startswith("ct_message_search")}
    assert set(tables) - derived == set(expected), "a new table needs rows in this test"
    assert all(expected.values()), {name: len(rows) for name, rows in expected.items()}
    for name, rows in expected.items():
        survived = rows_of(target, tables[name], list(tables[name].columns.keys()))
        assert len(survived) == len(rows), name
        assert [{k: row[k] for k in r} for row, r in zip(survived, rows, strict=True)] == rows, name


def stored_hashes(target: Engine) -> list[Any]:
    """Every value of every hash column, as the database hands it back (no conversion)."""
    tables, values = reflect(target).tables, []
    with target.connect() as connection:
        for model in Base.metadata.sorted_tables:
            if model.name not in tables:  # made by a revision after this one
                continue
            for column in model.columns:
                if isinstance(column.type, Hash):
                    raw = tables[model.name].c[column.name]
                    values += connection.execute(select(raw).where(raw.is_not(None))).scalars()
    return values


def carry_on(url: str) -> tuple[Prepared, int, int | None]:
    """The app continues the old conversation: a new user turn prepared, then folded."""
    longer = [*chat(6), {"role": "user", "content": "And a hotel near the airport?"}]
    with Trimmer(
        url, keep_last=4, fold_every=2, recall_tokens=0, summarizer="extractive", background=False
    ) as trimmer:
        prepared = trimmer.prepare(longer, user="ann", conversation_id="c-old")
        assert prepared.baseline_tokens == count_tokens(longer)
        assert prepared.prompt_tokens == count_tokens(prepared.messages)
        assert prepared.messages[-1] == longer[-1]
        requests = trimmer.report().totals.requests
        folded = trimmer.compact(longer, user="ann", conversation_id="c-old", force=True)
    return prepared, requests, folded.summary_id


def test_a_database_with_data_upgrades_from_0001_and_the_app_carries_on(
    db_url: str, target: Engine, written_by_the_app: Engine
) -> None:
    expected = populate(target, written_by_the_app)
    old_summary = expected["ct_requests"][-1]["summary_id"]
    assert_rows_intact(target, expected)
    with target.connect() as connection:
        indexed = connection.execute(text("SELECT count(*) FROM ct_message_search")).scalar()
        filled = connection.execute(
            select(reflect(connection).tables["ct_requests"].c.compression_saved_tokens)
        ).scalars()
        assert set(filled) == {0}  # the column 0003 added, filled for the old rows
    conversational = [
        m for m in expected["ct_messages"] if m["role"] not in ("system", "developer")
    ]
    assert indexed == len(conversational) > 0
    # 0008: every hash is stored as its 32 bytes (the hex read back above is the same).
    hashes = stored_hashes(target)
    assert hashes and all(isinstance(h, bytes) and len(h) == 32 for h in hashes), hashes[:3]
    # 0016: the counting key "o200k_base/85/170" (gpt-4o's) is stored as its code, "0".
    with target.connect() as connection:
        keys = connection.execute(text("SELECT DISTINCT counting_key FROM ct_token_counts"))
        assert list(keys.scalars()) == ["0"]

    # The app opens it (nothing left to migrate) and carries on with the old data.
    with Trimmer(db_url, recall_tokens=0, summarizer="extractive", background=False) as trimmer:
        before = trimmer.report().totals
    assert before.requests == len(expected["ct_requests"]) == 2
    assert (before.summaries, before.summary_failures) == (1, 2)
    unrecorded = expected["ct_requests"][0]["prompt_tokens"]  # counted as an estimate
    assert before.usage_prompt_tokens == 120 + unrecorded
    assert (before.estimated_requests, before.rate_limited_429s) == (1, 1)
    prepared, requests, folded = carry_on(db_url)
    assert prepared.summary_id == old_summary
    assert requests == 3
    assert folded is not None and folded != old_summary
    # The same request as the app makes from the database it wrote (never migrated).
    unmigrated, _requests, _folded = carry_on(written_by_the_app.url.render_as_string(False))
    assert prepared.messages == unmigrated.messages
    assert (prepared.max_tokens, prepared.prompt_tokens, prepared.summary_id) == (
        unmigrated.max_tokens,
        unmigrated.prompt_tokens,
        unmigrated.summary_id,
    )
    with target.connect() as connection:
        tables = reflect(connection).tables
        summaries = tables["ct_summaries"]
        parent = connection.execute(
            select(summaries.c.parent_id).where(summaries.c.id == folded)
        ).scalar_one()
        stored = connection.execute(select(func.count()).select_from(tables["ct_messages"]))
    assert parent == old_summary  # the new summary builds on the one from before
    assert stored.scalar_one() == len(chat(6)) + 1  # the old messages found, not stored again


def test_binary_hashes_downgrade_and_upgrade_again_with_data(
    target: Engine, written_by_the_app: Engine
) -> None:
    expected = populate(target, written_by_the_app)
    before_binary = ScriptDirectory.from_config(alembic_config()).get_revision("0008")
    assert before_binary is not None and isinstance(before_binary.down_revision, str)
    downgrade(target, before_binary.down_revision)
    present = set(reflect(target).tables)  # tables of revisions after 0008 are gone
    dropped = {name: rows for name, rows in expected.items() if name not in present}
    assert_rows_intact(target, {n: r for n, r in expected.items() if n not in dropped})
    hashes = stored_hashes(target)
    assert hashes and all(isinstance(h, str) and len(h) == 64 for h in hashes), hashes[:3]
    upgrade(target, "head")
    with target.begin() as connection:
        tables = reflect(connection).tables
        for name, rows in dropped.items():
            connection.execute(insert(tables[name]), rows)
    assert_rows_intact(target, expected)
    assert all(isinstance(h, bytes) and len(h) == 32 for h in stored_hashes(target))
