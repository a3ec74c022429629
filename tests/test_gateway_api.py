"""The gateway beyond chat completions, over real HTTP: the Responses API trimmed (JSON
and SSE), every other /v1 endpoint passed through with the upstream key, a JSON 404,
/metrics in the Prometheus text format, JSON log lines with request ids, and the OpenAI
Agents SDK's default (Responses) model through the gateway."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import openai
import pytest
from gateway_server import ServeProcess, ServerThread
from openai_server import FakeOpenAI, Reply
from test_gateway import ENVIRON, KEY_ENV, UPSTREAM_KEY, Gateway
from test_wrap_client import HISTORY, history

from context_trimmer._store.db import Database
from context_trimmer._store.keys import create_key
from context_trimmer.gateway import GatewayConfig, create_app

CONFIG = GatewayConfig(
    key_cache_seconds=0,
    keep_last=6,
    fold_every=2,
    summarizer="extractive",
    max_tokens=300,
)


def answer(body: dict[str, Any]) -> Reply:
    return Reply("Day 3 had the fish", prompt_tokens=30, completion_tokens=6)


def running_gateway(sqlite_url: str, **settings: Any) -> Iterator[Gateway]:
    with FakeOpenAI(default=answer) as upstream:
        config = replace(
            CONFIG, db_url=sqlite_url, upstream=upstream.base_url, upstream_key_env=KEY_ENV
        )
        store = Database(sqlite_url)
        with ServerThread(create_app(replace(config, **settings), environ=ENVIRON)) as server:
            running = Gateway(server, upstream, store)
            yield running
            running.close()
        store.close()


@pytest.fixture
def gateway(sqlite_url: str) -> Iterator[Gateway]:
    yield from running_gateway(sqlite_url)


def items() -> list[dict[str, Any]]:
    """The 120-message history as Responses input (the system prompt as instructions)."""
    return history()[1:]


def responses_sent(gateway: Gateway) -> list[dict[str, Any]]:
    return [body for body in gateway.upstream.requests if "input" in body]


def warm(gateway: Gateway, conversation: str) -> None:
    """A first request stores the history; its fold runs in the background."""
    gateway.client().responses.create(
        model="gpt-4o",
        instructions="You plan trips.",
        input=items(),  # type: ignore[arg-type]
        extra_headers={"X-Conversation-Id": conversation},
    )
    gateway.trimmer.wait_for_background(timeout=20)


def assert_trimmed(sent: dict[str, Any]) -> None:
    assert len(sent["input"]) < 15, f"sent {len(sent['input'])} of {HISTORY - 1} items"
    assert sent["input"][0]["content"].startswith("Summary of the earlier conversation")
    assert sent["input"][-1] == {"role": "user", "content": "Which day had the fish?"}
    assert sent["instructions"] == "You plan trips."
    assert sent["max_output_tokens"] == 300


def test_responses_are_trimmed(gateway: Gateway) -> None:
    warm(gateway, "trip")
    reply = gateway.client().responses.create(
        model="gpt-4o",
        instructions="You plan trips.",
        input=items(),  # type: ignore[arg-type]
        extra_headers={"X-Conversation-Id": "trip"},
    )
    assert reply.output_text == "Day 3 had the fish"
    assert_trimmed(responses_sent(gateway)[-1])
    headers = gateway.upstream.headers[-1]
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert gateway.key not in json.dumps(gateway.upstream.headers)
    assert "x-conversation-id" not in headers


def test_responses_stream_is_trimmed(gateway: Gateway) -> None:
    warm(gateway, "trip-sse")
    stream = gateway.client().responses.create(
        model="gpt-4o",
        instructions="You plan trips.",
        input=items(),  # type: ignore[arg-type]
        stream=True,
        extra_headers={"X-Conversation-Id": "trip-sse"},
    )
    events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Day 3 had the fish"
    assert events[-1].type == "response.completed"
    sent = responses_sent(gateway)[-1]
    assert sent["stream"] is True
    assert_trimmed(sent)


def test_server_side_state_passes_through_untouched(gateway: Gateway) -> None:
    given = [{"role": "user", "content": "And on day 4?"}]
    first = gateway.client().responses.create(model="gpt-4o", input="Plan day 3.")
    gateway.client().responses.create(
        model="gpt-4o",
        previous_response_id=first.id,  # the caller's own stored response
        input=given,  # type: ignore[arg-type]
    )
    assert gateway.upstream.requests[-1] == {
        "model": "gpt-4o",
        "previous_response_id": first.id,
        "input": given,
    }


def test_responses_errors_are_openai_json(gateway: Gateway) -> None:
    no_model = httpx.post(
        f"{gateway.url}/responses",
        json={"input": "hi"},
        headers={"authorization": f"Bearer {gateway.key}"},
    )
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"
    with pytest.raises(openai.AuthenticationError):
        gateway.client("ctk-wrong").responses.create(model="gpt-4o", input="hi")
    gateway.upstream.enqueue(Reply(status=404, error="The model `nope` does not exist"))
    with pytest.raises(openai.NotFoundError) as missing:
        gateway.client().responses.create(model="nope", input="hi")
    assert "does not exist" in missing.value.message


def test_embeddings_pass_through_with_the_upstream_key(gateway: Gateway) -> None:
    result = gateway.client().embeddings.create(
        model="text-embedding-3-small",
        input=["one two", "three"],
        extra_headers={"X-User-Id": "bob"},
    )
    assert [d.embedding for d in result.data] == [[7.0, 0.5, -0.25], [5.0, 0.5, -0.25]]
    assert result.usage.prompt_tokens == 3
    body, headers = gateway.upstream.embeddings[-1]
    assert body["input"] == ["one two", "three"]
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert gateway.key not in json.dumps(headers)
    assert "x-user-id" not in headers
    with pytest.raises(openai.AuthenticationError):
        gateway.client("ctk-wrong").embeddings.create(model="m", input="x")
    assert len(gateway.upstream.embeddings) == 1  # the refused call never left


def test_files_upload_and_download_stream_through(gateway: Gateway) -> None:
    data = b"".join(b'{"line": %d}\n' % n for n in range(5000))
    client = gateway.client()
    uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data)
    assert gateway.upstream.files[uploaded.id]["data"] == data
    assert client.files.content(uploaded.id).content == data
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.content("file-nope")
    assert "No such object" in missing.value.message


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("POST", "/v2/chat/completions"), ("DELETE", "/")],
)
def test_unknown_paths_are_json_404s(gateway: Gateway, method: str, path: str) -> None:
    root = gateway.url.removesuffix("/v1")
    response = httpx.request(method, root + path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert path in error["message"] and error["code"] == "unknown_url"


def parse_metrics(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[Any]], float]]:
    """The ``# TYPE`` of each family, and each sample's value by name and labels."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[Any]], float] = {}
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            found = sample.match(line)
            assert found, f"not a sample: {line!r}"
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
            samples[(found.group(1), labels)] = float(found.group(3))
    return types, samples


