"""prepare()'s arguments besides the messages, checked before anything is stored.

Identifiers (``model``, ``conversation_id``, ``user``) follow one rule on every
backend: a string of 1 to 200 characters, no control characters (NUL included), valid
Unicode; so SQLite and PostgreSQL accept and refuse the same values. ``max_tokens`` is a
positive integer, or not set (``None``, ``openai.omit``, ``openai.NOT_GIVEN``), and at
most the model's output limit (OpenAI refuses more with a 400; so do we, before anything
is stored, rather than overflow a column). NaN and infinity anywhere in a request are
refused (:func:`non_finite`): JSON has no such numbers.
``tools`` is a list of tool objects, each naming its function. JSON values (the
messages' extra fields, tool schemas) are walked without recursion, so no depth makes
Python's stack overflow: deeper than :data:`MAX_DEPTH` is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ._exceptions import ConfigurationError, InvalidMessagesError, PromptTooLargeError
from ._inline import refuse

MAX_IDENTIFIER = 200
"""Characters in a model name, conversation_id or user (the store's column width)."""
MAX_DEPTH = 64
"""Nesting of JSON objects and arrays in a message or a tool definition."""
MAX_TEXT_CHARS = 4_000_000
"""Characters of text in one message (images and files not counted): beyond any
context window, and refused before it is stored."""
MAX_STORED_INT = 2**31 - 1
"""The largest integer an INTEGER column holds on PostgreSQL."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_SET_NAMES = ("Omit", "NotGiven")


def not_set(value: Any) -> bool:
    """None, or the OpenAI SDK's ``omit`` / ``NOT_GIVEN`` sentinels."""
    return value is None or type(value).__name__ in _NOT_SET_NAMES


def check_message_list(messages: Any) -> None:
    """``messages`` must be a non-empty list (a sequence) of messages."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidMessagesError(
            f"must be a list of message objects, got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidMessagesError("is empty; send at least one message")


def check_arguments(
    messages: Any,
    model: Any,
    conversation_id: Any = None,
    user: Any = None,
    tools: Any = None,
    max_tokens: Any = None,
) -> int | None:
    """Raise :class:`InvalidMessagesError` unless ``messages`` is a non-empty list, and
    :class:`ConfigurationError` naming the first bad other argument; returns
    ``max_tokens`` as an int, or None when it is not set. (The messages themselves are
    checked by ``_validation``.)"""
    check_message_list(messages)
    check_identifier("model", model)
    for name, value in (("conversation_id", conversation_id), ("user", user)):
        if not not_set(value):
            check_identifier(name, value)
    if not not_set(tools):
        check_tools(tools)
    if not_set(max_tokens):
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigurationError(
            f"max_tokens must be a positive integer (or None to use the default), "
            f"got {max_tokens!r}"
        )
    return max_tokens


def check_reply_cap(max_tokens: int | None, max_output: int, model: str) -> None:
    """ConfigurationError when ``max_tokens`` exceeds the model's output limit (or what the
    store can hold), as the API itself refuses it."""
    limit = min(max_output, MAX_STORED_INT)
    if max_tokens is not None and max_tokens > limit:
        raise ConfigurationError(
            f"max_tokens is {max_tokens:,}, above the output limit of {model} "
            f"({limit:,} tokens); send at most {limit}, or leave it unset for the "
            "trimmer's default (set a model's max_output with Trimmer(models=...))",
            param="max_tokens",
        )


def non_finite(value: Any) -> str | None:
    """Where NaN or infinity sits in ``value`` (``"temperature"``,
    ``"tools[0].function.parameters.x"``), or None. Walks without recursion; the path
    is only built when there is one to find."""
    return _where_non_finite(value) if _holds_non_finite(value) else None


def _holds_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            continue
        if kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def _where_non_finite(value: Any) -> str | None:
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where or "the value"
        elif isinstance(item, Mapping):
            stack.extend(
                (inner, f"{where}.{key}" if where else str(key)) for key, inner in item.items()
            )
        elif isinstance(item, (list, tuple)):
            stack.extend((inner, f"{where}[{i}]") for i, inner in enumerate(item))
    return None


def check_finite(body: Mapping[str, Any]) -> None:
    """ConfigurationError naming the first field of a request body that holds NaN or
    infinity (JSON has no such numbers; the SDK would fail to send it)."""
    where = non_finite(body)
    if where is not None:
        raise ConfigurationError(
            f"{where} is NaN or infinite; JSON has no such numbers: send a finite number",
            param=where,
        )


def check_identifier(name: str, value: Any) -> None:
    """``value`` must be a string of 1-200 characters without control characters."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_IDENTIFIER:
        raise ConfigurationError(
            f"{name} must be 1 to {MAX_IDENTIFIER} characters long, got {len(value)}"
        )
    if _CONTROL.search(value):
        raise ConfigurationError(
            f"{name} must not contain control characters (NUL, newline, ...): {value!r}"
        )
    if not valid_unicode(value):
        raise ConfigurationError(f"{name} contains a lone surrogate; give valid Unicode text")


