"""Check a message list the way the Chat Completions API would, before anything is stored.

Errors name the message index and the field, and say what to do. The common message,
``{"role": ..., "content": "<str>"}``, takes a fast path: this runs on every prepare().
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._arguments import (
    MAX_TEXT_CHARS,
    check_message_list,
    json_problem,
    text_chars,
    valid_unicode,
)
from ._exceptions import InvalidMessagesError

ROLES = ("system", "developer", "user", "assistant", "tool")
_SIMPLE_ROLES = frozenset({"system", "developer", "user", "assistant"})
_PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}


def validate_messages(messages: Any, *, known_valid: int = 0) -> None:
    """Raise :class:`InvalidMessagesError` unless ``messages`` is a valid request body.

    ``known_valid``: a leading count already checked as a complete list (so no tool
    call is pending at its end); only the messages after it are checked.
    """
    check_message_list(messages)
    unanswered: dict[str, int] = {}
    for index in range(known_valid, len(messages)):
        message = messages[index]
        if (
            type(message) is dict
            and len(message) == 2
            and type(message.get("content")) is str
            and type(role := message.get("role")) is str  # a list would not hash
            and role in _SIMPLE_ROLES
        ):
            _check_answered(unanswered)
            _check_text(index, message["content"])
            continue
        _validate_message(index, message, unanswered)
        _check_storable(index, message)
    _check_answered(unanswered)


def _check_text(index: int, content: str) -> None:
    if len(content) > MAX_TEXT_CHARS:
        _too_large(index, len(content))
    if not valid_unicode(content):
        raise InvalidMessagesError(
            "holds text that is not valid Unicode; remove lone surrogates", index=index
        )


def _too_large(index: int, chars: int) -> None:
    raise InvalidMessagesError(
        f"carries {chars:,} characters of text, over the limit of {MAX_TEXT_CHARS:,} per "
        "message (beyond any context window); nothing was stored. Split or shorten it.",
        index=index,
    )


def _check_storable(index: int, message: Any) -> None:
    """Any message: JSON all the way down, not too deep, valid Unicode, not too large."""
    problem = json_problem(message, skip=_DATA_KEYS)
    if problem:
        raise InvalidMessagesError(problem, index=index)
    chars = text_chars(message)
    if chars > MAX_TEXT_CHARS:
        _too_large(index, chars)


_DATA_KEYS = frozenset({"url", "data", "file_data"})  # images, audio, files: not walked


def _check_answered(unanswered: dict[str, int]) -> None:
    if unanswered:
        call_id, index = next(iter(unanswered.items()))
        raise InvalidMessagesError(
            f"tool call {call_id!r} has no tool message answering it; follow an assistant "
            "message that has tool_calls with one role='tool' message per call",
            index=index,
            field="tool_calls",
        )


def _validate_message(index: int, message: Any, unanswered: dict[str, int]) -> None:
    if not isinstance(message, Mapping):
        raise InvalidMessagesError(
            f"must be an object with 'role' and 'content', got {type(message).__name__}",
            index=index,
        )
    role = message.get("role")
    if role is None:
        raise InvalidMessagesError(
            f"is missing; use one of {', '.join(ROLES)}", index=index, field="role"
        )
    if role not in ROLES:
        raise InvalidMessagesError(
            f"{role!r} is not a Chat Completions role; use one of {', '.join(ROLES)}",
            index=index,
            field="role",
        )
    if role != "tool":
        _check_answered(unanswered)
    if "name" in message and not isinstance(message["name"], str):
        raise InvalidMessagesError("must be a string", index=index, field="name")
    _validate_content(index, role, message)
    if "tool_calls" in message:
        _validate_tool_calls(index, role, message["tool_calls"], unanswered)
    if role == "tool":
        _validate_tool_result(index, message, unanswered)


def _validate_content(index: int, role: str, message: Mapping[str, Any]) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and (
            message.get("tool_calls")
            or message.get("function_call")
            or message.get("refusal")
            or message.get("audio")
        ):
            return
        need = "a string or a list of content parts"
        if role == "assistant":
            need += " (or null together with tool_calls)"
        raise InvalidMessagesError(f"is missing; give {need}", index=index, field="content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidMessagesError(
            f"must be a string or a list of content parts, got {type(content).__name__}",
            index=index,
            field="content",
        )
    allowed = _PART_TYPES[role]
    for position, part in enumerate(content):
        field = f"content[{position}]"
        if not isinstance(part, Mapping) or "type" not in part:
            raise InvalidMessagesError("must be an object with a 'type'", index=index, field=field)
        kind = part["type"]
        if kind not in allowed:
            raise InvalidMessagesError(
                f"part type {kind!r} is not allowed in a {role} message; allowed: "
                f"{', '.join(allowed)}",
                index=index,
                field=f"{field}.type",
            )
        if kind in ("text", "refusal") and not isinstance(part.get(kind), str):
            raise InvalidMessagesError("must be a string", index=index, field=f"{field}.{kind}")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
                raise InvalidMessagesError(
                    "must be an object with a string 'url'",
                    index=index,
                    field=f"{field}.image_url",
                )
            if image.get("detail", "auto") not in ("auto", "low", "high"):
                raise InvalidMessagesError(
                    "must be 'auto', 'low' or 'high'",
                    index=index,
                    field=f"{field}.image_url.detail",
                )


def _validate_tool_calls(
    index: int, role: str, tool_calls: Any, unanswered: dict[str, int]
) -> None:
    if role != "assistant":
        raise InvalidMessagesError(
            "only assistant messages carry tool_calls", index=index, field="tool_calls"
        )
    if not isinstance(tool_calls, list):
        raise InvalidMessagesError("must be a list", index=index, field="tool_calls")
    for position, call in enumerate(tool_calls):
        field = f"tool_calls[{position}]"
        if not isinstance(call, Mapping):
            raise InvalidMessagesError("must be an object", index=index, field=field)
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise InvalidMessagesError(
                "must be a non-empty string", index=index, field=f"{field}.id"
            )
        function = call.get("function")
        if not isinstance(function, Mapping):
            raise InvalidMessagesError(
                "must be an object with 'name' and 'arguments'",
                index=index,
                field=f"{field}.function",
            )
        for key in ("name", "arguments"):
            if not isinstance(function.get(key), str):
                raise InvalidMessagesError(
                    "must be a string", index=index, field=f"{field}.function.{key}"
                )
        unanswered[call["id"]] = index


def _validate_tool_result(
    index: int, message: Mapping[str, Any], unanswered: dict[str, int]
) -> None:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise InvalidMessagesError(
            "is missing; a tool message must name the tool call it answers",
            index=index,
            field="tool_call_id",
        )
    if call_id not in unanswered:
        raise InvalidMessagesError(
            f"{call_id!r} matches no tool call of the assistant message before it; a tool "
            "message must follow the assistant message whose tool_calls contain its id",
            index=index,
            field="tool_call_id",
        )
    del unanswered[call_id]
