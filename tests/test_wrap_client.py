"""Every way an app calls the model through a wrapped client sends a trimmed request.

Each test makes the call over real HTTP against the local server and checks what the
server actually received: a 120-message history goes out as a few messages with a reply
cap, and the usage lands in the ledger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from openai_server import FakeOpenAI, Reply
from pydantic import BaseModel
from sqlalchemy import select

from context_trimmer import ConfigurationError, RetryPolicy, Trimmer
from context_trimmer._client import wrapped_client as _wrapped_client
from context_trimmer._store.ledger import ATTEMPTS, USAGE

HISTORY = 120


def history(size: int = HISTORY) -> list[dict[str, Any]]:
    """A system prompt, then user / assistant turns, ending on a user message."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You plan trips."}]
    turn = 0
    while len(messages) < size - 1:
        messages.append({"role": "user", "content": f"Day {turn}: " + "where to eat " * 8})
        messages.append({"role": "assistant", "content": f"Plan {turn}: " + "try the fish " * 8})
        turn += 1
    messages.append({"role": "user", "content": "Which day had the fish?"})
    assert len(messages) == size
    return messages


@pytest.fixture
def trimmer(sqlite_url: str) -> Iterator[Trimmer]:
    # max_prompt_tokens forces a synchronous fold, so the very first call is trimmed.
    with Trimmer(
        sqlite_url,
        keep_last=6,
        fold_every=2,
        summarizer="extractive",
        max_prompt_tokens=1500,
        max_tokens=300,
        background=False,
    ) as instance:
        yield instance


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    reply = Reply("Day 3 had the fish", prompt_tokens=321, completion_tokens=6, cached_tokens=7)
    with FakeOpenAI(default=lambda _body: reply) as running:
        yield running


def sync_client(trimmer: Trimmer, server: FakeOpenAI) -> openai.OpenAI:
    return trimmer.wrap(openai.OpenAI(base_url=server.base_url, api_key="k"), governor=False)


def async_client(trimmer: Trimmer, server: FakeOpenAI) -> openai.AsyncOpenAI:
    return trimmer.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"), governor=False)


def usage_rows(trimmer: Trimmer) -> list[Any]:
    with trimmer._db.engine.connect() as connection:
        return list(connection.execute(select(USAGE).order_by(USAGE.c.request_id)))


def assert_trimmed_chat(sent: dict[str, Any], param: str = "max_tokens") -> None:
    assert len(sent["messages"]) < 15, f"sent {len(sent['messages'])} of {HISTORY} messages"
    assert sent["messages"][1]["content"].startswith("Summary of the earlier conversation")
    assert sent["messages"][-1]["content"] == "Which day had the fish?"
    assert sent[param] == 300


def assert_trimmed_responses(sent: dict[str, Any]) -> None:
    assert len(sent["input"]) < 15, f"sent {len(sent['input'])} of {HISTORY - 1} items"
    assert sent["instructions"] == "You plan trips."
    assert sent["input"][0]["content"].startswith("Summary of the earlier conversation")
    assert sent["input"][-1] == {"role": "user", "content": "Which day had the fish?"}
    assert sent["max_output_tokens"] == 300


@pytest.mark.parametrize(
    "unset",
    [
        {"max_tokens": openai.omit},
        {"max_tokens": openai.NOT_GIVEN},
        {"max_tokens": None},
        {"max_completion_tokens": openai.omit},
        {"max_completion_tokens": None, "max_tokens": openai.NOT_GIVEN},
    ],
    ids=["omit", "NOT_GIVEN", "None", "completion-omit", "completion-None"],
)
def test_unset_reply_caps_mean_not_set(
    trimmer: Trimmer, server: FakeOpenAI, unset: dict[str, Any]
) -> None:
    wrapped = sync_client(trimmer, server)
    response = wrapped.chat.completions.create(model="gpt-4o", messages=history(), **unset)
    assert isinstance(response, ChatCompletion)
    assert_trimmed_chat(server.requests[-1])
    assert "max_completion_tokens" not in server.requests[-1]


