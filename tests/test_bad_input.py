"""Bad input to prepare(), table-driven, on SQLite and PostgreSQL alike: each input gets
its TrimmerError subclass (never a KeyError, RecursionError or a driver's DataError) and
leaves nothing in the store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from context_trimmer import (
    ConfigurationError,
    InvalidMessagesError,
    PromptTooLargeError,
    Trimmer,
    TrimmerError,
)
from context_trimmer._arguments import MAX_DEPTH
from context_trimmer._store.schema import Base

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"inner": value}
    return value


def user(content: Any, **extra: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content, **extra}]


# (label, prepare() keyword arguments, the error class)
CASES: list[tuple[str, dict[str, Any], type[TrimmerError]]] = [
    ("messages is a dict", {"messages": {"role": "user", "content": "hi"}}, InvalidMessagesError),
    ("messages is None", {"messages": None}, InvalidMessagesError),
    ("messages is a string", {"messages": "hello"}, InvalidMessagesError),
    ("messages is empty", {"messages": []}, InvalidMessagesError),
    ("a message is a string", {"messages": ["hello", "there"]}, InvalidMessagesError),
    ("a message has no role", {"messages": [{"content": "hi"}]}, InvalidMessagesError),
    ("content is a number", {"messages": user(5)}, InvalidMessagesError),
    ("model is a number", {"model": 123}, ConfigurationError),
    ("model is empty", {"model": ""}, ConfigurationError),
    ("model is None", {"model": None}, ConfigurationError),
    ("model is 201 characters", {"model": "m" * 201}, ConfigurationError),
    ("model has a NUL", {"model": "gpt-4o\x00"}, ConfigurationError),
    ("max_tokens is text", {"max_tokens": "abc"}, ConfigurationError),
    ("max_tokens is negative", {"max_tokens": -5}, ConfigurationError),
    ("max_tokens is zero", {"max_tokens": 0}, ConfigurationError),
    ("max_tokens is a float", {"max_tokens": 10.5}, ConfigurationError),
    ("max_tokens is True", {"max_tokens": True}, ConfigurationError),
    ("max_tokens is 2**31", {"max_tokens": 2**31}, ConfigurationError),
    ("max_tokens is 10**30", {"max_tokens": 10**30}, ConfigurationError),
    ("max_tokens over the model's output limit", {"max_tokens": 16_385}, ConfigurationError),
    ("tools are strings", {"tools": ["f"]}, ConfigurationError),
    ("tools is a dict", {"tools": TOOL}, ConfigurationError),
    ("a tool has no name", {"tools": [{"type": "function", "function": {}}]}, ConfigurationError),
    (
        "a tool's properties are a list",
        {"tools": [{"function": {"name": "f", "parameters": {"properties": []}}}]},
        ConfigurationError,
    ),
    ("a tool nested too deep", {"tools": [{**TOOL, "x": deep(5000)}]}, ConfigurationError),
    ("conversation_id is 201 characters", {"conversation_id": "c" * 201}, ConfigurationError),
    ("conversation_id has a NUL", {"conversation_id": "a\x00b"}, ConfigurationError),
    ("conversation_id has a newline", {"conversation_id": "a\nb"}, ConfigurationError),
    ("conversation_id is a number", {"conversation_id": 7}, ConfigurationError),
    ("conversation_id is empty", {"conversation_id": ""}, ConfigurationError),
    ("user is 300 characters", {"user": "u" * 300}, ConfigurationError),
    ("user has a NUL", {"user": "bob\x00"}, ConfigurationError),
    ("user has a lone surrogate", {"user": "bob\ud800"}, ConfigurationError),
    ("an extra field 5,000 deep", {"messages": user("hi", extra=deep(5000))}, InvalidMessagesError),
    (
        "an extra field one level too deep",
        {"messages": user("hi", extra=deep(MAX_DEPTH))},
        InvalidMessagesError,
    ),
    ("an extra field holds a set", {"messages": user("hi", extra={1, 2})}, InvalidMessagesError),
    (
        "an extra field holds NaN",
        {"messages": user("hi", extra=float("nan"))},
        InvalidMessagesError,
    ),
    ("a lone surrogate in content", {"messages": user("caf\udce9")}, InvalidMessagesError),
    (
        "a lone surrogate in a text part",
        {"messages": user([{"type": "text", "text": "x\ud83d"}])},
        InvalidMessagesError,
    ),
    ("a 6 MB message", {"messages": user("word " * 1_200_000)}, InvalidMessagesError),
    (
        "a 6 MB text part",
        {"messages": user([{"type": "text", "text": "x" * 6_000_000}])},
        InvalidMessagesError,
    ),
    ("a turn over the context window", {"messages": user("word " * 400_000)}, PromptTooLargeError),
    (
        "a turn over max_prompt_tokens",
        {"messages": user("word " * 2_000), "max_prompt_tokens": 1000},
        PromptTooLargeError,
    ),
]


def stored_rows(trimmer: Trimmer) -> dict[str, int]:
    with trimmer._db.engine.connect() as connection:
        return {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def fresh(db_url: str) -> Iterator[Any]:
    """A Trimmer factory on an empty store (options per case)."""
    made: list[Trimmer] = []

    def make(**options: Any) -> Trimmer:
        made.append(Trimmer(db_url, summarizer="extractive", background=False, **options))
        return made[-1]

    yield make
    for trimmer in made:
        trimmer.close()


@pytest.mark.parametrize(("arguments", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_nothing_is_stored(
    fresh: Any, arguments: dict[str, Any], error: type[TrimmerError]
) -> None:
    arguments = dict(arguments)
    options = (
        {"max_prompt_tokens": arguments.pop("max_prompt_tokens")}
        if ("max_prompt_tokens" in arguments)
        else {}
    )
    trimmer = fresh(**options)
    messages = arguments.pop("messages", CHAT)
    with pytest.raises(error) as raised:
        trimmer.prepare(messages, **arguments)
    assert type(raised.value) is error
    assert not any(stored_rows(trimmer).values())


NOT_SET = [None, openai.omit, openai.NOT_GIVEN]


@pytest.mark.parametrize("value", NOT_SET, ids=["None", "omit", "NOT_GIVEN"])
def test_max_tokens_not_set(fresh: Any, value: Any) -> None:
    prepared = fresh().prepare(CHAT, max_tokens=value)
    assert prepared.max_tokens == 1024  # the default cap


@pytest.mark.parametrize(
    "arguments",
    [
        {"conversation_id": "c" * 200, "user": "u" * 200},
        {"conversation_id": "ünïcødé ✓ 会话", "user": "élodie"},
        {"messages": user("NUL \x00 inside the text is stored and sent as it is")},
        {"messages": user("hi", extra=deep(MAX_DEPTH - 2))},
        {"tools": [TOOL], "max_tokens": 50},
    ],
    ids=["200 characters", "unicode ids", "NUL in text", "nested within the limit", "tools"],
)
def test_good_input_at_the_limits_is_accepted_on_every_backend(
    fresh: Any, arguments: dict[str, Any]
) -> None:
    trimmer = fresh()
    arguments = dict(arguments)
    messages = arguments.pop("messages", CHAT)
    prepared = trimmer.prepare(messages, **arguments)
    assert prepared.request_id > 0
    again = trimmer.prepare([*messages, {"role": "assistant", "content": "ok"}], **arguments)
    assert again.request_id > prepared.request_id


@pytest.mark.parametrize(
    "options",
    [
        {"store_timeout": 0},
        {"store_timeout": "soon"},
        {"store_timeout": True},
        {"on_store_error": "ignore"},
    ],
    ids=["timeout zero", "timeout text", "timeout bool", "unknown policy"],
)
def test_bad_failure_settings_are_configuration_errors(sqlite_url: str, options: Any) -> None:
    with pytest.raises(ConfigurationError):
        Trimmer(sqlite_url, **options)


def test_a_bad_timeout_in_the_environment(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXT_TRIMMER_DB_TIMEOUT", "five")
    with pytest.raises(ConfigurationError, match="CONTEXT_TRIMMER_DB_TIMEOUT"):
        Trimmer(sqlite_url)
    monkeypatch.setenv("CONTEXT_TRIMMER_DB_TIMEOUT", "2.5")
    with Trimmer(sqlite_url) as trimmer:
        assert trimmer._db.timeout == 2.5


def test_max_tokens_at_the_models_output_limit_is_accepted(fresh: Any) -> None:
    assert fresh().prepare(CHAT, model="gpt-4o", max_tokens=16_384).max_tokens == 16_384
    with pytest.raises(ConfigurationError, match="16,384") as raised:
        fresh().prepare(CHAT, model="gpt-4o", max_tokens=2**31)
    assert raised.value.param == "max_tokens"


# -- the same through a wrapped client, over HTTP: refused before anything is stored ---

WRAPPED_CASES: list[tuple[str, dict[str, Any]]] = [
    ("max_tokens 2**31", {"max_tokens": 2**31}),
    ("max_tokens 10**30", {"max_tokens": 10**30}),
    ("max_completion_tokens 2**31", {"max_completion_tokens": 2**31}),
    ("temperature NaN", {"temperature": float("nan")}),
    ("temperature infinite", {"temperature": float("inf")}),
    ("top_p -infinity", {"top_p": float("-inf")}),
    ("NaN deep in a tool", {"tools": [{**TOOL, "function": {"name": "f", "x": [float("nan")]}}]}),
]


@pytest.mark.parametrize("extra", [c[1] for c in WRAPPED_CASES], ids=[c[0] for c in WRAPPED_CASES])
def test_a_wrapped_client_refuses_numbers_out_of_range(fresh: Any, extra: dict[str, Any]) -> None:
    from openai_server import FakeOpenAI

    trimmer = fresh()
    with FakeOpenAI() as api:
        client = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k", max_retries=0))
        with pytest.raises(ConfigurationError) as raised:
            client.chat.completions.create(model="gpt-4o", messages=CHAT, **extra)
        assert api.requests == []
    assert raised.value.param is not None and raised.value.param.split(".")[0].split("[")[0] in (
        *extra,
        "max_tokens",
    )
    assert not any(stored_rows(trimmer).values())


@pytest.mark.parametrize(
    "extra",
    [{"max_output_tokens": 2**31}, {"temperature": float("nan")}, {"top_p": float("inf")}],
    ids=["max_output_tokens 2**31", "temperature NaN", "top_p infinite"],
)
def test_a_wrapped_responses_call_refuses_numbers_out_of_range(
    fresh: Any, extra: dict[str, Any]
) -> None:
    from openai_server import FakeOpenAI

    trimmer = fresh()
    with FakeOpenAI() as api:
        client = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k", max_retries=0))
        with pytest.raises(ConfigurationError):
            client.responses.create(model="gpt-4o", input="Hello", **extra)
        assert api.requests == []
    assert not any(stored_rows(trimmer).values())