def total(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def test_metrics_count_what_was_served(gateway: Gateway) -> None:
    client = gateway.client()
    for turn in range(3):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"hello {turn}"}]
        )
    first = client.responses.create(model="gpt-4o-mini", input="hi")
    client.embeddings.create(model="text-embedding-3-small", input="x")
    client.responses.create(model="gpt-4o", previous_response_id=first.id, input="more")
    gateway.upstream.enqueue(Reply(status=400, error="bad"))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    gateway.trimmer.wait_for_background(timeout=20)
    scrape = httpx.get(
        gateway.url.removesuffix("/v1") + "/metrics",
        headers={"authorization": f"Bearer {gateway.admin}"},
    )
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_metrics(scrape.text)
    assert types["context_trimmer_http_requests_total"] == "counter"
    assert types["context_trimmer_http_request_duration_seconds"] == "histogram"
    assert types["context_trimmer_store_up"] == "gauge"
    requests = "context_trimmer_http_requests_total"
    chat = {"endpoint": "chat/completions", "model": "gpt-4o", "user": "acme"}
    assert total(samples, requests, status="200", **chat) == 3
    assert total(samples, requests, status="400", **chat) == 1
    assert total(samples, requests, endpoint="responses", model="gpt-4o-mini", status="200") == 1
    assert total(samples, requests, endpoint="responses", status="200") == 2
    assert total(samples, requests, endpoint="embeddings", user="acme") == 1
    latency = "context_trimmer_http_request_duration_seconds"
    assert total(samples, latency + "_count", endpoint="chat/completions") == 4
    assert total(samples, latency + "_bucket", endpoint="chat/completions", le="+Inf") == 4
    passthroughs = "context_trimmer_passthrough_requests_total"
    assert total(samples, passthroughs, endpoint="embeddings") == 1
    assert total(samples, passthroughs, endpoint="responses") == 1
    assert total(samples, "context_trimmer_store_up") == 1
    given = total(samples, "context_trimmer_store_prompt_tokens_given_total", model="gpt-4o")
    sent = total(samples, "context_trimmer_store_prompt_tokens_sent_total", model="gpt-4o")
    assert given >= sent > 0
    assert total(samples, "context_trimmer_store_requests_total") == 5


