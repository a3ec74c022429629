"""A Responses API request as chat messages for prepare(), and the prepared messages
back as a Responses request. Pure functions over plain dicts (the SDK's request body).

prepare() stores, folds and windows Chat Completions messages, so :func:`to_chat` turns
``instructions`` into the system prompt and each ``input`` item into a message:

- a message item (``"type": "message"`` or none) keeps its role; its ``input_text`` /
  ``output_text`` parts become ``text``, ``input_image`` -> ``image_url``,
  ``input_file`` -> ``file``, ``refusal`` stays; a single text part becomes a string;
- a run of ``function_call`` items becomes one assistant message whose ``tool_calls``
  carry the ``call_id`` s, and each ``function_call_output`` a ``tool`` message, so the
  window never separates a call from its output (it never cuts before a tool message);
- ``reasoning`` items travel with the message after them (the API wants a reasoning
  item directly before the item it belongs to); trailing ones with the one before.

Each message remembers the items it came from (:attr:`ChatView.origins`, keyed by the
message's canonical JSON), so whatever prepare() sends verbatim goes back as the very
same items (ids, statuses, annotations, reasoning); only what prepare() wrote itself
(the summary, a compressed system prompt) is converted from its chat form.
:func:`untrimmable` says why a request cannot be converted: server-side state
(``previous_response_id``, ``conversation``), OpenAI's server-side compaction
(``context_management``), or an item the conversion does not know (a ``compaction``
item among them: opaque and encrypted, it is never dropped, reordered or summarized).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._responses import field_of
from .streams import StreamSummary

Item = dict[str, Any]
Message = dict[str, Any]

_TEXT_PARTS = frozenset({"input_text", "output_text"})
_PARTS = _TEXT_PARTS | {"input_image", "input_file", "refusal"}
_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})


@dataclass(frozen=True)
class ChatView:
    """A Responses request seen as chat: the messages, the function tools in chat form
    (for counting), and the items each message came from."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    origins: dict[str, list[list[Item]]] = field(default_factory=dict)
    instructions: bool = False


def untrimmable(body: Mapping[str, Any]) -> str | None:
    """Why this request must pass through untouched, or None when it can be trimmed."""
    for state in ("previous_response_id", "conversation"):
        if body.get(state) is not None:
            return f"it uses server-side state ({state}): the history is not in the request"
    if body.get("context_management"):
        return "it asks for OpenAI's server-side compaction (context_management)"
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        return "its instructions are not a string"
    given = body.get("input")
    if isinstance(given, str):
        return None
    if not isinstance(given, list) or not given:
        return "it has no input to trim"
    for item in given:
        reason = _unknown(item)
        if reason is not None:
            return reason
    if all(item.get("type") == "reasoning" for item in given):
        return "its input holds only reasoning items"
    return None


def _unknown(item: Any) -> str | None:
    if not isinstance(item, Mapping):
        return "an input item is not an object"
    kind = item.get("type", "message")
    if kind not in _ITEMS:
        return f"its input has {kind!r} items, which are not converted to chat messages"
    if kind != "message":
        return None
    if item.get("role") not in _ROLES:
        return f"a message has the role {item.get('role')!r}"
    content = item.get("content")
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return "a message's content is neither a string nor a list of parts"
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in _PARTS:
            return f"a message has a {kind!r} content part"
    return None


def to_chat(body: Mapping[str, Any]) -> ChatView:
    """The request's instructions and input as chat messages (see the module doc).
    Call :func:`untrimmable` first: this assumes a request it accepted."""
    given = body["input"]
    items: list[Item] = [{"role": "user", "content": given}] if isinstance(given, str) else given
    messages: list[Message] = []
    origins: dict[str, list[list[Item]]] = {}
    instructions = body.get("instructions")
    if instructions is not None:
        messages.append({"role": "system", "content": instructions})
    pending: list[Item] = []
    last: list[Item] | None = None
    for group in _groups(items):
        if all(item.get("type") == "reasoning" for item in group):
            pending.extend(group)
            continue
        message = _message_of(group)
        last = [*pending, *group]
        pending = []
        messages.append(message)
        origins.setdefault(_key(message), []).append(last)
    if pending and last is not None:
        last.extend(pending)
    return ChatView(messages, _chat_tools(body.get("tools")), origins, instructions is not None)


def _groups(items: Sequence[Item]) -> list[list[Item]]:
    """Items in the groups that become one message: runs of function calls together."""
    groups: list[list[Item]] = []
    for item in items:
        calls = item.get("type") == "function_call"
        if calls and groups and groups[-1][-1].get("type") == "function_call":
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _message_of(group: list[Item]) -> Message:
    first = group[0]
    kind = first.get("type", "message")
    if kind == "function_call":
        calls = [
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments", "")},
            }
            for item in group
        ]
        return {"role": "assistant", "content": None, "tool_calls": calls}
    if kind == "function_call_output":
        return {"role": "tool", "tool_call_id": first["call_id"], "content": _text(first["output"])}
    content = first["content"]
    if isinstance(content, str):
        return {"role": first["role"], "content": content}
    parts = [_part_to_chat(part) for part in content]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": first["role"], "content": parts[0]["text"]}
    return {"role": first["role"], "content": parts}


