"""Folding: turning the oldest verbatim turns into the rolling summary.

Folding is batched for OpenAI's prompt cache: the verbatim tail grows from
``keep_last`` to ``keep_last + fold_every`` conversational messages, then those are
folded at once, so ``[system][summary]`` stays byte-identical between folds. A due
fold runs on the background thread (or when the app calls ``compact()``); only a
request over a hard limit folds synchronously, first down to ``keep_last``, then to
the newest turn alone.

Every fold runs under a database lease keyed by the span's start, so two workers never
summarize the same span. The summarizer chain is the configured summarizer, then (for
synchronous folds) the local extractive one. A failed summary is recorded as a
failure, never stored or sent.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable

from sqlalchemy import Connection

from ._background import Background
from ._db import Database
from ._exceptions import ConfigurationError, SummarizerError
from ._extractive import ExtractiveSummarizer
from ._leases import Leases
from ._options import TrimmerOptions
from ._path import StoredPath, deepest_summary, start_of, token_rows
from ._plan import SUMMARY_HEADER, reply_cap
from ._prepared import FoldResult
from ._summarizers import OpenAISummarizer, Summarizer, SummaryRequest, fold, render_transcript
from ._summary_store import StoredSummary, Summaries
from ._tokens import REPLY_PRIMING
from ._window import CONTROL_ROLES, control_indexes, tail_start

log = logging.getLogger("context_trimmer")
MIN_SUMMARY_TOKENS = 16


def summarizer_from(spec: str | Summarizer | None, *, api_key_present: bool) -> Summarizer:
    """``"extractive"``, ``"openai"``, a Summarizer, or None (OpenAI when a key is set)."""
    if spec is None:
        return OpenAISummarizer() if api_key_present else ExtractiveSummarizer()
    if spec == "extractive":
        return ExtractiveSummarizer()
    if spec == "openai":
        return OpenAISummarizer()
    if isinstance(spec, str):
        raise ConfigurationError(
            f"unknown summarizer {spec!r}; use 'extractive', 'openai' or a Summarizer object"
        )
    return spec


class Folder:
    """Decides when a fold is due and runs it: lease, budget, summarizer chain, records."""

    def __init__(
        self,
        db: Database,
        options: TrimmerOptions,
        summarizer: Summarizer,
        background: Background,
    ):
        self._db = db
        self._options = options
        self.summarizer = summarizer
        self.fallback: Summarizer = ExtractiveSummarizer()
        self._summaries = Summaries(db)
        self._leases = Leases(db)
        self._background = background

    def tail_tokens(self, path: StoredPath, start: int) -> int:
        """Tokens of the messages from ``start`` on."""
        if start == 0:
            return path.total_tokens
        with self._db.reading() as connection:
            return path.total_tokens - token_rows(connection, path, [start - 1])[start - 1][1]

    def fold_to_fit(self, path: StoredPath, fits: Callable[[], bool]) -> FoldResult:
        """Over a hard limit: fold now, down to keep_last, then to the newest turn alone,
        until ``fits()``."""
        total = FoldResult()
        limit = path.info.context_window - reply_cap(path, self._options)
        if self._options.max_prompt_tokens is not None:
            limit = min(limit, self._options.max_prompt_tokens)
        for keep_last in (self._options.keep_last, 0):
            total += self.fold(
                path, keep_last=keep_last, sync=True, prompt_limit=limit - path.tools_tokens
            )
            if fits():
                break
        return total

    def schedule(self, path: StoredPath) -> None:
        """Fold ``path`` on the background thread (once per conversation at a time)."""
        if self._options.background and path.anchor_hash is not None:
            self._background.submit_once(path.anchor_hash, lambda: self._fold_logged(path))

    def _fold_logged(self, path: StoredPath) -> FoldResult:
        try:
            return self.fold(path, keep_last=self._options.keep_last, sync=False)
        except Exception:
            log.exception("background fold failed for conversation anchor %s", path.anchor_hash)
            raise

    def fold(
        self, path: StoredPath, *, keep_last: int, sync: bool, prompt_limit: int | None = None
    ) -> FoldResult:
        """Fold everything before the tail into a new summary, under a lease.

        With ``prompt_limit`` (a synchronous fold to fit a hard limit) the summary's
        budget shrinks so that the whole request fits under it.
        """
        with self._db.reading() as connection:
            summary = deepest_summary(connection, self._summaries, path)
        start = start_of(summary)
        cut = tail_start(
            path.messages,
            start,
            keep_last,
            keep_tokens=self._options.keep_tokens,
            tokens_of=lambda i: path.counter.message(path.messages[i]),
        )
        evicted = [m for m in path.messages[start:cut] if m["role"] not in CONTROL_ROLES]
        if not evicted or path.anchor_hash is None:
            return FoldResult(reason="nothing to fold")
        lease = f"fold:{summary.covers_hash if summary else path.anchor_hash}"
        owner = uuid.uuid4().hex
        if not self._leases.acquire(lease, owner, self._options.lease_seconds):
            return FoldResult(reason="another worker is folding this span")
        with self._db.reading() as connection:
            if start_of(deepest_summary(connection, self._summaries, path)) != start:
                self._leases.release(lease, owner)
                return FoldResult(reason="another worker folded this span")
            budget = self._summary_budget(connection, path, cut, prompt_limit)
        request = SummaryRequest(
            previous=summary.text if summary else None,
            transcript=render_transcript(evicted),
            budget=budget,
            count_tokens=path.counter.text,
        )
        try:
            result = self._summarize(path, cut, request, summary, len(evicted), sync=sync)
        except SummarizerError as error:
            if sync:
                self._leases.release(lease, owner)
            # A failed background fold keeps its lease until it expires: that is the
            # back-off before the next attempt at the same span.
            return FoldResult(
                tokens_in=error.tokens_in,
                tokens_out=error.tokens_out,
                failures=self._failures_per_attempt(sync),
                reason=str(error),
            )
        except BaseException:
            self._leases.release(lease, owner)
            raise
        self._leases.release(lease, owner)
        return result

    def _summary_budget(
        self, connection: Connection, path: StoredPath, cut: int, prompt_limit: int | None
    ) -> int:
        """``summary_tokens``, or ``summary_share`` of the history before ``cut`` (not
        its control messages), shrunk to fit ``prompt_limit``; from stored counts."""
        control = control_indexes(path.messages, 0, cut)
        rows = token_rows(connection, path, [cut - 1, *control])
        before_tail = rows[cut - 1][1]
        control_tokens = sum(rows[i][0] for i in control)
        budget = self._options.summary_tokens
        if self._options.summary_share is not None:
            share = math.ceil(self._options.summary_share * (before_tail - control_tokens))
            budget = max(MIN_SUMMARY_TOKENS, min(budget, share))
        if prompt_limit is None:
            return budget
        header = path.counter.message({"role": "system", "content": SUMMARY_HEADER})
        tail = path.total_tokens - before_tail
        fixed = control_tokens + tail + header + REPLY_PRIMING
        return max(MIN_SUMMARY_TOKENS, min(budget, prompt_limit - fixed))

    def _summarize(
        self,
        path: StoredPath,
        cut: int,
        request: SummaryRequest,
        summary: StoredSummary | None,
        folded: int,
        *,
        sync: bool,
    ) -> FoldResult:
        failures, spent_in, spent_out = 0, 0, 0
        chain = [self.summarizer]
        if sync and not isinstance(self.summarizer, ExtractiveSummarizer):
            chain.append(self.fallback)
        for summarizer in chain:
            try:
                result = fold(summarizer, request)
            except SummarizerError as error:
                failures += 1
                spent_in += error.tokens_in
                spent_out += error.tokens_out
                self._record_failure(path, cut, summarizer, error)
                if summarizer is chain[-1]:
                    raise SummarizerError(
                        str(error), tokens_in=spent_in, tokens_out=spent_out
                    ) from error
                continue
            label = summarizer.name
            if summarizer is not self.summarizer:
                label = f"{summarizer.name} (fallback for {self.summarizer.name})"
            summary_id = self._summaries.add(
                {
                    "anchor_hash": path.anchor_hash,
                    "conversation_id": path.conversation_id,
                    "user": path.user,
                    "covers_hash": path.hashes[cut - 1],
                    "covers_depth": cut - 1,
                    "parent_id": summary.id if summary else None,
                    "text": result.text,
                    "summarizer": label,
                    "prompt_version": summarizer.prompt_version,
                    "messages_folded": folded + (summary.messages_folded if summary else 0),
                    "tokens_in": result.tokens_in,
                    "tokens_out": result.tokens_out,
                }
            )
            return FoldResult(
                summary_id,
                folded,
                spent_in + result.tokens_in,
                spent_out + result.tokens_out,
                failures,
            )
        raise AssertionError("unreachable")

    def _failures_per_attempt(self, sync: bool) -> int:
        return 2 if sync and not isinstance(self.summarizer, ExtractiveSummarizer) else 1

    def _record_failure(
        self, path: StoredPath, cut: int, summarizer: Summarizer, error: SummarizerError
    ) -> None:
        log.warning("summary failed (%s): %s", summarizer.name, error)
        self._summaries.add_failure(
            {
                "anchor_hash": path.anchor_hash,
                "conversation_id": path.conversation_id,
                "user": path.user,
                "covers_hash": path.hashes[cut - 1],
                "summarizer": summarizer.name,
                "error": str(error)[:2000],
                "tokens_in": error.tokens_in,
                "tokens_out": error.tokens_out,
            }
        )

    def close(self) -> None:
        """Close the summarizers' clients."""
        for summarizer in (self.summarizer, self.fallback):
            close = getattr(summarizer, "close", None)
            if callable(close):
                close()
