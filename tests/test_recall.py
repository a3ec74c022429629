"""Recall: folded turns matching the newest user message come back, from this path only."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import click
import openai
import pytest
from gateway_server import ServerThread
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_server import FakeOpenAI, Reply
from sqlalchemy import inspect, text

from context_trimmer import (
    ConfigurationError,
    ModelTable,
    SummaryRequest,
    SummaryResult,
    Trimmer,
    count_tokens,
)
from context_trimmer._store import recall_index as _recall_index
from context_trimmer._store.batch import Batch
from context_trimmer._store.db import Database
from context_trimmer._store.fastsql import driver_rows
from context_trimmer._store.keys import create_key
from context_trimmer._store.ledger import REQUESTS
from context_trimmer._store.migrate import downgrade
from context_trimmer._store.recall_index import TERMS_TABLE
from context_trimmer._store.schema import SEARCH_TABLE
from context_trimmer._text.tokens import TokenCounter
from context_trimmer._trimming import recall as _recall
from context_trimmer._trimming.recall import (
    DOC_BUDGET,
    MAX_HITS,
    PROBE_CAP,
    RECALL_HEADER,
    Lines,
    Summarized,
    Words,
    build,
    forget_recalled,
    query_terms,
    render,
    speaker,
)
from context_trimmer.cli._gateway import serve
from context_trimmer.gateway import GatewayConfig, create_app

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
FILLER = [
    "Tell me a fun fact about octopuses.",
    "Octopuses have three hearts and blue blood.",
    "What should I cook tonight?",
    "A quick vegetable stir-fry with rice would be nice.",
    "Any tips for sleeping better?",
    "Keep a regular schedule and avoid screens before bed.",
]


def conversation(*facts: str, filler_rounds: int = 4) -> list[dict[str, Any]]:
    """The system prompt, a user turn per fact (each answered), then filler turns."""
    messages: list[dict[str, Any]] = [SYSTEM]
    for fact in facts:
        messages.append({"role": "user", "content": fact})
        messages.append({"role": "assistant", "content": "Noted, thanks for telling me."})
    for round_ in range(filler_rounds):
        for position, line in enumerate(FILLER):
            role = "user" if position % 2 == 0 else "assistant"
            messages.append({"role": role, "content": f"{line} (round {round_})"})
    return messages


def ask(messages: list[dict[str, Any]], question: str) -> list[dict[str, Any]]:
    return [*messages, {"role": "user", "content": question}]


def folded(
    url: str,
    messages: list[dict[str, Any]],
    user: str | None = None,
    summarizer: Any = "extractive",
    **options: Any,
) -> None:
    """Store ``messages`` and fold them, as the background worker would."""
    with Trimmer(url, summarizer=summarizer, background=False, **options) as trimmer:
        trimmer.prepare(messages, user=user)
        fold = trimmer.compact(messages, user=user, force=True)
        assert fold.summary_id is not None


class Fixed:
    """A summarizer whose summary is always ``text``."""

    name, prompt_version, input_tokens = "fixed", "1", 100_000

    def __init__(self, text: str):
        self.text = text

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        return SummaryResult(self.text)


def recall_message(prepared: Any) -> dict[str, Any] | None:
    found = [m for m in prepared.messages if str(m.get("content", "")).startswith(RECALL_HEADER)]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture
def options() -> dict[str, Any]:
    return {
        "keep_last": 4,
        "fold_every": 2,
        "summary_tokens": 60,
        "recall_tokens": 200,
        "recall_share": None,
    }


@pytest.fixture
def trimmer(db_url: str, options: dict[str, Any]) -> Iterator[Trimmer]:
    with Trimmer(db_url, summarizer="extractive", background=False, **options) as instance:
        yield instance


def test_a_folded_turn_comes_back_before_the_question_with_exact_tokens(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    history = conversation("My sister's dog is called Biscuit and loves the beach.")
    folded(db_url, history, **options)
    prepared = trimmer.prepare(ask(history, "What is the name of my sister's dog?"))
    recalled = recall_message(prepared)
    assert recalled is not None and recalled["role"] == "system"
    assert "user: My sister's dog is called Biscuit" in recalled["content"]
    assert (
        prepared.messages[-2] is not None
        and prepared.messages[-2]["content"] == recalled["content"]
    )
    assert prepared.messages[-1]["content"] == "What is the name of my sister's dog?"
    assert prepared.prompt_tokens == count_tokens(prepared.messages)
    assert count_tokens([recalled]) - 3 <= options["recall_tokens"]
    with trimmer._db.reading() as connection:
        stored = connection.execute(
            REQUESTS.select().where(REQUESTS.c.id == prepared.request_id)
        ).one()
    assert stored.recall_tokens == count_tokens([recalled]) - 3 > 0
    assert trimmer.report().totals.recall_tokens == stored.recall_tokens


def test_the_prefix_before_the_recall_is_what_is_sent_without_it(
    db_url: str, options: dict[str, Any]
) -> None:
    history = conversation("My sister's dog is called Biscuit.")
    folded(db_url, history, **options)
    question = ask(history, "What is my sister's dog called?")
    with Trimmer(db_url, summarizer="extractive", background=False, **options) as trimmer:
        with_recall = trimmer.prepare(question)
        again = trimmer.prepare(question)
    without = {**options, "recall_tokens": 0}
    with Trimmer(db_url, summarizer="extractive", background=False, **without) as trimmer:
        plain = trimmer.prepare(question)
    assert recall_message(plain) is None and recall_message(with_recall) is not None
    assert with_recall.messages[:-2] == plain.messages[:-1]  # cache-stable prefix kept
    assert with_recall.messages == again.messages  # deterministic
    assert with_recall.prompt_tokens > plain.prompt_tokens


def test_nothing_is_recalled_from_another_branch_or_user(
    db_url: str, options: dict[str, Any]
) -> None:
    secret = conversation("My cat is named Pixel.", "The vault code is ZANZIBAR-7731.")
    # The same first turn (so the same conversation anchor), the vault turn edited away.
    branch = [*secret[:3], {"role": "user", "content": "I like green tea."}, *secret[4:]]
    folded(db_url, secret, user="ann", **options)
    folded(db_url, branch, user="ann", **options)
    folded(db_url, branch, user="bob", **options)
    question = "What is the vault code, ZANZIBAR?"
    with Trimmer(db_url, summarizer="extractive", background=False, **options) as trimmer:
        own = trimmer.prepare(ask(secret, question), user="ann", conversation_id="c1")
        other_branch = trimmer.prepare(ask(branch, question), user="ann", conversation_id="c1")
        other_user = trimmer.prepare(ask(branch, question), user="bob", conversation_id="c1")
    own_recall = recall_message(own)
    assert own_recall is not None and "ZANZIBAR-7731" in own_recall["content"]
    for prepared in (other_branch, other_user):
        assert prepared.messages_folded > 0
        assert "ZANZIBAR-7731" not in json.dumps(prepared.messages)


def test_accents_and_other_languages_match_either_way(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    history = conversation(
        "Mi hermana vive en Málaga y trabaja en una panadería.",
        "Der Schlüssel liegt unter dem Blumentopf.",
    )
    folded(db_url, history, **options)
    spanish = recall_message(trimmer.prepare(ask(history, "¿Dónde está la panaderia, en Malaga?")))
    german = recall_message(trimmer.prepare(ask(history, "Wo ist der Schlussel?")))
    assert spanish is not None and "trabaja en una panadería" in spanish["content"]
    assert german is not None and "Der Schlüssel liegt unter dem Blumentopf." in german["content"]
    assert query_terms("¿Qué compraste en Málaga?") == ["comprast", "malaga"]


def test_tool_calls_come_back_as_text_never_as_tool_messages(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": '{"order": "QX-4471"}'},
    }
    history = [
        SYSTEM,
        {"role": "user", "content": "Where is my order QX-4471?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "QX-4471 shipped via Kestrel Post."},
        {"role": "assistant", "content": "It shipped."},
        *conversation(filler_rounds=4)[1:],
    ]
    folded(db_url, history, summarizer=Fixed("Small talk about cooking and sleep."), **options)
    prepared = trimmer.prepare(ask(history, "Which carrier shipped QX-4471?"))
    recalled = recall_message(prepared)
    assert recalled is not None
    assert "tool result: QX-4471 shipped via Kestrel Post." in recalled["content"]
    assert 'assistant (tool call): lookup_order({"order": "QX-4471"})' in recalled["content"]
    assert not any(m["role"] == "tool" or m.get("tool_calls") for m in prepared.messages)


def test_what_the_summary_already_says_is_not_recalled(
    db_url: str, options: dict[str, Any]
) -> None:
    fact = "The spare key is under the blue flowerpot."
    history = conversation(fact, "The car is parked behind the blue garage.")
    folded(db_url, history, summarizer=Fixed(fact), **options)
    with Trimmer(db_url, summarizer=Fixed(fact), background=False, **options) as trimmer:
        recalled = recall_message(trimmer.prepare(ask(history, "Anything blue?")))
    assert recalled is not None
    assert "behind the blue garage" in recalled["content"]
    assert fact not in recalled["content"]


def test_no_recall_without_a_fold_a_match_or_a_budget(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    history = conversation("My sister's dog is called Biscuit.")
    assert recall_message(trimmer.prepare(ask(history, "Biscuit?"))) is None  # nothing folded
    folded(db_url, history, **options)
    assert recall_message(trimmer.prepare(ask(history, "Anything about volcanoes?"))) is None
    tiny = {**options, "recall_tokens": 12}
    with Trimmer(db_url, summarizer="extractive", background=False, **tiny) as small:
        assert recall_message(small.prepare(ask(history, "Biscuit?"))) is None
    with pytest.raises(ConfigurationError, match="recall_tokens"):
        Trimmer(db_url, recall_tokens=-1)


def test_migration_indexes_histories_stored_before_it(db_url: str, options: dict[str, Any]) -> None:
    history = conversation("My sister's dog is called Biscuit.")
    folded(db_url, history, **options)
    with Trimmer(db_url, summarizer="extractive", background=False, **options) as trimmer:
        downgrade(trimmer._db.engine, "0005")
        with trimmer._db.engine.connect() as connection:
            tables = connection.dialect.get_table_names(connection)
        assert SEARCH_TABLE not in tables
        assert trimmer._db.upgrade() is True
        with trimmer._db.reading() as connection:
            indexed = connection.execute(text(f"SELECT count(*) FROM {SEARCH_TABLE}")).scalar()
        assert indexed == len(history) - 1  # every conversational message, once
        recalled = recall_message(trimmer.prepare(ask(history, "What is my sister's dog called?")))
    assert recalled is not None and "Biscuit" in recalled["content"]


@pytest.mark.parametrize("budget", [0, 200])
def test_serve_recall_tokens_reaches_the_gateway(
    db_url: str, options: dict[str, Any], budget: int
) -> None:
    """``--recall-tokens`` (GatewayConfig.recall_tokens) is the gateway Trimmer's budget:
    a question about a folded turn, asked through the gateway over HTTP, reaches the
    upstream with that turn recalled (and without it at 0)."""
    with pytest.raises(ConfigurationError, match="--recall-tokens must be an integer >= 0"):
        GatewayConfig(recall_tokens=-1)
    assert "--recall-tokens" in [p.opts[0] for p in serve.params if isinstance(p, click.Option)]
    history = conversation("My sister's dog is called Biscuit and loves the beach.")
    settings = {**options, "recall_tokens": budget}
    del settings["recall_share"]  # the gateway's Trimmer has the default share
    with FakeOpenAI(
        default=lambda _: Reply("ok", prompt_tokens=30, completion_tokens=2)
    ) as upstream:
        store = Database(db_url)
        key, _ = create_key(store, "acme")
        config = GatewayConfig(
            db_url=db_url,
            upstream=upstream.base_url,
            upstream_key_env="UP_KEY",
            summarizer="extractive",
            **settings,
        )
        with ServerThread(create_app(config, environ={"UP_KEY": "sk-up"})) as server:
            trimmer = server.server.config.app.state.trimmer
            assert trimmer.options.recall_tokens == budget
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
            client.chat.completions.create(model="gpt-4o", messages=history)  # type: ignore[arg-type]
            trimmer.wait_for_background()
            question = ask(history, "What is the name of my sister's dog?")
            client.chat.completions.create(model="gpt-4o", messages=question)  # type: ignore[arg-type]
            client.close()
        store.close()
    sent = [r for r in upstream.requests if r.get("model") == "gpt-4o"][-1]["messages"]
    recalled = [m for m in sent if str(m.get("content")).startswith(RECALL_HEADER)]
    assert len(sent) < len(question)  # folded
    if budget:
        assert len(recalled) == 1 and "called Biscuit" in recalled[0]["content"]
    else:
        assert recalled == []


def matching(turns: int) -> list[dict[str, Any]]:
    """A conversation whose turns name "quokka" (every third, some twice), "zephyr"
    (every second, up to three times) and "marimba" (the first 75 but every third):
    together the first two are in fewer than ``DOC_BUDGET`` messages, but more than
    ``MAX_HITS``; all three, in more; many score the same."""
    messages: list[dict[str, Any]] = [SYSTEM]
    for turn in range(turns):
        words = ["quokka"] * (turn % 3 == 0) * (1 + turn % 2)
        words += ["zephyr"] * (turn % 2 == 0) * (1 + turn % 5 // 2)
        words += ["marimba"] * (turn < 75 and turn % 3 != 0)
        role = "user" if turn % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"Turn {turn}: " + " and ".join(words)})
    return messages


def test_the_first_round_trip_finds_the_hits_the_search_would(
    db_url: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the count of the question's terms and the matches of those recall
    chooses come in one statement of prepare()'s first round trip, with no depth bound
    and no limit; recall bounds, ranks and limits them (``sent_hits``): the same hits as
    :func:`search` after the plan, at every start, with more than ``MAX_HITS`` matches,
    matches past the start and a term left out for the budget; none when a term was
    found common in between (search then). And the same request as a Trimmer that
    searches after the plan (on SQLite, the only way)."""
    settings = {**options, "keep_last": 10, "recall_tokens": 2000}
    history = matching(90)
    folded(db_url, history, **settings)
    question = ask(history, "Was it the marimba, the quokka or the zephyr?")
    with Trimmer(db_url, summarizer="extractive", background=False, **settings) as trimmer:
        pipelined = trimmer.prepare(question)
        path = trimmer._path(question, "gpt-4o", None)
        anchor, asked = path.anchor_hash, query_terms(question[-1]["content"])
        assert anchor is not None and len(asked) == 3
        with trimmer._db.writing() as connection:
            with Batch(connection) as batch:
                counted = _recall.send_term_counts(batch, path)
            assert (counted is None) == trimmer._db.is_sqlite
            chosen = _recall.informative(connection, anchor, asked, counted)
            assert chosen == _recall.informative(connection, anchor, asked)
            assert chosen == query_terms("quokka zephyr")  # marimba: over DOC_BUDGET with them
            searched = {b: _recall.search(connection, anchor, chosen, b) for b in range(93)}
            assert len(searched[92]) == MAX_HITS and len({h.score for h in searched[92]}) > 2
            if counted is not None:
                assert len(counted.rows()) == 3 + 61  # the counts; 60 turns and the question
                for before, hits in searched.items():
                    assert _recall.sent_hits(counted, anchor, asked, chosen, before) == hits
                _recall_index.note_common(trimmer._db.engine, anchor, chosen[:1])
                rest = _recall.informative(connection, anchor, asked, counted)
                assert rest == query_terms("zephyr marimba")  # not what was searched
                assert _recall.sent_hits(counted, anchor, asked, rest, 92) is None
    with Trimmer(db_url, summarizer="extractive", background=False, **settings) as trimmer:
        monkeypatch.setattr(trimmer, "_terms_to_count", lambda batch, path: None)
        searching = trimmer.prepare(question)
    recalled = recall_message(pipelined)
    assert recalled is not None and "quokka" in recalled["content"]
    assert pipelined.messages == searching.messages


