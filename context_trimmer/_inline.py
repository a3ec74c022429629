"""Store work run on the event loop itself, as long as it cannot wait.

An async caller's store work (a prepare(), the rate-limit budget, the bookkeeping of an
answer) on an SQLite store is a millisecond or two of CPU. Handing it to a thread and
back costs about as much again: the two threads take turns at the GIL, and each
turn is a futex wake-up and a context switch (the gateway measured 2 ms of CPU per
request on them, a third of its throughput). So :meth:`Database.offload` first runs the
work on the calling thread, here, in *no-wait* mode, and only work that would wait goes
to the store's lane (``_store.lane``), where waiting is harmless.

In no-wait mode, whatever would wait or run long raises :class:`WouldWait` before it
starts, and the lane runs the whole work again. A transaction the attempt was in rolls
back; one it committed stays, and is found done (a prepare() over a hard limit has
stored its messages, content-addressed, before it must fold; the lane's prepare() finds
them stored). Work that records something and then may wait must not be run again
whole: the async wrapper's prepare() and quota (``Sender.prepare_and_start``) hand the
recorded prepare() to the lane and take the quota there. What raises it:

- ``Database.writing()`` when another thread of this process holds the SQLite write lock,
  or another process holds the file's (``BEGIN IMMEDIATE`` without a busy timeout);
- a prepare() with more than :data:`MAX_NEW_MESSAGES` new messages (hashing, counting
  and storing them is O(new), and after a restart a whole history is new), or more than
  :data:`MAX_NEW_CHARS` characters in them (image data URLs too): checked against what
  this process saw before hashing, and against what is stored before storing;
- an exact count of a newest user turn long enough to be over the prompt limit;
- a prepare() over a hard limit, which must fold now (a summarizer call);
- the first use of an encoding in the process (loading it takes 0.4 to 0.8 s);
- a system prompt compressed by the app's callable for the first time;
- bookkeeping that failed, which is retried after pauses (``keep_books``).

Reads never wait on SQLite in WAL mode. PostgreSQL stores are never run inline: their
statements wait on the network.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "MAX_NEW_CHARS",
    "MAX_NEW_MESSAGES",
    "WouldWait",
    "attempt",
    "no_wait",
    "refuse",
    "refuse_long",
]

T = TypeVar("T")

MAX_NEW_MESSAGES = 16
"""A prepare() with more new messages than this is not run inline."""
MAX_NEW_CHARS = 64 * 1024
"""Nor one whose new messages hold more text than this (characters)."""


class WouldWait(BaseException):
    """Work run inline would wait or run long: it is run again on the store's lane.

    A BaseException, so that no ``except Exception`` on the way mistakes it for a
    failure of the work."""


class _State(threading.local):
    no_wait = False


_state = _State()


def no_wait() -> bool:
    """Whether this thread is running store work inline (nothing may wait)."""
    return _state.no_wait


def refuse(reason: str) -> None:
    """Raise :class:`WouldWait` (saying ``reason``) if nothing may wait here."""
    if _state.no_wait:
        raise WouldWait(reason)


def refuse_long(messages: Sequence[Mapping[str, Any]], known: int) -> None:
    """Refuse, inline, a list whose messages from ``known`` on are too many or too long."""
    if not _state.no_wait:
        return
    new = len(messages) - known
    if new > MAX_NEW_MESSAGES:
        raise WouldWait(f"{new} new messages")
    if sum(_text_size(message) for message in messages[known:]) > MAX_NEW_CHARS:
        raise WouldWait("long new messages")


def attempt(function: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
    """``(True, function(*args))`` run here in no-wait mode, or ``(False, None)`` if it
    would have waited (nothing of it done)."""
    _state.no_wait = True
    try:
        return True, function(*args)
    except WouldWait:
        return False, None
    finally:
        _state.no_wait = False


def _text_size(message: Any) -> int:
    """The characters of every string in ``message`` (text, tool-call arguments, image
    data URLs), walked without recursion (validation, later, says what is malformed)."""
    size, todo = 0, [message]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, Mapping):
            todo.extend(value.values())
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
    return size
