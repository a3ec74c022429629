"""LLM summaries with the default settings, over real HTTP: a real ``serve`` in front of
an upstream whose summary model honours ``max_tokens`` (it writes too much and is cut
with ``finish_reason: "length"``), the summary budget's floor and the fold policy that
waits for it, the summarizer's handling of cut, empty, refused and off-format answers,
and streams recorded with the upstream's exact usage although the client did not ask
for it (the wrapper, sync and async, and the gateway, chat and Responses)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_server import ServeProcess, ServerThread
from openai_server import FakeOpenAI, Reply, cut_to_max_tokens
from sqlalchemy import select
from summary_rows import decoded

from context_trimmer import SummarizerError, SummaryRequest, Trimmer, count_tokens
from context_trimmer._store.db import Database
from context_trimmer._store.keys import create_key
from context_trimmer._store.ledger import REQUESTS, USAGE
from context_trimmer._store.summaries import FAILURES, SUMMARIES
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.plan import SUMMARY_FLOOR
from context_trimmer._trimming.summarizers import (
    SYSTEM_PROMPT,
    OpenAISummarizer,
    fold,
    max_tokens_for,
)
from context_trimmer.gateway import GatewayConfig, create_app

UPSTREAM_KEY = "upstream-secret"
SUMMARY_KEY = "summary-secret"
COUNT = counter_for("gpt-4o").text

PLACES = ["Lisbon", "Porto", "Madrid", "Seville", "Rome", "Milan", "Vienna", "Prague"]
ITEMS = ["hotel", "train", "museum pass", "dinner", "taxi", "flight", "tour", "ferry"]


def short_turn(turn: int) -> str:
    """A short user message with a fact in it (about 15 tokens)."""
    place, item = PLACES[turn % len(PLACES)], ITEMS[turn * 3 % len(ITEMS)]
    return f"Note {turn}: the {item} in {place} costs {turn * 7 + 12} euros."


def is_summary_call(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(messages) and str(messages[0].get("content")).startswith(SYSTEM_PROMPT)


def verbose_summary(body: dict[str, Any]) -> str:
    """A summary in the prompt's sections, much longer than asked (every line of the
    current summary and of the new messages becomes a bullet)."""
    prompt = body["messages"][-1]["content"]
    previous, rest = prompt.split("\n\nNew messages:\n", 1)
    transcript = rest.rsplit("\n\nWrite the updated summary", 1)[0]
    kept = [line for line in previous.splitlines()[1:] if line.startswith("- ") and "Note" in line]
    new = [
        f"- The user wrote that {line.split(': ', 1)[1].rstrip('.')}, and the assistant "
        "agreed to keep it in mind for the itinerary."
        for line in transcript.splitlines()
        if line.startswith("user: ")
    ]
    return "People:\n- A user planning a trip, and the assistant.\nFacts:\n" + "\n".join(kept + new)


def summary_model(body: dict[str, Any]) -> Reply:
    """The summary model: verbose, and cut by ``max_tokens`` as a real model is."""
    assert is_summary_call(body), "only summaries are asked of the summary endpoint"
    return cut_to_max_tokens(Reply(verbose_summary(body), prompt_tokens=500), body)


def chat_model(body: dict[str, Any]) -> Reply:
    last = body["messages"][-1]["content"]
    return Reply(f"Noted, {last.split(':')[0].lower()}.", prompt_tokens=77, completion_tokens=4)


def rows(db_url: str, table: Any) -> list[Any]:
    store = Database(db_url)
    try:
        with store.engine.connect() as connection:
            found = list(connection.execute(select(table)))
            return decoded(connection, found) if table is SUMMARIES else found
    finally:
        store.close()


def settle(summaries: FakeOpenAI, db_url: str, quiet: float = 1.0, timeout: float = 60) -> None:
    """Wait until every summary call the server got is stored (as a summary or a
    failure) and none came for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        calls = len(summaries.requests)
        stored = len(rows(db_url, SUMMARIES)) + len(rows(db_url, FAILURES))
        if calls != seen or stored < calls:
            seen, since = calls, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError("the summary calls did not settle")