def test_postgresql_term_counts_follow_appends_and_erasure(
    db_url: str, options: dict[str, Any]
) -> None:
    """On PostgreSQL recall counts each term's messages in the GIN index, up to
    ``PROBE_CAP`` (what it asks to pick the rarer words): equal to a recount of the
    documents after the migrations' fill, after an append and a resend, and gone with
    the conversation's erasure. 0015's downgrade brings back 0013's table of counts,
    filled with the same counts; its upgrade drops it again."""
    if not db_url.startswith("postgresql"):
        pytest.skip("terms are counted in the GIN index on PostgreSQL only")
    recount = (
        f"SELECT term, count(*) FROM {SEARCH_TABLE}, unnest(tsvector_to_array(document)) "
        "AS term GROUP BY term"
    )

    def counts(trimmer: Trimmer) -> tuple[dict[str, int], dict[str, int]]:
        with trimmer._db.reading() as connection:
            actual = {t: d for t, d in connection.execute(text(recount)).all()}
            asked = driver_rows(connection, _recall._COUNTED, (list(actual),))
        return dict(asked), {t: min(d, PROBE_CAP) for t, d in actual.items()}

    def tables(trimmer: Trimmer) -> set[str]:
        with trimmer._db.reading() as connection:
            return set(inspect(connection).get_table_names())

    history = conversation("My sister's dog is called Biscuit.")
    folded(db_url, history, user="ann", **options)
    with Trimmer(db_url, summarizer="extractive", background=False, **options) as trimmer:
        assert TERMS_TABLE not in tables(trimmer)
        downgrade(trimmer._db.engine, "0013")
        with trimmer._db.reading() as connection:  # 0013's counts, filled by the downgrade
            kept = dict(connection.execute(text(f"SELECT term, docs FROM {TERMS_TABLE}")).all())
            actual = dict(connection.execute(text(recount)).all())
        assert kept == actual and max(kept.values()) > 1
        downgrade(trimmer._db.engine, "0006")
        assert trimmer._db.upgrade() is True  # 0009 rebuilds the index, 0015 drops the counts
        assert TERMS_TABLE not in tables(trimmer)
        asked, actual = counts(trimmer)
        assert asked == actual and max(asked.values()) > 1
        question = ask(history, "What is my sister's dog called?")
        for _ in range(2):  # the second send stores nothing new
            trimmer.prepare(question, user="ann")
        asked, actual = counts(trimmer)
        assert asked == actual
        terms = list(actual)
        trimmer.forget("ann")
        with trimmer._db.reading() as connection:
            assert driver_rows(connection, _recall._COUNTED, (terms,)) == []


