"""Tenant isolation: two users who send byte-identical messages (even under one
conversation id) get separate histories and summaries; neither is ever served the
other's summary (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, create_engine, func, select

from context_trimmer import Trimmer
from context_trimmer._store.schema import Message, Summary

MESSAGES: Table = Message.__table__  # type: ignore[assignment]
SUMMARIES: Table = Summary.__table__  # type: ignore[assignment]


def chat(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a bank assistant."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Move {turn * 100} EUR to savings."})
        messages.append({"role": "assistant", "content": f"Done: {turn * 100} EUR moved."})
    return messages


def test_identical_messages_from_two_users_never_share_a_summary(
    trimmer: Trimmer, db_url: str
) -> None:
    messages = chat(6)
    first_ann = trimmer.prepare(messages, user="ann", conversation_id="shared")
    ann = trimmer.compact(messages, user="ann", conversation_id="shared")
    assert first_ann.fold_pending and ann.summary_id is not None

    bob_before = trimmer.prepare(messages, user="bob", conversation_id="shared")
    assert bob_before.summary_id is None  # ann's summary covers the same text: not bob's
    assert bob_before.messages == messages
    assert bob_before.messages_folded == 0
    bob = trimmer.compact(messages, user="bob", conversation_id="shared")
    assert bob.summary_id is not None and bob.summary_id != ann.summary_id

    again_ann = trimmer.prepare(messages, user="ann", conversation_id="shared")
    again_bob = trimmer.prepare(messages, user="bob", conversation_id="shared")
    assert (again_ann.summary_id, again_bob.summary_id) == (ann.summary_id, bob.summary_id)
    assert again_ann.messages == again_bob.messages  # same text, each from its own summary
    anonymous = trimmer.prepare(messages, conversation_id="shared")
    assert anonymous.summary_id is None

    engine = create_engine(db_url)
    with engine.connect() as connection:
        owners = connection.execute(
            select(SUMMARIES.c.id, SUMMARIES.c.user).order_by(SUMMARIES.c.id)
        ).all()
        stored = connection.execute(select(func.count()).select_from(MESSAGES)).scalar_one()
    engine.dispose()
    assert owners == [(ann.summary_id, "ann"), (bob.summary_id, "bob")]
    assert stored == 3 * len(messages)  # ann's, bob's and the anonymous history apart


def test_a_users_summary_is_not_served_for_a_branch_of_anothers(trimmer: Trimmer) -> None:
    messages = chat(6)
    trimmer.prepare(messages, user="ann")
    assert trimmer.compact(messages, user="ann").summary_id is not None
    longer = [*messages, {"role": "user", "content": "And 700 EUR?"}]
    assert trimmer.prepare(longer, user="ann").summary_id is not None
    assert trimmer.prepare(longer, user="bob").summary_id is None


def test_compact_by_conversation_id_folds_the_named_users_history(trimmer: Trimmer) -> None:
    ann_messages = chat(6)
    bob_messages = [{**m, "content": m["content"].replace("EUR", "USD")} for m in chat(6)]
    trimmer.prepare(ann_messages, user="ann", conversation_id="shared")
    trimmer.prepare(bob_messages, user="bob", conversation_id="shared")  # the newest row
    folded = trimmer.compact(conversation_id="shared", user="ann", force=True)
    assert folded.summary_id is not None
    again = trimmer.prepare(ann_messages, user="ann", conversation_id="shared")
    assert again.summary_id == folded.summary_id
    assert "USD" not in str(again.messages)