def test_a_short_chat_through_serve_gets_llm_summaries_with_the_defaults(
    sqlite_url: str,
) -> None:
    """40 turns of short messages, default settings: every fold is the LLM's (its answers
    cut by max_tokens are ended at a whole line, never stored over budget), every call
    asks for at least 150 tokens, and the last request carries at most half the history."""
    with (
        FakeOpenAI(default=chat_model) as upstream,
        FakeOpenAI(default=summary_model) as summaries,
    ):
        store = Database(sqlite_url)
        key, _ = create_key(store, "acme")
        store.close()
        environ = {**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY, "SUMMARY_KEY": SUMMARY_KEY}
        options = ["--db", sqlite_url, "--upstream", upstream.base_url]
        options += ["--summary-base-url", summaries.base_url, "--summary-key-env", "SUMMARY_KEY"]
        messages: list[dict[str, str]] = [{"role": "system", "content": "You plan trips."}]
        with ServeProcess(*options, env=environ) as serve:
            client = openai.OpenAI(base_url=serve.base_url, api_key=key, max_retries=0)
            for turn in range(40):
                settle(summaries, sqlite_url, quiet=0.3)  # a due fold is done before the turn
                messages.append({"role": "user", "content": short_turn(turn)})
                reply = client.chat.completions.create(
                    model="gpt-4o", messages=messages, extra_headers={"X-Conversation-Id": "trip"}
                )
                messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            client.close()
        stored, failures = rows(sqlite_url, SUMMARIES), rows(sqlite_url, FAILURES)
    calls = summaries.requests
    assert len(calls) >= 2 and len(stored) == len(calls)
    assert not failures and {s.summarizer for s in stored} == {"openai:gpt-4o-mini"}
    assert all(call["max_tokens"] >= 150 for call in calls)
    assert all(max_tokens_for(SUMMARY_FLOOR) == call["max_tokens"] for call in calls)
    for summary in stored:  # cut by max_tokens, ended at its last whole line, in budget
        assert COUNT(summary.text) <= SUMMARY_FLOOR
        assert summary.text.endswith("itinerary."), summary.text[-80:]
    chats = [r for r in upstream.requests if not is_summary_call(r)]
    last = chats[-1]["messages"]
    history = messages[:-1]  # what the client sent last: all but the last answer
    assert count_tokens(last) <= count_tokens(history) // 2
    assert last[1]["content"].startswith("Summary of the earlier conversation:\nPeople:")


def chat_turn(turn: int) -> dict[str, str]:
    return {"role": "assistant", "content": f"Noted, note {turn}."}


def short_chat(turns: int, first: int = 0) -> list[dict[str, str]]:
    return [
        message
        for turn in range(first, first + turns)
        for message in ({"role": "user", "content": short_turn(turn)}, chat_turn(turn))
    ]