async def test_async_omit_is_not_set(trimmer: Trimmer, server: FakeOpenAI) -> None:
    async with async_client(trimmer, server) as wrapped:
        await wrapped.chat.completions.create(
            model="gpt-4o", messages=history(), max_tokens=openai.omit, tools=openai.omit
        )
    assert_trimmed_chat(server.requests[-1])
    assert "tools" not in server.requests[-1]


def test_the_wrapped_client_is_an_openai_client(trimmer: Trimmer, server: FakeOpenAI) -> None:
    plain = openai.OpenAI(base_url=server.base_url, api_key="k")
    wrapped = trimmer.wrap(plain)
    assert isinstance(wrapped, openai.OpenAI)
    assert type(wrapped.chat.completions) is type(plain.chat.completions)
    plain.chat.completions.create(model="gpt-4o", messages=history())
    assert len(server.requests[-1]["messages"]) == HISTORY  # the original stays untouched


async def test_the_wrapped_async_client_is_an_async_openai_client(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    async with async_client(trimmer, server) as wrapped:
        assert isinstance(wrapped, openai.AsyncOpenAI)
        assert not isinstance(wrapped, openai.OpenAI)
        async with wrapped.with_options(timeout=3) as copied:
            await copied.chat.completions.create(model="gpt-4o", messages=history())
        assert_trimmed_chat(server.requests[-1])


def test_with_options_and_copy_return_wrapped_clients(trimmer: Trimmer, server: FakeOpenAI) -> None:
    wrapped = sync_client(trimmer, server)
    for copied in (wrapped.with_options(timeout=5, max_retries=1), wrapped.copy()):
        assert isinstance(copied, openai.OpenAI)
        assert type(copied) is type(wrapped)
        copied.chat.completions.create(model="gpt-4o", messages=history())
        assert_trimmed_chat(server.requests[-1])
    assert wrapped.with_options(timeout=5).timeout == 5


def test_with_raw_response_is_trimmed_and_raw(trimmer: Trimmer, server: FakeOpenAI) -> None:
    wrapped = sync_client(trimmer, server)
    raw = wrapped.chat.completions.with_raw_response.create(model="gpt-4o", messages=history())
    assert raw.headers["content-type"] == "application/json"
    assert isinstance(raw.parse(), ChatCompletion)
    assert_trimmed_chat(server.requests[-1])
    assert "x-stainless-raw-response" in server.headers[-1]
    [usage] = usage_rows(trimmer)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (321, 6, False)


def test_with_streaming_response_is_trimmed_and_raw(trimmer: Trimmer, server: FakeOpenAI) -> None:
    wrapped = sync_client(trimmer, server)
    with wrapped.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=history()
    ) as response:
        assert isinstance(response, openai.APIResponse)
        assert json.loads(b"".join(response.iter_bytes()))["object"] == "chat.completion"
        assert response.parse().choices[0].message.content == "Day 3 had the fish"
    assert_trimmed_chat(server.requests[-1])
    assert [row.prompt_tokens for row in usage_rows(trimmer)] == [321]


async def test_async_raw_and_streaming_responses(trimmer: Trimmer, server: FakeOpenAI) -> None:
    async with async_client(trimmer, server) as wrapped:
        raw = await wrapped.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=history()
        )
        assert isinstance(raw.parse(), ChatCompletion)
        assert_trimmed_chat(server.requests[-1])
        async with wrapped.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=history()
        ) as response:
            assert (await response.parse()).choices[0].message.content == "Day 3 had the fish"
    assert_trimmed_chat(server.requests[-1])
    assert len(usage_rows(trimmer)) == 2


class City(BaseModel):
    city: str


def test_parse_structured_outputs(trimmer: Trimmer, server: FakeOpenAI) -> None:
    server.enqueue(Reply('{"city": "Lisbon"}'))
    wrapped = sync_client(trimmer, server)
    parsed = wrapped.chat.completions.parse(
        model="gpt-4o", messages=history(), response_format=City
    )
    assert parsed.choices[0].message.parsed == City(city="Lisbon")
    sent = server.requests[-1]
    assert_trimmed_chat(sent)
    assert sent["response_format"]["type"] == "json_schema"


