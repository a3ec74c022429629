"""System-prompt compression: protected spans and instructions survive, LLM rewrites are
checked, results are shared through SQL, savings are reported separately."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openai_server import FakeOpenAI, Reply
from sqlalchemy import select

from context_trimmer import PromptRewriter, Trimmer, compress_safe, count_tokens
from context_trimmer._text.compress import INSTRUCTION_WORDS, check_rewrite, protected_spans
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.system_prompt import COMPRESSIONS
from context_trimmer.cli import main

CORPUS = sorted((Path(__file__).parent / "prompts").glob("*.md"))
COUNT = counter_for("gpt-4o").text


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("**", "").replace("__", "")).strip()


def instruction_sentences(text: str) -> set[str]:
    sentences = re.split(r"(?<=[.!?])\s+|\n", text)
    words = re.compile(r"\b(" + "|".join(map(re.escape, INSTRUCTION_WORDS)) + r")\b", re.I)
    return {normalized(s) for s in sentences if words.search(s)}


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 30
    names = " ".join(path.stem for path in CORPUS)
    for kind in ("support", "coding", "rag", "json", "agent", "persona", "multilingual"):
        assert kind in names


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_safe_mode_keeps_every_protected_span_and_instruction(path: Path) -> None:
    original = path.read_text()
    compressed = compress_safe(original)
    for span in protected_spans(original):
        assert span in compressed, span
    kept = normalized(compressed)
    for sentence in instruction_sentences(original):
        assert sentence in kept, sentence
    assert COUNT(compressed) <= COUNT(original)
    assert compress_safe(original) == compressed  # same input, same output
    assert compress_safe(compressed) == compressed  # nothing left to remove


def test_safe_mode_removes_only_decoration() -> None:
    prompt = "\n".join(
        [
            "# **Rules**",
            "",
            "",
            "",
            "Be brief.   Be kind.   ",
            "-----",
            "Always cite sources.",
            "Always cite sources.",
            "Use **__bold__** sparingly.",
            'Say "hello   world" exactly.',
            "```",
            "code   stays    as is",
            "```",
            "{",
            '  "a":   1',
            "}",
            "KEEP:   this   line",
            "Visit https://x.example/a  now.",
        ]
    )
    assert compress_safe(prompt, protect=[r"^KEEP:"]) == "\n".join(
        [
            "# Rules",
            "",
            "Be brief. Be kind.",
            "Always cite sources.",
            "Use **bold** sparingly.",
            'Say "hello   world" exactly.',
            "```",
            "code   stays    as is",
            "```",
            "{",
            '  "a":   1',
            "}",
            "KEEP:   this   line",
            "Visit https://x.example/a now.",
        ]
    )


def test_placeholders_numbers_and_addresses_are_protected() -> None:
    prompt = "Hi  {name}  and {{ user.email }} , <var>  costs  $1,234.50 ; mail a@b.example ."
    spans = protected_spans(prompt)
    for span in ("{name}", "{{ user.email }}", "<var>", "1,234.50", "a@b.example"):
        assert span in spans
        assert span in compress_safe(prompt)


GOOD_PROMPT = (
    "You are Nova, the support assistant for Brightwave.\n\n\n"
    "Please note that you must never, ever ask for the full card number of the customer.\n"
    "Only the last 4 digits are allowed. Use the template {ticket_id} in every reply.\n"
    "It is very important that you always answer politely and in a friendly manner.\n"
)
GOOD_REWRITE = (
    "You are Nova, Brightwave support.\nYou must never ask for the full card number. "
    "Only the last 4 digits. Use {ticket_id} in every reply. Always answer politely."
)


def test_check_rewrite_accepts_a_faithful_shorter_rewrite() -> None:
    safe = compress_safe(GOOD_PROMPT)
    assert check_rewrite(GOOD_PROMPT, safe, GOOD_REWRITE, COUNT) is None


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        (GOOD_REWRITE.replace(" {ticket_id}", " the ticket id"), "drops a protected span"),
        (GOOD_REWRITE.replace("Brightwave", "the company"), "drops names: Brightwave"),
        (GOOD_REWRITE.replace("4 digits", "four digits"), "drops a protected span: '4'"),
        (GOOD_REWRITE.replace("must never", "should not"), "drops instruction words"),
        (GOOD_PROMPT + " Extra.", "not shorter"),
        ("   ", "empty"),
    ],
)
def test_check_rewrite_rejects_unfaithful_rewrites(rewrite: str, reason: str) -> None:
    verdict = check_rewrite(GOOD_PROMPT, compress_safe(GOOD_PROMPT), rewrite, COUNT)
    assert verdict is not None and reason in verdict


@pytest.fixture
def rewriter_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(
        default=lambda _b: Reply(GOOD_REWRITE, prompt_tokens=80, completion_tokens=30)
    ) as server:
        yield server


def llm_trimmer(url: str, server: FakeOpenAI) -> Trimmer:
    rewriter = PromptRewriter(base_url=server.base_url, api_key="k", max_retries=0)
    return Trimmer(
        url,
        summarizer="extractive",
        background=False,
        system_prompt="llm",
        prompt_rewriter=rewriter,
    )


def chat() -> list[dict[str, Any]]:
    return [{"role": "system", "content": GOOD_PROMPT}, {"role": "user", "content": "Hi"}]


def test_llm_mode_sends_safe_until_the_rewrite_is_ready(
    db_url: str, rewriter_server: FakeOpenAI
) -> None:
    with llm_trimmer(db_url, rewriter_server) as trimmer:
        first = trimmer.prepare(chat())
        assert first.messages[0]["content"] == compress_safe(GOOD_PROMPT)
        trimmer.wait_for_background(timeout=10)
        trimmer._system_prompts._checked.clear()  # skip the re-check interval
        second = trimmer.prepare(chat())
        assert second.messages[0]["content"] == GOOD_REWRITE
        assert second.prompt_tokens == count_tokens(second.messages)
        assert second.compression_saved_tokens == COUNT(GOOD_PROMPT) - COUNT(GOOD_REWRITE)
        report = trimmer.report().totals
        assert (report.compressions, report.compression_tokens_in) == (1, 80)
        assert report.compression_cost == pytest.approx((80 * 0.15 + 30 * 0.60) / 1e6)
    assert len(rewriter_server.requests) == 1
    sent_prompt = rewriter_server.requests[0]["messages"][1]["content"]
    assert sent_prompt == compress_safe(GOOD_PROMPT)


def test_cache_is_shared_between_trimmers_on_one_database(
    sqlite_url: str, rewriter_server: FakeOpenAI
) -> None:
    with llm_trimmer(sqlite_url, rewriter_server) as first:
        assert first._system_prompts.rewrite_now(GOOD_PROMPT).text == GOOD_REWRITE
    with llm_trimmer(sqlite_url, rewriter_server) as second:
        assert second.prepare(chat()).messages[0]["content"] == GOOD_REWRITE
    assert len(rewriter_server.requests) == 1


def test_a_rewrite_that_drops_a_span_is_rejected_and_recorded(sqlite_url: str) -> None:
    bad = GOOD_REWRITE.replace("{ticket_id}", "the ticket number")
    with (
        FakeOpenAI(default=lambda _b: Reply(bad)) as server,
        llm_trimmer(sqlite_url, server) as trimmer,
    ):
        result = trimmer._system_prompts.rewrite_now(GOOD_PROMPT)
        assert result.text == compress_safe(GOOD_PROMPT)
        assert result.reason is not None and "{ticket_id}" in result.reason
        with trimmer._db.engine.connect() as connection:
            row = connection.execute(select(COMPRESSIONS)).one()
        assert (row.accepted, row.text) == (False, compress_safe(GOOD_PROMPT))
        assert "drops a protected span" in row.reason
        assert trimmer.prepare(chat()).messages[0]["content"] == compress_safe(GOOD_PROMPT)


def test_a_failed_rewrite_call_is_not_stored(sqlite_url: str) -> None:
    with (
        FakeOpenAI(default=lambda _b: Reply(status=500)) as server,
        llm_trimmer(sqlite_url, server) as trimmer,
    ):
        result = trimmer._system_prompts.rewrite_now(GOOD_PROMPT)
        assert result.text == compress_safe(GOOD_PROMPT)
        assert result.reason is not None and "failed" in result.reason
        with trimmer._db.engine.connect() as connection:
            assert connection.execute(select(COMPRESSIONS)).all() == []


def test_safe_savings_are_reported_apart_from_summary_savings(trimmer: Trimmer) -> None:
    decorated = "You help.   \n\n\n\n-----\nBe brief.\nBe brief and kind to everyone here."
    messages = [{"role": "system", "content": decorated}]
    for turn in range(9):
        messages += [
            {"role": "user", "content": f"Question {turn}: " + "please explain " * 20},
            {"role": "assistant", "content": f"Answer {turn}: " + "it depends " * 20},
        ]
    trimmer.prepare(messages)
    trimmer.compact(messages)
    prepared = trimmer.prepare(messages)
    assert prepared.messages[0]["content"] == compress_safe(decorated)
    assert prepared.prompt_tokens == count_tokens(prepared.messages)
    saved = count_tokens([messages[0]]) - count_tokens([prepared.messages[0]])
    assert prepared.compression_saved_tokens == saved > 0
    totals = trimmer.report().totals
    assert totals.compression_saved_tokens == 2 * saved
    assert totals.summary_saved_tokens == totals.saved_tokens - 2 * saved > 0


def test_off_and_callable_modes(sqlite_url: str) -> None:
    decorated = [
        {"role": "system", "content": "Be   brief.\n\n\n\nReally."},
        {"role": "user", "content": "hi"},
    ]
    with Trimmer(sqlite_url, system_prompt="off", summarizer="extractive") as trimmer:
        assert trimmer.prepare(decorated).messages == decorated
    with Trimmer(sqlite_url, system_prompt=str.upper, summarizer="extractive") as trimmer:
        prepared = trimmer.prepare(decorated)
        assert prepared.messages[0]["content"] == "BE   BRIEF.\n\n\n\nREALLY."
        assert prepared.prompt_tokens == count_tokens(prepared.messages)


def test_cli_compress(tmp_path: Path) -> None:
    path = CORPUS[0]
    result = CliRunner().invoke(main, ["compress", str(path), "--json"])
    data = json.loads(result.stdout)
    assert data["text"] == compress_safe(path.read_text())
    assert data["saved_tokens"] == COUNT(path.read_text()) - COUNT(data["text"]) > 0
    plain = CliRunner().invoke(main, ["compress", str(path)])
    assert plain.stdout.rstrip("\n") == data["text"]
    assert "safe: " in plain.stderr and "tokens" in plain.stderr


def test_cli_compress_llm_against_a_local_endpoint(
    tmp_path: Path, rewriter_server: FakeOpenAI
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text(GOOD_PROMPT)
    env = {"OPENAI_BASE_URL": rewriter_server.base_url, "OPENAI_API_KEY": "k"}
    result = CliRunner().invoke(
        main,
        [
            "compress",
            str(prompt),
            "--mode",
            "llm",
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--json",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text"] == GOOD_REWRITE
