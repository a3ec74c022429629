"""The chain cache: what each conversation's last list hashed to, so a prepare() hashes
only what is new (the chain hash itself is in ``_text.digests``)."""

from __future__ import annotations

import bisect
import copy
import hashlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from .._arguments import MAX_TEXT_CHARS
from .._text.digests import FAST_PREFIX, json_bytes, utf8_bytes
from .._text.digests import canonical_json as canonical_json
from .._text.digests import chain_digests as chain_digests
from .._text.digests import root_digest as root_digest
from .._validation import validate_messages
from .window import CONTROL_ROLES

_LAZY_RUN = 64
"""Plain messages hashed in one pass from which on their copies are made lazily."""
_CHAT_PREFIX = {role: FAST_PREFIX[role] for role in ("user", "assistant")}
_CONTROL_PREFIX = {role: FAST_PREFIX[role] for role in CONTROL_ROLES}


DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
_DIGEST_BYTES = 33 + 8 + 8  # a 32-byte bytes object, its list slot, the message's ref slot
_REF_BYTES = 232  # the app's own message dict, kept alive by ``refs`` (its strings are shared)
WINDOW = 16
"""Messages seen last, compared by value on every call (see :meth:`ChainCache.known_prefix`)."""


class ChainCache:
    """Remembers each conversation's last list, so the next prepare() hashes only what is new.

    Apps resend the whole list every turn. Each entry keeps the app's message objects
    (``refs``), copies of them (``snapshots``), their chain digests and the positions of
    the system/developer messages; only the messages after the known prefix are
    validated, hashed and copied. When the new list only extends the old one (the usual
    turn), the entry grows in place instead of being copied.

    Entries are keyed by user and conversation (the conversation id, else the list's
    first two texts) and evicted least recently used once their estimated size passes
    ``max_bytes``, so memory is bounded however many conversations pass.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """The estimated size of what the cache holds."""
        return self._held

    def known_prefix(
        self, messages: Sequence[Any], user: str | None, conversation_id: str | None = None
    ) -> int:
        """How many leading messages equal the last list seen for this conversation.

        The rule, for a list of ``k`` known messages followed by new ones:

        - **Cheap proof (O(new))**, when the list grew (more than ``k`` messages, a
          ``list``), holds the same object as last time at every known position (or one
          equal to it: a pointer comparison in C, about 2 ns a message), and the
          leading system/developer messages and the last :data:`WINDOW` known messages
          still equal their snapshots (so a system prompt or a recent message edited in
          place is seen): the first ``k`` are known.
        - **Full check (O(N) comparison with the snapshots)** otherwise: a list that did
          not grow (a retry, an edit, a regeneration), a message replaced, deleted,
          inserted or moved, another sequence type. It finds the first difference.

        Not seen: a message dict passed before and edited *in place* (the same object,
        mutated) outside those compared positions while the list also grew. Give such an
        edit a new dict (``messages[i] = {**messages[i], "content": ...}``), as the
        SDKs' and frameworks' message objects do, or send the list once unchanged.
        """
        entry = self._entry(_cache_key(messages, user, conversation_id))
        if entry is None:
            return 0
        known = len(entry.snapshots)
        if len(messages) > known and type(messages) is list and self._unchanged(entry, messages):
            return known
        with self._lock:
            snapshots = entry.settled()
        length = min(len(snapshots), len(messages))
        if length == len(snapshots) and messages[:length] == snapshots:
            return length
        return next((i for i in range(length) if messages[i] != snapshots[i]), length)

    def _unchanged(self, entry: _Entry, messages: list[Any]) -> bool:
        """The cheap proof of :meth:`known_prefix` for ``entry``'s known messages."""
        with self._lock:
            refs, snapshots = entry.refs, entry.snapshots
            known = len(snapshots)
            if len(refs) != known:
                return False
            refs.extend(messages[known:])  # so the two lists compare whole, in C
            try:
                same = refs == messages
            finally:
                del refs[known:]
            if not same:
                return False
            lead = min(_leading(entry.controls), known)
            checked = itertools.chain(range(lead), range(max(lead, known - WINDOW), known))
            snapshot = entry.snapshot
            return all(messages[i] == snapshot(i) for i in checked)

    def chain(
        self,
        messages: Sequence[Mapping[str, Any]],
        user: str | None,
        known: int,
        conversation_id: str | None = None,
        *,
        check: bool = False,
    ) -> Chain:
        """Digests and control positions of ``messages``, reusing the first ``known``.

        ``check``: first validate the messages after ``known``, as
        ``validate_messages(messages, known_valid=known)`` does (same errors); the usual
        messages are checked in the pass that hashes them (see :func:`_plain_entry`)."""
        key = _cache_key(messages, user, conversation_id)
        entry = self._entry(key) if known else None
        if entry is None or known > len(entry.digests):
            entry, known = None, 0
        previous = entry.digests[known - 1] if entry is not None and known else None
        new = messages[known:]
        if key is None:
            if check:
                validate_messages(messages, known_valid=known)
            digests = chain_digests(new, user)
            controls = [i for i, m in enumerate(new) if m.get("role") in CONTROL_ROLES]
            return Chain(HexDigests(digests, len(digests)), controls)
        grown = _remember_checked(new, user, previous, known) if check else None
        done = 0 if grown is None else len(grown.digests)
        if grown is None or done < len(new):
            if check:
                validate_messages(messages, known_valid=known + done)
            grown = _remember_rest(new, user, previous, known, grown)
        with self._lock:
            entry = self._grow(key, entry, known, grown)
            return Chain(HexDigests(entry.digests, len(messages)), entry.controls)

    def digests(
        self,
        messages: Sequence[Mapping[str, Any]],
        user: str | None,
        known: int,
        conversation_id: str | None = None,
    ) -> HexDigests:
        """Digests of ``messages``, reusing the first ``known`` from the cache."""
        return self.chain(messages, user, known, conversation_id).hashes

    def clear(self) -> None:
        """Forget every conversation (after an erasure)."""
        with self._lock:
            self._entries.clear()
            self._held = 0

    def _grow(self, key: tuple[Any, ...], entry: _Entry | None, known: int, new: _Entry) -> _Entry:
        """Extend ``entry`` in place when it is still the stored one and ``known`` is its
        whole length; else replace it (views handed out earlier keep their lists)."""
        current = self._entries.get(key)
        added = new.size + (_DIGEST_BYTES + _REF_BYTES) * len(new.digests)
        if entry is not None and entry is current and known == len(entry.digests):
            entry.extend(new)
            entry.size += added
            self._held += added
        else:
            if current is not None:
                self._held -= current.size
            if entry is not None:
                share = entry.size * known // max(len(entry.digests), 1)
                entry = entry.head(known, share)
                entry.extend(new)
                entry.size += added
            else:
                entry = new
                entry.size = added
            self._entries[key] = entry
            self._held += entry.size
        self._entries.move_to_end(key)
        self._evict()
        return entry

    def _evict(self) -> None:
        while self._held > self.max_bytes and self._entries:
            _key, evicted = self._entries.popitem(last=False)
            self._held -= evicted.size

    def _entry(self, key: tuple[Any, ...] | None) -> _Entry | None:
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry


class _Entry:
    """One conversation: the app's message objects, copies of them, their digests, the
    positions of the control messages, and the estimated size in bytes.

    The copies of a long run of plain messages (a cold start) are made only when first
    compared whole: until then ``snapshots`` holds None there and ``lazy`` the run's
    start and the roles and texts the copies will hold (strings do not change, so
    they are what a copy made then would have held)."""

    __slots__ = ("controls", "digests", "lazy", "refs", "size", "snapshots")

    def __init__(
        self,
        refs: list[Any],
        snapshots: list[Any],
        digests: list[bytes],
        controls: list[int],
        size: int,
    ):
        self.refs = refs
        self.snapshots = snapshots
        self.digests = digests
        self.controls = controls
        self.size = size
        self.lazy: tuple[int, list[Any], list[Any]] | None = None

    def snapshot(self, index: int) -> Any:
        """The copy of message ``index``."""
        lazy = self.lazy
        if lazy is not None and self.snapshots[index] is None:
            at = index - lazy[0]
            return {"role": lazy[1][at], "content": lazy[2][at]}
        return self.snapshots[index]

    def settled(self) -> list[Any]:
        """``snapshots`` with every copy made (call under the cache's lock)."""
        if self.lazy is not None:
            start, roles, texts = self.lazy
            self.snapshots[start : start + len(roles)] = map(_plain_copy, roles, texts)
            self.lazy = None
        return self.snapshots

    def extend(self, new: _Entry) -> None:
        if new.lazy is not None:
            if self.lazy is None:
                start, roles, texts = new.lazy
                self.lazy = (len(self.snapshots) + start, roles, texts)
            else:
                new.settled()
        self.refs.extend(new.refs)
        self.snapshots.extend(new.snapshots)
        self.digests.extend(new.digests)
        self.controls.extend(new.controls)

    def head(self, known: int, size: int) -> _Entry:
        """A new entry holding the first ``known`` messages (these lists are kept as they are)."""
        controls = self.controls[: bisect.bisect_left(self.controls, known)]
        return _Entry(
            self.refs[:known], self.settled()[:known], self.digests[:known], controls, size
        )


