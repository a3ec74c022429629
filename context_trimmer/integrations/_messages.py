"""Framework messages in and out of prepare(): the prepared chat messages go back as
the very objects they came from where prepare() kept them, so ids and metadata survive;
only what prepare() wrote itself (the summary, a compressed prompt) is new."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def _key(message: Mapping[str, Any]) -> str:
    return json.dumps(message, sort_keys=True, ensure_ascii=False, default=str)


def restore(
    prepared: Sequence[Mapping[str, Any]],
    chat: Sequence[Mapping[str, Any]],
    originals: Sequence[T],
    convert: Callable[[Mapping[str, Any]], T],
) -> list[T]:
    """``prepared`` as framework messages: ``originals[i]`` for a message equal to
    ``chat[i]`` (the newest one when several are equal), else ``convert(message)``."""
    found: dict[str, list[T]] = {}
    for message, original in zip(chat, originals, strict=True):
        found.setdefault(_key(message), []).append(original)
    restored: list[T] = []
    for message in reversed(prepared):
        stack = found.get(_key(message))
        restored.append(stack.pop() if stack else convert(message))
    return restored[::-1]


def chat_usage(
    model: str | None, input_tokens: Any, output_tokens: Any, cached_tokens: Any = 0
) -> dict[str, Any]:
    """Usage figures in the chat completion shape the recorder reads."""
    return {
        "model": model,
        "usage": {
            "prompt_tokens": int(input_tokens or 0),
            "completion_tokens": int(output_tokens or 0),
            "prompt_tokens_details": {"cached_tokens": int(cached_tokens or 0)},
        },
    }
