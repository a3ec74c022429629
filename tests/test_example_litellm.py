"""``examples/litellm`` starts with current LiteLLM exactly as its docstring says, and the
proxy trims: a real ``litellm --config config.yaml`` process in front of the local
OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply
from sqlalchemy import create_engine, func, select

from context_trimmer._store.ledger import REQUESTS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "litellm" / "trimmer_callbacks.py"
LITELLM = Path(sys.executable).with_name("litellm")


def start_command() -> str:
    """The start command as the example's docstring gives it."""
    [line] = [ln.strip() for ln in EXAMPLE.read_text().splitlines() if "litellm --config" in ln]
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(port: int, messages: list[dict[str, Any]]) -> dict[str, Any]:
    body = json.dumps({"model": "gpt-4o", "messages": messages}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"authorization": "Bearer sk-choose-one", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return dict(json.loads(answer.read()))


@pytest.mark.skipif(not LITELLM.exists(), reason="litellm[proxy] is not installed")
def test_the_litellm_example_starts_as_written_and_trims(tmp_path: Path) -> None:
    command = start_command()
    assert command.startswith("cd examples/litellm && ")
    db = tmp_path / "proxy.db"
    port = free_port()
    with FakeOpenAI(default=lambda _body: Reply("Noted.")) as server:
        environ = {
            **os.environ,
            "PATH": f"{LITELLM.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OPENAI_API_KEY": "sk-upstream",
            "OPENAI_BASE_URL": server.base_url,
            "CONTEXT_TRIMMER_DB": f"sqlite:///{db}",
        }
        log = (tmp_path / "litellm.log").open("w")
        proxy = subprocess.Popen(
            ["bash", "-c", f"{command} --port {port}"],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(port, proxy, tmp_path / "litellm.log")
            messages: list[dict[str, Any]] = []
            for turn in range(20):
                note = f"Turn {turn}: please note item {turn}, " + "a line of detail, " * 12
                messages.append({"role": "user", "content": note})
                answer = post(port, messages)
                messages.append(answer["choices"][0]["message"])
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
            log.close()
        chats = [r for r in server.requests if r.get("model") == "gpt-4o"]
    assert len(chats) == 20
    assert len(chats[-1]["messages"]) < len(messages) // 2, "the proxy sent the history untrimmed"
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(REQUESTS)).scalar() == 20
    engine.dispose()


def _wait_for(port: int, proxy: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180  # the proxy takes 10-40 s to import and start
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            pytest.fail(f"litellm exited {proxy.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"litellm did not start within 180 s:\n{log.read_text()[-3000:]}")
