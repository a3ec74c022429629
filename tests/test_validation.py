"""Bad input gets one error type naming the message and field; nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from context_trimmer import InvalidMessagesError, Trimmer, TrimmerError, validate_messages
from context_trimmer._store.history import MESSAGES
from context_trimmer._store.ledger import REQUESTS

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

BAD: list[tuple[Any, int | None, str | None, str]] = [
    ("hello", None, None, "must be a list"),
    ([], None, None, "is empty"),
    (["hi"], 0, None, "must be an object"),
    ([{"content": "hi"}], 0, "role", "is missing"),
    ([{"role": "robot", "content": "hi"}], 0, "role", "not a Chat Completions role"),
    ([{"role": "user", "content": 42}], 0, "content", "must be a string or a list"),
    ([{"role": "user"}], 0, "content", "is missing"),
    ([{"role": "assistant", "content": None}], 0, "content", "null together with tool_calls"),
    ([{"role": "user", "content": "hi", "name": 7}], 0, "name", "must be a string"),
    (
        [{"role": "user", "content": [{"type": "text", "text": 1}]}],
        0,
        "content[0].text",
        "must be a string",
    ),
    (
        [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        0,
        "content[0].type",
        "not allowed in a system message",
    ),
    (
        [
            {"role": "user", "content": "q"},
            {"role": "tool", "tool_call_id": "nope", "content": "r"},
        ],
        1,
        "tool_call_id",
        "matches no",
    ),
    (
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
        1,
        "tool_call_id",
        "is missing",
    ),
    (
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
        ],
        1,
        "tool_calls",
        "has no tool message answering it",
    ),
    ([{"role": "user", "content": "q", "tool_calls": [CALL]}], 0, "tool_calls", "only assistant"),
    (
        [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {}}]}],
        0,
        "tool_calls[0].function.name",
        "must be a string",
    ),
    ([{"role": "user", "content": "hi", "metadata": {1, 2}}], 0, None, "not JSON-serialisable"),
    ([{"role": "user", "content": "bad \ud800 text"}], 0, None, "not valid Unicode"),
]


@pytest.mark.parametrize(("messages", "index", "field", "problem"), BAD)
def test_bad_messages_name_index_and_field(
    trimmer: Trimmer, messages: Any, index: int | None, field: str | None, problem: str
) -> None:
    with trimmer._db.engine.connect() as connection:
        before = connection.execute(select(func.count()).select_from(MESSAGES)).scalar_one()
    with pytest.raises(InvalidMessagesError, match=problem) as caught:
        trimmer.prepare(messages)
    assert isinstance(caught.value, TrimmerError)
    assert caught.value.index == index
    assert caught.value.field == field
    with trimmer._db.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(MESSAGES)).scalar_one() == before
        assert connection.execute(select(func.count()).select_from(REQUESTS)).scalar_one() == 0


def test_valid_shapes_pass() -> None:
    validate_messages(
        [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": [{"type": "text", "text": "one"}],
            },
            {"role": "assistant", "content": "done"},
        ]
    )


def test_error_message_reads_well() -> None:
    with pytest.raises(InvalidMessagesError) as caught:
        validate_messages([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}])
    assert str(caught.value).startswith("messages[1].role: 'bot' is not a Chat Completions role")
