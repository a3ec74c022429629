"""LangChain 1.x: an agent with TrimmerMiddleware sends a trimmed request, for real,
to the local server; a ChatOpenAI handed a wrapped client is trimmed too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import langchain_openai
import openai
import pytest
from example_loader import load_example
from langchain import agents
from openai_server import FakeOpenAI, Reply
from sqlalchemy import select
from test_wrap_client import HISTORY, history

from context_trimmer import Trimmer
from context_trimmer._store.ledger import REQUESTS, USAGE
from context_trimmer.integrations.langchain import TrimmerMiddleware


@pytest.fixture
def trimmer(sqlite_url: str) -> Iterator[Trimmer]:
    with Trimmer(
        sqlite_url,
        keep_last=6,
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


def model(server: FakeOpenAI, **options: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        model="gpt-4o", base_url=server.base_url, api_key="k", max_retries=0, **options
    )


def sent_cap(body: dict[str, Any]) -> Any:
    return body.get("max_completion_tokens", body.get("max_tokens"))


def rows(trimmer: Trimmer) -> tuple[list[Any], list[Any]]:
    with trimmer._db.engine.connect() as connection:
        return (
            list(connection.execute(select(REQUESTS))),
            list(connection.execute(select(USAGE))),
        )


def test_agent_middleware_sends_a_trimmed_request(trimmer: Trimmer, server: FakeOpenAI) -> None:
    messages = history()
    agent = agents.create_agent(
        model(server),
        tools=[],
        system_prompt=messages[0]["content"],
        middleware=[TrimmerMiddleware(trimmer)],
    )
    result = agent.invoke(
        {"messages": messages[1:]}, config={"configurable": {"thread_id": "trip-7"}}
    )
    assert result["messages"][-1].content == "Day 3 had the fish"
    sent = server.requests[-1]
    assert len(sent["messages"]) < 15, f"sent {len(sent['messages'])} of {HISTORY}"
    assert sent["messages"][0] == {"role": "system", "content": "You plan trips."}
    assert sent["messages"][1]["content"].startswith("Summary of the earlier conversation")
    assert sent["messages"][-1]["content"] == "Which day had the fish?"
    assert sent_cap(sent) == 300
    requests, usage = rows(trimmer)
    assert [r.conversation_id for r in requests] == ["trip-7"]
    assert [(u.prompt_tokens, u.cached_tokens, u.completion_tokens) for u in usage] == [(321, 7, 6)]


async def test_async_agent_middleware(trimmer: Trimmer, server: FakeOpenAI) -> None:
    messages = history()
    agent = agents.create_agent(
        model(server, max_tokens=50), tools=[], middleware=[TrimmerMiddleware(trimmer)]
    )
    await agent.ainvoke({"messages": messages})
    sent = server.requests[-1]
    assert len(sent["messages"]) < 15
    assert sent_cap(sent) == 50  # the model's own cap is kept when it is lower
    assert len(rows(trimmer)[1]) == 1


def test_chat_openai_over_a_wrapped_client(trimmer: Trimmer, server: FakeOpenAI) -> None:
    wrapped = trimmer.wrap(openai.OpenAI(base_url=server.base_url, api_key="k"), governor=False)
    chat = langchain_openai.ChatOpenAI(
        model="gpt-4o", base_url=server.base_url, api_key="k", client=wrapped.chat.completions
    )
    answer = chat.invoke([(m["role"], m["content"]) for m in history()])
    assert answer.content == "Day 3 had the fish"
    assert len(server.requests[-1]["messages"]) < 15
    assert sent_cap(server.requests[-1]) == 300


def test_the_example_runs(
    trimmer: Trimmer, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    example = load_example("langchain_agent")
    past = [(m["role"], m["content"]) for m in history()[1:-1]]
    assert example.ask(trimmer, past, "Which day had the fish?", "t") == "Day 3 had the fish"
    assert len(server.requests[-1]["messages"]) < 15
