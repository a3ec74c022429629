"""The README's Python examples run as written (in order, sharing names, against the
local OpenAI-compatible server), and its set-up commands stay two."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) >= 2
    namespace: dict[str, Any] = {}
    with FakeOpenAI(default=lambda _b: Reply("An answer.")) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
        chats = [r for r in server.requests if r["model"] == "gpt-4o"]
        assert chats, "the wrapped client reached the server"
    namespace["trimmer"].close()


def test_exactly_two_setup_commands() -> None:
    setup = README.read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", setup, re.DOTALL)
    assert [c.strip() for c in commands] == [
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/context-trimmer "
        "replay examples/support-chat.jsonl --keep-last 6 --fold-every 4",
        "bash scripts/test",
    ]