def test_chat_stream_helper(trimmer: Trimmer, server: FakeOpenAI) -> None:
    wrapped = sync_client(trimmer, server)
    with wrapped.chat.completions.stream(
        model="gpt-4o", messages=history(), stream_options={"include_usage": True}
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == "Day 3 had the fish"
    assert_trimmed_chat(server.requests[-1])
    [usage] = usage_rows(trimmer)
    assert (usage.prompt_tokens, usage.estimated) == (321, False)


def responses_history() -> tuple[str, list[dict[str, Any]]]:
    messages = history()
    return messages[0]["content"], messages[1:]


def test_responses_create(trimmer: Trimmer, server: FakeOpenAI) -> None:
    instructions, items = responses_history()
    wrapped = sync_client(trimmer, server)
    response = wrapped.responses.create(model="gpt-4o", instructions=instructions, input=items)
    assert isinstance(response, Response)
    assert response.output_text == "Day 3 had the fish"
    assert_trimmed_responses(server.requests[-1])
    [usage] = usage_rows(trimmer)
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (321, 7, 6)
    assert not usage.estimated


async def test_async_responses_create(trimmer: Trimmer, server: FakeOpenAI) -> None:
    instructions, items = responses_history()
    async with async_client(trimmer, server) as wrapped:
        response = await wrapped.responses.create(
            model="gpt-4o", instructions=instructions, input=items, max_output_tokens=None
        )
    assert response.output_text == "Day 3 had the fish"
    assert_trimmed_responses(server.requests[-1])
    assert [row.completion_tokens for row in usage_rows(trimmer)] == [6]


def test_responses_stream_and_raw(trimmer: Trimmer, server: FakeOpenAI) -> None:
    instructions, items = responses_history()
    wrapped = sync_client(trimmer, server)
    with wrapped.responses.stream(model="gpt-4o", instructions=instructions, input=items) as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        assert s.get_final_response().output_text == text == "Day 3 had the fish"
    assert_trimmed_responses(server.requests[-1])
    raw = wrapped.responses.with_raw_response.create(
        model="gpt-4o", instructions=instructions, input=items
    )
    assert raw.parse().output_text == "Day 3 had the fish"
    assert_trimmed_responses(server.requests[-1])
    assert [(row.prompt_tokens, row.estimated) for row in usage_rows(trimmer)] == [
        (321, False),
        (321, False),
    ]


async def test_async_responses_stream_and_parse(trimmer: Trimmer, server: FakeOpenAI) -> None:
    instructions, items = responses_history()
    async with async_client(trimmer, server) as wrapped:
        events = await wrapped.responses.create(
            model="gpt-4o", instructions=instructions, input=items, stream=True
        )
        kinds = [event.type async for event in events]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert_trimmed_responses(server.requests[-1])
        server.enqueue(Reply('{"city": "Porto"}', prompt_tokens=321))
        parsed = await wrapped.responses.parse(
            model="gpt-4o", instructions=instructions, input=items, text_format=City
        )
    assert parsed.output_parsed == City(city="Porto")
    assert_trimmed_responses(server.requests[-1])
    assert [row.prompt_tokens for row in usage_rows(trimmer)] == [321, 321]


def tool_history() -> list[dict[str, Any]]:
    """Responses items with reasoning and function calls all through the history."""
    items: list[dict[str, Any]] = []
    for turn in range(30):
        call = f"call_{turn}"
        items += [
            {"role": "user", "content": [{"type": "input_text", "text": f"Weather day {turn}?"}]},
            {"type": "reasoning", "id": f"rs_{turn}", "summary": [], "encrypted_content": "x"},
            {"type": "function_call", "call_id": call, "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": call, "output": "sunny " * 20},
            {
                "type": "message",
                "id": f"msg_{turn}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": f"Sunny {turn}", "annotations": []}],
            },
        ]
    return [*items, {"role": "user", "content": "And tomorrow?"}]