def test_a_short_chat_waits_for_a_fold_worth_the_floor(sqlite_url: str) -> None:
    """Past keep_last + fold_every messages a model's fold still waits until what it
    replaces is twice the floor; compact(force=True) folds at once; the extractive
    summarizer (no model call) folds as soon as the count is due, as before."""
    with (
        FakeOpenAI(default=summary_model) as server,
        Trimmer(
            sqlite_url,
            summarizer=OpenAISummarizer(base_url=server.base_url, api_key="k", max_retries=0),
            background=False,
        ) as trimmer,
    ):
        options = trimmer.options
        due_by_count = options.keep_last + options.fold_every + 1
        messages = short_chat(due_by_count // 2 + 1)
        held = trimmer.prepare(messages, conversation_id="short")
        assert not held.fold_pending
        assert "too little to summarize yet" in trimmer.compact(conversation_id="short").reason
        assert not server.requests
        turns = len(messages) // 2
        while not trimmer.prepare(messages, conversation_id="short").fold_pending:
            turns += 1
            messages = short_chat(turns)
        replaced = messages[: len(messages) - options.keep_last]
        assert count_tokens(replaced) >= 2 * SUMMARY_FLOOR
        assert count_tokens(replaced[:-2]) < 2 * SUMMARY_FLOOR + 60  # not much later
        assert trimmer.compact(conversation_id="short").summary_id is not None
        forced = trimmer.compact(
            short_chat(due_by_count // 2 + 1, first=100), conversation_id="f", force=True
        )
        assert forced.summary_id is not None
    assert [r["max_tokens"] for r in server.requests] == [max_tokens_for(SUMMARY_FLOOR)] * 2
    with Trimmer(sqlite_url, summarizer="extractive", background=False) as local:
        early = short_chat(due_by_count // 2 + 1, first=200)
        assert local.prepare(early, conversation_id="local").fold_pending


def request_for(budget: int = SUMMARY_FLOOR) -> SummaryRequest:
    return SummaryRequest(None, "user: Ana moved to Porto.", budget, COUNT)


@pytest.mark.parametrize(
    ("answer", "truncated", "expected"),
    [
        ("People:\n- Ana lives in Porto.\n- Ana is a nur", True, "People:\n- Ana lives in Porto."),
        ("- Ana lives in Porto. She works as a nurse in", True, "- Ana lives in Porto."),
        ("- Ana lives in Porto.\nOpen tasks:\n- Boo", True, "- Ana lives in Porto."),
        ("- Ana lives in Porto.", True, "- Ana lives in Porto."),
        ("Here is the updated summary:\n\n- Ana lives in Porto.", False, "- Ana lives in Porto."),
        ("```\nPeople:\n- Ana lives in Porto.\n```", False, "People:\n- Ana lives in Porto."),
        ("**Updated summary:**\n- Ana lives in Porto.", False, "- Ana lives in Porto."),
        ("Summary: Ana lives in Porto.", False, "Summary: Ana lives in Porto."),
    ],
)
def test_model_answers_are_cleaned_and_cut_answers_end_at_a_whole_sentence(
    answer: str, truncated: bool, expected: str
) -> None:
    finish = "length" if truncated else "stop"
    with FakeOpenAI(default=lambda _body: Reply(answer, finish_reason=finish)) as server:
        summarizer = OpenAISummarizer(base_url=server.base_url, api_key="k", max_retries=0)
        assert fold(summarizer, request_for()).text == expected
        summarizer.close()


@pytest.mark.parametrize(
    ("answer", "truncated", "error"),
    [
        ("", False, "empty summary"),
        ("I'm sorry, I can't help with that.", False, "error or refusal"),
        ("- Ana moved to Porto and then she went on to", True, "before its first sentence"),
        ("People:\n- Ana moved to Porto and then", True, "before its first sentence"),
        ("Current summary:\n(none yet)\nNew messages:\nuser: hi", False, "repeats the prompt"),
        ("user: Ana moved to Porto.\nassistant: Noted.", False, "copies the transcript"),
        ("Here is the updated summary:", False, "nothing but a preamble"),
    ],
)
def test_unusable_model_answers_are_summarizer_errors(
    answer: str, truncated: bool, error: str
) -> None:
    """Each is a SummarizerError carrying what the call cost: the fold's failure policy
    (the recorded failure, the extractive fallback, the breaker) then takes over."""
    finish = "length" if truncated else "stop"
    reply = Reply(answer, finish_reason=finish, prompt_tokens=10, completion_tokens=5)
    with FakeOpenAI(default=lambda _body: reply) as server:
        summarizer = OpenAISummarizer(base_url=server.base_url, api_key="k", max_retries=0)
        with pytest.raises(SummarizerError, match=error) as raised:
            fold(summarizer, request_for())
        summarizer.close()
    assert (raised.value.tokens_in, raised.value.tokens_out) == (10, 5)


def test_an_off_format_answer_falls_back_and_is_recorded(sqlite_url: str) -> None:
    with (
        FakeOpenAI(default=lambda _body: Reply("user: hi\nassistant: hello")) as server,
        Trimmer(
            sqlite_url,
            summarizer=OpenAISummarizer(base_url=server.base_url, api_key="k", max_retries=0),
            background=False,
        ) as trimmer,
    ):
        result = trimmer.compact(short_chat(9), conversation_id="c", force=True)
        assert result.failures == 1 and result.summary_id is not None
        assert "copies the transcript" in result.reason
        assert trimmer.summarizer_status()["breaker"]["failures"] == 1
    (summary,) = rows(sqlite_url, SUMMARIES)
    assert summary.summarizer == "extractive (fallback for openai:gpt-4o-mini)"


def test_the_summary_call_asks_for_words_and_gives_max_tokens_headroom(sqlite_url: str) -> None:
    """The request states the length in words; max_tokens leaves room over the budget;
    a cut answer (finish_reason "length") is stored up to its last whole line."""
    with FakeOpenAI(default=summary_model) as server:
        summarizer = OpenAISummarizer(base_url=server.base_url, api_key="k", max_retries=0)
        transcript = "\n".join(f"user: {short_turn(t)}" for t in range(30))
        result = fold(summarizer, SummaryRequest(None, transcript, 200, COUNT))
        summarizer.close()
    (body,) = server.requests
    assert body["max_tokens"] == 300 and body["temperature"] == 0
    assert body["messages"][-1]["content"].endswith("in at most 150 words.")
    assert COUNT(result.text) <= 200 and result.text.endswith("itinerary.")
    assert result.tokens_out == 300


# Streams recorded with the upstream's exact usage, the client's stream unchanged.

STREAM_REPLY = Reply("A streamed answer in words.", prompt_tokens=123, completion_tokens=9)


def recorded_usage(db_url: str) -> list[tuple[int, int, bool]]:
    store = Database(db_url)
    try:
        with store.engine.connect() as connection:
            query = select(USAGE.c.prompt_tokens, USAGE.c.completion_tokens, USAGE.c.estimated)
            return [tuple(row) for row in connection.execute(query.order_by(USAGE.c.request_id))]
    finally:
        store.close()


def usage_asked(server: FakeOpenAI) -> list[bool]:
    return [bool((r.get("stream_options") or {}).get("include_usage")) for r in server.requests]


def test_wrapped_streams_are_recorded_with_exact_usage_and_no_usage_chunk(
    db_url: str,
) -> None:
    with (
        FakeOpenAI(default=lambda _body: STREAM_REPLY) as server,
        Trimmer(db_url, summarizer="extractive") as trimmer,
    ):
        client = trimmer.wrap(openai.OpenAI(base_url=server.base_url, api_key="k"))
        chunks = []
        for turn in range(2):
            stream = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"hi {turn}"}], stream=True
            )
            chunks += list(stream)

        async def run_async() -> list[Any]:
            aclient = trimmer.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"))
            stream = await aclient.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi async"}], stream=True
            )
            got = [chunk async for chunk in stream]
            await aclient.close()
            return got

        chunks += asyncio.run(run_async())
        trimmer.wait_for_background(timeout=10)
    assert usage_asked(server) == [True] * 3
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert recorded_usage(db_url) == [(123, 9, False)] * 3


