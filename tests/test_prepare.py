"""prepare(): exact figures, batched folds, max_tokens, the ledger, failures never sent."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply
from sqlalchemy import func, select

from context_trimmer import (
    ConfigurationError,
    OpenAISummarizer,
    PromptTooLargeError,
    SummaryRequest,
    SummaryResult,
    Trimmer,
    count_tokens,
)
from context_trimmer._store.ledger import REQUESTS, USAGE
from context_trimmer._store.summaries import FAILURES, SUMMARIES
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.plan import SUMMARY_FLOOR

SYSTEM = {"role": "system", "content": "You are a concise assistant for Acme Travel."}


def chat(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for turn in range(turns):
        messages.append(
            {
                "role": "user",
                "content": f"On May {turn + 1} I booked flight AC{100 + turn} to Lisbon for Maria.",
            }
        )
        messages.append({"role": "assistant", "content": f"Noted booking {turn}."})
    return messages


def count_rows(trimmer: Trimmer, table: Any) -> int:
    with trimmer._db.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(
        default=lambda _body: Reply(
            "- Maria booked flights to Lisbon in May.", prompt_tokens=300, completion_tokens=12
        )
    ) as s:
        yield s


def llm_trimmer(url: str, server: FakeOpenAI, **options: Any) -> Trimmer:
    summarizer = OpenAISummarizer(
        base_url=server.base_url,
        api_key="test-key",
        max_retries=0,
        timeout=options.pop("timeout", 5.0),
        input_tokens=options.pop("input_tokens", 12_000),
    )
    options.setdefault("background", False)
    options.setdefault("summary_share", None)  # a fixed budget: folds are not held for the floor
    return Trimmer(url, keep_last=4, fold_every=2, summarizer=summarizer, **options)


def test_prompt_tokens_are_exact_and_baseline_is_the_full_list(trimmer: Trimmer) -> None:
    messages = chat(12)
    for end in range(2, len(messages) + 1, 2):
        prepared = trimmer.prepare(messages[:end])
        trimmer.compact(messages[:end])
        assert prepared.prompt_tokens == count_tokens(prepared.messages)
        assert prepared.baseline_tokens == count_tokens(messages[:end])
    assert prepared.summary_id is not None
    assert prepared.prompt_tokens < prepared.baseline_tokens


def test_folds_are_batched_and_the_prefix_stays_byte_identical(trimmer: Trimmer) -> None:
    messages = chat(15)
    prefixes, folds = [], 0
    for end in range(3, len(messages) + 1, 2):
        prepared = trimmer.prepare(messages[:end])
        prefixes.append(prepared.messages[:2])
        folds += trimmer.compact(messages[:end]).summary_id is not None
    changes = sum(1 for a, b in itertools.pairwise(prefixes) if a != b)
    assert folds == changes  # the prefix changes only when a fold lands
    assert 0 < folds <= len(prefixes) // 2  # fold_every=2 turns: at most every other turn


def test_layout_is_system_then_summary_then_tail(trimmer: Trimmer) -> None:
    messages = chat(10)
    trimmer.prepare(messages)
    trimmer.compact(messages, force=True)
    prepared = trimmer.prepare(messages)
    assert prepared.messages[0] == SYSTEM
    assert prepared.messages[1]["role"] == "system"
    assert prepared.messages[1]["content"].startswith("Summary of the earlier conversation")
    assert prepared.messages[2:] == messages[-4:]
    assert prepared.messages_folded == len(messages) - 1 - 4


def test_max_tokens_defaults_caps_and_room_left(sqlite_url: str) -> None:
    models = {"tiny": {"context_window": 200, "max_output": 100}}
    with Trimmer(
        sqlite_url, summarizer="extractive", max_tokens=64, models=models, background=False
    ) as trimmer:
        messages = chat(1)
        assert trimmer.prepare(messages).max_tokens == 64
        assert trimmer.prepare(messages, max_tokens=10).max_tokens == 10
        assert trimmer.prepare(messages, model="gpt-4o", max_tokens=16_384).max_tokens == 16_384
        with pytest.raises(ConfigurationError, match="output limit"):  # as the API refuses it
            trimmer.prepare(messages, model="gpt-4o", max_tokens=99_999)
        prepared = trimmer.prepare(messages, model="tiny", max_tokens=100)
        assert prepared.max_tokens == min(100, 200 - prepared.prompt_tokens)
        assert prepared.request()["max_tokens"] == prepared.max_tokens
        assert trimmer.prepare(messages, model="o3-mini").request()["max_completion_tokens"] == 64


def test_request_kwargs(trimmer: Trimmer) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    prepared = trimmer.prepare(chat(1), tools=tools, max_tokens=50)
    assert prepared.request(temperature=0) == {
        "model": "gpt-4o",
        "messages": prepared.messages,
        "max_tokens": 50,
        "tools": tools,
        "temperature": 0,
    }
    assert prepared.prompt_tokens == count_tokens(prepared.messages, tools=tools)


def test_over_a_hard_limit_prepare_folds_synchronously(sqlite_url: str) -> None:
    with Trimmer(
        sqlite_url, keep_last=4, summarizer="extractive", max_prompt_tokens=250, background=False
    ) as trimmer:
        prepared = trimmer.prepare(chat(20))
        assert prepared.summary_id is not None
        assert prepared.prompt_tokens <= 250
        with trimmer._db.engine.connect() as connection:
            row = connection.execute(select(REQUESTS)).one()
        assert row.folded_synchronously is True


def test_a_newest_turn_too_large_is_a_clear_error(sqlite_url: str) -> None:
    with Trimmer(
        sqlite_url, summarizer="extractive", max_prompt_tokens=50, background=False
    ) as trimmer:
        huge = [SYSTEM, {"role": "user", "content": "word " * 200}]
        with pytest.raises(PromptTooLargeError, match="newest user turn alone is too large"):
            trimmer.prepare(huge)


def test_ledger_and_recorded_usage(trimmer: Trimmer) -> None:
    prepared = trimmer.prepare(chat(2), user="ann", conversation_id="c-1")
    response = {
        "model": "gpt-4o-2024-08-06",
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert trimmer.record(prepared, response) is True
    assert trimmer.record(prepared, response) is False
    with trimmer._db.engine.connect() as connection:
        request = connection.execute(select(REQUESTS)).one()
        usage = connection.execute(select(USAGE)).one()
    assert (request.conversation_id, request.user, request.baseline_tokens) == (
        "c-1",
        "ann",
        prepared.baseline_tokens,
    )
    assert (request.max_tokens_requested, request.max_tokens_baseline) == (None, 16_384)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (50, 7, False)


def test_usage_is_estimated_and_marked_when_missing(trimmer: Trimmer) -> None:
    prepared = trimmer.prepare(chat(1))
    trimmer.record(prepared, {"choices": [{"message": {"content": "tiktoken is great!"}}]})
    with trimmer._db.engine.connect() as connection:
        usage = connection.execute(select(USAGE)).one()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (
        prepared.prompt_tokens,
        6,
        True,
    )


def test_llm_summaries_are_stored_and_then_no_network_call(db_url: str, server: FakeOpenAI) -> None:
    with llm_trimmer(db_url, server) as trimmer:
        messages = chat(8)
        trimmer.prepare(messages)
        assert trimmer.compact(messages).summary_id is not None
        calls = len(server.requests)
        assert calls == 1
        prepared = trimmer.prepare(messages)
        assert len(server.requests) == calls
        assert "Maria booked flights to Lisbon" in prepared.messages[1]["content"]
        assert server.requests[0]["model"] == "gpt-4o-mini"
        prompt = server.requests[0]["messages"][0]["content"]
        for kept in ("who is who", "names", "numbers", "dates", "Decisions", "Open tasks"):
            assert kept in prompt
        assert "Preferences" in prompt and "promises" in prompt


BAD_REPLIES = [
    Reply(status=500, error="upstream broke"),
    Reply(status=429, error="Rate limit reached", headers={"retry-after": "1"}),
    Reply(""),
    Reply("I'm sorry, I can't help with that."),
    Reply("Error: the model is overloaded"),
]


@pytest.mark.parametrize("reply", BAD_REPLIES, ids=["500", "429", "empty", "refusal", "error"])
def test_a_failed_summary_is_never_stored_or_sent(
    sqlite_url: str, server: FakeOpenAI, reply: Reply
) -> None:
    server.enqueue(reply)
    with llm_trimmer(sqlite_url, server) as trimmer:
        messages = chat(8)
        before = trimmer.prepare(messages)
        result = trimmer.compact(messages)
        assert result.failures == 1 and result.summary_id is not None  # folded by the fallback
        assert count_rows(trimmer, FAILURES) == 1
        with trimmer._db.engine.connect() as connection:
            summary = connection.execute(select(SUMMARIES)).one()
        assert summary.summarizer == "extractive (fallback for openai:gpt-4o-mini)"
        after = trimmer.prepare(messages)
        assert before.messages == messages and len(after.messages) < len(messages)
        assert not any(reply.error in str(m) for m in after.messages)
        assert not any(str(reply.content) in str(m) for m in after.messages if reply.content)


def test_a_timeout_is_a_failure_too(sqlite_url: str, server: FakeOpenAI) -> None:
    server.enqueue(Reply("late summary", delay=2.0))
    with llm_trimmer(sqlite_url, server, timeout=0.3) as trimmer:
        messages = chat(8)
        trimmer.prepare(messages)
        assert trimmer.compact(messages).failures == 1
        assert count_rows(trimmer, FAILURES) == 1
        assert "late summary" not in trimmer.prepare(messages).messages[1]["content"]


def test_sync_fold_falls_back_to_extractive(sqlite_url: str, server: FakeOpenAI) -> None:
    server.enqueue(Reply(status=500))
    with llm_trimmer(sqlite_url, server, max_prompt_tokens=200) as trimmer:
        prepared = trimmer.prepare(chat(20))
        assert prepared.summary_id is not None
        with trimmer._db.engine.connect() as connection:
            summary = connection.execute(select(SUMMARIES)).one()
        assert summary.summarizer == "extractive (fallback for openai:gpt-4o-mini)"
        assert count_rows(trimmer, FAILURES) == 1


def test_large_spans_are_folded_chunk_by_chunk(sqlite_url: str, server: FakeOpenAI) -> None:
    with llm_trimmer(sqlite_url, server, input_tokens=120) as trimmer:
        messages = chat(30)
        trimmer.prepare(messages)
        result = trimmer.compact(messages, force=True)
        assert len(server.requests) > 3
        assert result.tokens_in == 300 * len(server.requests)
        second = server.requests[1]["messages"][-1]["content"]
        assert "Maria booked flights to Lisbon in May." in second  # previous summary carried


def test_background_fold_runs_after_prepare(sqlite_url: str, server: FakeOpenAI) -> None:
    with llm_trimmer(sqlite_url, server, background=True) as trimmer:
        messages = chat(8)
        prepared = trimmer.prepare(messages)
        assert prepared.fold_pending and prepared.summary_id is None
        trimmer.wait_for_background(timeout=10)
        assert trimmer.prepare(messages).summary_id is not None


class BudgetRecorder:
    """A summarizer that records the budget it is given."""

    name = "recorder"
    prompt_version = "1"
    input_tokens = 1_000_000

    def __init__(self) -> None:
        self.budgets: list[int] = []

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        self.budgets.append(request.budget)
        return SummaryResult("- Maria booked flights to Lisbon in May.")


@pytest.mark.parametrize(
    ("summary_share", "summary_tokens", "expected"),
    [
        (None, 300, lambda replaced: 300),
        (0.1, 10_000, lambda replaced: max(SUMMARY_FLOOR, math.ceil(0.1 * replaced))),
        (1.0, 10_000, lambda replaced: math.ceil(1.0 * replaced)),
        (0.1, 50, lambda replaced: 50),
        (0.0001, 10_000, lambda replaced: SUMMARY_FLOOR),  # a model's summary: the floor
    ],
)
def test_summary_budget_is_fixed_or_a_share_of_the_history_it_replaces(
    sqlite_url: str, summary_share: float | None, summary_tokens: int, expected: Any
) -> None:
    recorder = BudgetRecorder()
    messages = chat(20)
    with Trimmer(
        sqlite_url,
        keep_last=4,
        summarizer=recorder,
        summary_tokens=summary_tokens,
        summary_share=summary_share,
        background=False,
    ) as trimmer:
        trimmer.compact(messages, force=True)
    # Everything before the 4-message tail but the system prompt is replaced.
    replaced = sum(map(counter_for("gpt-4o").message, messages[1:-4]))
    assert recorder.budgets == [expected(replaced)]


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "0.1", True])
def test_a_bad_summary_share_is_a_clear_error(sqlite_url: str, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"summary_share must be a number in \(0, 1\]"):
        Trimmer(sqlite_url, summary_share=bad, migrate=False)


def test_compact_by_conversation_id(trimmer: Trimmer) -> None:
    trimmer.prepare(chat(8), conversation_id="conv-7")
    assert trimmer.compact(conversation_id="conv-7").summary_id is not None


async def test_aprepare_matches_prepare(trimmer: Trimmer) -> None:
    messages = chat(9)
    sync = trimmer.prepare(messages)
    trimmer.compact(messages)
    again = trimmer.prepare(messages)
    result = await trimmer.aprepare(messages)
    assert (result.messages, result.prompt_tokens, result.max_tokens) == (
        again.messages,
        again.prompt_tokens,
        again.max_tokens,
    )
    assert result.baseline_tokens == sync.baseline_tokens
    assert (await trimmer.acompact(messages)).reason == "no fold due"
