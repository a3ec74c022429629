"""OpenAI's server-side compaction next to ours: a Responses request carrying
``context_management`` or a ``compaction`` item reaches the upstream exactly as sent,
through the wrapped client and the gateway (its opaque items are never dropped,
reordered or summarized), and a conversation mixing both keeps working."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai_server import FakeOpenAI, Reply
from test_gateway_api import Gateway, parse_metrics, running_gateway, total
from test_wrap_client import history

from context_trimmer import Trimmer

COMPACTION = {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAAA-opaque=="}


def compacted_input() -> list[dict[str, Any]]:
    """A history OpenAI compacted: its compaction item, then the turns since."""
    return [
        {"role": "user", "content": "Plan day 1 of my Lisbon trip."},
        dict(COMPACTION),
        {"role": "assistant", "content": "Day 1: Alfama and fado."},
        {"role": "user", "content": "And day 2?"},
    ]


@pytest.fixture
def trimmer(sqlite_url: str) -> Iterator[Trimmer]:
    with Trimmer(
        sqlite_url, keep_last=4, summarizer="extractive", max_prompt_tokens=1500, background=False
    ) as made:
        yield made


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=lambda _body: Reply("Belem", prompt_tokens=40)) as running:
        yield running


def test_a_compaction_item_reaches_the_upstream_intact(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    given = compacted_input()
    with trimmer.wrap(openai.OpenAI(base_url=server.base_url, api_key="k")) as client:
        answer = client.responses.create(model="gpt-4o", input=given)  # type: ignore[arg-type]
    assert answer.output_text == "Belem"
    assert server.requests[-1]["input"] == given


@pytest.mark.parametrize("how", ["argument", "extra_body"])
def test_context_management_is_not_trimmed(trimmer: Trimmer, server: FakeOpenAI, how: str) -> None:
    messages = history()
    given = [{"role": m["role"], "content": m["content"]} for m in messages[1:]]
    management = [{"type": "compaction", "compact_threshold": 1000}]
    asked: dict[str, Any] = (
        {"context_management": management}
        if how == "argument"
        else {"extra_body": {"context_management": management}}
    )
    with trimmer.wrap(openai.OpenAI(base_url=server.base_url, api_key="k")) as client:
        client.responses.create(model="gpt-4o", input=given, **asked)  # type: ignore[arg-type]
    sent = server.requests[-1]
    assert sent["input"] == given
    assert sent["context_management"] == management


async def test_mixing_our_trimming_and_compaction_keeps_working(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    plain = [{"role": m["role"], "content": m["content"]} for m in history()[1:]]
    client = trimmer.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"))
    async with client:
        await client.responses.create(model="gpt-4o", input=plain)  # type: ignore[arg-type]
        assert len(server.requests[-1]["input"]) < len(plain)  # ours trimmed it
        compacted = [*compacted_input(), {"role": "user", "content": "And day 3?"}]
        await client.responses.create(model="gpt-4o", input=compacted)  # type: ignore[arg-type]
        assert server.requests[-1]["input"] == compacted  # OpenAI's: untouched
        await client.responses.create(model="gpt-4o", input=plain)  # type: ignore[arg-type]
        assert len(server.requests[-1]["input"]) < len(plain)


@pytest.fixture
def gateway(sqlite_url: str) -> Iterator[Gateway]:
    yield from running_gateway(sqlite_url)


def test_the_gateway_relays_a_compaction_item_intact(gateway: Gateway) -> None:
    given = compacted_input()
    management = [{"type": "compaction", "compact_threshold": 1000}]
    gateway.client().responses.create(
        model="gpt-4o",
        input=given,  # type: ignore[arg-type]
        extra_body={"context_management": management},
    )
    sent = gateway.upstream.requests[-1]
    assert sent["input"] == given
    assert sent["context_management"] == management
    scrape = httpx.get(
        gateway.url.removesuffix("/v1") + "/metrics",
        headers={"authorization": f"Bearer {gateway.admin}"},
    )
    _types, samples = parse_metrics(scrape.text)
    passed = "context_trimmer_passthrough_requests_total"
    assert total(samples, passed, endpoint="responses") == 1  # counted, not trimmed
