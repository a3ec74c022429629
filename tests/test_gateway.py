"""The gateway, driven by the real openai SDK, forwarding to the local test server."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import httpx
import openai
import pytest
from click.testing import CliRunner
from gateway_server import ServeProcess, ServerThread, free_port
from openai.types.chat import ChatCompletion
from openai_server import FakeOpenAI, Reply
from sqlalchemy import func, select

from context_trimmer import Trimmer, TrimmerOptions
from context_trimmer._exceptions import ConfigurationError
from context_trimmer._store.db import Database
from context_trimmer._store.history import MESSAGES
from context_trimmer._store.keys import create_key, revoke_key
from context_trimmer.cli import main
from context_trimmer.cli._gateway import GATEWAY_INSTALL
from context_trimmer.gateway import GatewayConfig, create_app
from context_trimmer.gateway._config import endpoints, flag

UPSTREAM_KEY = "upstream-secret"
KEY_ENV = "TEST_UPSTREAM_KEY"
ENVIRON = {KEY_ENV: UPSTREAM_KEY}


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
            upstream_key_env=KEY_ENV,
            max_body_bytes=200_000,
            key_cache_seconds=0,
            keep_last=4,
            fold_every=2,
            summarizer="extractive",
        )
        store = Database(db_url)
        with ServerThread(create_app(config, environ=ENVIRON)) as server:
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


def test_an_unreachable_upstream_is_a_502_and_logged_once(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # the LLM summarizer (the default) cannot reach its endpoint either: said once, at start-up
    config = GatewayConfig(
        db_url=db_url, upstream=f"http://127.0.0.1:{free_port()}/v1", upstream_key_env=KEY_ENV
    )
    store = Database(db_url)
    key, _ = create_key(store, "acme")
    with (
        caplog.at_level(logging.WARNING, "context_trimmer.gateway"),
        ServerThread(create_app(config, environ=ENVIRON)) as server,
    ):
        responses = [
            httpx.post(
                f"{server.base_url}/chat/completions",
                json={"model": "gpt-4o", "messages": conversation(turns)},
                headers={"authorization": f"Bearer {key}"},
                timeout=60,
            )
            for turns in (0, 1)
        ]
    store.close()
    assert [r.status_code for r in responses] == [502, 502]
    assert responses[0].json()["error"]["code"] == "upstream_unreachable"
    unreachable = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(unreachable) == 1
    assert config.upstream is not None and config.upstream in unreachable[0].getMessage()
    assert UPSTREAM_KEY not in caplog.text


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
    assert report["totals"]["over_window_requests"] == 0  # the honest baseline's count
    assert report["totals"]["baseline_tokens_as_given"] == report["totals"]["baseline_tokens"]


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
    header, row = listed.stdout.splitlines()
    assert header.split() == [
        "ID",
        "PREFIX",
        "USER",
        "ROLE",
        "CREATED",
        "(UTC)",
        "REVOKED",
        "(UTC)",
    ]
    assert row.split()[2:4] == ["ann", "user"] and row.endswith("-")
    assert runner.invoke(main, ["keys", "revoke", key[:12], "--db", url]).exit_code == 0
    revoked = runner.invoke(main, ["keys", "list", "--db", url]).stdout.splitlines()[1]
    assert not revoked.endswith("-")


def test_serve_needs_the_upstream_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--db", f"sqlite:///{tmp_path / 'g.db'}"], env={"OPENAI_API_KEY": ""}
    )
    assert result.exit_code == 1
    assert "set OPENAI_API_KEY to the upstream API key" in result.output


SUMMARY_MODEL = "gpt-4.1-mini"
SUMMARY_TEXT = "- The user asked numbered questions; the assistant answered each one."


def answer_with_summaries(body: dict[str, Any]) -> Reply:
    """A chat answer, or a summary when the summarizer's model is asked."""
    if body.get("model") == SUMMARY_MODEL:
        return Reply(SUMMARY_TEXT, prompt_tokens=400, completion_tokens=20)
    return upstream_answer(body)


