"""Content addresses for conversations: the prefix chain hash.

``h[i] = sha256(h[i-1] + canonical(message[i]))``, starting from a root that depends on
the tenant (the ``user``, or none). A conversation is a path of hashes, so the same
conversation sent again maps onto the same rows, and an edited or regenerated turn
starts a new branch that shares the common prefix. Because a message's hash commits
to everything before it, a stored hash proves its whole prefix is stored too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._exceptions import InvalidMessagesError

_ROOT_TAG = b"context-trimmer/v1\x00"


def root_digest(user: str | None) -> bytes:
    """The hash every path of ``user`` (None: no user) starts from."""
    return hashlib.sha256(_ROOT_TAG + (user or "").encode()).digest()


def canonical_json(message: Mapping[str, Any]) -> str:
    """The stored form of a message: compact JSON with sorted keys."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_digests(messages: Sequence[Mapping[str, Any]], user: str | None = None) -> list[bytes]:
    """The prefix chain hash of every message (raw 32-byte digests)."""
    sha256 = hashlib.sha256
    previous = root_digest(user)
    digests = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if len(message) == 2 and type(content) is str:
            # Fast path, tagged so it can never collide with the JSON form.
            body = b"s" + message["role"].encode() + b"\x00" + _utf8(index, content)
        else:
            body = b"j" + _json_bytes(index, message)
        previous = sha256(previous + body).digest()
        digests.append(previous)
    return digests


def _utf8(index: int, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise InvalidMessagesError(
            f"holds text that is not valid Unicode ({error.reason}); remove lone surrogates",
            index=index,
        ) from error


def _json_bytes(index: int, message: Mapping[str, Any]) -> bytes:
    try:
        text = canonical_json(message)
    except (TypeError, ValueError) as error:
        raise InvalidMessagesError(
            f"is not JSON-serialisable ({error}); send only strings, numbers, booleans, "
            "null, lists and objects",
            index=index,
        ) from error
    return _utf8(index, text)
