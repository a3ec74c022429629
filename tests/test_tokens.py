"""Token counts against the published test vectors (shared FACTS.md)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from context_trimmer import InvalidMessagesError, ModelTable, count_tokens
from context_trimmer._text.encodings import get_encoding
from context_trimmer._text.tokens import TokenCounter, image_size, image_tokens

VECTOR_A = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that "
        "translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean "
        "for the client deliverable.",
    },
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {
                    "type": "string",
                    "description": "The unit of temperature to return",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location"],
        },
    },
}
VECTOR_B = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)],
)
def test_vector_a(model: str, expected: int) -> None:
    assert count_tokens(VECTOR_A, model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-4", 105), ("gpt-3.5-turbo", 105)],
)
def test_vector_b_with_tools(model: str, expected: int) -> None:
    assert count_tokens(VECTOR_B, model, tools=[WEATHER_TOOL]) == expected


def test_tiktoken_is_great() -> None:
    assert get_encoding("o200k_base").encode_ordinary("tiktoken is great!") == [
        83,
        8251,
        2488,
        382,
        2212,
        0,
    ]


def test_special_token_text_is_counted_as_text() -> None:
    message = [{"role": "user", "content": "<|endoftext|>"}]
    assert count_tokens(message) > 3 + 3 + 1


def _png(width: int, height: int) -> str:
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
    header += struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    header += struct.pack(">I", zlib.crc32(header[12:]))
    return "data:image/png;base64," + base64.b64encode(header).decode()


def _image_message(url: str, detail: str) -> list[dict[str, object]]:
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url, "detail": detail}}],
        }
    ]


@pytest.mark.parametrize(
    ("width", "height", "expected"), [(1024, 1024, 765), (2048, 4096, 1105), (512, 512, 255)]
)
def test_high_detail_image_tokens(width: int, height: int, expected: int) -> None:
    assert image_tokens(width, height) == expected
    overhead = 3 + 1 + 3  # per message, the role "user", reply priming
    assert count_tokens(_image_message(_png(width, height), "high")) == expected + overhead


def test_low_detail_and_mini_constants() -> None:
    overhead = 3 + 1 + 3
    assert count_tokens(_image_message(_png(4000, 3000), "low")) == 85 + overhead
    assert count_tokens(_image_message(_png(1024, 1024), "high"), "gpt-4o-mini") == (
        2833 + 4 * 5667 + overhead
    )


def test_image_size_from_data_url_header() -> None:
    assert image_size(_png(640, 480)) == (640, 480)
    assert image_size("https://example.com/cat.png") is None


def test_text_parts_name_and_tool_calls_are_counted() -> None:
    counter = TokenCounter(ModelTable().get("gpt-4o"))
    text = counter.text
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}],
    }
    assert counter.message(parts) == 3 + text("user") + text("hello") + text("world")
    named = {"role": "user", "name": "bob", "content": "hi"}
    assert counter.message(named) == 3 + text("user") + text("bob") + 1 + text("hi")
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "paris"}'},
            }
        ],
    }
    assert counter.message(call) == 3 + text("assistant") + text("lookup") + text('{"q": "paris"}')


def test_model_names_resolve_by_longest_prefix() -> None:
    table = ModelTable()
    assert table.get("gpt-4o-mini-2024-07-18").input_price == 0.15
    assert table.get("gpt-4o-2024-08-06").input_price == 2.50
    assert table.get("gpt-4-0613").encoding == "cl100k_base"
    assert table.get("gpt-4.1-nano").encoding == "o200k_base"
    assert table.get("some-future-model").encoding == "o200k_base"
    assert table.get("o3-mini").max_tokens_param == "max_completion_tokens"


def test_model_table_overrides() -> None:
    table = ModelTable({"gpt-4o": {"input_price": 1.0}, "my-model": {"context_window": 4096}})
    assert table.get("gpt-4o").input_price == 1.0
    assert table.get("gpt-4o").output_price == 10.0
    assert table.get("my-model-v2").context_window == 4096


def test_count_tokens_rejects_bad_messages() -> None:
    with pytest.raises(InvalidMessagesError, match=r"messages\[0\]\.role"):
        count_tokens([{"content": "hi"}])