def valid_unicode(text: str) -> bool:
    """False if ``text`` holds a lone surrogate (it cannot be stored or sent as UTF-8)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_tools(tools: Any) -> None:
    """``tools`` must be a list of tool objects whose ``function`` has a string name."""
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ConfigurationError(
            f"tools must be a list of tool objects, got {type(tools).__name__}"
        )
    for position, tool in enumerate(tools):
        where = f"tools[{position}]"
        if not isinstance(tool, Mapping):
            raise ConfigurationError(f"{where} must be an object, got {type(tool).__name__}")
        problem = json_problem(tool)
        if problem:
            raise ConfigurationError(f"{where}: {problem}")
        function = tool.get("function", tool)
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ConfigurationError(f"{where}.function must be an object with a string 'name'")
        _check_schema(where, function)


def _check_schema(where: str, function: Mapping[str, Any]) -> None:
    if not isinstance(function.get("description", ""), str):
        raise ConfigurationError(f"{where}.function.description must be a string")
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    if not isinstance(parameters, Mapping) or not isinstance(
        {} if properties is None else properties, Mapping
    ):
        raise ConfigurationError(f"{where}.function.parameters must be a JSON schema object")
    for key, spec in (properties or {}).items():
        field = f"{where}.function.parameters.properties.{key}"
        if not isinstance(spec, Mapping):
            raise ConfigurationError(f"{field} must be an object")
        if not isinstance(spec.get("enum", []), list):
            raise ConfigurationError(f"{field}.enum must be a list")
        kind = spec.get("type", "")
        if not isinstance(kind, str) and not (
            isinstance(kind, list) and all(isinstance(k, str) for k in kind)
        ):
            raise ConfigurationError(f"{field}.type must be a string or a list of strings")
        if not isinstance(spec.get("description", ""), str):
            raise ConfigurationError(f"{field}.description must be a string")


def json_problem(value: Any, *, skip: frozenset[str] = frozenset()) -> str | None:
    """What keeps ``value`` from being stored as JSON (depth, type, text), or None.

    Walks without recursion. Keys in ``skip`` are not looked into (large data URLs)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not valid_unicode(item):
                return "holds text that is not valid Unicode; remove lone surrogates"
        elif isinstance(item, Mapping) or (
            isinstance(item, (list, tuple)) and not isinstance(item, str)
        ):
            if depth > MAX_DEPTH:
                return f"is nested more than {MAX_DEPTH} levels deep"
            if isinstance(item, Mapping):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        return f"has a key that is not a string: {key!r}"
                    if key not in skip:
                        stack.append((key, depth))
                        stack.append((inner, depth + 1))
            else:
                stack.extend((inner, depth + 1) for inner in item)
        elif item is not None and not isinstance(item, (bool, int, float)):
            return (
                f"is not JSON-serialisable (it holds a {type(item).__name__}); send only "
                "strings, numbers, booleans, null, lists and objects"
            )
        elif isinstance(item, float) and not math.isfinite(item):
            return "is not JSON-serialisable (it holds NaN or infinity)"
    return None


def text_chars(message: Mapping[str, Any]) -> int:
    """Characters of the text a message carries (content, text parts, tool arguments)."""
    content = message.get("content")
    total = len(content) if isinstance(content, str) else 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text", part.get("refusal"))
                total += len(text) if isinstance(text, str) else 0
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        arguments = function.get("arguments") if isinstance(function, Mapping) else None
        total += len(arguments) if isinstance(arguments, str) else 0
    return total


class Counter(Protocol):
    """What the size check needs of a ``TokenCounter`` (which imports this module's users)."""

    @property
    def info(self) -> Any: ...

    def request(self, messages: Sequence[Mapping[str, Any]]) -> int: ...


def refuse_oversized_turn(
    messages: Sequence[Mapping[str, Any]], counter: Counter, max_prompt_tokens: int | None
) -> None:
    """Raise PromptTooLargeError, before anything is stored, when the newest user turn
    (which every request must send whole) alone exceeds the prompt limit.

    Counted only when it might be: a token is at least one UTF-8 byte. (Images are
    not in that bound; a turn too large for its images is refused by the plan.)"""
    limit = counter.info.context_window - 1
    if max_prompt_tokens is not None:
        limit = min(limit, max_prompt_tokens)
    start = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"),
        len(messages) - 1,
    )
    turn = messages[start:]
    if sum(4 * text_chars(m) + 16 for m in turn) <= limit:
        return
    refuse("counting a long newest turn")  # inline: tens of ms for a pasted document
    tokens = counter.request(turn)
    if tokens > limit:
        raise PromptTooLargeError(
            f"the newest user turn alone is too large: {tokens} prompt tokens, over the "
            f"limit of {limit} for {counter.info.name}; nothing was stored. Shorten it, or raise "
            "max_prompt_tokens / the model's context_window.",
            prompt_tokens=tokens,
            limit=limit,
        )
