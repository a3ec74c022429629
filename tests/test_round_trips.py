"""What a warm prepare() sends to PostgreSQL, pinned: round trips and statements.

Counted from libpq's own trace of the protocol (``PQtrace``) on every connection the
store checks out: a round trip is a message the client then waits on (a ``Sync``
ending a pipeline or an extended-protocol statement, or a simple ``Query``); a
statement is an ``Execute`` or a ``Query``. A change that adds a round trip to the
request path fails here (see ``_store.batch`` and docs/benchmarks-scale.md).
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from context_trimmer import Trimmer, count_tokens
from context_trimmer._store import deadlines
from context_trimmer._store import history as _history
from context_trimmer._trimming.hashing import ChainCache
from context_trimmer._trimming.recall import RECALL_HEADER

WARM_ROUND_TRIPS = 2
"""The pipeline of lookups and new messages, then the ledger row with the commit."""
WARM_STATEMENTS = 7
"""BEGIN; what is stored (with the system prompt's token row), the deepest summary
(with its last message's token row), the new messages with their counts, their index
rows; the ledger row, COMMIT."""
RECALL_STATEMENTS = 1
"""Recall, when the question has a term rare enough to search: the count of its terms'
messages with the matches of those it searches, one statement in the first round trip."""


class Protocol:
    """The frontend messages of every connection ``trimmer``'s store checks out while
    :meth:`recording`."""

    def __init__(self, trimmer: Trimmer):
        self.engine = trimmer._db.engine
        self.messages: collections.Counter[str] = collections.Counter()
        self._file: Any = None
        # first: the checkout's own ping (when there is one) is traced too
        event.listen(self.engine.pool, "checkout", self._checkout, insert=True)
        event.listen(self.engine.pool, "checkin", self._checkin)

    def _checkout(self, dbapi_connection: Any, *_args: Any) -> None:
        if self._file is not None:
            from psycopg import pq

            dbapi_connection.pgconn.trace(self._file.fileno())
            dbapi_connection.pgconn.set_trace_flags(
                pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE
            )

    def _checkin(self, dbapi_connection: Any, *_args: Any) -> None:
        if dbapi_connection is not None:
            dbapi_connection.pgconn.untrace()

    def recording(self) -> _Recording:
        return _Recording(self)

    @property
    def round_trips(self) -> int:
        return self.messages["Sync"] + self.messages["Query"]

    @property
    def statements(self) -> int:
        return self.messages["Execute"] + self.messages["Query"]


class _Recording:
    def __init__(self, protocol: Protocol):
        self.protocol = protocol

    def __enter__(self) -> Protocol:
        self.protocol.messages.clear()
        self.protocol._file = tempfile.NamedTemporaryFile("w+", delete=False)
        return self.protocol

    def __exit__(self, *_exc: object) -> None:
        file, self.protocol._file = self.protocol._file, None
        file.flush()
        with open(file.name) as trace:
            for line in trace:
                fields = line.split("\t")
                if len(fields) > 2 and fields[0] == "F":
                    self.protocol.messages[fields[2].split(" ")[0].strip()] += 1
        file.close()
        os.unlink(file.name)


def chat(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You help with trips."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn} about the Lisbon trip?"})
        messages.append({"role": "assistant", "content": f"Answer {turn}: book it early."})
    return messages


@pytest.fixture(params=[0, 400], ids=["recall off", "recall on"])
def pg_trimmer(postgres_schema_url: str, request: pytest.FixtureRequest) -> Iterator[Trimmer]:
    with Trimmer(
        postgres_schema_url,
        summarizer="extractive",
        background=False,
        recall_tokens=request.param,
    ) as trimmer:
        yield trimmer


def warm(trimmer: Trimmer) -> list[dict[str, Any]]:
    """A conversation prepared twice, with a summary: the next turn is a warm one."""
    messages = chat(40)
    trimmer.prepare(messages)
    trimmer.compact(messages, force=True)
    messages.append({"role": "user", "content": "And the hotel?"})
    trimmer.prepare(messages)
    messages.append({"role": "assistant", "content": "Near the river."})
    return messages


def test_a_warm_prepare_is_two_round_trips(pg_trimmer: Trimmer) -> None:
    messages = warm(pg_trimmer)
    protocol = Protocol(pg_trimmer)
    messages.append({"role": "user", "content": "Which day do we fly to Lisbon?"})
    with protocol.recording():
        prepared = pg_trimmer.prepare(messages)
    assert prepared.summary_id is not None
    recall = RECALL_STATEMENTS if pg_trimmer.options.recall_tokens else 0
    assert (protocol.round_trips, protocol.statements) == (
        WARM_ROUND_TRIPS,
        WARM_STATEMENTS + recall,
    ), protocol.messages
    recalled = [m for m in prepared.messages if str(m["content"]).startswith(RECALL_HEADER)]
    assert len(recalled) == (1 if recall else 0)  # found by the first round trip's search
    assert all("Lisbon" in m["content"] for m in recalled)
    # the counts it stored are exact: the next turn's baseline is read from them
    messages += [{"role": "assistant", "content": "On Tuesday."}, {"role": "user", "content": "Ok"}]
    assert pg_trimmer.prepare(messages).baseline_tokens == count_tokens(messages)
    assert prepared.prompt_tokens == count_tokens(prepared.messages)


def test_the_same_list_again_is_two_round_trips(pg_trimmer: Trimmer) -> None:
    messages = warm(pg_trimmer)
    messages.append({"role": "user", "content": "Which day do we fly to Lisbon?"})
    pg_trimmer.prepare(messages)
    protocol = Protocol(pg_trimmer)
    with protocol.recording():
        pg_trimmer.prepare(messages)  # a retry: nothing new to store
    assert protocol.round_trips == WARM_ROUND_TRIPS, protocol.messages


def test_a_connection_idle_for_long_is_pinged_first(
    pg_trimmer: Trimmer, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = warm(pg_trimmer)
    monkeypatch.setattr(deadlines, "PING_AFTER_IDLE", 0.0)
    protocol = Protocol(pg_trimmer)
    messages.append({"role": "user", "content": "Which day do we fly to Lisbon?"})
    with protocol.recording():
        pg_trimmer.prepare(messages)
    assert protocol.round_trips == WARM_ROUND_TRIPS + 1, protocol.messages


def test_a_connection_the_server_closed_is_replaced_without_an_error(
    pg_trimmer: Trimmer, postgres_schema_url: str
) -> None:
    """No ping on a recently used connection, but one the server has closed since (its
    backend terminated, as a restart does) is found out on checkout and replaced.
    (``pg_terminate_backend`` with a timeout returns once the backend has exited.)"""
    messages = warm(pg_trimmer)
    with pg_trimmer._db.engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    with (
        Trimmer(postgres_schema_url, migrate=False) as other,
        other._db.engine.connect() as connection,
    ):
        assert connection.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})
        connection.commit()
    messages.append({"role": "user", "content": "Still there?"})
    assert pg_trimmer.prepare(messages).request_id > 0


def test_what_another_trimmer_of_the_process_stored_is_not_sent_again(
    pg_trimmer: Trimmer, postgres_schema_url: str
) -> None:
    """A second Trimmer on the same database (a second server in the process) that saw
    the list before the app's turn does not send the turn's messages as new when the
    first stored them: no statement of messages or index rows."""
    messages = warm(pg_trimmer)
    with Trimmer(
        postgres_schema_url,
        summarizer="extractive",
        background=False,
        recall_tokens=pg_trimmer.options.recall_tokens,
    ) as second:
        second.prepare(messages)
        messages.append({"role": "user", "content": "Which day do we fly to Lisbon?"})
        pg_trimmer.prepare(messages)
        protocol = Protocol(second)
        with protocol.recording():
            prepared = second.prepare(messages)
        recall = RECALL_STATEMENTS if second.options.recall_tokens else 0
        assert (protocol.round_trips, protocol.statements) == (
            WARM_ROUND_TRIPS,
            WARM_STATEMENTS - 2 + recall,
        ), protocol.messages
        assert prepared.baseline_tokens == count_tokens(messages)


def test_a_path_remembered_as_stored_but_not_is_stored_all_the_same(
    pg_trimmer: Trimmer,
) -> None:
    """The memory of stored paths is a hint: one the store does not have (erased by
    another process, a transaction rolled back) is stored in a second round trip."""
    messages = warm(pg_trimmer)
    messages.append({"role": "user", "content": "Which day do we fly to Lisbon?"})
    head = ChainCache().chain(messages, None, 0).hashes[-1]  # a cache of its own
    with pg_trimmer._db.reading() as connection:
        _history.note_stored(connection, pg_trimmer._counter("gpt-4o").key, head)
    prepared = pg_trimmer.prepare(messages)
    assert prepared.baseline_tokens == count_tokens(messages)
    with pg_trimmer._db.reading() as connection:
        stored = connection.execute(text("SELECT count(*) FROM ct_messages")).scalar()
        indexed = connection.execute(text("SELECT count(*) FROM ct_message_search")).scalar()
    assert stored == len(messages) and indexed == len(messages) - 1  # not the system prompt
    messages += [{"role": "assistant", "content": "On Tuesday."}, {"role": "user", "content": "Ok"}]
    assert pg_trimmer.prepare(messages).baseline_tokens == count_tokens(messages)
