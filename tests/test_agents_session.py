"""TrimmerSession: an Agents SDK Session stored by the trimmer, run for real by the SDK's
Runner (sync and async, with tool calls) against the local OpenAI-compatible server.

The Agents SDK needs openai>=3, so it is the ``agents`` extra: without it these skip.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from openai_server import FakeOpenAI, Reply
from sqlalchemy import select

from context_trimmer import Trimmer
from context_trimmer._store.history import MESSAGES

agents = pytest.importorskip("agents")
from context_trimmer.integrations.agents import TrimmerSession  # noqa: E402

FACT = "My locker code at the gym is 4417."
QUESTION = "What is my locker code at the gym?"


@pytest.fixture(autouse=True)
def no_tracing() -> Iterator[None]:
    agents.set_tracing_disabled(True)  # traces would be exported to OpenAI
    yield


@pytest.fixture
def trimmer(db_url: str) -> Iterator[Trimmer]:
    with Trimmer(db_url, keep_last=6, fold_every=4, summarizer="extractive") as made:
        yield made


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=lambda _body: Reply("Noted.", prompt_tokens=50)) as running:
        yield running


@pytest.fixture
async def client(server: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k") as made:
        yield made


def agent_for(client: Any, tools: Any = ()) -> Any:
    model = agents.OpenAIResponsesModel(model="gpt-4o", openai_client=client)
    return agents.Agent(name="helper", instructions="Be brief.", model=model, tools=list(tools))


def turn_text(turn: int) -> str:
    if turn == 3:
        return FACT
    return f"Turn {turn}: tell me one thing about tram line {turn} in Lisbon, please."


def stored_bodies(trimmer: Trimmer) -> list[str]:
    with trimmer._db.engine.connect() as connection:
        return [row.body for row in connection.execute(select(MESSAGES.c.body))]


def texts(items: list[Any]) -> str:
    return json.dumps(items)


async def test_thirty_turns_send_half_keep_all_and_recall_turn_three(
    trimmer: Trimmer, server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    agent = agent_for(client)
    for turn in range(1, 31):
        session = TrimmerSession("agent-chat", trimmer)  # a new object each run: the store
        await agents.Runner.run(agent, turn_text(turn), session=session)
        trimmer.wait_for_background(timeout=20)
    session = TrimmerSession("agent-chat", trimmer)
    config = agents.RunConfig(session_input_callback=session.recall)
    result = await agents.Runner.run(agent, QUESTION, session=session, run_config=config)
    assert result.final_output == "Noted."
    sent = server.requests[-1]["input"]
    [conversation] = trimmer.export(None, "agent-chat")
    stored = conversation["messages"]
    assert len(stored) == 62  # 31 questions, 31 answers
    assert len(sent) <= len(stored) / 2, f"sent {len(sent)} of {len(stored)} stored"
    assert "4417" in texts(sent)  # recalled for the question that asks for it
    assert [m["content"] for m in stored[::2]] == [*map(turn_text, range(1, 31)), QUESTION]
    assert all(m["content"] == "Noted." for m in stored[1::2])

    await session.clear_session()
    assert trimmer.export(None, "agent-chat") == []
    assert not any("4417" in body or "tram line" in body for body in stored_bodies(trimmer))
    assert await session.get_items() == []


async def test_without_the_callback_the_runner_reads_summary_and_window(
    trimmer: Trimmer, server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    agent = agent_for(client)
    session = TrimmerSession("plain", trimmer, user="ana")
    for turn in range(1, 31):
        await agents.Runner.run(agent, turn_text(turn), session=session)
        trimmer.wait_for_background(timeout=20)
    await agents.Runner.run(agent, QUESTION, session=session)
    sent = server.requests[-1]["input"]
    assert len(sent) <= 62 / 2
    assert sent[0]["content"].startswith("Summary of the earlier conversation")
    assert len(trimmer.export("ana", "plain")[0]["messages"]) == 62


def test_the_sync_runner_and_tool_calls(trimmer: Trimmer, server: FakeOpenAI) -> None:
    @agents.function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}, 24 C"

    def run(text: str) -> Any:
        """One sync run, on a client of its own that keeps no connection open (the
        loop run_sync makes ends with the run)."""
        close = {"Connection": "close"}
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", default_headers=close)
        agent = agent_for(client, [weather])

        def on_its_thread() -> Any:
            try:
                return agents.Runner.run_sync(agent, text, session=session)
            finally:  # run_sync leaves the thread's default loop open
                asyncio.get_event_loop_policy().get_event_loop().close()

        # Each on a thread of its own: run_sync shuts down its thread's default loop's
        # async generators after a run, and a second run on that loop warns.
        with ThreadPoolExecutor(1) as thread:
            return thread.submit(on_its_thread).result()

    session = TrimmerSession("tools", trimmer, user="bo")
    server.enqueue(Reply(calls=[("weather", '{"city": "Lisbon"}')]), Reply("Sunny, 24 C."))
    result = run("Weather in Lisbon?")
    assert result.final_output == "Sunny, 24 C."
    [conversation] = trimmer.export("bo", "tools")
    roles = [m["role"] for m in conversation["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    call = conversation["messages"][1]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Lisbon"}'}
    assert conversation["messages"][2]["content"] == "Sunny in Lisbon, 24 C"
    second = server.requests[-1]["input"]  # the tool's output went back to the model
    assert [item.get("type") for item in second][-2:] == ["function_call", "function_call_output"]
    run("And tomorrow?")
    items = server.requests[-1]["input"]
    assert [item.get("type", "message") for item in items] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ]


async def test_pop_item_corrects_the_newest_item(trimmer: Trimmer, server: FakeOpenAI) -> None:
    session = TrimmerSession("fix", trimmer)
    await session.add_items([{"role": "user", "content": "Book Tuesday."}])
    await session.add_items(
        [{"type": "message", "role": "assistant", "content": [_text("Booked Tuesday.")]}]
    )
    popped = await session.pop_item()
    assert popped == {"role": "assistant", "content": "Booked Tuesday."}
    assert await session.get_items() == [{"role": "user", "content": "Book Tuesday."}]
    assert await session.pop_item() == {"role": "user", "content": "Book Tuesday."}
    assert not any("Book" in body for body in stored_bodies(trimmer))  # emptied: erased
    assert await session.pop_item() is None
    assert await session.get_items() == []
    await session.add_items([{"role": "user", "content": "Book Wednesday."}])
    assert await session.get_items(limit=1) == [{"role": "user", "content": "Book Wednesday."}]


async def test_a_compaction_item_is_refused_with_what_to_do(trimmer: Trimmer) -> None:
    session = TrimmerSession("mixed", trimmer)
    with pytest.raises(Exception, match="OpenAIResponsesCompactionSession"):
        await session.add_items([{"type": "compaction", "encrypted_content": "x"}])
    assert trimmer.export(None, "mixed") == []


async def test_usage_is_recorded_through_the_wrapped_client(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    client = trimmer.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"))
    async with client:
        agent = agent_for(client)
        session = TrimmerSession("wrapped", trimmer, user="cy")
        with trimmer.conversation("wrapped", user="cy"):
            for turn in range(1, 4):
                await agents.Runner.run(agent, turn_text(turn), session=session)
    report = trimmer.report(group_by="conversation")
    [row] = [r for r in report.rows if r.group == "wrapped"]
    assert row.requests == 3
    assert row.usage_prompt_tokens == 150


def _text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def test_the_docs_python_examples_run() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "agents.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(docs), "exec"), {"__name__": "docs_agents"})


async def test_clearing_one_session_keeps_another_that_shares_its_start(trimmer: Trimmer) -> None:
    first, second = TrimmerSession("a", trimmer, user="di"), TrimmerSession("b", trimmer, user="di")
    hello = {"role": "user", "content": "Hello, I am Di."}  # the same first message: one row
    await first.add_items([hello, {"role": "assistant", "content": "Hi Di (a)."}])
    await second.add_items([hello, {"role": "assistant", "content": "Hi Di (b)."}])
    await first.clear_session()
    assert trimmer.export("di", "a") == []
    assert await second.get_items() == [hello, {"role": "assistant", "content": "Hi Di (b)."}]
    assert not any("(a)" in body for body in stored_bodies(trimmer))


async def test_clear_session_also_erases_what_pop_item_left(trimmer: Trimmer) -> None:
    session = TrimmerSession("redo", trimmer, user="ed")
    await session.add_items([{"role": "user", "content": "Book Tuesday."}])
    await session.add_items([{"role": "assistant", "content": "Booked Tuesday, room 12."}])
    await session.pop_item()
    await session.add_items([{"role": "assistant", "content": "Booked Wednesday."}])
    assert "room 12" in " ".join(stored_bodies(trimmer))  # a correction, not an erasure
    await session.clear_session()
    assert not any("Book" in body for body in stored_bodies(trimmer))
