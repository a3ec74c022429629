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

from .._exceptions import InvalidMessagesError

_ROOT_TAG = b"context-trimmer/v1\x00"


def root_digest(user: str | None) -> bytes:
    """The hash every path of ``user`` (None: no user) starts from."""
    return hashlib.sha256(_ROOT_TAG + (user or "").encode()).digest()


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(message: Mapping[str, Any]) -> str:
    """The stored form of a message: compact JSON with sorted keys.

    What ``json.dumps(message, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` returns (it builds this very encoder on each call; one made
    once saves that)."""
    return _CANONICAL.encode(message)


FAST_PREFIX = {
    role: b"s" + role.encode() + b"\x00" for role in ("system", "developer", "user", "assistant")
}


def chain_digests(
    messages: Sequence[Mapping[str, Any]],
    user: str | None = None,
    *,
    previous: bytes | None = None,
    offset: int = 0,
) -> list[bytes]:
    """The prefix chain hash of every message (raw 32-byte digests).

    This runs over the whole list on every prepare(), so the common message
    ``{"role": ..., "content": "<str>"}`` takes a tight path; anything else is hashed
    as canonical JSON. The two forms are tagged so they can never collide.
    """
    sha256 = hashlib.sha256
    fast = FAST_PREFIX
    if previous is None:
        previous = root_digest(user)
    digests: list[bytes] = []
    append = digests.append
    for index, message in enumerate(messages, offset):
        content = message.get("content")
        prefix = fast.get(message.get("role")) if len(message) == 2 else None  # type: ignore[arg-type]
        if prefix is not None and type(content) is str:
            try:
                body = prefix + content.encode()
            except UnicodeEncodeError:
                body = utf8_bytes(index, content)
        else:
            body = b"j" + json_bytes(index, message)
        previous = sha256(previous + body).digest()
        append(previous)
    return digests


def utf8_bytes(index: int, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise InvalidMessagesError(
            f"holds text that is not valid Unicode ({error.reason}); remove lone surrogates",
            index=index,
        ) from error


def json_bytes(index: int, message: Mapping[str, Any]) -> bytes:
    try:
        text = canonical_json(message)
    except (TypeError, ValueError) as error:
        raise InvalidMessagesError(
            f"is not JSON-serialisable ({error}); send only strings, numbers, booleans, "
            "null, lists and objects",
            index=index,
        ) from error
    return utf8_bytes(index, text)