def index_terms(trimmer: Trimmer) -> dict[str, int]:
    """Every term the index holds, with its number of messages, read from the index's
    own postings (FTS5: an fts5vocab table over the contentless index; PostgreSQL: the
    documents), so a term left behind by a wrong delete shows."""
    with trimmer._db.reading() as connection:
        if trimmer._db.is_sqlite:
            connection.execute(
                text(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.terms_seen "
                    f"USING fts5vocab(main, {SEARCH_TABLE}, row)"
                )
            )
            rows = connection.execute(text("SELECT term, doc FROM temp.terms_seen")).all()
            connection.execute(text("DROP TABLE temp.terms_seen"))
        else:
            rows = connection.execute(
                text(
                    f"SELECT term, count(*) FROM {SEARCH_TABLE}, "
                    "unnest(tsvector_to_array(document)) AS term GROUP BY term"
                )
            ).all()
    return {term: docs for term, docs in rows}


def test_erasure_leaves_no_term_of_the_erased_messages_in_the_index(
    db_url: str, options: dict[str, Any]
) -> None:
    """The SQLite index keeps no text (contentless FTS5): an erased message's terms are
    deleted one by one. After forgetting ann the index holds exactly bob's terms, each
    in as many messages as before ann came, and bob's recall still works."""
    bob = conversation("My sister's dog is called Biscuit.", "Our boat is the Kestrel.")
    ann = conversation("My sister's dog is called Pepper.", "Ann's vault code is ref7731.")
    folded(db_url, bob, user="bob", **options)
    question = ask(bob, "What is our boat called, the Kestrel?")
    with Trimmer(db_url, summarizer="extractive", background=False, **options) as trimmer:
        recalled = recall_message(trimmer.prepare(question, user="bob"))  # stored too
        if trimmer._db.is_sqlite:  # (ts_rank_cd finds the summary says enough here)
            assert recalled is not None and "boat is the Kestrel" in recalled["content"]
        bob_only = index_terms(trimmer)
        folded(db_url, ann, user="ann", **options)
        both = index_terms(trimmer)
        assert len(both) > len(bob_only) and any(term.endswith("ref7731") for term in both)
        trimmer.forget("ann")
        assert index_terms(trimmer) == bob_only
        if trimmer._db.is_sqlite:
            with trimmer._db.reading() as connection:
                kept = connection.execute(
                    text(f"SELECT count(*) FROM {_recall_index.ROWS_TABLE}")
                ).scalar()
                sized = connection.execute(text(f"SELECT count(*) FROM {SEARCH_TABLE}_docsize"))
            assert kept == sized.scalar() == len(bob)  # and the question
            with trimmer._db.writing() as connection:  # the index is consistent with itself
                connection.execute(
                    text(f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}) VALUES ('integrity-check')")
                )
        assert recall_message(trimmer.prepare(question, user="bob")) == recalled


