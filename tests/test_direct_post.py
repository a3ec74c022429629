"""The gateway's upstream POST without the SDK's request path (``_client.direct_post``): it
sends what the SDK would send, and fails as the SDK fails."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import openai
import pytest
from openai_server import FakeOpenAI, Reply

from context_trimmer._client.direct_post import direct_sender

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def post_both(server: FakeOpenAI) -> tuple[dict[str, str], dict[str, str], Any]:
    """The headers of one request sent by the SDK and one sent directly, and the
    direct answer's JSON."""

    async def main() -> tuple[Any, Any]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="upstream-key")
        await client.post("/chat/completions", body=BODY, cast_to=object)
        send = direct_sender(client, "/chat/completions")
        assert send is not None
        answer = await send(BODY, {"X-Request-Tag": "t1", "x-stainless-raw-response": "stream"})
        content = await answer.http_response.aread()
        await client.close()
        return answer, json.loads(content)

    _answer, parsed = asyncio.run(main())
    return server.headers[0], server.headers[1], parsed


def test_it_sends_the_sdks_headers_and_the_body_as_given() -> None:
    with FakeOpenAI(lambda _body: Reply("Hello.")) as server:
        by_sdk, direct, parsed = post_both(server)
    assert server.requests[1] == BODY
    assert parsed["choices"][0]["message"]["content"] == "Hello."
    assert direct["authorization"] == "Bearer upstream-key"
    assert direct["x-request-tag"] == "t1"
    assert "x-stainless-raw-response" not in direct  # an instruction to the SDK only
    varying = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}
    for name, value in by_sdk.items():
        if name not in varying and name != "x-stainless-raw-response":
            assert direct.get(name) == value, name


def test_an_error_status_is_the_sdks_error_with_its_body() -> None:
    with FakeOpenAI(lambda _body: Reply("x", status=429)) as server:

        async def main() -> None:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k")
            send = direct_sender(client, "/chat/completions")
            assert send is not None
            with pytest.raises(openai.RateLimitError) as caught:
                await send(BODY, {})
            assert caught.value.status_code == 429
            assert caught.value.response.headers.get("content-type")
            await client.close()

        asyncio.run(main())


@pytest.mark.parametrize("transport", ["default", "aiohttp"])
def test_a_refused_connection_and_a_timeout_are_the_sdks_errors(transport: str) -> None:
    """A refused connection is a connection error, not "Request timed out.", with the
    aiohttp transport ``serve`` uses too (which raises ConnectTimeout for it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    def make(base_url: str, **options: Any) -> openai.AsyncOpenAI:
        if transport == "aiohttp":
            options["http_client"] = openai.DefaultAioHttpClient()
        return openai.AsyncOpenAI(base_url=base_url, api_key="k", **options)

    with FakeOpenAI(lambda _body: Reply("late", delay=3.0)) as server:

        async def main() -> None:
            refused = make(f"http://127.0.0.1:{closed_port}/v1")
            slow = make(server.base_url, timeout=0.3)
            cases = ((refused, openai.APIConnectionError), (slow, openai.APITimeoutError))
            for client, error in cases:
                send = direct_sender(client, "/chat/completions")
                assert send is not None
                with pytest.raises(error):
                    await send(BODY, {})
                await client.close()

        asyncio.run(main())


def test_clients_it_cannot_speak_for_keep_the_sdks_post() -> None:
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint="https://x.openai.azure.com", api_key="k", api_version="2024-06-01"
    )
    with_query = openai.AsyncOpenAI(api_key="k", default_query={"tenant": "a"})
    key_from_a_callable = openai.AsyncOpenAI(api_key=lambda: "k")  # refreshed by the SDK
    for client in (azure, with_query, key_from_a_callable):
        assert direct_sender(client, "/chat/completions") is None