def talk(client: openai.OpenAI, turns: int, after_each: Any = None) -> list[dict[str, str]]:
    """``turns`` turns of one conversation, each answer appended; the last messages sent."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are helpful."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: " + "tell me more " * 15})
        reply = client.chat.completions.create(
            model="gpt-4o", messages=messages, extra_headers={"X-Conversation-Id": "long"}
        )
        messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
        if after_each is not None:
            after_each()
    return messages[:-1]


def chat_requests(upstream: FakeOpenAI) -> list[dict[str, Any]]:
    return [r for r in upstream.requests if r.get("model") == "gpt-4o"]


def summary_calls(upstream: FakeOpenAI) -> list[int]:
    return [i for i, r in enumerate(upstream.requests) if r.get("model") == SUMMARY_MODEL]


def test_llm_summaries_go_to_the_upstream_and_trim(db_url: str) -> None:
    """The default summarizer is the upstream's model, called with the upstream's key."""
    with FakeOpenAI(default=answer_with_summaries) as upstream:
        config = GatewayConfig(
            db_url=db_url,
            upstream=upstream.base_url,
            upstream_key_env=KEY_ENV,
            summary_model=SUMMARY_MODEL,
        )
        store = Database(db_url)
        with ServerThread(create_app(config, environ=ENVIRON)) as server:
            running = Gateway(server, upstream, store)
            sent = talk(running.client(), 40, lambda: running.trimmer.wait_for_background(10))
            report = running.trimmer.report()
            running.close()
        store.close()
    calls = summary_calls(upstream)
    assert calls, "no summary call reached the upstream"
    assert {upstream.headers[i]["authorization"] for i in calls} == {f"Bearer {UPSTREAM_KEY}"}
    last = chat_requests(upstream)[-1]["messages"]
    assert len(sent) == 80
    assert len(last) <= len(sent) // 2
    assert any(SUMMARY_TEXT in str(m["content"]) for m in last)
    assert report.totals.summary_failures == 0 and report.totals.summaries >= 1


def test_a_summary_endpoint_gets_the_summaries_and_its_own_key_only(db_url: str) -> None:
    with (
        FakeOpenAI(default=answer_with_summaries) as upstream,
        FakeOpenAI(default=answer_with_summaries) as summaries,
    ):
        config = GatewayConfig(
            db_url=db_url,
            upstream=upstream.base_url,
            upstream_key_env=KEY_ENV,
            summary_model=SUMMARY_MODEL,
            summary_base_url=summaries.base_url,
            summary_key_env="SUMMARY_KEY",
            keep_last=4,
            fold_every=2,
            summary_share=None,  # a fixed budget: the due folds are not held for the floor
        )
        environ = {**ENVIRON, "SUMMARY_KEY": "summary-secret"}
        store = Database(db_url)
        with ServerThread(create_app(config, environ=environ)) as server:
            running = Gateway(server, upstream, store)
            talk(running.client(), 6, lambda: running.trimmer.wait_for_background(10))
            running.close()
        store.close()
    assert summary_calls(summaries) and not summary_calls(upstream)
    assert {h["authorization"] for h in summaries.headers} == {"Bearer summary-secret"}
    assert UPSTREAM_KEY not in json.dumps(summaries.headers)
    assert not chat_requests(summaries)


def test_serve_with_workers_prints_its_settings_and_summarizes_upstream(sqlite_url: str) -> None:
    """The real command, two worker processes: the configuration reaches them (flags and
    environment variables), the start-up lines name the key variable, never the key."""
    with FakeOpenAI(default=answer_with_summaries) as upstream:
        store = Database(sqlite_url)
        key, _ = create_key(store, "acme")
        store.close()
        environ = {
            **os.environ,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "CONTEXT_TRIMMER_FOLD_EVERY": "3",
            "CONTEXT_TRIMMER_SUMMARY_MODEL": SUMMARY_MODEL,
        }
        options = ["--db", sqlite_url, "--upstream", upstream.base_url, "--workers", "2"]
        options += ["--keep-last", "6", "--max-tokens", "333", "--user-tokens-per-day", "900000"]
        with ServeProcess(*options, env=environ) as serve:
            client = openai.OpenAI(base_url=serve.base_url, api_key=key, max_retries=0)
            sent = talk(client, 20)
            client.close()
            printed = " ".join(serve.output.split())
    chats = chat_requests(upstream)
    assert len(chats) == 20 and {r["max_tokens"] for r in chats} == {333}
    assert summary_calls(upstream)
    assert len(chats[-1]["messages"]) <= len(sent) // 2
    assert any(SUMMARY_TEXT in str(m["content"]) for m in chats[-1]["messages"])
    assert UPSTREAM_KEY not in printed and key not in printed
    for expected in (
        f"openai {SUMMARY_MODEL} at {upstream.base_url} with $OPENAI_API_KEY",
        "keep last / fold every 6 / 3 messages",
        "user tokens per day 900,000",
        "workers 2",
    ):
        assert expected in printed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_last": -1}, "--keep-last must be an integer >= 0, got -1"),
        ({"fold_every": "10"}, "--fold-every must be an integer >= 0, got '10'"),
        ({"summary_tokens": 0}, "--summary-tokens must be an integer >= 1"),
        ({"summary_share": 1.5}, "--summary-share must be a number in (0, 1]"),
        ({"max_tokens": True}, "--max-tokens must be an integer >= 1"),
        ({"workers": 0}, "--workers must be an integer >= 1"),
        ({"user_tokens_per_minute": 0}, "--user-tokens-per-minute must be an integer >= 1"),
        ({"key_cache_seconds": -1}, "--key-cache-seconds must be a number of seconds >= 0"),
        ({"summarizer": "gpt-4o"}, "--summarizer must be one of extractive, openai"),
        ({"system_prompt": "short"}, "--system-prompt must be one of safe, llm, off"),
        ({"summary_model": " "}, "--summary-model must be a non-empty string"),
        ({"upstream": "api.openai.com/v1"}, "--upstream must be an http(s) URL"),
        ({"db_url": ""}, "--db must be a non-empty string"),
        (
            {"summary_base_url": "http://127.0.0.1:9/v1"},
            "--summary-base-url needs --summary-key-env",
        ),
        (
            {"upstream_key_env": "sk-proj-0123456789abcdef"},
            "--upstream-key-env takes the name of an environment variable (such as "
            "OPENAI_API_KEY), not its value; got a 24-character value",
        ),
    ],
)
def test_config_errors_name_the_flag(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        GatewayConfig(**settings)
    assert message in str(raised.value)
    assert "0123456789abcdef" not in str(raised.value)


def test_config_travels_as_one_json_value_through_the_same_checks() -> None:
    config = GatewayConfig(
        upstream="http://127.0.0.1:9/v1", keep_last=6, summary_share=0.1, summarizer="openai"
    )
    assert GatewayConfig.from_json(config.to_json()) == config
    broken = json.loads(config.to_json()) | {"keep_last": -2}
    with pytest.raises(ConfigurationError, match="--keep-last must be an integer >= 0"):
        GatewayConfig.from_json(json.dumps(broken))
    with pytest.raises(ConfigurationError, match="unknown settings: keep_first"):
        GatewayConfig.from_json(json.dumps({"keep_first": 3}))
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        GatewayConfig.from_json("{keep_last: 3}")


def test_endpoints_follow_the_upstream_unless_told() -> None:
    environ = {"OPENAI_API_KEY": "k1", "OPENAI_BASE_URL": "http://10.0.0.5:8080/v1"}
    ends = endpoints(GatewayConfig(), environ)
    assert (ends.upstream_url, ends.summary_url) == ("http://10.0.0.5:8080/v1",) * 2
    assert (ends.summarizer, ends.summary_key) == ("openai", "k1")
    assert "k1" not in repr(ends)
    with pytest.raises(ConfigurationError, match="set SUMMARY_KEY to the API key for summaries"):
        endpoints(GatewayConfig(summary_key_env="SUMMARY_KEY"), environ)
    extractive = endpoints(GatewayConfig(summarizer="extractive", summary_key_env="NONE"), environ)
    assert not extractive.calls_a_model


def test_serve_flags_env_and_readme_match_the_config() -> None:
    serve = main.get_command(click.Context(main), "serve")
    assert serve is not None
    options = {p.name: p for p in serve.params if isinstance(p, click.Option)}
    readme = (Path(__file__).parent.parent / "docs" / "gateway.md").read_text("utf-8")
    for field in fields(GatewayConfig):
        option = options[field.name]
        assert option.opts[0] == flag(field.name) and option.opts[0] in readme
        if field.name != "db_url":
            assert option.envvar == f"CONTEXT_TRIMMER_{field.name.upper()}"
            assert option.default == field.default
    assert "pip install '.[gateway]'" in readme and "pip install '.[gateway]'" in GATEWAY_INSTALL


def test_the_gateway_trims_with_the_library_defaults_and_shares_can_be_turned_off() -> None:
    library = TrimmerOptions()
    config = GatewayConfig()
    for name in ("keep_last", "fold_every", "summary_tokens", "summary_share", "recall_tokens"):
        assert getattr(config, name) == getattr(library, name), name
    assert (config.recall_share, config.max_tokens) == (library.recall_share, library.max_tokens)
    serve = main.get_command(click.Context(main), "serve")
    assert serve is not None
    off = serve.make_context("serve", ["--summary-share", "off", "--recall-share", "OFF"])
    assert off.params["summary_share"] is None and off.params["recall_share"] is None
    with pytest.raises(click.BadParameter, match="'half': use a number in"):
        serve.make_context("serve", ["--recall-share", "half"])


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (["--keep-last", "-1"], {}, "--keep-last must be an integer >= 0, got -1"),
        ([], {"CONTEXT_TRIMMER_SUMMARY_SHARE": "2"}, "--summary-share must be a number in (0, 1]"),
        (["--recall-share", "0"], {}, "--recall-share must be a number in (0, 1], such as"),
        (["--summary-key-env", "SUMMARY_KEY"], {}, "set SUMMARY_KEY to the API key"),
    ],
)
def test_serve_reports_config_errors(
    tmp_path: Path, arguments: list[str], env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["serve", "--db", f"sqlite:///{tmp_path / 'g.db'}", *arguments],
        env={"OPENAI_API_KEY": UPSTREAM_KEY, **env},
    )
    assert result.exit_code == 1
    assert message in result.output and UPSTREAM_KEY not in result.output


def test_keys_from_python(sqlite_url: str) -> None:
    with Trimmer(sqlite_url, summarizer="extractive") as trimmer:
        key, info = trimmer.keys.create("acme", admin=True)
        assert trimmer.keys.authenticate(key) == info and info.admin
        assert [k.id for k in trimmer.keys.list()] == [info.id]
        assert trimmer.keys.authenticate(key + "x") is None
        assert trimmer.keys.revoke(str(info.id)) == 1
        assert trimmer.keys.authenticate(key) is None