def test_the_compact_index_migration_recalls_the_same_messages(
    db_url: str, options: dict[str, Any]
) -> None:
    """0013's downgrade rebuilds 0009's index of the histories stored (the words kept,
    an anchor column on PostgreSQL) and its upgrade the compact one (contentless on
    SQLite, with its rows table): after the round trip the same questions recall the
    same messages, and every conversational message is indexed once at each step."""
    history = conversation(
        "My sister's dog is called Biscuit.",
        "I got promoted to team lead in March.",
        "The locker code is ref1239.",
    )
    questions = ["What is my sister's dog called?", "When was the promotion?", "ref1239?"]
    folded(db_url, history, user="ann", **options)
    with Trimmer(db_url, summarizer="extractive", background=False, **options) as trimmer:

        def recalled() -> list[Any]:
            return [recall_message(trimmer.prepare(ask(history, q), user="ann")) for q in questions]

        def indexed() -> tuple[int, set[str]]:
            with trimmer._db.reading() as connection:
                count = connection.execute(text(f"SELECT count(*) FROM {SEARCH_TABLE}")).scalar()
                columns = {c["name"] for c in inspect(connection).get_columns(SEARCH_TABLE)}
                tables = set(inspect(connection).get_table_names())
            return int(count or 0), columns | (
                {"rows"} if _recall_index.ROWS_TABLE in tables else set()
            )

        at_head = recalled()
        found = [message is not None for message in at_head]
        assert all(found) if trimmer._db.is_sqlite else any(found)  # ts_rank_cd: fewer
        messages = len(history) - 1 + len(questions)  # each question is stored too
        assert indexed()[0] == messages
        downgrade(trimmer._db.engine, "0012")
        count, layout = indexed()
        assert count == messages and ("anchor_hash" in layout or "hash" in layout)
        assert "rows" not in layout
        assert trimmer._db.upgrade() is True
        count, layout = indexed()
        assert count == messages and ("rows" in layout) == trimmer._db.is_sqlite
        assert "anchor_hash" not in layout
        assert recalled() == at_head


