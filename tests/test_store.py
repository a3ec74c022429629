"""The history store: content-addressed, append-only, counted once (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from context_trimmer import Trimmer, count_tokens
from context_trimmer._store.history import COUNTS, MESSAGES, load_path
from context_trimmer._store.ledger import REQUESTS


def conversation(turns: int, topic: str = "Paris") -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a travel assistant."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn} about {topic}?"})
        messages.append({"role": "assistant", "content": f"Answer {turn} about {topic}."})
    return messages


def rows(trimmer: Trimmer, table: object) -> int:
    with trimmer._db.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def test_same_conversation_twice_stores_nothing_new(trimmer: Trimmer) -> None:
    messages = conversation(3)
    trimmer.prepare(messages)
    stored = rows(trimmer, MESSAGES)
    assert stored == len(messages)
    trimmer.prepare(messages)
    assert rows(trimmer, MESSAGES) == stored
    assert rows(trimmer, REQUESTS) == 2


def test_edit_starts_a_branch_sharing_the_prefix(trimmer: Trimmer) -> None:
    messages = conversation(3)
    trimmer.prepare(messages)
    edited = [*messages[:-2], {"role": "user", "content": "A different last question?"}]
    trimmer.prepare(edited)
    assert rows(trimmer, MESSAGES) == len(messages) + 1
    with trimmer._db.engine.connect() as connection:
        bodies = load_path(
            connection,
            connection.execute(select(REQUESTS.c.head_hash).order_by(REQUESTS.c.id.desc()))
            .scalars()
            .first(),
        )
    assert len(bodies) == len(edited)
    assert '"A different last question?"' in bodies[-1]


def test_users_do_not_share_paths(trimmer: Trimmer) -> None:
    messages = conversation(1)
    trimmer.prepare(messages, user="ann")
    trimmer.prepare(messages, user="bob")
    assert rows(trimmer, MESSAGES) == 2 * len(messages)


def test_baseline_uses_stored_counts_exactly(trimmer: Trimmer) -> None:
    messages = conversation(3)
    first = trimmer.prepare(messages)
    longer = [*messages, {"role": "user", "content": "One more question about Lyon?"}]
    second = trimmer.prepare(longer)
    assert first.baseline_tokens == count_tokens(messages)
    assert second.baseline_tokens == count_tokens(longer)
    assert rows(trimmer, COUNTS) == len(longer)


def test_a_new_model_family_counts_the_stored_history(trimmer: Trimmer) -> None:
    messages = conversation(3)
    trimmer.prepare(messages, model="gpt-4o")
    prepared = trimmer.prepare(messages, model="gpt-4")
    assert prepared.baseline_tokens == count_tokens(messages, "gpt-4")
    assert rows(trimmer, COUNTS) == 2 * len(messages)


def test_stored_messages_are_never_rewritten(trimmer: Trimmer) -> None:
    messages = conversation(5)
    trimmer.prepare(messages)
    with trimmer._db.engine.connect() as connection:
        before = connection.execute(select(MESSAGES).order_by(MESSAGES.c.depth)).all()
    for extra in range(12):
        messages.append({"role": "user", "content": f"more {extra}"})
        trimmer.prepare(messages)
        trimmer.compact(messages, force=True)
        messages.append({"role": "assistant", "content": f"reply {extra}"})
    with trimmer._db.engine.connect() as connection:
        after = connection.execute(
            select(MESSAGES).where(MESSAGES.c.depth < len(before)).order_by(MESSAGES.c.depth)
        ).all()
    assert after == before


def test_concurrent_writers_lose_nothing(db_url: str) -> None:
    errors: list[BaseException] = []
    base = conversation(2)

    def worker(name: str) -> None:
        try:
            with Trimmer(db_url, summarizer="extractive", background=False) as trimmer:
                messages = list(base)
                for turn in range(8):
                    messages.append({"role": "user", "content": f"{name} says {turn}"})
                    trimmer.prepare(messages)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with Trimmer(db_url, summarizer="extractive", background=False) as trimmer:
        assert rows(trimmer, MESSAGES) == len(base) + 4 * 8
        assert rows(trimmer, REQUESTS) == 4 * 8


def test_messages_mutated_in_place_are_hashed_again(trimmer: Trimmer) -> None:
    messages = conversation(3)
    trimmer.prepare(messages)
    messages[1]["content"] = "Edited in place, same dict object"
    prepared = trimmer.prepare(messages)
    assert rows(trimmer, MESSAGES) == 2 * len(messages) - 1
    assert prepared.baseline_tokens == count_tokens(messages)


def test_a_known_prefix_is_still_validated_after_it(trimmer: Trimmer) -> None:
    import pytest

    from context_trimmer import InvalidMessagesError

    messages = conversation(3)
    trimmer.prepare(messages)
    with pytest.raises(InvalidMessagesError, match=r"messages\[7\]\.tool_call_id"):
        trimmer.prepare([*messages, {"role": "tool", "tool_call_id": "x", "content": "r"}])