def test_metrics_need_an_admin_key(gateway: Gateway) -> None:
    url = gateway.url.removesuffix("/v1") + "/metrics"
    assert httpx.get(url).status_code == 401
    refused = httpx.get(url, headers={"authorization": f"Bearer {gateway.key}"})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"


def test_metrics_public(sqlite_url: str) -> None:
    for running in running_gateway(sqlite_url, metrics_public=True):
        scrape = httpx.get(running.url.removesuffix("/v1") + "/metrics")
        assert scrape.status_code == 200
        assert "# TYPE context_trimmer_http_requests_total counter" in scrape.text


def logged(serve: ServeProcess, text: str) -> str:
    """The server's output once ``text`` is in it (the access line is written after the
    answer's last byte, so it may follow the answer by a moment)."""
    deadline = time.monotonic() + 30
    while text not in serve.output and time.monotonic() < deadline:
        time.sleep(0.02)
    return serve.output


def test_json_logs_carry_the_request_id(sqlite_url: str) -> None:
    with FakeOpenAI(default=answer) as upstream:
        store = Database(sqlite_url)
        key, _ = create_key(store, "acme")
        store.close()
        environ = {**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY}
        options = ["--db", sqlite_url, "--upstream", upstream.base_url, "--log-format", "json"]
        options += ["--summarizer", "extractive"]
        with ServeProcess(*options, env=environ) as serve:
            client = openai.OpenAI(base_url=serve.base_url, api_key=key, max_retries=0)
            raw = client.embeddings.with_raw_response.create(model="m", input="x")
            request_id = raw.headers["x-gateway-request-id"]
            client.close()
            output = logged(serve, request_id)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == request_id]
    assert access, output
    assert access[-1]["path"] == "/v1/embeddings" and access[-1]["status"] == 200
    assert access[-1]["logger"] == "context_trimmer.access" and access[-1]["user"] == "acme"


async def test_agents_sdk_default_model_through_the_gateway(gateway: Gateway) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)  # traces would be exported to OpenAI
    messages = history()
    client = openai.AsyncOpenAI(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    model = agents.OpenAIResponsesModel(model="gpt-4o", openai_client=client)
    agent = agents.Agent(name="planner", instructions=messages[0]["content"], model=model)
    first = await agents.Runner.run(agent, input=messages[1:])
    assert first.final_output == "Day 3 had the fish"
    gateway.trimmer.wait_for_background(timeout=20)
    await agents.Runner.run(agent, input=messages[1:])
    await client.close()
    sent = responses_sent(gateway)[-1]
    assert len(sent["input"]) < 15, f"sent {len(sent['input'])} of {HISTORY - 1} items"
    assert sent["instructions"] == "You plan trips."
    assert sent["max_output_tokens"] == 300
