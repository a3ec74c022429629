"""Which messages go out verbatim, and where the summary goes.

A cut at index ``c`` keeps ``messages[c:]`` verbatim and folds the conversational
messages before it into the summary. A cut is legal only at a message that is not a
tool result (tool results always directly follow the assistant message that made the
calls, so a legal cut never separates a call from any of its results, parallel calls
included), and never after the newest user message, so the newest user turn is always
whole. System and developer messages are never folded: the leading ones stay first,
the summary comes right after them, and any later ones keep their order after it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any

CONTROL_ROLES = frozenset({"system", "developer"})

Messages = Sequence[Mapping[str, Any]]


def anchor_index(messages: Messages) -> int | None:
    """Index of the first conversational (non-system, non-developer) message."""
    return next((i for i, m in enumerate(messages) if m["role"] not in CONTROL_ROLES), None)


def control_indexes(
    messages: Messages, start: int, stop: int, positions: Sequence[int] | None = None
) -> list[int]:
    """Indexes of the system and developer messages in ``messages[start:stop]``.

    ``positions``: those indexes for the whole list (sorted; any past its end ignored),
    when known, so this costs O(log n) instead of a scan of the range."""
    if positions is not None:
        return list(positions[bisect_left(positions, start) : bisect_left(positions, stop)])
    return [i for i in range(start, stop) if messages[i]["role"] in CONTROL_ROLES]


def conversational_count(messages: Messages, start: int) -> int:
    return sum(1 for m in messages[start:] if m["role"] not in CONTROL_ROLES)


def latest_cut(messages: Messages) -> int:
    """The last legal cut: the newest user message (or the last message without one)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            return index
    return _legal_at_or_before(messages, len(messages) - 1, 0)


def _legal_at_or_before(messages: Messages, cut: int, start: int) -> int:
    while cut > start and messages[cut]["role"] == "tool":
        cut -= 1
    return cut


def tail_start(
    messages: Messages,
    start: int,
    keep_last: int,
    *,
    keep_tokens: int | None = None,
    tokens_of: Callable[[int], int] | None = None,
) -> int:
    """Where the verbatim tail begins when folding everything before it.

    The tail holds the last ``keep_last`` conversational messages, grown backwards to a
    legal cut; with ``keep_tokens`` it is then shrunk, cut by legal cut, until it fits,
    but never past the newest user message. Never before ``start``.
    """
    cut, seen = len(messages), 0
    while cut > start and seen < keep_last:
        cut -= 1
        if messages[cut]["role"] not in CONTROL_ROLES:
            seen += 1
    limit = max(latest_cut(messages), start)
    cut = _legal_at_or_before(messages, min(cut, limit), start)
    if keep_tokens is not None and tokens_of is not None:
        cut = _shrink_to_tokens(messages, cut, limit, keep_tokens, tokens_of)
    return max(cut, start)


def _shrink_to_tokens(
    messages: Messages, cut: int, limit: int, keep_tokens: int, tokens_of: Callable[[int], int]
) -> int:
    tail = sum(tokens_of(i) for i in range(cut, len(messages)))
    while tail > keep_tokens and cut < limit:
        following = cut + 1
        while following < limit and messages[following]["role"] == "tool":
            following += 1
        tail -= sum(tokens_of(i) for i in range(cut, following))
        cut = following
    return cut


def assemble(
    messages: Messages,
    start: int,
    summary_message: Mapping[str, Any] | None,
    positions: Sequence[int] | None = None,
) -> tuple[list[Mapping[str, Any]], list[int]]:
    """The messages to send when ``messages[:start]`` is covered by the summary (or, with
    no ``summary_message``, left out), and the indexes of the folded-region control
    messages that are sent anyway (``positions``: see :func:`control_indexes`)."""
    if start == 0:
        return list(messages), []
    first = anchor_index(messages)
    first = start if first is None else min(first, start)
    kept = control_indexes(messages, first, start, positions)
    summary = [] if summary_message is None else [summary_message]
    sent = [*messages[:first], *summary, *(messages[i] for i in kept), *messages[start:]]
    return sent, [*range(first), *kept]
