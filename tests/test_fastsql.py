"""Statements on the driver's cursor (``_store.fastsql.Fast``) answer exactly what the same
Core statement answers through SQLAlchemy, on both databases."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from sqlalchemy import bindparam, insert, select

from context_trimmer._store.db import Database
from context_trimmer._store.fastsql import MAX_LIST, Fast
from context_trimmer._store.schema import Message, Request

MESSAGES = Message.__table__
REQUESTS = Request.__table__


def digest(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    rows = [
        {
            "hash": digest(n),
            "parent_hash": digest(n - 1) if n else None,
            "depth": n,
            "role": "user",
            "body": f'{{"role": "user", "content": "message {n} é"}}',
            "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        }
        for n in range(MAX_LIST + 10)
    ]
    with database:
        with database.writing() as connection:
            connection.execute(insert(MESSAGES), rows)
        yield database


BY_HASH = (
    select(MESSAGES.c.hash, MESSAGES.c.depth, MESSAGES.c.body, MESSAGES.c.created_at)
    .where(MESSAGES.c.hash.in_(bindparam("hashes", expanding=True)))
    .order_by(MESSAGES.c.depth)
    .limit(100)
)


@pytest.mark.parametrize("count", [1, 3, MAX_LIST, MAX_LIST + 5])
def test_rows_match_core_for_short_and_long_in_lists(db: Database, count: int) -> None:
    hashes = [digest(n) for n in range(count)] + ["00" * 32]  # one that is not stored
    with db.reading() as connection:
        core = [tuple(row) for row in connection.execute(BY_HASH, {"hashes": hashes})]
        fast = [tuple(row) for row in Fast(BY_HASH).rows(connection, {"hashes": hashes})]
    assert fast == core
    assert len(fast) == count
    first = fast[0]
    assert first[0] == digest(0)  # the Hash type: hex to Python
    assert first[3].year == 2026  # the date type: a datetime, on both databases


def test_constants_of_the_statement_are_bound(db: Database) -> None:
    """A LIMIT is a bound value of the statement itself, not of the caller's."""
    deepest = (
        select(MESSAGES.c.depth)
        .where(MESSAGES.c.depth >= bindparam("from"))
        .order_by(MESSAGES.c.depth.desc())
        .limit(2)
    )
    with db.reading() as connection:
        rows = Fast(deepest).rows(connection, {"from": 3})
    assert [row.depth for row in rows] == [MAX_LIST + 9, MAX_LIST + 8]


def test_an_insert_returns_its_id_inside_the_callers_transaction(db: Database) -> None:
    add = Fast(insert(REQUESTS).returning(REQUESTS.c.id))
    values = {
        "created_at": datetime(2026, 1, 2, tzinfo=timezone.utc),
        "conversation_id": "c",
        "user": "u",
        "model": "gpt-4o",
        "head_hash": digest(3),
        "message_count": 4,
        "messages_sent": 2,
        "baseline_tokens": 100,
        "prompt_tokens": 40,
        "summary_tokens": 0,
        "max_tokens": 50,
        "max_tokens_baseline": 4096,
        "summarizer_tokens_in": 0,
        "summarizer_tokens_out": 0,
        "folded_synchronously": False,
        "summary_failures": 0,
    }
    with pytest.raises(RuntimeError, match="rolled back"), db.writing() as connection:
        assert add.first(connection, values).id >= 1
        raise RuntimeError("rolled back")
    with db.writing() as connection:
        new_id = add.first(connection, values).id
    with db.reading() as connection:
        stored = connection.execute(
            select(REQUESTS.c.id, REQUESTS.c.head_hash, REQUESTS.c.created_at)
        ).all()
        raw = connection.exec_driver_sql("SELECT CAST(created_at AS TEXT) FROM ct_requests")
        text = raw.scalar_one()
    assert [tuple(row[:2]) for row in stored] == [(new_id, digest(3))]
    assert stored[0].created_at.replace(tzinfo=None) == datetime(2026, 1, 2)
    if db.is_sqlite:  # stored as SQLAlchemy stores dates, not as the driver would
        assert text == "2026-01-02 00:00:00.000000"


def test_a_statement_needing_python_side_defaults_is_refused(db: Database) -> None:
    with db.writing() as connection, pytest.raises(ValueError, match="pass every column"):
        Fast(insert(REQUESTS)).run(connection, {"conversation_id": "c"})
