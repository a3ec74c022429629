"""Exact prompt-token accounting, following OpenAI's published rules.

Per message: 3 tokens, plus the tokens of every string field (role, content, ...),
plus 1 for a ``name``. Per request: 3 tokens of reply priming, plus the tool
definitions by the cookbook's ``num_tokens_for_tools`` constants. List content is
counted part by part: text by the encoding, images by OpenAI's tile formula (sizes of
``data:`` URLs are read from the image header; other images are assumed 1024x1024).
``tool_calls`` count their function names and arguments, which the cookbook formula
forgets. User text is encoded with ``encode_ordinary``, so ``<|endoftext|>`` in a
message is counted as text, as the API does, instead of raising.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from .._exceptions import InvalidMessagesError
from .._models import ModelInfo, ModelTable
from .._validation import validate_messages
from .encodings import get_encoding

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
ASSUMED_IMAGE_SIZE = (1024, 1024)


@dataclass(frozen=True)
class _ToolConstants:
    func_init: int
    prop_init: int = 3
    prop_key: int = 3
    enum_init: int = -3
    enum_item: int = 3
    func_end: int = 12


_TOOL_CONSTANTS = {"o200k_base": _ToolConstants(func_init=7), "cl100k_base": _ToolConstants(10)}


class TokenCounter:
    """Counts prompt tokens for one model's encoding and image pricing.

    The encoding (a few hundred milliseconds to load, once per process) is loaded on the
    first text counted, so a Trimmer starts at once and a warm prepare() whose messages
    are all stored never waits for it."""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.key = info.counting_key
        self._encode: Callable[[str], list[int]] | None = None
        self._tools = _TOOL_CONSTANTS[info.encoding]

    def text(self, text: str) -> int:
        """Tokens of a plain string."""
        encode = self._encode
        if encode is None:
            encode = self._encode = get_encoding(self.info.encoding).encode_ordinary
        return len(encode(text))

    def message(self, message: Mapping[str, Any]) -> int:
        """Tokens one message adds to a request, overhead included."""
        tokens = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                tokens += self._content(value)
            elif key == "tool_calls":
                tokens += sum(self._function(call.get("function", {})) for call in value)
            elif key == "function_call":
                tokens += self._function(value)
            elif isinstance(value, str):
                tokens += self.text(value)
                if key == "name":
                    tokens += TOKENS_PER_NAME
        return tokens

    def request(
        self,
        messages: Iterable[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Prompt tokens of a whole request: messages, priming and tool definitions."""
        return sum(map(self.message, messages)) + REPLY_PRIMING + self.tools(tools)

    def tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        """Tokens of the tool definitions (``tools=``), by the cookbook's constants."""
        if not tools:
            return 0
        c = self._tools
        total = c.func_end
        for tool in tools:
            function = tool.get("function", tool)
            total += c.func_init + self.text(
                f"{function.get('name', '')}:{_strip_dot(function.get('description', ''))}"
            )
            properties = (function.get("parameters") or {}).get("properties") or {}
            if properties:
                total += c.prop_init
            for key, spec in properties.items():
                total += c.prop_key
                if "enum" in spec:
                    total += c.enum_init
                    total += sum(c.enum_item + self.text(str(item)) for item in spec["enum"])
                kind = spec.get("type", "")
                kind = ",".join(kind) if isinstance(kind, list) else kind
                total += self.text(f"{key}:{kind}:{_strip_dot(spec.get('description', ''))}")
        return total

    def _content(self, content: Any) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.text(content)
        total = 0
        for part in content:
            kind = part.get("type")
            if kind in ("text", "refusal"):
                total += self.text(part.get(kind, ""))
            elif kind == "image_url":
                total += self._image(part["image_url"])
        return total

    def _image(self, image: Mapping[str, Any]) -> int:
        if image.get("detail") == "low":
            return self.info.image_base_tokens
        width, height = image_size(image.get("url", "")) or ASSUMED_IMAGE_SIZE
        return image_tokens(
            width, height, base=self.info.image_base_tokens, per_tile=self.info.image_tile_tokens
        )

    def _function(self, function: Mapping[str, Any]) -> int:
        return self.text(function.get("name", "")) + self.text(function.get("arguments", ""))


def _strip_dot(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def image_tokens(width: int, height: int, *, base: int = 85, per_tile: int = 170) -> int:
    """Tokens of a ``detail: high`` image: fit in 2048x2048, shortest side to 768, 512px tiles."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return base + tiles * per_tile


def image_size(url: str) -> tuple[int, int] | None:
    """Width and height of a base64 ``data:`` image (PNG, GIF, JPEG, WebP), else None."""
    if not url.startswith("data:") or ";base64," not in url:
        return None
    head = url.split(",", 1)[1][:65536]
    try:
        data = base64.b64decode(head[: len(head) // 4 * 4])
        return _png(data) or _gif(data) or _webp(data) or _jpeg(data)
    except (ValueError, struct.error):
        return None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None


def _gif(data: bytes) -> tuple[int, int] | None:
    if data[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 9 < len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        length = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        offset += 2 + length
    return None


@cache
def counter_for(model: str, table: ModelTable | None = None) -> TokenCounter:
    """The counter for ``model`` under ``table`` (the built-in table when None)."""
    return TokenCounter((table or _default_table()).get(model))


@cache
def _default_table() -> ModelTable:
    return ModelTable()


def count_tokens(
    messages: Sequence[Mapping[str, Any]],
    model: str = "gpt-4o",
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """The prompt tokens OpenAI bills for sending ``messages`` (and ``tools``) to ``model``.

    Raises :class:`InvalidMessagesError` for a list the API would reject.
    """
    validate_messages(messages)
    return counter_for(model).request(messages, tools)


def count_text_tokens(text: str, model: str = "gpt-4o") -> int:
    """The tokens of ``text`` alone under ``model``'s encoding (no message overhead)."""
    if not isinstance(text, str):
        raise InvalidMessagesError(f"count_text_tokens() takes a str, got {type(text).__name__}")
    return counter_for(model).text(text)
