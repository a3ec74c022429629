"""The gateway relays the upstream's answers as bytes, over real HTTP: a stream reaches
the client exactly as the upstream wrote it (no re-serialising), a JSON answer too, and
each is still recorded: the usage the upstream reported, or, for a stream cut mid-event
or failing in-band, the usage so far, estimated, with how it ended."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import test_gateway_faults
from openai_server import Reply
from sqlalchemy import select
from test_gateway_faults import ATTEMPTS, USAGE, Running, attempts, chat_body, until

running_gateway = test_gateway_faults.running_gateway  # the fixture, shared

CHUNK = (
    '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024",'
    '"choices":[{"index":0,"delta":{"content":"h\\u00e9llo there"},"finish_reason":null}],'
    '"vendor":{"kept": [1, 2.50]}}'
)
"""A chunk the SDK would re-serialise differently: escapes, spacing, 2.50, a field it
does not know."""
USAGE_CHUNK = (
    '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024",'
    '"choices":[],"usage":{"prompt_tokens":123,"completion_tokens":7,"total_tokens":130}}'
)


def sse(*events: str) -> bytes:
    return b"".join(f"data: {event}\n\n".encode() for event in events)


def stream(gateway: Running, usage: bool = True) -> bytes:
    """The streamed answer's bytes (``usage``: the client asks for the usage chunk)."""
    options = {"stream_options": {"include_usage": True}} if usage else {}
    with httpx.stream(
        "POST",
        f"{gateway.url}/chat/completions",
        content=chat_body(stream=True, **options),
        headers={"authorization": f"Bearer {gateway.key}", "content-type": "application/json"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return response.read()


def usage_rows(gateway: Running) -> list[Any]:
    with gateway.store.engine.connect() as connection:
        return list(
            connection.execute(
                select(
                    ATTEMPTS.c.outcome,
                    USAGE.c.model,
                    USAGE.c.prompt_tokens,
                    USAGE.c.completion_tokens,
                    USAGE.c.estimated,
                ).join(USAGE, USAGE.c.request_id == ATTEMPTS.c.request_id)
            )
        )


def test_a_stream_reaches_the_client_byte_for_byte_and_its_usage_is_recorded(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    written = b": keep-alive\n\n" + sse(CHUNK, USAGE_CHUNK, "[DONE]")
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=written))
    assert stream(gateway) == written
    until(lambda: len(usage_rows(gateway)) == 1)
    assert usage_rows(gateway) == [("ok", "gpt-4o-2024", 123, 7, False)]


def test_usage_the_client_did_not_ask_for_is_recorded_and_not_relayed(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    """Asked for on the client's behalf: the usage chunk and every chunk's
    ``"usage":null`` are taken out, the rest of the bytes relayed as written."""
    with_null = CHUNK[:-1] + ',"usage":null}'
    written = sse(with_null, USAGE_CHUNK, "[DONE]")
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=written))
    assert stream(gateway, usage=False) == sse(CHUNK, "[DONE]")
    assert gateway.upstream.requests[-1]["stream_options"] == {"include_usage": True}
    until(lambda: len(usage_rows(gateway)) == 1)
    assert usage_rows(gateway) == [("ok", "gpt-4o-2024", 123, 7, False)]


def test_a_json_answer_reaches_the_client_as_the_upstream_wrote_it(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    written = (
        b'{"id": "c2", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024",'
        b' "choices": [{"index": 0, "message": {"role": "assistant", "content": "h\\u00e9"},'
        b' "finish_reason": "stop"}], "usage": {"prompt_tokens": 40, "completion_tokens": 2,'
        b' "total_tokens": 42}, "vendor": 2.50}'
    )
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=written))
    answered = gateway.post(chat_body())
    assert answered.status_code == 200
    assert answered.headers["content-type"] == "application/json"
    assert answered.content == written
    assert usage_rows(gateway) == [("ok", "gpt-4o-2024", 40, 2, False)]


def test_a_stream_cut_mid_event_ends_that_event_then_says_so_and_is_recorded(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    whole = sse(CHUNK, CHUNK, USAGE_CHUNK, "[DONE]")
    cut = len(sse(CHUNK)) + 40  # inside the second event
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=whole, raw_cut=cut))
    received = stream(gateway)
    assert received.startswith(whole[:cut])
    events = received[cut:].split(b"\n\n")
    assert events[0] == b""  # the cut event is ended before the gateway's own
    assert json.loads(events[1].removeprefix(b"data: "))["error"]["type"] == "upstream_error"
    assert events[2:] == [b"data: [DONE]", b""]
    until(lambda: len(attempts(gateway)) == 1)
    ((outcome, model, prompt, completion, estimated),) = usage_rows(gateway)
    assert (outcome, model, estimated) == ("stream_error", "gpt-4o-2024", True)
    assert prompt > 0 and completion == 3  # "héllo there", the one whole event, counted


def test_an_error_event_from_the_upstream_is_relayed_and_the_stream_recorded_as_failed(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    failure = '{"error":{"message":"overloaded","type":"server_error","code":null}}'
    written = sse(CHUNK, failure, "[DONE]")
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=written))
    assert stream(gateway) == written
    until(lambda: len(attempts(gateway)) == 1)
    ((outcome, _model, _prompt, completion, estimated),) = usage_rows(gateway)
    assert (outcome, completion, estimated) == ("stream_error", 3, True)


def test_the_body_is_forwarded_as_it_came(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    """No SDK transform: every field reaches the upstream as sent, with the prepared
    messages and the reply cap."""
    gateway = running_gateway(sqlite_url)
    fields = {"temperature": 0.25, "logit_bias": {"50256": -100}, "metadata": {"a": "b"}}
    assert gateway.post(chat_body(stream=True, **fields)).status_code == 200
    sent = gateway.upstream.requests[-1]
    assert {name: sent[name] for name in fields} == fields
    assert sent["stream"] is True and sent["max_tokens"] > 0
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


RESPONSE_EVENTS = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"h\\u00e9llo there","sequence_number":0}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1,'
    b'"response":{"id":"r1","object":"response","model":"gpt-4o-2024","output":[],'
    b'"usage":{"input_tokens":55,"output_tokens":6,"total_tokens":61,'
    b'"input_tokens_details":{"cached_tokens":0}}}}\n\n'
)


def responses_stream(gateway: Running) -> bytes:
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.url}/responses",
        json=body,
        headers={"authorization": f"Bearer {gateway.key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        return response.read()


def test_a_responses_stream_is_relayed_byte_for_byte_and_recorded(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=RESPONSE_EVENTS))
    assert responses_stream(gateway) == RESPONSE_EVENTS
    until(lambda: len(usage_rows(gateway)) == 1)
    assert usage_rows(gateway) == [("ok", "gpt-4o-2024", 55, 6, False)]


def test_a_responses_stream_cut_short_ends_with_an_error_event_and_is_recorded(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    cut = RESPONSE_EVENTS.index(b"event: response.completed") + 30
    gateway = running_gateway(
        sqlite_url, reply=lambda _body: Reply(raw=RESPONSE_EVENTS, raw_cut=cut)
    )
    received = responses_stream(gateway)
    assert received.startswith(RESPONSE_EVENTS[:cut] + b"\n\nevent: error\ndata: ")
    assert json.loads(received.split(b"data: ")[-1])["code"] == "upstream_error"
    until(lambda: len(usage_rows(gateway)) == 1)
    ((outcome, _model, _prompt, completion, estimated),) = usage_rows(gateway)
    assert (outcome, completion, estimated) == ("stream_error", 3, True)
