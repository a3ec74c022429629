"""A long history not folded yet, served without folding it first.

A request over a hard limit (the model's context window less the reply, or
``max_prompt_tokens``) needs a fold to fit. When the fold is small (the tail grew past
the limit) it runs on the request path, as it always has. When it is large (an app
arrives with a long history the store has never seen, or the folds fell far behind)
it would cost the request what the whole span costs to summarize: 10,000 messages are
about two seconds of the extractive summarizer, many calls of a model. So with folds
in the background (``background=True``, the default) a fold of more than
:data:`LARGE_FOLD_TOKENS` is not run on the request path: prepare() sends what
``trim_messages`` would, the system and developer messages, the summary it has (if
any) and the newest messages that fit, cut at a legal place (no tool result without
its call, the newest user turn whole), leaving room for the recall message, which
searches everything not sent. The fold is scheduled as any due fold, and the first
prepare() after it uses its summary. Every message is stored before the cut is chosen,
and the ledger counts exactly what was sent. With ``background=False`` the fold runs
synchronously, as before.
"""

from __future__ import annotations

from itertools import accumulate

from sqlalchemy import Connection

from .._options import TrimmerOptions
from .._text.tokens import REPLY_PRIMING
from .path import StoredPath, token_rows
from .plan import Plan, reply_cap
from .recall import recall_cap
from .window import control_indexes, latest_cut

LARGE_FOLD_TOKENS = 16_384
"""Unfolded tokens past which a fold is not run on the request path when folds are in
the background (the extractive summarizer folds that many in about 50 ms)."""


def defers(plan: Plan, options: TrimmerOptions) -> bool:
    """Whether a request over a hard limit is cut rather than folded now: folds are in
    the background and the tokens not yet folded are more than :data:`LARGE_FOLD_TOKENS`."""
    return options.background and plan.tail_tokens > LARGE_FOLD_TOKENS


def prompt_limit(path: StoredPath, options: TrimmerOptions) -> int:
    """The most prompt tokens a request may have: the window less the reply, and at most
    ``max_prompt_tokens``."""
    limit = path.info.context_window - reply_cap(path, options)
    if options.max_prompt_tokens is not None:
        limit = min(limit, options.max_prompt_tokens)
    return limit


def newest_fit(
    connection: Connection, path: StoredPath, plan: Plan, options: TrimmerOptions
) -> int | None:
    """The earliest legal cut at or after ``plan``'s summary whose request (controls,
    summary, messages from the cut on) leaves room for recall under the prompt limit;
    None if even the newest user turn alone does not (then a fold must run)."""
    messages, start = path.messages, plan.start
    budget = prompt_limit(path, options) - recall_cap(path, options)
    fixed = plan.summary_tokens + REPLY_PRIMING + path.tools_tokens
    controls = control_indexes(messages, 0, len(messages), path.controls)
    control_tokens = {i: row[0] for i, row in token_rows(connection, path, controls).items()}
    running = list(accumulate(path.new_tokens, initial=path.path_before))

    def before(cut: int) -> int:  # tokens of messages[:cut]
        if cut >= path.new_from:
            return running[cut - path.new_from]
        return token_rows(connection, path, [cut - 1])[cut - 1][1] if cut else 0

    def prompt(cut: int) -> int:
        kept = sum(tokens for i, tokens in control_tokens.items() if i < cut)
        return fixed + kept + path.total_tokens - before(cut)

    last = max(latest_cut(messages), start)
    if prompt(last) > budget:
        return None
    low, high = start, last
    while low < high:  # the prompt only shrinks as the cut moves later
        middle = (low + high) // 2
        if prompt(middle) <= budget:
            high = middle
        else:
            low = middle + 1
    while low < last and messages[low]["role"] == "tool":
        low += 1
    return low
