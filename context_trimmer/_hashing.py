"""Content addresses for conversations: the prefix chain hash.

``h[i] = sha256(h[i-1] + canonical(message[i]))``, starting from a root that depends on
the tenant (the ``user``, or none). A conversation is a path of hashes, so the same
conversation sent again maps onto the same rows, and an edited or regenerated turn
starts a new branch that shares the common prefix. Because a message's hash commits
to everything before it, a stored hash proves its whole prefix is stored too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, overload

from ._exceptions import InvalidMessagesError

_ROOT_TAG = b"context-trimmer/v1\x00"


def root_digest(user: str | None) -> bytes:
    """The hash every path of ``user`` (None: no user) starts from."""
    return hashlib.sha256(_ROOT_TAG + (user or "").encode()).digest()


def canonical_json(message: Mapping[str, Any]) -> str:
    """The stored form of a message: compact JSON with sorted keys."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_FAST_PREFIX = {
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
    fast = _FAST_PREFIX
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
                body = _utf8(index, content)
        else:
            body = b"j" + _json_bytes(index, message)
        previous = sha256(previous + body).digest()
        append(previous)
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


class ChainCache:
    """Remembers each conversation's last list, so the next prepare() hashes only what is new.

    Apps resend the whole list every turn. Comparing it with a snapshot of the list seen
    last time is one C-level list comparison; only the messages after the common
    prefix are validated and hashed. Snapshots are copies, so an app that mutates its
    messages in place is never served a stale hash. Entries are evicted least recently
    used once ``max_messages`` snapshots are held.
    """

    def __init__(self, max_messages: int = 500_000):
        self.max_messages = max_messages
        self._entries: OrderedDict[tuple[Any, ...], tuple[list[Any], list[bytes]]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def known_prefix(self, messages: Sequence[Any], user: str | None) -> int:
        """How many leading messages equal the last list seen for this conversation."""
        entry = self._entry(_cache_key(messages, user))
        if entry is None:
            return 0
        snapshots = entry[0]
        length = min(len(snapshots), len(messages))
        if list(messages[:length]) == snapshots[:length]:
            return length
        return next(i for i in range(length) if messages[i] != snapshots[i])

    def digests(
        self, messages: Sequence[Mapping[str, Any]], user: str | None, known: int
    ) -> list[bytes]:
        """Digests of ``messages``, reusing the first ``known`` from the cache."""
        key = _cache_key(messages, user)
        entry = self._entry(key) if known else None
        if entry is None:
            known = 0
            old_snapshots: list[Any] = []
            old_digests: list[bytes] = []
        else:
            old_snapshots, old_digests = entry
        previous = old_digests[known - 1] if known else None
        digests = old_digests[:known] + chain_digests(
            messages[known:], user, previous=previous, offset=known
        )
        if key is not None:
            snapshots = old_snapshots[:known] + [_snapshot(m) for m in messages[known:]]
            self._store(key, snapshots, digests)
        return digests

    def _entry(self, key: tuple[Any, ...] | None) -> tuple[list[Any], list[bytes]] | None:
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def _store(self, key: tuple[Any, ...], snapshots: list[Any], digests: list[bytes]) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            self._held -= len(old[0]) if old else 0
            self._entries[key] = (snapshots, digests)
            self._held += len(snapshots)
            while self._held > self.max_messages and len(self._entries) > 1:
                _key, (evicted, _digests) = self._entries.popitem(last=False)
                self._held -= len(evicted)


def _cache_key(messages: Sequence[Any], user: str | None) -> tuple[Any, ...] | None:
    if len(messages) < 2 or type(messages[0]) is not dict or type(messages[1]) is not dict:
        return None
    first, second = messages[0].get("content"), messages[1].get("content")
    if type(first) is not str or type(second) is not str:
        return None
    return (user, first, second)


def _snapshot(message: Any) -> Any:
    if type(message) is dict and all(type(v) is str for v in message.values()):
        return dict(message)
    return copy.deepcopy(message)


class HexDigests(Sequence[str]):
    """Hex strings of chain digests, converted only where the store looks."""

    def __init__(self, digests: list[bytes]):
        self._digests = digests

    def __len__(self) -> int:
        return len(self._digests)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [digest.hex() for digest in self._digests[index]]
        return self._digests[index].hex()
