"""Folding: turning the oldest verbatim turns into the rolling summary.

Folding is batched for OpenAI's prompt cache: the verbatim tail grows from
``keep_last`` to ``keep_last + fold_every`` conversational messages, then those are
folded at once, so ``[system][summary]`` stays byte-identical between folds. A due
fold runs on the background thread (or when the app calls ``compact()``); only a
request over a hard limit folds synchronously, first down to ``keep_last``, then to
the newest turn alone.

One failure policy for every fold, background or synchronous:

- Every fold runs under a database lease keyed by the span's start, so two workers
  never summarize the same span. A fold releases its lease however it ends.
- Any exception from a summarizer is a ``SummarizerError``: recorded as a failure,
  never stored or sent. The extractive summarizer then folds the same span at once
  (its summary is labelled ``extractive (fallback for ...)``), so trimming never pauses.
- A circuit breaker per summarizer (``_trimming.breaker``) stops calling a failing LLM for a
  cool-down; meanwhile folds go straight to the extractive summarizer.
- A synchronous fold never waits on a background one: without the lease it folds
  locally (the insert is idempotent, keyed by the covered hash), and it gives the LLM
  at most ``sync_fold_deadline`` seconds in all before the extractive summarizer folds.
- Summaries are bounded to their budget by ``_trimming.summarizers.fold``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection

from .._exceptions import ConfigurationError, SummarizerError, TrimmerError
from .._inline import refuse
from .._options import TrimmerOptions
from .._prepared import FoldResult
from .._store.db import Database
from .._store.leases import Leases
from .._store.summaries import StoredSummary, Summaries
from .._text.tokens import REPLY_PRIMING
from .background import Background
from .breaker import CircuitBreaker
from .extractive import ExtractiveSummarizer
from .path import StoredPath, deepest_summary, start_of, token_rows
from .plan import (
    MIN_COMPRESSION,
    MIN_SUMMARY_TOKENS,
    SUMMARY_FLOOR,
    SUMMARY_HEADER,
    reply_cap,
    summary_budget,
    worth_a_summary,
)
from .summarizers import (
    OpenAISummarizer,
    Summarizer,
    SummaryRequest,
    SummaryResult,
    fold,
    render_transcript,
)
from .window import CONTROL_ROLES, control_indexes, tail_start

log = logging.getLogger("context_trimmer")
T = TypeVar("T")


class FoldDeferred(TrimmerError):
    """The LLM asked to be called later (a 429): the fold's job goes back on the queue
    instead of failing (only where ``Folder.requeue`` says so: ``_trimming.queue``)."""


class FoldDispatch(Protocol):
    """Where due folds go instead of the background thread (``_trimming.queue.QueueDispatch``)."""

    def __call__(self, path: StoredPath, start: int) -> None: ...

    def close(self) -> None: ...


def summarizer_from(spec: str | Summarizer | None, *, api_key_present: bool) -> Summarizer:
    """``"extractive"``, ``"openai"``, a Summarizer, or None (OpenAI when a key is set)."""
    if spec is None:
        return OpenAISummarizer(follows_client=True) if api_key_present else ExtractiveSummarizer()
    if spec == "extractive":
        return ExtractiveSummarizer()
    if spec == "openai":
        return OpenAISummarizer(follows_client=True)
    if isinstance(spec, str):
        raise ConfigurationError(
            f"unknown summarizer {spec!r}; use 'extractive', 'openai' or a Summarizer object"
        )
    return spec


def fallback_label(summarizer: str) -> str:
    """The summarizer label of a summary the extractive fallback made instead."""
    return f"extractive (fallback for {summarizer})"


def is_fallback(label: str) -> bool:
    """Whether a stored summary's summarizer label marks it as a fallback's."""
    return "(fallback for " in label


@dataclass(frozen=True)
class FoldPlan:
    """One fold: the path, its previous summary, the span ``[start, cut)`` and the
    request for the summarizer."""

    path: StoredPath
    summary: StoredSummary | None
    start: int
    cut: int
    folded: int
    request: SummaryRequest

    @property
    def lease(self) -> str:
        return f"fold:{self.summary.covers_hash if self.summary else self.path.anchor_hash}"

    def row(self) -> dict[str, Any]:
        """The summary row's values, but for its text, summarizer and costs."""
        path, summary = self.path, self.summary
        return {
            "anchor_hash": path.anchor_hash,
            "conversation_id": path.conversation_id,
            "user": path.user,
            "covers_hash": path.hashes[self.cut - 1],
            "covers_depth": self.cut - 1,
            "parent_id": summary.id if summary else None,
            "messages_folded": self.folded + (summary.messages_folded if summary else 0),
        }


