"""LiteLLM: TrimmerHook's pre-call hook trims a 120-message request, and LiteLLM sends
it, for real, to the local server; the success callback records the usage."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import

import litellm
import pytest
from example_loader import load_example
from openai_server import FakeOpenAI, Reply
from sqlalchemy import select
from test_wrap_client import HISTORY, history

from context_trimmer import Trimmer
from context_trimmer._store.ledger import REQUESTS, USAGE
from context_trimmer.integrations.litellm import REQUEST_KEY, TrimmerHook

# LiteLLM's own pydantic models warn when first built; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning")


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


def rows(trimmer: Trimmer, table: Any) -> list[Any]:
    with trimmer._db.engine.connect() as connection:
        return list(connection.execute(select(table)))


class Key:
    user_id = "ann"


async def test_pre_call_hook_trims_and_success_records(
    trimmer: Trimmer, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = TrimmerHook(trimmer)
    data: dict[str, Any] = {
        "model": "openai/gpt-4o",
        "messages": history(),
        "max_tokens": None,
        "metadata": {"conversation_id": "trip-9"},
    }
    data = await hook.async_pre_call_hook(Key(), None, data, "acompletion")
    assert len(data["messages"]) < 15
    assert data["max_tokens"] == 300
    assert REQUEST_KEY in data["metadata"]
    monkeypatch.setattr(litellm, "callbacks", [hook])
    response = await litellm.acompletion(**data, api_base=server.base_url, api_key="k")
    assert response.choices[0].message.content == "Day 3 had the fish"
    sent = server.requests[-1]
    assert len(sent["messages"]) < 15, f"sent {len(sent['messages'])} of {HISTORY}"
    assert sent["max_tokens"] == 300
    [request] = rows(trimmer, REQUESTS)
    assert (request.conversation_id, request.user) == ("trip-9", "ann")
    for _ in range(100):  # LiteLLM runs success callbacks on a task of its own
        if rows(trimmer, USAGE):
            break
        await asyncio.sleep(0.05)
    [usage] = rows(trimmer, USAGE)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (321, 6, False)


async def test_other_calls_pass_untouched(trimmer: Trimmer) -> None:
    hook = TrimmerHook(trimmer)
    data = {"model": "text-embedding-3-small", "input": ["hi"]}
    assert await hook.async_pre_call_hook(Key(), None, dict(data), "aembedding") == data


async def test_the_example_callback(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXT_TRIMMER_DB", sqlite_url)
    hook = load_example("litellm/trimmer_callbacks").trimmer_hook
    try:
        data = {"model": "gpt-4o", "messages": history()}
        data = await hook.async_pre_call_hook(Key(), None, data, "completion")
        assert data["max_tokens"] == 1024
        assert data["messages"][-1]["content"] == "Which day had the fish?"
    finally:
        hook.trimmer.close()