def _part_to_chat(part: Mapping[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": part.get("text", "")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal", "")}
    if kind == "input_image":
        detail = part.get("detail") if part.get("detail") in ("low", "high") else "auto"
        url = part.get("image_url") or part.get("file_id") or ""
        return {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    keys = ("file_id", "file_data", "filename", "file_url")
    return {"type": "file", "file": {k: part[k] for k in keys if part.get(k) is not None}}


def _text(output: Any) -> str:
    """A function call's output as text (its text parts when it is a list of parts)."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(str(p.get("text", "")) for p in output if isinstance(p, Mapping))
    return json.dumps(output)


def _chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """The function tools in Chat Completions form (what the token counter reads)."""
    if not isinstance(tools, list):
        return None
    functions = [
        {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
        for tool in tools
        if isinstance(tool, Mapping) and tool.get("type") == "function"
    ]
    return functions or None


def _key(message: Mapping[str, Any]) -> str:
    return json.dumps(message, sort_keys=True, ensure_ascii=False)


def to_responses(
    messages: Sequence[Mapping[str, Any]], view: ChatView
) -> tuple[str | None, list[Item]]:
    """The prepared messages as ``(instructions, input)``: messages sent verbatim become
    the items they came from; the others are converted from their chat form."""
    rest = list(messages)
    instructions: str | None = None
    if view.instructions and rest and rest[0]["role"] == "system":
        instructions = _text(rest.pop(0)["content"])
    origins = {key: list(groups) for key, groups in view.origins.items()}
    groups: list[list[Item]] = []
    for message in reversed(rest):  # the window keeps the newest of equal messages
        found = origins.get(_key(message))
        groups.append(found.pop() if found else _items_of(message))
    return instructions, [dict(item) for group in reversed(groups) for item in group]


def _items_of(message: Mapping[str, Any]) -> list[Item]:
    """Items for a message prepare() wrote itself (a summary, a compressed prompt)."""
    role = message["role"]
    if role == "tool":
        output = {"call_id": message["tool_call_id"], "output": _text(message["content"])}
        return [{"type": "function_call_output", **output}]
    items: list[Item] = []
    content = message.get("content")
    if content:
        if isinstance(content, str):
            items.append({"role": role, "content": content})
        else:
            parts = [_part_from_chat(part, role) for part in content]
            items.append({"type": "message", "role": role, "content": parts})
    for call in message.get("tool_calls") or ():
        function = call["function"]
        items.append(
            {
                "type": "function_call",
                "call_id": call["id"],
                "name": function["name"],
                "arguments": function["arguments"],
            }
        )
    return items


def _part_from_chat(part: Mapping[str, Any], role: str) -> dict[str, Any]:
    kind = part["type"]
    if kind == "text":
        return {
            "type": "output_text" if role == "assistant" else "input_text",
            "text": part["text"],
        }
    if kind == "image_url":
        image = part["image_url"]
        return {
            "type": "input_image",
            "image_url": image["url"],
            "detail": image.get("detail", "auto"),
        }
    if kind == "file":
        return {"type": "input_file", **part["file"]}
    return dict(part)


def usage_view(response: Any) -> dict[str, Any]:
    """A Responses response in the chat shape the recorder reads: ``input_tokens`` /
    ``output_tokens`` / ``input_tokens_details.cached_tokens`` as ``usage``, or, without
    usage, the output text (which the recorder then counts)."""
    model = field_of(response, "model")
    usage = field_of(response, "usage")
    if usage is None:
        return {"model": model, "choices": [{"message": {"content": output_text(response)}}]}
    details = field_of(usage, "input_tokens_details")
    return {
        "model": model,
        "usage": {
            "prompt_tokens": field_of(usage, "input_tokens") or 0,
            "completion_tokens": field_of(usage, "output_tokens") or 0,
            "prompt_tokens_details": {"cached_tokens": field_of(details, "cached_tokens") or 0},
        },
    }


def output_text(response: Any) -> str:
    """The text of a response's ``output`` message items."""
    texts = []
    for item in field_of(response, "output") or ():
        if field_of(item, "type") == "message":
            for part in field_of(item, "content") or ():
                if field_of(part, "type") == "output_text":
                    texts.append(str(field_of(part, "text") or ""))
    return "".join(texts)


class ResponsesStreamSummary(StreamSummary):
    """What a Responses event stream said: the model and usage of its final response
    (``response.completed``, ``.incomplete`` or ``.failed``), else the text deltas."""

    def take(self, chunk: Any) -> None:
        kind = field_of(chunk, "type")
        if kind == "response.output_text.delta":
            self.parts.append(str(field_of(chunk, "delta") or ""))
            return
        response = field_of(chunk, "response")
        self.model = field_of(response, "model") or self.model
        if field_of(response, "usage") is not None:
            self.usage = field_of(response, "usage")

    def response(self) -> dict[str, Any]:
        if self.usage is not None:
            return usage_view({"model": self.model, "usage": self.usage})
        return {"model": self.model, "choices": [{"message": {"content": "".join(self.parts)}}]}


def chat_to_items(messages: Sequence[Mapping[str, Any]]) -> list[Item]:
    """Chat messages as Responses input items (a stored history read back: message items,
    function calls and their outputs; reasoning items were never stored)."""
    return [item for message in messages for item in _items_of(message)]