def test_responses_never_separate_a_call_from_its_output(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    items = tool_history()
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]
    wrapped = sync_client(trimmer, server)
    wrapped.responses.create(model="gpt-4o", input=items, tools=tools)
    sent = server.requests[-1]["input"]
    assert len(sent) < len(items) / 4
    assert sent[0]["content"].startswith("Summary of the earlier conversation")
    assert server.requests[-1]["tools"] == tools
    calls = [item["call_id"] for item in sent if item.get("type") == "function_call"]
    outputs = [item["call_id"] for item in sent if item.get("type") == "function_call_output"]
    assert calls and calls == outputs
    reasoning = [p for p, item in enumerate(sent) if item.get("type") == "reasoning"]
    assert reasoning
    for position in reasoning:  # still right before the call it belongs to
        assert sent[position + 1]["call_id"] == "call_" + sent[position]["id"][3:]
    verbatim = sent[1:]
    assert verbatim == items[-len(verbatim) :]  # kept items go back byte for byte


@pytest.mark.parametrize("state", [{"previous_response_id": "resp_1"}, {"conversation": "conv_1"}])
def test_server_side_state_passes_through_with_one_log_line(
    trimmer: Trimmer,
    server: FakeOpenAI,
    state: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_wrapped_client, "_logged", set())  # as in a fresh process
    wrapped = sync_client(trimmer, server)
    items = history()[1:]
    with caplog.at_level(logging.WARNING, logger="context_trimmer"):
        for _ in range(2):
            wrapped.responses.create(
                model="gpt-4o", input=items, extra_headers={"X-Conversation-Id": "c"}, **state
            )
    assert server.requests[-1] == {"model": "gpt-4o", "input": items, **state}
    assert "x-conversation-id" not in server.headers[-1]
    name = next(iter(state))
    lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(lines) == 1, lines
    assert "server-side state" in lines[0]
    assert usage_rows(trimmer) == []


def test_a_raw_stream_is_trimmed_and_its_prompt_recorded(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    wrapped = sync_client(trimmer, server)
    raw = wrapped.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=history(), stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices]
    assert "".join(pieces) == "Day 3 had the fish"
    assert_trimmed_chat(server.requests[-1])
    [usage] = usage_rows(trimmer)  # the raw stream is the caller's: the prompt is estimated
    assert usage.estimated and 0 < usage.prompt_tokens < 1500


def test_wrap_takes_an_openai_client(trimmer: Trimmer) -> None:
    with pytest.raises(ConfigurationError, match=r"openai\.OpenAI or openai\.AsyncOpenAI"):
        trimmer.wrap(object())  # type: ignore[type-var]


def test_responses_retry_a_429_and_raise_a_400(trimmer: Trimmer, server: FakeOpenAI) -> None:
    instructions, items = responses_history()
    wrapped = trimmer.wrap(
        openai.OpenAI(base_url=server.base_url, api_key="k"),
        retry=RetryPolicy(max_retries=2, base=0.01, cap=0.02),
    )
    server.enqueue(Reply(status=429, headers={"retry-after-ms": "10"}))
    answer = wrapped.responses.create(model="gpt-4o", instructions=instructions, input=items)
    assert answer.output_text == "Day 3 had the fish"
    assert server.statuses[429] == 1 and len(server.requests) == 2
    for sent in server.requests:  # the retry sends the same trimmed request
        assert_trimmed_responses(sent)
    server.enqueue(Reply(status=400, error="bad input"))
    with pytest.raises(openai.BadRequestError, match="bad input"):
        wrapped.responses.with_raw_response.create(
            model="gpt-4o", instructions=instructions, input=items
        )
    assert len(server.requests) == 3  # a 400 is not retried
    with trimmer._db.engine.connect() as connection:
        outcomes = [row.outcome for row in connection.execute(select(ATTEMPTS))]
    assert sorted(outcomes) == ["error", "ok"]
