"""The FastAPI example, driven by FastAPI's test client against the local OpenAI server."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai_server import FakeOpenAI, Reply

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_chat.py"


@pytest.fixture
def app_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, FakeOpenAI]]:
    with FakeOpenAI(default=lambda _b: Reply("Hello from the model")) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("CONTEXT_TRIMMER_DB", f"sqlite:///{tmp_path / 'app.db'}")
        spec = importlib.util.spec_from_file_location("fastapi_chat_example", EXAMPLE)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        with TestClient(module.app) as client:
            yield client, server
        del sys.modules[spec.name]


def conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are friendly."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Tell me about {turn}, " + "in detail " * 20})
        messages.append({"role": "assistant", "content": "It is " + "interesting " * 20})
    return [*messages, {"role": "user", "content": "Thanks!"}]


def test_chat_json_and_streaming(app_client: tuple[TestClient, FakeOpenAI]) -> None:
    client, server = app_client
    reply = client.post("/chat", json={"messages": conversation(1), "user": "ann"})
    assert reply.status_code == 200
    assert reply.json() == {"reply": "Hello from the model", "model": "gpt-4o"}
    body = {"messages": conversation(40), "user": "ann", "conversation_id": "c1"}
    with client.stream("POST", "/chat", json={**body, "stream": True}) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    deltas = [json.loads(event[6:])["delta"] for event in events[:-1]]
    assert "".join(deltas) == "Hello from the model" and events[-1] == "data: [DONE]"
    client.app.state.trimmer.wait_for_background(timeout=10)  # gpt-4o-mini summarized
    assert client.post("/chat", json=body).status_code == 200
    chats = [r for r in server.requests if r["model"] == "gpt-4o"]
    summaries = [r for r in server.requests if r["model"] == "gpt-4o-mini"]
    assert len(summaries) == 1
    assert len(chats[-1]["messages"]) < len(conversation(40))  # trimmed upstream
    assert "Hello from the model" in chats[-1]["messages"][1]["content"]  # the summary
    report = client.get("/savings").json()
    assert report["totals"]["requests"] == 3
    assert report["totals"]["saved_tokens"] > 0
    assert [row["group"] for row in report["rows"]] == ["ann"]


def test_bad_messages_are_a_400(app_client: tuple[TestClient, FakeOpenAI]) -> None:
    client, _server = app_client
    reply = client.post("/chat", json={"messages": [{"role": "robot", "content": "hi"}]})
    assert reply.status_code == 400
    assert "messages[0].role" in reply.json()["detail"]
