"""Fold leases: a span another worker holds is left alone until its lease expires, then
taken over (SQLite and PostgreSQL). The competing worker is a row written with plain SQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, Table, create_engine, insert, select, update

from context_trimmer import Trimmer
from context_trimmer._store.schema import Lease, Message

LEASES: Table = Lease.__table__  # type: ignore[assignment]
MESSAGES: Table = Message.__table__  # type: ignore[assignment]


def chat(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You plan trips."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Day {turn}: can we visit museum {turn}?"})
        messages.append({"role": "assistant", "content": f"Yes, museum {turn} opens at nine."})
    return messages


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """Our own connection to the trimmer's database, as another worker would have."""
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def fold_lease_key(engine: Engine) -> str:
    """``fold:<chain hash of the first conversational message>``: the key a first fold
    of the only conversation in the database takes."""
    with engine.connect() as connection:
        anchor = connection.execute(
            select(MESSAGES.c.hash).where(MESSAGES.c.depth == 1, MESSAGES.c.role == "user")
        ).scalar_one()
    return f"fold:{anchor}"


def test_a_held_lease_blocks_the_fold_and_an_expired_one_is_taken_over(
    trimmer: Trimmer, engine: Engine
) -> None:
    messages = chat(6)
    assert trimmer.prepare(messages).fold_pending
    key = fold_lease_key(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        connection.execute(
            insert(LEASES).values(key=key, owner="worker-b", expires_at=now + timedelta(minutes=5))
        )

    blocked = trimmer.compact(messages)
    assert (blocked.summary_id, blocked.reason) == (None, "another worker is folding this span")
    assert trimmer.prepare(messages).summary_id is None
    with engine.connect() as connection:
        assert connection.execute(select(LEASES.c.owner)).scalars().all() == ["worker-b"]

    with engine.begin() as connection:
        connection.execute(
            update(LEASES).where(LEASES.c.key == key).values(expires_at=now - timedelta(seconds=1))
        )
    taken = trimmer.compact(messages)
    assert taken.summary_id is not None and taken.messages_folded == 8
    assert trimmer.prepare(messages).summary_id == taken.summary_id
    with engine.connect() as connection:  # released after the fold
        assert connection.execute(select(LEASES)).all() == []


def test_a_lease_on_another_span_does_not_block(trimmer: Trimmer, engine: Engine) -> None:
    messages = chat(6)
    trimmer.prepare(messages)
    future = datetime.now(timezone.utc) + timedelta(minutes=5)
    with engine.begin() as connection:
        connection.execute(
            insert(LEASES).values(key="fold:" + "0" * 64, owner="worker-b", expires_at=future)
        )
    assert trimmer.compact(messages).summary_id is not None