def failure_row(row: Mapping[str, Any], summarizer: str, error: SummarizerError) -> dict[str, Any]:
    """The failure record of a fold whose summary row would have been ``row``."""
    return {
        "anchor_hash": row["anchor_hash"],
        "conversation_id": row["conversation_id"],
        "user": row["user"],
        "covers_hash": row["covers_hash"],
        "summarizer": summarizer,
        "error": str(error)[:2000],
        "tokens_in": error.tokens_in,
        "tokens_out": error.tokens_out,
    }


@dataclass(frozen=True)
class Span:
    """The token figures of a fold of ``[start, cut)``, from stored counts: ``history``
    (every message before the cut but system/developer ones: what ``summary_share``
    applies to), ``folded`` (the conversational messages folded), ``control`` (the
    system/developer messages before the cut) and ``before_tail`` (all before the cut)."""

    history: int
    folded: int
    control: int
    before_tail: int


def within_deadline(work: Callable[[], T], seconds: float, what: str) -> T:
    """``work()`` on its own daemon thread; SummarizerError if it takes over ``seconds``
    (the thread is abandoned, its answer discarded)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as error:  # handed to the waiting caller, not swallowed
            future.set_exception(error)

    threading.Thread(target=run, name="context-trimmer-sync-fold", daemon=True).start()
    try:
        return future.result(timeout=max(seconds, 0.0))
    except FutureTimeout:
        raise SummarizerError(f"{what}: no summary within the fold's deadline") from None


class Folder:
    """Decides when a fold is due and runs it: lease, budget, summarizer chain, records."""

    def __init__(
        self,
        db: Database,
        options: TrimmerOptions,
        summarizer: Summarizer,
        background: Background,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._db = db
        self._options = options
        self.summarizer = summarizer
        self.fallback: Summarizer = ExtractiveSummarizer()
        breaker = getattr(summarizer, "breaker", None)
        self.breaker = breaker if isinstance(breaker, CircuitBreaker) else CircuitBreaker()
        self._summaries = Summaries(db)
        self._leases = Leases(db)
        self._background = background
        self._clock = clock
        self.dispatch: FoldDispatch | None = None  # set by Trimmer(folds="queue")
        self.requeue: Callable[[BaseException], bool] | None = None  # set by a queue worker

    @property
    def local(self) -> bool:
        """Whether the configured summarizer is the local one (no fallback, no breaker)."""
        return isinstance(self.summarizer, ExtractiveSummarizer)

    def status(self) -> dict[str, Any]:
        """The summarizer, its fallback and its breaker's state (in this process)."""
        return {
            "summarizer": self.summarizer.name,
            "fallback": None if self.local else self.fallback.name,
            "breaker": self.breaker.status().as_dict(),
        }

    def follow(self, client: T) -> T:
        """``client``, whose endpoint and key a default summarizer now uses too."""
        follow = getattr(self.summarizer, "follow", None)
        if callable(follow):
            follow(client)
        return client

    def tail_tokens(self, path: StoredPath, start: int) -> int:
        """Tokens of the messages from ``start`` on."""
        if start == 0:
            return path.total_tokens
        with self._db.reading() as connection:
            return path.total_tokens - token_rows(connection, path, [start - 1])[start - 1][1]

    def fold_to_fit(self, path: StoredPath, fits: Callable[[], bool]) -> FoldResult:
        """Over a hard limit: fold now, down to keep_last, then to the newest turn alone,
        until ``fits()``; the LLM gets ``sync_fold_deadline`` seconds in all."""
        refuse("a fold on the request path")  # inline: the lane folds (a summarizer call)
        total = FoldResult()
        limit = path.info.context_window - reply_cap(path, self._options)
        if self._options.max_prompt_tokens is not None:
            limit = min(limit, self._options.max_prompt_tokens)
        deadline = self._clock() + self._options.sync_fold_deadline
        for keep_last in (self._options.keep_last, 0):
            total += self.fold(
                path, keep_last=keep_last, prompt_limit=limit - path.tools_tokens, deadline=deadline
            )
            if fits():
                break
        return total

    def schedule(self, path: StoredPath, start: int = 0) -> None:
        """Fold ``path`` (whose span starts at ``start``) on the background thread, or
        hand it to ``dispatch`` there (once per conversation at a time)."""
        if self._options.background and path.anchor_hash is not None:
            work: Callable[[], Any] = partial(self._fold_logged, path)
            if self.dispatch is not None:
                work = partial(self.dispatch, path, start)
            self._background.submit_once(path.anchor_hash, work)

    def _fold_logged(self, path: StoredPath) -> FoldResult:
        try:
            return self.fold(path, keep_last=self._options.keep_last)
        except Exception:
            log.exception("background fold failed for conversation anchor %s", path.anchor_hash)
            raise

    def plan(
        self,
        path: StoredPath,
        *,
        keep_last: int,
        prompt_limit: int | None = None,
        eager: bool = False,
    ) -> FoldPlan | str:
        """The fold of everything before the tail, or why there is none. Unless
        ``eager`` (or a ``prompt_limit`` must be met), a model's fold waits until it
        is worth its floor budget (:func:`~._plan.worth_a_summary`)."""
        with self._db.reading() as connection:
            summary = deepest_summary(connection, self._summaries, path)
            start = start_of(summary)
            cut = self._cut(path, start, keep_last)
            evicted = [m for m in path.messages[start:cut] if m["role"] not in CONTROL_ROLES]
            if not evicted or path.anchor_hash is None:
                return "nothing to fold"
            span = self._span(connection, path, start, cut)
        if not eager and prompt_limit is None:
            reason = self._too_small(path, summary, span)
            if reason:
                return reason
        request = SummaryRequest(
            previous=summary.text if summary else None,
            transcript=render_transcript(evicted),
            budget=self._summary_budget(path, span, prompt_limit),
            count_tokens=path.counter.text,
        )
        return FoldPlan(path, summary, start, cut, len(evicted), request)

    def waits(
        self, connection: Connection, path: StoredPath, summary: StoredSummary | None
    ) -> bool:
        """Whether a due fold of ``path`` (whose deepest summary is ``summary``) waits
        for more turns, its summary not yet worth a model call (never for the local
        summarizer)."""
        if self.local:
            return False
        start = start_of(summary)
        cut = self._cut(path, start, self._options.keep_last)
        if cut <= start:
            return False
        return bool(self._too_small(path, summary, self._span(connection, path, start, cut)))

    def _cut(self, path: StoredPath, start: int, keep_last: int) -> int:
        return tail_start(
            path.messages,
            start,
            keep_last,
            keep_tokens=self._options.keep_tokens,
            tokens_of=lambda i: path.counter.message(path.messages[i]),
        )

    def _too_small(self, path: StoredPath, summary: StoredSummary | None, span: Span) -> str:
        """Why a model's fold of ``span`` waits ('' if it does not)."""
        if self.local:
            return ""
        replacing = span.folded + (path.counter.text(summary.text) if summary else 0)
        if worth_a_summary(span.history, replacing, self._options, self.floor):
            return ""
        return (
            f"too little to summarize yet ({replacing} tokens for a summary of "
            f"{self.floor}; a fold waits until it compresses {MIN_COMPRESSION}x)"
        )

    def fold(
        self,
        path: StoredPath,
        *,
        keep_last: int,
        prompt_limit: int | None = None,
        deadline: float | None = None,
        owner: str | None = None,
        eager: bool = False,
    ) -> FoldResult:
        """Fold everything before the tail into a new summary, under a lease.

        A synchronous fold (with a ``deadline``, to fit a hard limit) shrinks the
        summary's budget so the request fits under ``prompt_limit``; if a background
        fold holds the lease it folds locally instead of waiting for it. ``owner``
        names the lease's holder (a queued job's, so that its lease can be dropped when
        its worker dies; see ``_trimming.queue``); else a fresh one. ``eager``: fold even a span
        too small for a model's summary to be worth it.
        """
        plan = self.plan(path, keep_last=keep_last, prompt_limit=prompt_limit, eager=eager)
        if isinstance(plan, str):
            return FoldResult(reason=plan)
        owner = owner or uuid.uuid4().hex
        leased = self._leases.acquire(plan.lease, owner, self._options.lease_seconds)
        if not leased and deadline is None:
            return FoldResult(reason="another worker is folding this span")
        try:
            with self._db.reading() as connection:
                if start_of(deepest_summary(connection, self._summaries, path)) != plan.start:
                    return FoldResult(reason="another worker folded this span")
            llm_may_run = leased and (deadline is None or self._clock() < deadline)
            return self._summarize(plan, self._chain(llm_may_run), deadline)
        finally:
            if leased:
                self._leases.release(plan.lease, owner)

    def _chain(self, llm_may_run: bool) -> list[Summarizer]:
        """The summarizers to try in turn: the LLM (if allowed), then the local one."""
        if self.local:
            return [self.summarizer]
        if llm_may_run and self.breaker.allow():
            return [self.summarizer, self.fallback]
        return [self.fallback]

    @property
    def floor(self) -> int:
        """The smallest budget of a summary (the local summarizer's is not a model call)."""
        return MIN_SUMMARY_TOKENS if self.local else SUMMARY_FLOOR

    def _span(self, connection: Connection, path: StoredPath, start: int, cut: int) -> Span:
        """The token figures of a fold of ``[start, cut)``, from stored counts."""
        control = control_indexes(path.messages, 0, cut, path.controls)
        rows = token_rows(connection, path, [cut - 1, *control, *([start - 1] if start else [])])
        before_tail = rows[cut - 1][1]
        control_tokens = sum(rows[i][0] for i in control)
        before_start = rows[start - 1][1] if start else 0
        folded_control = sum(rows[i][0] for i in control if i >= start)
        folded = before_tail - before_start - folded_control
        return Span(before_tail - control_tokens, folded, control_tokens, before_tail)

    def _summary_budget(self, path: StoredPath, span: Span, prompt_limit: int | None) -> int:
        """The summary's budget (:func:`~._plan.summary_budget`), shrunk to fit
        ``prompt_limit``."""
        budget = summary_budget(span.history, self._options, self.floor)
        if prompt_limit is None:
            return budget
        header = path.counter.message({"role": "system", "content": SUMMARY_HEADER})
        tail = path.total_tokens - span.before_tail
        fixed = span.control + tail + header + REPLY_PRIMING
        return max(MIN_SUMMARY_TOKENS, min(budget, prompt_limit - fixed))

    def _summarize(
        self, plan: FoldPlan, chain: list[Summarizer], deadline: float | None
    ) -> FoldResult:
        failures, spent_in, spent_out, reason = 0, 0, 0, ""
        for summarizer in chain:
            try:
                result = self._call(summarizer, plan.request, deadline)
            except SummarizerError as error:
                failures += 1
                spent_in += error.tokens_in
                spent_out += error.tokens_out
                reason = str(error)
                log.warning("summary failed (%s): %s", summarizer.name, error)
                self._summaries.add_failure(failure_row(plan.row(), summarizer.name, error))
                continue
            label = summarizer.name
            if summarizer is not self.summarizer:
                label = fallback_label(self.summarizer.name)
            summary_id = self._summaries.add(
                {
                    **plan.row(),
                    "text": result.text,
                    "summarizer": label,
                    "prompt_version": summarizer.prompt_version,
                    "tokens_in": result.tokens_in,
                    "tokens_out": result.tokens_out,
                }
            )
            return FoldResult(
                summary_id,
                plan.folded,
                spent_in + result.tokens_in,
                spent_out + result.tokens_out,
                failures,
                reason,
            )
        return FoldResult(None, 0, spent_in, spent_out, failures, reason)

    def _call(
        self, summarizer: Summarizer, request: SummaryRequest, deadline: float | None
    ) -> SummaryResult:
        """One summarizer's fold; the LLM's outcome moves its breaker, and on the request
        path it has until ``deadline``."""
        if summarizer is not self.summarizer or self.local:
            return fold(summarizer, request)
        work = partial(fold, summarizer, request)
        try:
            if deadline is None:
                result = work()
            else:
                result = within_deadline(work, deadline - self._clock(), summarizer.name)
        except BaseException as error:
            if self.requeue is not None and self.requeue(error):
                raise FoldDeferred(str(error)) from error  # not the LLM's fault: no breaker
            self.breaker.failure()
            raise
        self.breaker.success()
        return result

    def close(self) -> None:
        """Close the summarizers' clients (and the queue a dispatch sends jobs to)."""
        if self.dispatch is not None:
            self.dispatch.close()
        for summarizer in (self.summarizer, self.fallback):
            close = getattr(summarizer, "close", None)
            if callable(close):
                close()