def _plain_copy(role: Any, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


@dataclass(frozen=True)
class Chain:
    """A path's hashes and the positions of its system/developer messages. ``controls``
    may be shared and grow later: only positions below ``len(hashes)`` belong to it."""

    hashes: HexDigests
    controls: Sequence[int]


def _leading(controls: Sequence[int]) -> int:
    """How many messages at the start are system/developer messages."""
    lead = 0
    while lead < len(controls) and controls[lead] == lead:
        lead += 1
    return lead


def _cache_key(
    messages: Sequence[Any], user: str | None, conversation_id: str | None
) -> tuple[Any, ...] | None:
    if conversation_id is not None:
        return (user, conversation_id)
    if len(messages) < 2 or type(messages[0]) is not dict or type(messages[1]) is not dict:
        return None
    first, second = messages[0].get("content"), messages[1].get("content")
    if type(first) is not str or type(second) is not str:
        return None
    return (user, None, first, second)


_PLAIN_SIZE = 232 + 2 * 100 + len("role") + len("content")


def _remember(
    messages: Sequence[Any], user: str | None, previous: bytes | None, offset: int
) -> _Entry:
    """An entry for ``messages`` (at ``offset`` of their list): their digests (as
    :func:`chain_digests`, ``previous`` the digest before them), copies, control
    positions and estimated size, in one pass. A dict of strings is copied shallow
    (its strings shared, counted once here), anything else deep (counted as twice its
    repr)."""
    sha256 = hashlib.sha256
    fast = FAST_PREFIX
    if previous is None:
        previous = root_digest(user)
    entry = _Entry(list(messages), [], [], [], 0)
    digests, snapshots, controls = entry.digests, entry.snapshots, entry.controls
    size = 0
    for index, message in enumerate(entry.refs, offset):
        role = message.get("role")
        if role in CONTROL_ROLES:
            controls.append(index)
        content = message.get("content")
        prefix = fast.get(role) if len(message) == 2 else None
        if prefix is not None and type(content) is str:
            try:
                body = prefix + content.encode()
            except UnicodeEncodeError:
                body = utf8_bytes(index, content)
            previous = sha256(previous + body).digest()
            digests.append(previous)
            if type(message) is dict:  # {"role": <str>, "content": <str>}: the common one
                snapshots.append(message.copy())
                size += _PLAIN_SIZE + len(role) + len(content)
                continue
        else:
            previous = sha256(previous + b"j" + json_bytes(index, message)).digest()
            digests.append(previous)
        if type(message) is dict and all(type(v) is str for v in message.values()):
            snapshots.append(message.copy())
            size += 232 + sum(map(len, message.values())) + sum(100 + len(k) for k in message)
        else:
            snapshots.append(copy.deepcopy(message))
            size += 232 + 2 * len(repr(message))
    entry.size = size
    return entry


def _remember_checked(
    messages: Sequence[Any], user: str | None, previous: bytes | None, offset: int
) -> _Entry | None:
    """:func:`_remember` for the leading valid plain messages of ``messages`` (dicts
    ``{"role": <system, developer, user or assistant>, "content": <str>}`` of valid text
    within the limit, those ``validate_messages`` passes on its fast path), checked in
    the same single pass that hashes them and keeps their roles and texts: on a cold
    start that is every message, and touching each once is what keeps it fast (separate
    passes each miss the caches on every message of a large list). Stops before the
    first other message; None if that is the first."""
    if type(messages) is not list:
        return None
    sha256, encode = hashlib.sha256, str.encode
    chat, control = _CHAT_PREFIX, _CONTROL_PREFIX
    if previous is None:
        previous = root_digest(user)
    digests: list[bytes] = []
    roles: list[Any] = []
    texts: list[Any] = []
    controls: list[int] = []
    keep, keep_role, keep_text = digests.append, roles.append, texts.append
    try:
        for message in messages:  # kept lean: this runs once per stored message
            if type(message) is not dict or len(message) != 2:
                break
            role: Any = message["role"]
            content: Any = message["content"]
            prefix = chat.get(role)
            if prefix is None:
                prefix = control.get(role)
                if prefix is None:
                    break
                controls.append(offset + len(digests))
            if type(content) is not str or len(content) > MAX_TEXT_CHARS:
                break
            previous = sha256(previous + prefix + encode(content)).digest()
            keep(previous)
            keep_role(role)
            keep_text(content)
    except (KeyError, TypeError, UnicodeEncodeError):  # no role, unhashable, lone surrogate
        pass
    if len(controls) and controls[-1] >= offset + len(digests):
        controls.pop()  # the message it names stopped the pass
    done = len(digests)
    if not done:
        return None
    size = _PLAIN_SIZE * done + sum(map(len, roles)) + sum(map(len, texts))
    if done < _LAZY_RUN:
        return _Entry(messages[:done], [*map(_plain_copy, roles, texts)], digests, controls, size)
    entry = _Entry(messages[:done], [None] * done, digests, controls, size)
    entry.lazy = (0, roles, texts)
    return entry


def _remember_rest(
    messages: Sequence[Any],
    user: str | None,
    previous: bytes | None,
    offset: int,
    head: _Entry | None,
) -> _Entry:
    """:func:`_remember` for ``messages``, the first of them already in ``head``."""
    if head is None:
        return _remember(messages, user, previous, offset)
    done = len(head.digests)
    rest = _remember(messages[done:], user, head.digests[-1], offset + done)
    head.extend(rest)
    head.size += rest.size
    return head


class HexDigests(Sequence[str]):
    """The first ``length`` chain digests as hex strings, converted only where looked at.

    ``digests`` may grow later (the cache extends it in place); this view keeps its length.
    """

    def __init__(self, digests: list[bytes], length: int):
        self._digests = digests
        self._length = length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._digests[i].hex() for i in range(self._length)[index]]
        return self._digests[range(self._length)[index]].hex()

    def digest(self, index: int) -> bytes:
        """The digest at ``index`` (0 <= index < len), as bytes: no hex string made."""
        if not 0 <= index < self._length:
            raise IndexError(index)
        return self._digests[index]


def digest_reader(hashes: Sequence[str]) -> Callable[[int], bytes]:
    """How to read the chain digest at an index of ``hashes`` as bytes: a view's own
    (:meth:`HexDigests.digest`: no hex string made), else from its hex."""
    if type(hashes) is HexDigests:
        return hashes.digest
    return lambda index: bytes.fromhex(hashes[index])
