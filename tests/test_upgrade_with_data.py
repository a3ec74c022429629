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
from sqlalchemy import Engine, MetaData, Table, create_engine, func, insert, inspect, select, text

from context_trimmer import Trimmer, count_tokens
from context_trimmer._migrate import alembic_config, current_revision, upgrade

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


def utc(value: Any) -> Any:
    """Datetimes compared as UTC instants (SQLite hands them back naive)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    return value


def reflect(engine: Engine) -> MetaData:
    metadata = MetaData()
    metadata.reflect(engine, only=lambda name, _m: name.startswith("ct_"))
    return metadata


def rows_of(engine: Engine, table: Table, columns: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(
            select(*(table.c[c] for c in columns)).order_by(*table.primary_key.columns)
        )
        return [{k: utc(v) for k, v in row._mapping.items()} for row in result]


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
        for table in reflect(target).sorted_tables:
            columns = [column.name for column in table.columns]
            rows = rows_of(source, source_tables[table.name], columns)
            if rows:
                connection.execute(insert(table), rows)
            copied[table.name] = rows
    return copied


@pytest.fixture
def target(db_url: str) -> Iterator[Engine]:
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def test_a_database_with_data_upgrades_from_0001_and_the_app_carries_on(
    db_url: str, target: Engine, written_by_the_app: Engine
) -> None:
    steps = revisions()
    assert steps[0] == "0001"
    upgrade(target, "0001")
    expected = copy_tables(written_by_the_app, target)
    written = {"ct_messages", "ct_token_counts", "ct_summaries", "ct_requests", "ct_usage"}
    assert {name for name, rows in expected.items() if rows} == written
    (old_request, old_summary) = (
        expected["ct_requests"][-1]["id"],
        expected["ct_requests"][-1]["summary_id"],
    )
    extra = handmade(old_request)
    for revision in steps:
        upgrade(target, revision)
        with target.begin() as connection:
            tables = reflect(target).tables
            for name, rows in extra.get(revision, {}).items():
                connection.execute(insert(tables[name]), rows)
                expected.setdefault(name, []).extend(rows)
        advance_sequences(target)
    with target.connect() as connection:
        assert current_revision(connection) == steps[-1]

    # Every table at head holds rows, and every row written on the way is intact.
    head_tables = reflect(target).tables
    # The full-text index of 0006 is derived: the migration fills it from the messages.
    derived = {name for name in head_tables if name.startswith("ct_message_search")}
    assert set(head_tables) - derived == set(expected), "a new table needs rows in this test"
    with target.connect() as connection:
        indexed = connection.execute(text("SELECT count(*) FROM ct_message_search")).scalar()
    conversational = [
        m for m in expected["ct_messages"] if m["role"] not in ("system", "developer")
    ]
    assert indexed == len(conversational) > 0
    assert all(expected.values()), {name: len(rows) for name, rows in expected.items()}
    for name, rows in expected.items():
        survived = rows_of(target, head_tables[name], list(head_tables[name].columns.keys()))
        assert len(survived) == len(rows), name
        assert [{k: row[k] for k in r} for row, r in zip(survived, rows, strict=True)] == rows, name
    with target.connect() as connection:
        filled = connection.execute(
            select(head_tables["ct_requests"].c.compression_saved_tokens)
        ).scalars()
        assert set(filled) == {0}  # the column 0003 added, filled for the old rows

    # The app opens it (nothing left to migrate) and carries on with the old data.
    messages = chat(6)
    longer = [*messages, {"role": "user", "content": "And a hotel near the airport?"}]
    with Trimmer(
        db_url,
        keep_last=4,
        fold_every=2,
        recall_tokens=0,
        summarizer="extractive",
        background=False,
    ) as trimmer:
        before = trimmer.report().totals
        assert before.requests == len(expected["ct_requests"]) == 2
        assert (before.summaries, before.summary_failures) == (1, 2)
        unrecorded = expected["ct_requests"][0]["prompt_tokens"]  # counted as an estimate
        assert before.usage_prompt_tokens == 120 + unrecorded
        assert (before.estimated_requests, before.rate_limited_429s) == (1, 1)
        prepared = trimmer.prepare(longer, user="ann", conversation_id="c-old")
        assert prepared.summary_id == old_summary
        assert prepared.baseline_tokens == count_tokens(longer)
        assert prepared.prompt_tokens == count_tokens(prepared.messages)
        assert prepared.messages[-1] == longer[-1]
        assert trimmer.report().totals.requests == 3
        folded = trimmer.compact(longer, user="ann", conversation_id="c-old", force=True)
        assert folded.summary_id is not None and folded.summary_id != old_summary
    with target.connect() as connection:
        summaries = head_tables["ct_summaries"]
        parent = connection.execute(
            select(summaries.c.parent_id).where(summaries.c.id == folded.summary_id)
        ).scalar_one()
        stored = connection.execute(
            select(func.count()).select_from(head_tables["ct_messages"])
        ).scalar_one()
    assert parent == old_summary  # the new summary builds on the one from before
    assert stored == len(longer)  # the old messages were found, not stored again