def test_a_stream_that_asked_for_usage_still_gets_it(db_url: str) -> None:
    with (
        FakeOpenAI(default=lambda _body: STREAM_REPLY) as server,
        Trimmer(db_url, summarizer="extractive") as trimmer,
    ):
        client = trimmer.wrap(openai.OpenAI(base_url=server.base_url, api_key="k"))
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 123
    assert recorded_usage(db_url) == [(123, 9, False)]


@pytest.fixture
def gateway(db_url: str) -> Iterator[tuple[str, str, FakeOpenAI]]:
    """A gateway (the ASGI app, uvicorn in a thread) in front of the test server."""
    with FakeOpenAI(default=lambda _body: STREAM_REPLY) as upstream:
        config = GatewayConfig(
            db_url=db_url,
            upstream=upstream.base_url,
            upstream_key_env="UPSTREAM_KEY",
            summarizer="extractive",
        )
        store = Database(db_url)
        key, _ = create_key(store, "acme")
        store.close()
        with ServerThread(create_app(config, environ={"UPSTREAM_KEY": UPSTREAM_KEY})) as server:
            yield server.base_url, key, upstream


def test_gateway_streams_are_recorded_with_exact_usage_and_relayed_unchanged(
    gateway: tuple[str, str, FakeOpenAI], db_url: str
) -> None:
    url, key, upstream = gateway
    bodies = []
    for turn in range(3):
        with httpx.stream(
            "POST",
            f"{url}/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": f"stream {turn}"}],
                "stream": True,
            },
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            bodies.append(response.read())
    assert usage_asked(upstream) == [True] * 3
    for body in bodies:
        assert b"usage" not in body
        events = [e for e in body.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
        assert all(chunk["choices"] for chunk in chunks)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == STREAM_REPLY.content
    time.sleep(0.2)  # the records are written as the streams end
    assert recorded_usage(db_url) == [(123, 9, False)] * 3
    sdk = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    stream = sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "sdk"}], stream=True
    )
    assert all(chunk.choices and chunk.usage is None for chunk in stream)
    sdk.close()


def test_gateway_responses_streams_are_recorded_with_exact_usage(
    gateway: tuple[str, str, FakeOpenAI], db_url: str
) -> None:
    url, key, upstream = gateway
    sdk = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    for turn in range(3):
        stream = sdk.responses.create(model="gpt-4o", input=f"stream {turn}", stream=True)
        kinds = [event.type for event in stream]
        assert kinds[-1] == "response.completed"
    sdk.close()
    assert all("stream_options" not in body for body in upstream.requests)
    time.sleep(0.2)
    assert recorded_usage(db_url) == [(123, 9, False)] * 3


def test_the_request_rows_match_the_streams(db_url: str) -> None:
    """Each recorded stream's request row is there too (the usage is the request's)."""
    with (
        FakeOpenAI(default=lambda _body: STREAM_REPLY) as server,
        Trimmer(db_url, summarizer="extractive") as trimmer,
    ):
        client = trimmer.wrap(openai.OpenAI(base_url=server.base_url, api_key="k"))
        list(
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert len(rows(db_url, REQUESTS)) == 1 and recorded_usage(db_url) == [(123, 9, False)]
