"""The pure conversion between Responses requests and chat messages."""

from __future__ import annotations

from typing import Any

import pytest

from context_trimmer import count_tokens
from context_trimmer._client.responses_api import (
    output_text,
    to_chat,
    to_responses,
    untrimmable,
    usage_view,
)
from context_trimmer._validation import validate_messages

IMAGE = "data:image/png;base64,iVBORw0KGgo="
ITEMS: list[dict[str, Any]] = [
    {"role": "developer", "content": "Answer in French."},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is in this picture?"},
            {"type": "input_image", "image_url": IMAGE, "detail": "low"},
        ],
    },
    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
    {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "look", "arguments": "{}"},
    {"type": "function_call", "id": "fc_2", "call_id": "c2", "name": "zoom", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
    {
        "type": "function_call_output",
        "call_id": "c2",
        "output": [{"type": "input_text", "text": "big"}],
    },
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Un chat.", "annotations": []}],
    },
    {"role": "user", "content": "Merci"},
]


def test_items_become_valid_chat_messages() -> None:
    view = to_chat({"instructions": "Be brief.", "input": ITEMS, "model": "gpt-4o"})
    assert view.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "zoom", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        {"role": "tool", "tool_call_id": "c2", "content": "big"},
        {"role": "assistant", "content": "Un chat."},
        {"role": "user", "content": "Merci"},
    ]
    validate_messages(view.messages)
    assert count_tokens(view.messages) > 85  # the low-detail image counts


def test_round_trip_gives_back_the_same_request() -> None:
    view = to_chat({"instructions": "Be brief.", "input": ITEMS})
    assert to_responses(view.messages, view) == ("Be brief.", ITEMS)


def test_a_window_keeps_whole_groups_and_reasoning_with_its_call() -> None:
    view = to_chat({"input": ITEMS})
    tail = view.messages[2:]  # from the function calls on
    instructions, items = to_responses(tail, view)
    assert instructions is None
    assert items == ITEMS[2:]  # the reasoning item comes back before the calls


def test_messages_the_trimmer_wrote_are_converted() -> None:
    view = to_chat({"instructions": "Be brief.", "input": ITEMS})
    summary = {"role": "system", "content": "Summary of the earlier conversation:\nA cat."}
    compressed = {"role": "system", "content": "Brief."}
    instructions, items = to_responses([compressed, summary, *view.messages[-2:]], view)
    assert instructions == "Brief."
    assert items == [{"role": "system", "content": summary["content"]}, *ITEMS[-2:]]


def test_equal_messages_take_the_newest_items() -> None:
    first = {"id": "msg_a", "type": "message", "role": "assistant", "content": "ok"}
    second = {"id": "msg_b", "type": "message", "role": "assistant", "content": "ok"}
    view = to_chat({"input": [first, {"role": "user", "content": "again"}, second]})
    assert to_responses(view.messages[-1:], view) == (None, [second])


def test_string_input_and_tools() -> None:
    tools = [
        {"type": "function", "name": "look", "parameters": {"type": "object"}},
        {"type": "web_search"},
    ]
    view = to_chat({"input": "Hello", "tools": tools})
    assert view.messages == [{"role": "user", "content": "Hello"}]
    assert view.tools == [
        {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
    ]


def test_trailing_reasoning_stays_with_the_item_before() -> None:
    items = [{"role": "user", "content": "Hi"}, {"type": "reasoning", "id": "rs_9", "summary": []}]
    view = to_chat({"input": items})
    assert view.messages == [{"role": "user", "content": "Hi"}]
    assert to_responses(view.messages, view) == (None, items)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "conversation": {"id": "conv_1"}}, "conversation"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "'item_reference' items"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "'input_audio'"),
        ({"input": [{"role": "critic", "content": "x"}]}, "role 'critic'"),
        ({"input": []}, "no input"),
        ({"prompt": {"id": "pmpt_1"}}, "no input"),
        ({"input": [{"type": "reasoning", "id": "rs"}]}, "only reasoning"),
    ],
)
def test_what_cannot_be_trimmed_says_why(body: dict[str, Any], reason: str) -> None:
    assert reason in (untrimmable(body) or "")


def test_trimmable_requests() -> None:
    assert untrimmable({"input": "hi"}) is None
    assert untrimmable({"input": ITEMS, "previous_response_id": None}) is None


def test_usage_reads_the_responses_fields() -> None:
    response = {
        "model": "gpt-4o-2024",
        "usage": {
            "input_tokens": 50,
            "output_tokens": 4,
            "input_tokens_details": {"cached_tokens": 7},
        },
    }
    assert usage_view(response) == {
        "model": "gpt-4o-2024",
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 7},
        },
    }
    bare = {"model": "m", "output": [ITEMS[7], {"type": "reasoning"}]}
    assert output_text(bare) == "Un chat."
    assert usage_view(bare) == {"model": "m", "choices": [{"message": {"content": "Un chat."}}]}
