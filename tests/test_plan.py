"""The request plan is a pure function: checked here without a database."""

from __future__ import annotations

from typing import Any

from context_trimmer import count_tokens
from context_trimmer._store.summaries import StoredSummary
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.path import StoredPath
from context_trimmer._trimming.plan import Compressor, plan_request, rows_needed, summary_message

COUNTER = counter_for("gpt-4o")


def stored_path(messages: list[dict[str, Any]]) -> StoredPath:
    """Every message counted in memory, as if all were new (no database)."""
    return StoredPath(
        messages,
        [f"h{i}" for i in range(len(messages))],
        1,
        COUNTER,
        None,
        "c",
        new_from=0,
        new_tokens=tuple(COUNTER.message(m) for m in messages),
    )


def all_rows(path: StoredPath, indexes: list[int]) -> dict[int, tuple[int, int]]:
    running = [sum(path.new_tokens[: i + 1]) for i in range(len(path.messages))]
    return {i: (path.new_tokens[i], running[i]) for i in indexes}


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful   assistant.\n\n\n\nBe brief."},
    *(
        {"role": role, "content": f"{role} turn {i} about the trip to Lisbon"}
        for i in range(10)
        for role in ("user", "assistant")
    ),
    {"role": "user", "content": "And the hotel?"},
]


def test_without_a_summary_everything_is_sent_and_counted_exactly() -> None:
    path = stored_path(MESSAGES)
    plan = plan_request(path, None, 0, all_rows(path, rows_needed(path, 0, False)), None)
    assert plan.messages == MESSAGES
    assert plan.prompt_tokens == count_tokens(MESSAGES)


def test_a_summary_replaces_what_it_covers_and_the_count_matches_what_is_sent() -> None:
    path = stored_path(MESSAGES)
    summary = StoredSummary(1, "h10", 10, "The user plans a Lisbon trip.", "x", 10, 0, 0)
    tokens = COUNTER.message(summary_message(summary))
    plan = plan_request(path, summary, tokens, all_rows(path, rows_needed(path, 11, False)), None)
    assert plan.messages == [MESSAGES[0], summary_message(summary), *MESSAGES[11:]]
    assert plan.start == 11
    assert plan.prompt_tokens == count_tokens(plan.messages)


def test_compressed_system_messages_are_sent_and_their_saving_counted() -> None:
    path = stored_path(MESSAGES)

    def squeeze(message: Any) -> Any:
        if message["role"] != "system":
            return message
        return {**message, "content": " ".join(message["content"].split())}

    compressor = Compressor(squeeze, COUNTER.message)
    plan = plan_request(path, None, 0, all_rows(path, rows_needed(path, 0, True)), compressor)
    assert plan.messages[0]["content"] == "You are a helpful assistant. Be brief."
    assert plan.compression_saved > 0
    assert plan.prompt_tokens == count_tokens(plan.messages)