def test_word_forms_meet_and_codes_stay_exact(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    """The index and the question cut the same endings ("dogs"/"dog", "dancing"/"dance",
    in any language), while a code is looked up exactly ("ref1234" never finds
    "ref1239")."""
    history = conversation(
        "We keep three dogs at home.",
        "Salsa dancing on Fridays keeps me fit.",
        "The locker code is ref1239.",
    )
    folded(db_url, history, **options)
    dog = recall_message(trimmer.prepare(ask(history, "Which dog is the oldest?")))
    dance = recall_message(trimmer.prepare(ask(history, "What dance do I do?")))
    code = recall_message(trimmer.prepare(ask(history, "What is ref1234?")))
    assert dog is not None and "three dogs at home" in dog["content"]
    assert dance is not None and "Salsa dancing" in dance["content"]
    assert code is None


def test_a_hit_brings_its_short_exchange_when_the_budget_allows(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    """The answer a turn after the reply (the speaker going on) comes back with the
    matching turn; with a budget for the matching turn alone, only it does."""
    history = [
        *conversation(filler_rounds=1)[:1],
        {"role": "user", "content": "I just got some new trail shoes!"},
        {"role": "assistant", "content": "Love that purple color."},
        {"role": "user", "content": "They are for running along the river."},
        *conversation(filler_rounds=4)[1:],
    ]
    folded(db_url, history, summarizer=Fixed("Small talk."), **options)
    recalled = recall_message(trimmer.prepare(ask(history, "What are the new trail shoes for?")))
    assert recalled is not None
    assert "Love that purple color." in recalled["content"]
    assert "They are for running along the river." in recalled["content"]
    empty = count_tokens([{"role": "system", "content": ""}])
    header = count_tokens([{"role": "system", "content": RECALL_HEADER}]) - 3
    line = count_tokens([{"role": "system", "content": "\nuser: I just got some new trail shoes!"}])
    hit = line - empty  # the line's own tokens, as recall adds them up
    sent = {}
    for budget in (header + hit, header + hit - 1):  # the hit alone; less, room for its reply
        settings = {**options, "recall_tokens": budget}
        with Trimmer(db_url, summarizer="extractive", background=False, **settings) as narrow:
            sent[budget] = recall_message(narrow.prepare(ask(history, "New trail shoes for?")))
    alone = sent[header + hit]
    assert alone is not None
    assert alone["content"] == f"{RECALL_HEADER}\nuser: I just got some new trail shoes!"
    assert sent[header + hit - 1] is None  # the reply alone would fit: not without the hit


def test_recall_share_bounds_the_recall_by_the_history(
    db_url: str, options: dict[str, Any]
) -> None:
    """``recall_share``: the recall message stays within that share of the history's
    tokens (None: ``recall_tokens`` alone); it must be in (0, 1]."""
    facts = [f"Fact {i}: the locker code for gym {i} is kestrel{i}." for i in range(12)]
    history = conversation(*facts)
    folded(db_url, history, **options)
    question = ask(history, "What are the kestrel locker codes of the gyms?")
    sizes = {}
    for share in (None, 0.1):
        settings = {**options, "recall_tokens": 2000, "recall_share": share}
        with Trimmer(db_url, summarizer="extractive", background=False, **settings) as trim:
            recalled = recall_message(trim.prepare(question))
            assert recalled is not None
            sizes[share] = count_tokens([recalled]) - 3
    total = count_tokens(history) - 3 + count_tokens([question[-1]]) - 3
    assert 0 < sizes[0.1] <= math.ceil(0.1 * total) < sizes[None]
    for bad in (0, 1.5, True, "0.1"):
        with pytest.raises(ConfigurationError, match="recall_share must be a number"):
            Trimmer(db_url, recall_share=bad)


def test_terms_found_common_are_remembered_until_an_erasure(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    """A term in PROBE_CAP messages or more of a conversation is not counted again on
    the next prepare() (counts only grow); an erasure forgets what was remembered."""
    history = conversation("My locker code is kestrel9.", filler_rounds=0)
    for round_ in range(PROBE_CAP // 2 + 1):
        history.append({"role": "user", "content": f"The weather is sunny (day {round_})."})
        history.append({"role": "assistant", "content": "Weather noted."})
    history.extend(conversation(filler_rounds=1)[1:])
    folded(db_url, history, user="ann", **options)
    question = ask(history, "What weather goes with the kestrel code?")
    recalled = recall_message(trimmer.prepare(question, user="ann"))
    assert recalled is not None and "kestrel9" in recalled["content"]
    engines = {trimmer._db.engine, trimmer._db.reader}

    def remembered() -> list[set[str]]:
        found = (_recall_index._COMMON.get(engine, {}) for engine in engines)
        return [set(terms) for known in found for terms in known.values() if terms]

    assert remembered() == [{"weather"}]
    again = recall_message(trimmer.prepare(question, user="ann"))  # "weather" not counted: the same
    assert again == recalled
    lines = [line for line in Lines._known.values() if line is not None]
    assert any("kestrel9" in line.words for line in lines)
    assert "kestrel9." in Words.of(TokenCounter(ModelTable().get("gpt-4o"))).spaced
    trimmer.forget("ann")
    assert remembered() == []
    assert Lines._known == {} and all(not words.spaced for words in Words._known.values())


def test_a_matching_reply_brings_the_turn_it_answers(
    db_url: str, trimmer: Trimmer, options: dict[str, Any]
) -> None:
    """When the words that match are in a reply, the turn before it (what it replies to,
    often the answer itself) comes back too, as the budget allows; not without the reply."""
    history = [
        *conversation(filler_rounds=1)[:1],
        {"role": "user", "content": "Being ourselves is an ongoing adventure of growing."},
        {"role": "assistant", "content": "Yep, a kestrel journey through life together!"},
        *conversation(filler_rounds=4)[1:],
    ]
    folded(db_url, history, summarizer=Fixed("Small talk."), **options)
    question = ask(history, "How do we describe our kestrel journey together?")
    recalled = recall_message(trimmer.prepare(question))
    assert recalled is not None
    assert recalled["content"].startswith(
        f"{RECALL_HEADER}\nuser: Being ourselves is an ongoing adventure of growing."
        "\nassistant: Yep, a kestrel journey through life together!\n"
    )
    header = count_tokens([{"role": "system", "content": RECALL_HEADER}]) - 3
    empty = count_tokens([{"role": "system", "content": ""}])
    line = "\nassistant: Yep, a kestrel journey through life together!"
    hit = count_tokens([{"role": "system", "content": line}]) - empty
    settings = {**options, "recall_tokens": header + hit}
    with Trimmer(db_url, summarizer="extractive", background=False, **settings) as narrow:
        alone = recall_message(narrow.prepare(question))
    assert alone is not None and alone["content"] == RECALL_HEADER + line


def test_a_match_said_by_someone_the_question_names_ranks_first(
    db_url: str, options: dict[str, Any]
) -> None:
    """Two turns match alike; the one said by the person the question names (the
    message's ``name``, or "Name:" opening its text) comes first, so it is the one
    a budget for a single line keeps."""
    history = [
        *conversation(filler_rounds=1)[:1],
        {"role": "user", "name": "Ann", "content": "My kestrel kite is red."},
        {"role": "assistant", "content": "Noted, thanks for telling me."},
        {"role": "user", "name": "Bob", "content": "My kestrel kite is teal."},
        *conversation(filler_rounds=4)[1:],
    ]
    folded(db_url, history, summarizer=Fixed("Small talk."), **options)
    header = count_tokens([{"role": "system", "content": RECALL_HEADER}]) - 3
    empty = count_tokens([{"role": "system", "content": ""}])
    line = count_tokens([{"role": "system", "content": "\nuser: My kestrel kite is teal."}])
    settings = {**options, "recall_tokens": header + line - empty}
    with Trimmer(db_url, summarizer="extractive", background=False, **settings) as narrow:
        for name, colour in (("Bob", "teal"), ("Ann", "red")):
            recalled = recall_message(narrow.prepare(ask(history, f"{name}'s kestrel kite?")))
            assert recalled is not None
            assert recalled["content"] == f"{RECALL_HEADER}\nuser: My kestrel kite is {colour}."
    assert speaker({"role": "user", "content": "[8 May, 2023] Caroline: Hi!"}) == "caroline"
    assert speaker({"role": "user", "content": "Mary Ann Lee: Hi!"}) == "mary ann lee"
    assert speaker({"role": "user", "name": "Zoë", "content": "Bob: hi"}) == "zoe"
    assert speaker({"role": "user", "content": "note: lower case is no name"}) == ""
    assert speaker({"role": "user", "content": "Re: the plan: is it set?"}) == "re"


# Text meant to meet the pre-tokenizers' edges: punctuation and slashes before a newline,
# digits, contractions, blanks of every kind (NUL, tabs, newlines, no-break spaces), accents
# and emoji; and any text at all.
LINE_TEXT = st.one_of(
    st.text(alphabet="ab Z.,!?'/-:;[]()0123456789\n\t\x00\u00a0\u3000éß😀", max_size=60),
    st.text(max_size=60),
)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(LINE_TEXT, min_size=1, max_size=8),
    dated=st.lists(st.booleans(), min_size=8, max_size=8),
    model=st.sampled_from(["gpt-4o", "gpt-4"]),
    share=st.floats(0.0, 1.0),
)
def test_the_recall_message_tokens_are_exact_without_encoding_it(
    texts: list[str], dated: list[bool], model: str, share: float
) -> None:
    """build() chooses lines by their own counts and gives the message's tokens as the
    sum of its pieces' (words counted once, remembered): always exactly what the
    message encodes to, within the budget, on either encoding."""
    counter = TokenCounter(ModelTable().get(model))
    messages = [
        {
            "role": ("user", "assistant", "tool")[i % 3],
            "content": (f"[8 May,\t 2023 {i}] " if dated[i] else "") + text,
        }
        for i, text in enumerate(texts)
    ]
    hashes = [uuid.uuid4().hex for _ in messages]  # lines are remembered by message hash
    path = SimpleNamespace(counter=counter, messages=messages, hashes=hashes)
    whole = build(path, range(len(messages)), "", 100_000)  # type: ignore[arg-type]
    if whole.message is None:
        return
    assert whole.tokens == counter.message(whole.message)
    budget = int(share * whole.tokens)
    part = build(path, range(len(messages)), "", budget)  # type: ignore[arg-type]
    assert part.message is None or part.tokens == counter.message(part.message) <= budget


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(LINE_TEXT, min_size=1, max_size=10), model=st.sampled_from(["gpt-4o", "gpt-4"])
)
def test_a_line_counts_as_the_sum_of_its_words(words: list[str], model: str) -> None:
    """A line (a word first, single spaces between words) encodes to the tokens of its
    words, each with the space before it, with or without a newline after it."""
    line = " ".join(" ".join(word.split()) for word in ["user:", *words] if word.split())
    counter = TokenCounter(ModelTable().get(model))
    assert Words.of(counter).line(line) == (counter.text(line), counter.text(line + "\n"))


@settings(max_examples=200, deadline=None)
@given(
    content=LINE_TEXT,
    role=st.sampled_from(["user", "assistant", "tool", "system"]),
    room=st.integers(0, 80),
    model=st.sampled_from(["gpt-4o", "gpt-4"]),
)
def test_a_line_judged_too_long_never_fits(content: str, role: str, room: int, model: str) -> None:
    """``Lines.too_long`` (which skips a line without rendering it) says a line takes
    more than ``room`` tokens exactly when its words and role do (one token a word at
    least), whether or not it counted them; and such a line never fits."""
    messages = [{"role": role, "content": content}]
    path = SimpleNamespace(messages=messages, hashes=[uuid.uuid4().hex])
    words = len(content.split())
    plain = "\x00" not in content and words > 0 and content.lstrip()[:1] != "["
    least = words + 1 + (1 if role == "tool" else 0)
    judged = Lines(path).too_long(0, room)  # type: ignore[arg-type]
    assert judged == (plain and least > room)
    if judged:
        line = render(messages, 0)
        assert line is not None
        assert TokenCounter(ModelTable().get(model)).text(line.text) > room


@settings(max_examples=100, deadline=None)
@given(
    summary=st.lists(LINE_TEXT, min_size=0, max_size=12),
    asked=st.lists(LINE_TEXT, min_size=1, max_size=6),
)
def test_whether_the_summary_says_a_line_is_a_scan_of_it(
    summary: list[str], asked: list[str]
) -> None:
    """Summarized answers ``words in text`` (through the set of its words where it can),
    the same when asked again (remembered); one object per summary, forgotten after an
    erasure."""
    text = " ".join(summary)
    lines = [" ".join(words.split()) for words in asked if words.split()]
    lines += [" ".join(text.split()[i : i + 3]) for i in range(0, len(text.split()), 4)]
    forget_recalled()
    said = Summarized.of(text)
    assert Summarized.of(text) is said
    for _round in range(2):  # then from memory
        for line in lines:
            assert said.says(line) == (line in text), line
    forget_recalled()
    assert Summarized.of(text) is not said


def test_only_the_rarest_terms_within_the_document_budget_are_searched(
    db_url: str, options: dict[str, Any]
) -> None:
    """A question's terms are searched rarest first while together they are in at most
    DOC_BUDGET messages: a term that would pass it stays out, so its messages are not
    ranked (nor recalled), though it is in fewer than PROBE_CAP."""
    rare, common = DOC_BUDGET // 3, DOC_BUDGET - DOC_BUDGET // 5
    assert common < PROBE_CAP and rare + common > DOC_BUDGET
    history = conversation(filler_rounds=0)
    for bird, times in (("kestrel", rare), ("falcon", common)):
        for round_ in range(times):
            history.append({"role": "user", "content": f"A {bird} flew past (day {round_})."})
            history.append({"role": "assistant", "content": "Noted."})
        history.extend(conversation(filler_rounds=1)[1:])
    settings = {**options, "recall_tokens": 3000}
    folded(db_url, history, summarizer=Fixed("Birds."), **settings)
    with Trimmer(db_url, summarizer="extractive", background=False, **settings) as trimmer:
        both = recall_message(trimmer.prepare(ask(history, "Where was the kestrel or falcon?")))
        assert both is not None and "kestrel flew" in both["content"]
        assert "falcon" not in both["content"]
        alone = recall_message(trimmer.prepare(ask(history, "When did the falcon fly?")))
        assert alone is not None and "falcon flew" in alone["content"]
