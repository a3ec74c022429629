"""The OpenAI Agents SDK over a wrapped AsyncOpenAI: its chat completions model (which
passes ``omit`` for unset arguments) and its default Responses model both send a
trimmed request for a 120-message history, for real, to the local server.

The Agents SDK needs openai>=3, so it is the ``agents`` extra, not a test dependency
(the suite also runs on openai 2.x): without it these tests skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from example_loader import EXAMPLES, load_example
from openai_server import FakeOpenAI, Reply
from sqlalchemy import select
from test_wrap_client import HISTORY, history

from context_trimmer import Trimmer
from context_trimmer._store.ledger import USAGE

agents = pytest.importorskip("agents")


@pytest.fixture(autouse=True)
def no_tracing() -> Iterator[None]:
    agents.set_tracing_disabled(True)  # traces would be exported to OpenAI
    yield


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
    reply = Reply("Day 3 had the fish", prompt_tokens=321, completion_tokens=6)
    with FakeOpenAI(default=lambda _body: reply) as running:
        yield running


def usage(trimmer: Trimmer) -> list[Any]:
    with trimmer._db.engine.connect() as connection:
        return list(connection.execute(select(USAGE)))


async def test_chat_completions_model(trimmer: Trimmer, server: FakeOpenAI) -> None:
    messages = history()
    async with trimmer.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k")) as client:
        model = agents.OpenAIChatCompletionsModel(model="gpt-4o", openai_client=client)
        agent = agents.Agent(name="planner", instructions=messages[0]["content"], model=model)
        result = await agents.Runner.run(agent, input=messages[1:])
    assert result.final_output == "Day 3 had the fish"
    sent = server.requests[-1]
    assert len(sent["messages"]) < 15, f"sent {len(sent['messages'])} of {HISTORY}"
    assert sent["messages"][1]["content"].startswith("Summary of the earlier conversation")
    assert sent["max_tokens"] == 300
    assert [row.prompt_tokens for row in usage(trimmer)] == [321]


async def test_responses_model(trimmer: Trimmer, server: FakeOpenAI) -> None:
    messages = history()
    async with trimmer.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k")) as client:
        model = agents.OpenAIResponsesModel(model="gpt-4o", openai_client=client)
        agent = agents.Agent(name="planner", instructions=messages[0]["content"], model=model)
        result = await agents.Runner.run(agent, input=messages[1:])
    assert result.final_output == "Day 3 had the fish"
    sent = server.requests[-1]
    assert len(sent["input"]) < 15, f"sent {len(sent['input'])} of {HISTORY - 1}"
    assert sent["instructions"] == "You plan trips."
    assert sent["max_output_tokens"] == 300
    assert [row.completion_tokens for row in usage(trimmer)] == [6]


async def test_the_example_runs(
    trimmer: Trimmer, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    example = load_example("agents_sdk")
    past = history()[1:-1]
    answer = await example.ask(trimmer, past, "Which day had the fish?", "trip-3")
    assert answer == "Day 3 had the fish"
    assert len(server.requests[-1]["input"]) < 15


class ProxyWatch:
    """A listener standing in for an HTTPS proxy: whatever connects to it (the SDK's
    trace exporter heading for api.openai.com, through ``HTTPS_PROXY``) is counted
    and cut off."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.socket.close()


def test_the_example_as_written_takes_no_tracing_detour(server: FakeOpenAI, tmp_path: Path) -> None:
    watch = ProxyWatch()
    proxy = {name: watch.url for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")}
    env = {
        **os.environ,
        **proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": "k",
        "CONTEXT_TRIMMER_DB": f"sqlite:///{tmp_path / 'store.db'}",
    }
    try:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "agents_sdk.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        watch.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Day 3 had the fish"
    assert watch.connections == 0, "the example sent traces towards api.openai.com"
    assert server.requests[-1]["input"][-1]["content"] == "Where should I eat in Lisbon tonight?"
