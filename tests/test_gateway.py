"""The gateway, driven by the real openai SDK, forwarding to the local test server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from gateway_server import ServerThread
from openai.types.chat import ChatCompletion
from openai_server import FakeOpenAI, Reply
from sqlalchemy import func, select

from context_trimmer._db import Database
from context_trimmer._history import MESSAGES
from context_trimmer._keys import create_key, revoke_key
from context_trimmer.cli import main
from context_trimmer.gateway import GatewayConfig, create_app

UPSTREAM_KEY = "upstream-secret"


def upstream_answer(body: dict[str, Any]) -> Reply:
    if body.get("model") == "no-such-model":
        return Reply(status=404, error="The model `no-such-model` does not exist")
    return Reply("Gateway says hi", prompt_tokens=30, completion_tokens=4)


class Gateway:
    """A running gateway, its upstream, and keys for a tenant and an admin."""

    def __init__(self, server: ServerThread, upstream: FakeOpenAI, store: Database):
        self.server, self.upstream, self.store = server, upstream, store
        self.key, _ = create_key(store, "acme")
        self.admin, _ = create_key(store, "ops", admin=True)
        self.clients: list[openai.OpenAI] = []

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def trimmer(self) -> Any:
        return self.server.server.config.app.state.trimmer

    def client(self, key: str | None = None, **options: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url, api_key=key or self.key, max_retries=0, **options)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def gateway(db_url: str) -> Iterator[Gateway]:
    with FakeOpenAI(default=upstream_answer) as upstream:
        config = GatewayConfig(
            db_url=db_url,
            upstream=upstream.base_url,
            upstream_api_key=UPSTREAM_KEY,
            max_body_bytes=200_000,
            key_cache_seconds=0,
            trimmer={"keep_last": 4, "fold_every": 2, "summarizer": "extractive"},
        )
        store = Database(db_url)
        with ServerThread(create_app(config)) as server:
            running = Gateway(server, upstream, store)
            yield running
            running.close()
        store.close()


def conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are helpful."}]
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"Question {turn}: " + "tell me more " * 15},
            {"role": "assistant", "content": f"Answer {turn}: " + "here it is " * 15},
        ]
    return [*messages, {"role": "user", "content": "Summarise please."}]


def test_sdk_through_the_gateway_is_trimmed_upstream(gateway: Gateway) -> None:
    client = gateway.client()
    messages = conversation(10)
    first = client.chat.completions.create(
        model="gpt-4o", messages=messages, extra_headers={"X-Conversation-Id": "c1"}
    )
    assert isinstance(first, ChatCompletion)
    assert first.choices[0].message.content == "Gateway says hi"
    gateway.trimmer.wait_for_background(timeout=10)
    client.chat.completions.create(model="gpt-4o", messages=messages)
    sent = gateway.upstream.requests[-1]["messages"]
    assert len(sent) < len(messages)
    assert sent[1]["content"].startswith("Summary of the earlier conversation")
    assert gateway.upstream.headers[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert gateway.key not in json.dumps(gateway.upstream.headers)


def test_streaming_sync_and_async(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="gpt-4o",
        messages=conversation(1),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Gateway says hi"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

    async def run_async() -> str:
        async_client = openai.AsyncOpenAI(base_url=gateway.url, api_key=gateway.key)
        async_stream = await async_client.chat.completions.create(
            model="gpt-4o", messages=conversation(2), stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in async_stream if c.choices])
        reply = await async_client.chat.completions.create(model="gpt-4o", messages=conversation(3))
        await async_client.close()
        return text + "|" + (reply.choices[0].message.content or "")

    import asyncio

    assert asyncio.run(run_async()) == "Gateway says hi|Gateway says hi"


def test_keys_are_required_and_revocable(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as missing:
        gateway.client("ctk-not-a-key").chat.completions.create(
            model="gpt-4o", messages=conversation(0)
        )
    assert missing.value.status_code == 401
    assert missing.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    key, info = create_key(gateway.store, "temp")
    gateway.client(key).chat.completions.create(model="gpt-4o", messages=conversation(0))
    revoke_key(gateway.store, str(info.id))
    with pytest.raises(openai.AuthenticationError):
        gateway.client(key).chat.completions.create(model="gpt-4o", messages=conversation(0))
    assert httpx.get(f"{gateway.url}/models").status_code == 401


@pytest.mark.parametrize(
    ("content", "status", "expected"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (json.dumps({"model": "gpt-4o"}).encode(), 400, "missing required parameter: 'messages'"),
        (
            json.dumps(
                {"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}
            ).encode(),
            400,
            "messages[0].role",
        ),
        (
            json.dumps(
                {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 300_000}]}
            ).encode(),
            413,
            "request body over 200,000 bytes",
        ),
        (
            json.dumps(
                {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            404,
            "does not exist",
        ),
    ],
)
def test_bad_requests_get_clear_4xx(
    gateway: Gateway, content: bytes, status: int, expected: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/chat/completions",
        content=content,
        headers={"authorization": f"Bearer {gateway.key}", "content-type": "application/json"},
    )
    assert response.status_code == status
    assert expected in response.json()["error"]["message"]


def test_an_unreachable_upstream_is_a_502(db_url: str) -> None:
    from gateway_server import free_port

    config = GatewayConfig(
        db_url=db_url,
        upstream=f"http://127.0.0.1:{free_port()}/v1",
        upstream_api_key="k",
        trimmer={"summarizer": "extractive"},
        wrap={"retry": None},
    )
    store = Database(db_url)
    key, _ = create_key(store, "acme")
    with ServerThread(create_app(config)) as server:
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "gpt-4o", "messages": conversation(0)},
            headers={"authorization": f"Bearer {key}"},
            timeout=60,
        )
    store.close()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"


def test_models_pass_through_and_healthz(gateway: Gateway) -> None:
    models = gateway.client().models.list()
    assert [m.id for m in models.data] == ["gpt-4o"]
    assert httpx.get(gateway.url.removesuffix("/v1") + "/healthz").json()["status"] == "ok"


def test_savings_need_an_admin_key(gateway: Gateway) -> None:
    gateway.client().chat.completions.create(
        model="gpt-4o", messages=conversation(2), extra_headers={"X-User-Id": "end-user-7"}
    )
    denied = httpx.get(f"{gateway.url}/savings", headers={"authorization": f"Bearer {gateway.key}"})
    assert denied.status_code == 403
    report = httpx.get(
        f"{gateway.url}/savings?group_by=user", headers={"authorization": f"Bearer {gateway.admin}"}
    ).json()
    assert [row["group"] for row in report["rows"]] == ["acme:end-user-7"]
    assert report["totals"]["requests"] == 1


def test_tenants_do_not_share_conversations(gateway: Gateway) -> None:
    other, _ = create_key(gateway.store, "globex")
    messages = conversation(3)
    gateway.client().chat.completions.create(model="gpt-4o", messages=messages)
    gateway.client(other).chat.completions.create(model="gpt-4o", messages=messages)
    with gateway.store.engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(MESSAGES)).scalar()
    assert stored == 2 * len(messages)


def test_keys_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--user", "ann", "--db", url, "--json"])
    key = json.loads(created.stdout)["key"]
    assert key.startswith("ctk-")
    listed = runner.invoke(main, ["keys", "list", "--db", url])
    assert "ann" in listed.stdout and key not in listed.stdout
    assert runner.invoke(main, ["keys", "revoke", key[:12], "--db", url]).exit_code == 0
    assert "REVOKED" in runner.invoke(main, ["keys", "list", "--db", url]).stdout


def test_serve_needs_the_upstream_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--db", f"sqlite:///{tmp_path / 'g.db'}"], env={"OPENAI_API_KEY": ""}
    )
    assert result.exit_code == 1
    assert "set OPENAI_API_KEY to the upstream API key" in result.output
