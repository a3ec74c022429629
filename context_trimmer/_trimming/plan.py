"""Planning the request to send: pure functions, no database, no network.

Given a stored path, the deepest summary on it and the token counts of the messages
involved, :func:`plan_request` builds ``[system][summary][verbatim tail]`` with system
and developer messages compressed, and counts its prompt tokens exactly from the
stored per-message counts (never re-encoding the history). The other functions are
the limits: the reply cap, the hard prompt limit, and when a fold is due.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._exceptions import PromptTooLargeError
from .._options import TrimmerOptions
from .._store.summaries import StoredSummary
from .._text.tokens import REPLY_PRIMING
from .path import StoredPath, start_of
from .recall import Recalled, newest_user, recall_cap
from .window import assemble, control_indexes, conversational_count

Message = Mapping[str, Any]
SUMMARY_HEADER = "Summary of the earlier conversation:\n"
MIN_SUMMARY_TOKENS = 16
"""The smallest budget a summary ever gets (a fold to fit a hard limit may shrink it)."""
SUMMARY_FLOOR = 200
"""The smallest budget of a summary written by a model (about 150 words; never above
``summary_tokens``): docs/summaries.md says how it was chosen."""
MIN_COMPRESSION = 2
"""A summary the floor raised is written only once what it replaces (the current
summary and the turns folded) is at least this many times its budget."""


@dataclass(frozen=True)
class Plan:
    """The messages to send and their exact prompt tokens."""

    messages: list[Message]
    prompt_tokens: int
    tail_tokens: int
    summary: StoredSummary | None
    start: int
    summary_tokens: int
    compression_saved: int = 0
    recall_tokens: int = 0


@dataclass(frozen=True)
class Compressor:
    """How system and developer messages are rewritten: ``compress`` gives the message
    to send instead (the same object when unchanged), ``count`` its tokens."""

    compress: Callable[[Message], Message]
    count: Callable[[Message], int]


def summary_message(summary: StoredSummary) -> Message:
    """The system message that carries ``summary``."""
    return {"role": "system", "content": SUMMARY_HEADER + summary.text}


def rows_needed(
    path: StoredPath, start: int, compressing: bool, cut: int | None = None
) -> list[int]:
    """Message indexes whose token counts :func:`plan_request` needs (``cut``: as
    there)."""
    messages, positions = path.messages, path.controls
    window = start if cut is None else cut
    folded_control = control_indexes(messages, 0, window, positions) if window else []
    tail_control = (
        control_indexes(messages, window, len(messages), positions) if compressing else []
    )
    before = [index - 1 for index in {start, window} if index]
    return [*folded_control, *tail_control, *before]


def plan_request(
    path: StoredPath,
    summary: StoredSummary | None,
    summary_tokens: int,
    rows: Mapping[int, tuple[int, int]],
    compressor: Compressor | None,
    cut: int | None = None,
) -> Plan:
    """What to send for ``path`` with ``summary`` (of ``summary_tokens`` as a message);
    ``rows`` maps the indexes from :func:`rows_needed` to (tokens, running total).
    ``cut`` (at or after the summary's start): send the messages from there on only,
    those between the summary and the cut neither summarized nor sent (see
    ``_trimming.cut``); the plan's ``tail_tokens`` are still all those after the summary."""
    start = start_of(summary)
    window = start if cut is None else cut
    sent, control = assemble(
        path.messages,
        window,
        None if summary is None else summary_message(summary),
        path.controls,
    )
    before_window = rows[window - 1][1] if window else 0
    before_tail = rows[start - 1][1] if start else 0
    tail_tokens = path.total_tokens - before_tail
    if summary is None:
        summary_tokens = 0
    prompt = (
        sum(rows[i][0] for i in control)
        + summary_tokens
        + path.total_tokens
        - before_window
        + REPLY_PRIMING
        + path.tools_tokens
    )
    saved = 0
    if compressor is not None:
        tail_control = control_indexes(path.messages, window, len(path.messages), path.controls)
        sent, saved = _compress(path, sent, [*control, *tail_control], rows, compressor)
    return Plan(sent, prompt - saved, tail_tokens, summary, start, summary_tokens, saved)


def recall_budget(path: StoredPath, prompt_tokens: int, options: TrimmerOptions) -> int:
    """The recall message's budget: ``recall_tokens``, within the room a prompt of
    ``prompt_tokens`` leaves under the hard limits (so recall never forces a fold) and
    under the full list's own tokens (so the request is never larger than untrimmed)."""
    baseline = path.total_tokens + REPLY_PRIMING + path.tools_tokens
    room = min(baseline, path.info.context_window - reply_cap(path, options)) - prompt_tokens
    if options.max_prompt_tokens is not None:
        room = min(room, options.max_prompt_tokens - prompt_tokens)
    return max(0, min(recall_cap(path, options), room))


def with_recall(path: StoredPath, plan: Plan, recalled: Recalled) -> Plan:
    """``plan`` with the ``recalled`` message right before the newest user message
    (which is in the verbatim tail, so the plan ends with the same messages as the path)."""
    question = newest_user(path.messages)
    if recalled.message is None or question is None:
        return plan
    at = len(plan.messages) - (len(path.messages) - question)
    sent = [*plan.messages[:at], recalled.message, *plan.messages[at:]]
    return replace(
        plan,
        messages=sent,
        prompt_tokens=plan.prompt_tokens + recalled.tokens,
        recall_tokens=recalled.tokens,
    )


def _compress(
    path: StoredPath,
    sent: list[Message],
    indexes: Sequence[int],
    rows: Mapping[int, tuple[int, int]],
    compressor: Compressor,
) -> tuple[list[Message], int]:
    """Swap in the compressed system/developer messages; returns the tokens saved."""
    replaced: dict[int, Message] = {}
    saved = 0
    for index in indexes:
        original = path.messages[index]
        compressed = compressor.compress(original)
        if compressed is not original:
            replaced[id(original)] = compressed
            saved += rows[index][0] - compressor.count(compressed)
    if not replaced:
        return sent, 0
    return [replaced.get(id(m), m) for m in sent], saved


def reply_cap(path: StoredPath, options: TrimmerOptions) -> int:
    """The reply's ``max_tokens``: the call's, else the configured default, within the
    model's output limit."""
    wanted = path.max_tokens if path.max_tokens is not None else options.max_tokens
    return min(wanted, path.info.max_output)


def over_limit(path: StoredPath, prompt_tokens: int, options: TrimmerOptions) -> bool:
    """Whether a prompt of ``prompt_tokens`` crosses a hard limit (so a fold must run now)."""
    if options.max_prompt_tokens is not None and prompt_tokens > options.max_prompt_tokens:
        return True
    return prompt_tokens + reply_cap(path, options) > path.info.context_window


def check_fits(path: StoredPath, prompt_tokens: int, options: TrimmerOptions) -> None:
    """Raise :class:`PromptTooLargeError` when even the smallest request is too large."""
    info = path.info
    limit = info.context_window - 1
    if options.max_prompt_tokens is not None:
        limit = min(limit, options.max_prompt_tokens)
    if prompt_tokens > limit:
        raise PromptTooLargeError(
            f"the smallest valid request is {prompt_tokens} prompt tokens, over the limit "
            f"of {limit} for {info.name}: the newest user turn alone is too large. Shorten "
            "it, or raise max_prompt_tokens / the model's context_window.",
            prompt_tokens=prompt_tokens,
            limit=limit,
        )


def summary_budget(replaced: int, options: TrimmerOptions, floor: int) -> int:
    """The budget of a summary replacing ``replaced`` tokens of history (less its
    system/developer messages): ``summary_share`` of them, at least ``floor``, at most
    ``summary_tokens`` (``summary_tokens`` itself without a share)."""
    if options.summary_share is None:
        return options.summary_tokens
    share = math.ceil(options.summary_share * replaced)
    return min(options.summary_tokens, max(floor, share))


def worth_a_summary(replaced: int, replacing: int, options: TrimmerOptions, floor: int) -> bool:
    """Whether the summary of a fold is worth writing now: its budget is the share of
    the ``replaced`` history (or ``summary_tokens``), or else the ``floor`` raised it
    and the fold waits until what it replaces (``replacing``: the current summary and
    the turns folded) is ``MIN_COMPRESSION`` times that budget. So a short chat folds
    less often, into summaries large enough to hold its facts; a long one (whose share
    is over the floor) folds as before."""
    if options.summary_share is None or options.summary_tokens < floor:
        return True
    if math.ceil(options.summary_share * replaced) >= floor:
        return True
    return replacing >= MIN_COMPRESSION * floor


def fold_due(path: StoredPath, start: int, tail_tokens: int, options: TrimmerOptions) -> bool:
    """A fold is due once the verbatim tail has grown ``fold_every`` past ``keep_last``
    messages (or 1.5x past ``keep_tokens``)."""
    if conversational_count(path.messages, start) > options.keep_last + options.fold_every:
        return True
    return options.keep_tokens is not None and tail_tokens > options.keep_tokens * 3 // 2
