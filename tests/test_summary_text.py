"""How summaries' texts are stored (``_store.summary_text``), on SQLite and PostgreSQL:
each fold keeps its parent's text as a delta against its own; every text comes back
exactly as it was served, after an edit that needs an old one, from any summarizer,
with two Trimmers folding branches of one summary at once, after erasure, and across
migration 0014 both ways."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text

from context_trimmer import SummaryRequest, SummaryResult, Trimmer
from context_trimmer._store.db import Database
from context_trimmer._store.history import MESSAGES
from context_trimmer._store.migrate import downgrade, upgrade
from context_trimmer._store.summaries import SUMMARIES
from context_trimmer._store.summary_text import text_of
from context_trimmer._trimming.plan import SUMMARY_HEADER

SYSTEM = {"role": "system", "content": "You are the travel desk of Acme."}
OPTIONS: dict[str, Any] = {
    "keep_last": 4,
    "fold_every": 2,
    "summary_tokens": 1000,
    "summary_share": None,
    "recall_tokens": 0,
    "background": False,
}


def chat(turns: int, who: str = "Maria", start: int = 0) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for turn in range(start, start + turns):
        messages.append(
            {"role": "user", "content": f"{who} booked flight AC{100 + turn} to city {turn}."}
        )
        messages.append(
            {
                "role": "assistant",
                "content": f"Confirmed AC{100 + turn}, seat {turn}A, gate {turn}.",
            }
        )
    return messages


Served = dict[int, str]
"""The text each summary had when a prepare() sent it, by its id."""


def play(
    trimmer: Trimmer, messages: list[dict[str, Any]], served: Served, first: int = 2, **who: Any
) -> None:
    """Prepare each user turn (from ``messages[:first]`` on) as the app would, folding
    when due; what each summary was served as goes in ``served``."""
    for end in range(first, len(messages) + 1, 2):
        prepared = trimmer.prepare(messages[:end], **who)
        note(prepared, served)
        if prepared.fold_pending:
            trimmer.compact(messages[:end], **who)
            note(trimmer.prepare(messages[:end], **who), served)  # the new one, sent


def note(prepared: Any, served: Served) -> None:
    if prepared.summary_id is not None:
        content = prepared.messages[1]["content"]
        assert content.startswith(SUMMARY_HEADER)
        text_now = content[len(SUMMARY_HEADER) :]
        assert served.setdefault(prepared.summary_id, text_now) == text_now


def stored(url: str) -> list[Any]:
    store = Database(url)
    try:
        with store.engine.connect() as connection:
            return list(connection.execute(select(SUMMARIES).order_by(SUMMARIES.c.id)))
    finally:
        store.close()


def decoded(url: str) -> dict[int, str]:
    store = Database(url)
    try:
        with store.engine.connect() as connection:
            ids = connection.execute(select(SUMMARIES.c.id)).scalars().all()
            return {i: text_of(connection, i) for i in ids}
    finally:
        store.close()


@pytest.fixture
def url(db_url: str) -> Iterator[str]:
    yield db_url


def test_a_fold_chain_keeps_the_newest_whole_and_the_rest_as_deltas(url: str) -> None:
    served: Served = {}
    with Trimmer(url, summarizer="extractive", **OPTIONS) as trimmer:
        play(trimmer, chat(14), served)
    rows = stored(url)
    assert len(rows) >= 5
    children = {row.parent_id: row.id for row in reversed(rows) if row.parent_id}  # first child
    for row in rows:
        if row.id in children:  # superseded: a delta against its first child
            assert (row.text, row.base_id) == ("", children[row.id])
            assert row.delta and len(row.delta) < 200
        else:  # the newest: whole
            assert row.base_id is None and row.delta is None and row.text
    assert set(served) == {row.id for row in rows}
    assert decoded(url) == served  # every text exactly as it was sent


def test_an_edit_before_the_newest_summaries_is_served_the_old_one_exactly(url: str) -> None:
    served: Served = {}
    messages = chat(14)
    with Trimmer(url, summarizer="extractive", **OPTIONS) as trimmer:
        play(trimmer, messages, served)
        rows = {row.id: row for row in stored(url)}
        old = min(row for row in rows.values() if row.parent_id is not None and row.base_id)
        # Edit the message right after ``old``'s span: the new path leaves the newer
        # summaries, and its deepest summary is ``old``, stored as a delta.
        edited = [*messages[: old.covers_depth + 1], {"role": "user", "content": "Cancel all."}]
        prepared = trimmer.prepare(edited)
        assert prepared.summary_id == old.id
        assert prepared.messages[1]["content"] == SUMMARY_HEADER + served[old.id]
        assert prepared.messages[2:] == edited[old.covers_depth + 1 :]
        # The edited branch folds on: a second child of ``old``, which stays a delta
        # against its first; the new one is whole, then superseded in turn.
        branch = [*edited, *chat(6, who="Ana", start=50)[1:]]
        play(trimmer, branch, served, first=len(edited) + 2)
    rows_after = {row.id: row for row in stored(url)}
    assert rows_after[old.id].base_id == rows[old.id].base_id
    assert decoded(url) == served


class Paraphraser:
    """A model-like summarizer (not the extractive one): each summary reworded."""

    name = "paraphraser"
    prompt_version = "1"
    input_tokens = 100_000

    def __init__(self) -> None:
        self.calls = 0

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        self.calls += 1
        facts = [line for line in request.transcript.splitlines() if "booked" in line]
        kept = (request.previous or "").splitlines()[-6:]
        lines = [f"Version {self.calls}.", *kept[1:], *(f"- {fact}" for fact in facts)]
        return SummaryResult("\n".join(lines), tokens_in=50, tokens_out=20)


def test_a_models_summaries_are_all_kept(url: str) -> None:
    served: Served = {}
    with Trimmer(url, summarizer=Paraphraser(), **OPTIONS) as trimmer:
        play(trimmer, chat(14), served, user="ann")
    rows = stored(url)
    assert len(rows) >= 3 and {row.summarizer for row in rows} == {"paraphraser"}
    assert sum(row.base_id is not None for row in rows) == len(rows) - 1
    assert decoded(url) == served
    assert all(row.tokens_in == 50 for row in rows)  # what each call cost, kept


def test_two_trimmers_fold_two_branches_of_one_summary_at_once(url: str) -> None:
    served: Served = {}
    messages = chat(8)
    with Trimmer(url, summarizer="extractive", **OPTIONS) as first:
        play(first, messages, served)
        with Trimmer(url, summarizer="extractive", **OPTIONS) as second:
            tip = stored(url)[-1]
            branches = [[*messages, *chat(4, who=who, start=70)[1:]] for who in ("Ana", "Bo")]
            for trimmer, branch in zip((first, second), branches, strict=True):
                note(trimmer.prepare(branch), served)
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def fold(trimmer: Trimmer, branch: list[dict[str, Any]]) -> None:
                """Fold the branch, again while the other holds the summary's lease."""
                try:
                    barrier.wait()
                    deadline = time.monotonic() + 20
                    while trimmer.compact(branch, force=True).summary_id is None:
                        assert time.monotonic() < deadline
                        time.sleep(0.02)
                except BaseException as error:  # handed to the test below
                    errors.append(error)

            threads = [
                threading.Thread(target=fold, args=pair)
                for pair in zip((first, second), branches, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not errors
            for trimmer, branch in zip((first, second), branches, strict=True):
                note(trimmer.prepare(branch), served)
    rows = {row.id: row for row in stored(url)}
    children = [row for row in rows.values() if row.parent_id == tip.id]
    assert len(children) == 2  # one fold per branch, neither lost
    assert rows[tip.id].base_id in {child.id for child in children}  # the first one only
    assert [child.base_id for child in children] == [None, None]  # both still whole
    assert decoded(url) == served


def test_erasing_a_branch_writes_whole_a_kept_summary_based_on_it(url: str) -> None:
    served: Served = {}
    messages = chat(8)
    with Trimmer(url, summarizer="extractive", **OPTIONS) as trimmer:
        play(trimmer, messages, served, user="ann", conversation_id="first")
        rows = {row.id: row for row in stored(url)}
        old = min(row for row in rows.values() if row.base_id is not None)
        # The same user edits right after ``old``'s span (another conversation): that
        # branch keeps ``old``'s messages; ``old``'s base covers only the first one's.
        branch = [*messages[: old.covers_depth + 1], *chat(3, who="Ana", start=40)[1:]]
        play(
            trimmer,
            branch,
            served,
            first=old.covers_depth + 3,
            user="ann",
            conversation_id="second",
        )
        erased = trimmer.forget("ann", "first")
        assert erased.summaries >= 1 and erased.messages_kept_shared > old.covers_depth
        rows = {row.id: row for row in stored(url)}
        assert rows[old.id].base_id is None and rows[old.id].text == served[old.id]
        prepared = trimmer.prepare(branch, user="ann", conversation_id="second")
        assert prepared.messages[1]["content"].startswith(SUMMARY_HEADER)
        (export,) = trimmer.export("ann")
    texts = decoded(url)
    for row in rows.values():
        if row.text == "" and row.delta is None:  # erased: no text, no delta
            assert texts[row.id] == "" and row.base_id is None
        else:
            assert texts[row.id] == served[row.id]
    assert export["summary"]["text"] == texts[prepared.summary_id]
    assert "Maria booked flight AC107" not in repr(rows) + "".join(texts.values())


def test_migration_0014_downgrades_and_upgrades_with_data(url: str) -> None:
    served: Served = {}
    with Trimmer(url, summarizer="extractive", **OPTIONS) as trimmer:
        play(trimmer, chat(10), served)
    store = Database(url)
    with store.engine.connect() as connection:
        times = connection.execute(select(MESSAGES.c.hash, MESSAGES.c.created_at)).all()
    downgrade(store.engine, "0013")
    with store.engine.connect() as connection:
        rows = connection.execute(text("SELECT id, text FROM ct_summaries")).all()
        assert dict(rows) == served  # every text whole again
        columns = [c["name"] for c in _columns(connection)]
        assert "delta" not in columns and "base_id" not in columns
        if connection.dialect.name == "sqlite":
            kinds = connection.execute(text("SELECT DISTINCT typeof(created_at) FROM ct_messages"))
            assert kinds.scalars().all() == ["text"]
    upgrade(store.engine)
    with store.engine.connect() as connection:
        assert connection.execute(select(MESSAGES.c.hash, MESSAGES.c.created_at)).all() == times
        if connection.dialect.name == "sqlite":
            kinds = connection.execute(text("SELECT DISTINCT typeof(created_at) FROM ct_messages"))
            assert kinds.scalars().all() == ["integer"]
        whole = connection.execute(text("SELECT count(*) FROM ct_summaries WHERE text != ''"))
        assert whole.scalar_one() == 1  # the newest only
    store.close()
    assert decoded(url) == served


def _columns(connection: Any) -> list[Any]:
    from sqlalchemy import inspect

    return list(inspect(connection).get_columns("ct_summaries"))
