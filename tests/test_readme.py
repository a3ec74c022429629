"""The README's and the documentation's Python examples run as written (in reading
order: the README, then the docs pages in the site's navigation order, sharing names,
against the local OpenAI-compatible server), the README's set-up commands stay two, and
the README stays short."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MKDOCS = ROOT / "mkdocs.yml"


def pages() -> list[Path]:
    """The docs pages in the order of mkdocs.yml's navigation."""
    names = re.findall(r":\s*([\w./-]+\.md)\s*$", MKDOCS.read_text(), re.MULTILINE)
    return [ROOT / "docs" / name for name in names]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)


def test_python_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [README, *pages()]
    assert sum(len(python_blocks(p)) for p in sources) >= 4
    namespace: dict[str, Any] = {}
    with FakeOpenAI(default=lambda _b: Reply("An answer.")) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        for source in sources:
            for block in python_blocks(source):
                exec(compile(block, str(source), "exec"), namespace)
        chats = [r for r in server.requests if r["model"] == "gpt-4o"]
        assert chats, "the wrapped client reached the server"
    namespace["trimmer"].close()


def test_every_docs_page_is_in_the_navigation() -> None:
    listed = {p.name for p in pages()}
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert on_disk == listed, f"not in mkdocs.yml's nav: {on_disk - listed}"


def test_exactly_two_setup_commands() -> None:
    setup = README.read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", setup, re.DOTALL)
    assert [c.strip() for c in commands] == [
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/context-trimmer "
        "replay examples/support-chat.jsonl --keep-last 6 --fold-every 4",
        "bash scripts/test",
    ]


def test_the_readme_stays_short_and_its_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
