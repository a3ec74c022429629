"""The Trimmer: prepare() on the hot path, folding off it.

prepare() validates the messages, stores what is new (content-addressed, see
``_store``), finds the deepest finished summary on the conversation's path and sends
``[system][summary][verbatim tail]`` with an exact token count and a ``max_tokens``.
It makes no network call unless the request would cross a hard limit (the model's
context window or ``max_prompt_tokens``); then it folds synchronously.

Folding is batched for OpenAI's prompt cache: the verbatim tail grows from
``keep_last`` to ``keep_last + fold_every`` conversational messages, then those
``fold_every`` are folded at once, so ``[system][summary]`` stays byte-identical between
folds. A due fold runs on a background thread (or when the app calls ``compact()``),
under a database lease, so two workers never summarize the same span. A failed
summary is recorded as a failure, never stored or sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, overload

from sqlalchemy import Connection

from ._exceptions import ConfigurationError, PromptTooLargeError, SummarizerError
from ._extractive import ExtractiveSummarizer
from ._hashing import ChainCache, canonical_json
from ._models import ModelInfo, ModelTable
from ._ratelimit import RateLimits, UserQuota
from ._report import GroupBy, Report, build_report
from ._responses import field_of
from ._retry import RetryPolicy
from ._store import HistoryStore, StoredSummary
from ._summarizers import (
    OpenAISummarizer,
    Summarizer,
    SummaryRequest,
    fold,
    render_transcript,
)
from ._system_prompt import Mode, PromptRewriter, SystemPrompts, discard
from ._tokens import REPLY_PRIMING, TokenCounter
from ._validation import validate_messages
from ._window import (
    CONTROL_ROLES,
    anchor_index,
    assemble,
    control_indexes,
    conversational_count,
    tail_start,
)
from ._wrap import Sender, WrappedClient, conversation

log = logging.getLogger("context_trimmer")
T = TypeVar("T")

Message = Mapping[str, Any]
SUMMARY_HEADER = "Summary of the earlier conversation:\n"
MIN_SUMMARY_TOKENS = 16


@dataclass(frozen=True)
class Prepared:
    """A request made lighter. ``request()`` gives the kwargs for the SDK call."""

    messages: list[Message]
    max_tokens: int
    model: str
    baseline_tokens: int
    prompt_tokens: int
    request_id: int
    conversation_id: str
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    summary_id: int | None = None
    messages_folded: int = 0
    fold_pending: bool = False
    compression_saved_tokens: int = 0
    max_tokens_param: str = "max_tokens"

    @property
    def saved_tokens(self) -> int:
        """Prompt tokens not sent: ``baseline_tokens - prompt_tokens``."""
        return self.baseline_tokens - self.prompt_tokens

    def request(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for ``client.chat.completions.create``; ``extra`` is merged in."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            self.max_tokens_param: self.max_tokens,
        }
        if self.tools:
            kwargs["tools"] = self.tools
        kwargs.update(extra)
        return kwargs


@dataclass(frozen=True)
class FoldResult:
    """What one fold did: the summary it stored (if any) and what it cost."""

    summary_id: int | None = None
    messages_folded: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    failures: int = 0
    reason: str = ""


@dataclass
class _Path:
    """One prepare() or compact() call's view of the conversation."""

    messages: Sequence[Message]
    hashes: Sequence[str]
    anchor: int | None
    counter: TokenCounter
    user: str | None
    conversation_id: str
    tools: list[dict[str, Any]] | None = None
    tools_tokens: int = 0
    max_tokens: int | None = None
    new_from: int = 0
    new_tokens: list[int] = field(default_factory=list)
    path_before: int = 0

    @property
    def info(self) -> ModelInfo:
        return self.counter.info

    @property
    def anchor_hash(self) -> str | None:
        return None if self.anchor is None else self.hashes[self.anchor]

    @property
    def total_tokens(self) -> int:
        return self.path_before + sum(self.new_tokens)


@dataclass(frozen=True)
class _View:
    messages: list[Message]
    prompt_tokens: int
    tail_tokens: int
    summary: StoredSummary | None
    start: int
    summary_tokens: int
    compression_saved: int = 0


class Trimmer:
    """Stores history in SQL and makes each chat request lighter.

    ``url``: SQLAlchemy URL of the store (default: ``$CONTEXT_TRIMMER_DB``, else a
    SQLite file under ``~/.local/share/context-trimmer``). ``keep_last``: messages sent
    verbatim after a fold; ``fold_every``: how many more may accumulate before the next
    fold; ``keep_tokens``: optional token budget for the verbatim tail.
    ``summarizer``: ``"extractive"``, ``"openai"``, a Summarizer, or None (gpt-4o-mini
    when ``OPENAI_API_KEY`` is set, else extractive). ``summary_tokens``: the summary's
    budget; with ``summary_share`` (say 0.085) the budget is instead that share of the
    history the summary replaces, growing with it up to ``summary_tokens``.
    ``max_tokens``: the default cap on each reply. ``max_prompt_tokens``: fold
    synchronously above this. ``models``: overrides of the model table.
    ``background``: fold on a worker thread when due (else call ``compact()``).
    ``system_prompt``: ``"safe"`` (default), ``"llm"``, ``"off"`` or a callable, applied
    to system and developer messages; ``protect``: regexes of lines to keep byte for
    byte; ``prompt_rewriter``: the model for ``"llm"`` (gpt-4o-mini by default).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        keep_last: int = 20,
        fold_every: int = 10,
        keep_tokens: int | None = None,
        summarizer: str | Summarizer | None = None,
        summary_tokens: int = 1000,
        summary_share: float | None = None,
        max_tokens: int = 1024,
        max_prompt_tokens: int | None = None,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        background: bool = True,
        system_prompt: Mode | Callable[[str], str] = "safe",
        protect: Sequence[str] = (),
        prompt_rewriter: PromptRewriter | None = None,
        lease_seconds: float = 120.0,
        migrate: bool = True,
    ):
        _check_count("keep_last", keep_last, minimum=0)
        _check_count("fold_every", fold_every, minimum=0)
        _check_count("max_tokens", max_tokens, minimum=1)
        _check_count("summary_tokens", summary_tokens, minimum=1)
        if summary_share is not None and (
            isinstance(summary_share, bool)
            or not isinstance(summary_share, (int, float))
            or not 0 < summary_share <= 1
        ):
            raise ConfigurationError(
                f"summary_share must be a number in (0, 1], such as 0.085; got {summary_share!r}"
            )
        if keep_tokens is not None:
            _check_count("keep_tokens", keep_tokens, minimum=1)
        if max_prompt_tokens is not None:
            _check_count("max_prompt_tokens", max_prompt_tokens, minimum=1)
        self.keep_last = keep_last
        self.fold_every = fold_every
        self.keep_tokens = keep_tokens
        self.summary_tokens = summary_tokens
        self.summary_share = summary_share
        self.max_tokens = max_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.summarizer = summarizer_from(
            summarizer, api_key_present=bool(os.environ.get("OPENAI_API_KEY"))
        )
        self.fallback: Summarizer = ExtractiveSummarizer()
        self.models = ModelTable(models)
        self.lease_seconds = lease_seconds
        self.store = HistoryStore(url, migrate=migrate)
        self._counters: dict[str, TokenCounter] = {}
        self._chains = ChainCache()
        self._summary_tokens: dict[tuple[int, str], int] = {}
        self._background = background
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[FoldResult]] = {}
        self._lock = threading.Lock()
        self._executor_lock = threading.Lock()
        self._control_token_cache: dict[tuple[str, str], int] = {}
        self.system_prompts = SystemPrompts(
            system_prompt,
            store=self.store,
            count=self._counter("gpt-4o").text,
            schedule=lambda work: discard(self._submit(work)),
            protect=protect,
            rewriter=prompt_rewriter,
            lease_seconds=lease_seconds,
        )

    # -- public API -------------------------------------------------------------------

    def prepare(
        self,
        messages: Sequence[Message],
        *,
        model: str = "gpt-4o",
        conversation_id: str | None = None,
        user: str | None = None,
        tools: Sequence[Message] | None = None,
        max_tokens: int | None = None,
    ) -> Prepared:
        """Store ``messages`` and return the lighter request to send instead."""
        path = self._path(messages, model, user, conversation_id)
        path.tools = [dict(t) for t in tools] if tools else None
        path.tools_tokens = path.counter.tools(tools)
        path.max_tokens = max_tokens
        with self.store.writing() as connection:
            self._append(connection, path)
            view = self._view(connection, path)
            if not self._over_limit(path, view.prompt_tokens):
                return self._finish(connection, path, view, None)
        sync_fold = self._fold_to_fit(path)
        with self.store.writing() as connection:
            return self._finish(connection, path, self._view(connection, path), sync_fold)

    async def aprepare(
        self,
        messages: Sequence[Message],
        *,
        model: str = "gpt-4o",
        conversation_id: str | None = None,
        user: str | None = None,
        tools: Sequence[Message] | None = None,
        max_tokens: int | None = None,
    ) -> Prepared:
        """:meth:`prepare`, run on a worker thread so the event loop is never blocked."""
        return await asyncio.to_thread(
            self.prepare,
            messages,
            model=model,
            conversation_id=conversation_id,
            user=user,
            tools=tools,
            max_tokens=max_tokens,
        )

    def compact(
        self,
        messages: Sequence[Message] | None = None,
        *,
        conversation_id: str | None = None,
        user: str | None = None,
        model: str = "gpt-4o",
        force: bool = False,
    ) -> FoldResult:
        """Fold pending turns into the summary now (what the background worker does).

        Give the ``messages`` (as for prepare) or a ``conversation_id`` already prepared.
        Without ``force`` it folds only when a fold is due, keeping folds batched.
        """
        if messages is None:
            messages, user = self._load_conversation(conversation_id, user)
        path = self._path(messages, model, user, conversation_id)
        with self.store.writing() as connection:
            self._append(connection, path)
            start = self._summary_start(connection, path)
        if not force and not self._fold_due(path, start, self._tail_tokens(path, start)):
            return FoldResult(reason="no fold due")
        return self._fold(path, keep_last=self.keep_last, sync=False)

    async def acompact(
        self, messages: Sequence[Message] | None = None, **options: Any
    ) -> FoldResult:
        """:meth:`compact` on a worker thread."""
        return await asyncio.to_thread(self.compact, messages, **options)

    def record(self, prepared: Prepared, response: Any) -> bool:
        """Store the API's ``usage`` for a prepared request; False if already recorded.

        ``response`` is the SDK's ChatCompletion (or its dict). Without ``usage``
        (a stream that did not report it) the figures are estimated and marked so.
        """
        values = self.usage_of(prepared, response)
        model = field_of(response, "model") or prepared.model
        return self.store.add_usage({"request_id": prepared.request_id, "model": model, **values})

    def usage_of(self, prepared: Prepared, response: Any) -> dict[str, Any]:
        """The token figures ``record()`` stores: the API's ``usage``, or an estimate
        (the exact prepared prompt, the answer's text counted) marked as one."""
        usage = field_of(response, "usage")
        if usage is None:
            return {
                "prompt_tokens": prepared.prompt_tokens,
                "cached_tokens": 0,
                "completion_tokens": self._completion_estimate(prepared, response),
                "estimated": True,
            }
        details = field_of(usage, "prompt_tokens_details")
        return {
            "prompt_tokens": int(field_of(usage, "prompt_tokens") or 0),
            "cached_tokens": int(field_of(details, "cached_tokens") or 0),
            "completion_tokens": int(field_of(usage, "completion_tokens") or 0),
            "estimated": False,
        }

    async def arecord(self, prepared: Prepared, response: Any) -> bool:
        """:meth:`record` on a worker thread."""
        return await asyncio.to_thread(self.record, prepared, response)

    def wrap(
        self,
        client: Any,
        *,
        governor: bool = True,
        limits: Mapping[str, RateLimits] | None = None,
        max_wait: float = 60.0,
        fallback_model: str | None = None,
        retry: RetryPolicy | None = None,
        user_quota: UserQuota | None = None,
        user_quotas: Mapping[str, UserQuota] | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> Any:
        """``client`` (``openai.OpenAI`` or ``AsyncOpenAI``) with every chat completion
        prepared, governed and recorded; everything else on it is untouched.

        ``governor``: keep the shared rate-limit budget from the ``x-ratelimit-*``
        headers (``limits`` per model until headers arrive) and wait for it, up to
        ``max_wait`` seconds. ``fallback_model``: send there when the model stays
        rate-limited. ``retry``: backoff with full jitter (the client's ``max_retries``).
        ``user_quota`` / ``user_quotas``: tokens per minute and day for each ``user``.
        """
        sender = Sender(
            self,
            client,
            governor=governor,
            limits=limits,
            max_wait=max_wait,
            fallback_model=fallback_model,
            retry=retry,
            user_quota=user_quota,
            user_quotas=user_quotas,
            sleep=sleep,
        )
        return WrappedClient(client, sender)

    conversation = staticmethod(conversation)

    def report(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: GroupBy | None = None,
    ) -> Report:
        """The token savings report for requests in ``[since, until)``, optionally grouped
        by ``"day"``, ``"model"``, ``"conversation"`` or ``"user"``."""
        return build_report(self.store, self.models, since=since, until=until, group_by=group_by)

    def wait_for_background(self, timeout: float | None = None) -> None:
        """Block until the background work scheduled so far (folds, prompt rewrites) is done."""
        self._submit(lambda: None).result(timeout)

    def close(self) -> None:
        """Finish background folds and release the database connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.system_prompts.close()
        for summarizer in (self.summarizer, self.fallback):
            close = getattr(summarizer, "close", None)
            if callable(close):
                close()
        self.store.dispose()

    def __enter__(self) -> Trimmer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the hot path -------------------------------------------------------------------

    def _path(
        self,
        messages: Sequence[Message],
        model: str,
        user: str | None,
        conversation_id: str | None = None,
    ) -> _Path:
        known = self._chains.known_prefix(messages, user)
        validate_messages(messages, known_valid=known)
        hashes = _HexDigests(self._chains.digests(messages, user, known))
        anchor = anchor_index(messages)
        default_id = hashes[anchor if anchor is not None else 0][:16]
        return _Path(
            messages, hashes, anchor, self._counter(model), user, conversation_id or default_id
        )

    def _counter(self, model: str) -> TokenCounter:
        counter = self._counters.get(model)
        if counter is None:
            counter = self._counters[model] = TokenCounter(self.models.get(model))
        return counter

    def _append(self, connection: Connection, path: _Path) -> None:
        key = path.counter.key
        path.new_from, path.path_before = self.store.counted_prefix(connection, path.hashes, key)
        new = path.messages[path.new_from :]
        path.new_tokens = [path.counter.message(m) for m in new]
        self.store.append(
            connection,
            path.messages,
            [canonical_json(m) for m in new],
            path.hashes,
            path.new_from,
            key,
            path.new_tokens,
            path.path_before,
        )

    def _token_rows(
        self, connection: Connection, path: _Path, indexes: Sequence[int]
    ) -> dict[int, tuple[int, int]]:
        """(tokens, running path total) of each message index, from memory or the store."""
        found: dict[int, tuple[int, int]] = {}
        stored = [i for i in indexes if i < path.new_from]
        rows = self.store.token_rows(connection, path.counter.key, (path.hashes[i] for i in stored))
        for i in stored:
            found[i] = (rows[path.hashes[i]].tokens, rows[path.hashes[i]].path_tokens)
        running = path.path_before
        for offset, tokens in enumerate(path.new_tokens):
            running += tokens
            if path.new_from + offset in indexes:
                found[path.new_from + offset] = (tokens, running)
        return found

    def _summary_start(self, connection: Connection, path: _Path) -> int:
        return _start_of(self._deepest_summary(connection, path))

    def _deepest_summary(self, connection: Connection, path: _Path) -> StoredSummary | None:
        if path.anchor_hash is None:
            return None
        return self.store.deepest_summary(connection, path.anchor_hash, path.hashes)

    def _view(self, connection: Connection, path: _Path) -> _View:
        summary = self._deepest_summary(connection, path)
        start = _start_of(summary)
        summary_message = None if summary is None else self._summary_message(summary)
        sent, control = assemble(path.messages, start, summary_message)
        tail_control = self._tail_control(path, start)
        wanted = [*control, *tail_control, *([start - 1] if start else [])]
        rows = self._token_rows(connection, path, wanted)
        before_tail = rows[start - 1][1] if start else 0
        tail_tokens = path.total_tokens - before_tail
        summary_tokens = 0 if summary is None else self._summary_message_tokens(path, summary)
        prompt = (
            sum(rows[i][0] for i in control)
            + summary_tokens
            + tail_tokens
            + REPLY_PRIMING
            + path.tools_tokens
        )
        sent, saved = self._compress_control(path, sent, [*control, *tail_control], rows)
        return _View(sent, prompt - saved, tail_tokens, summary, start, summary_tokens, saved)

    def _tail_control(self, path: _Path, start: int) -> list[int]:
        if not self.system_prompts.active:
            return []
        return control_indexes(path.messages, start, len(path.messages))

    def _compress_control(
        self,
        path: _Path,
        sent: list[Message],
        indexes: Sequence[int],
        rows: Mapping[int, tuple[int, int]],
    ) -> tuple[list[Message], int]:
        """Swap in the compressed system/developer messages; returns the tokens saved."""
        if not self.system_prompts.active or not indexes:
            return sent, 0
        replaced: dict[int, Message] = {}
        saved = 0
        for index in indexes:
            original = path.messages[index]
            compressed = self._compressed_message(original)
            if compressed is not original:
                replaced[id(original)] = compressed
                saved += rows[index][0] - self._control_tokens(path.counter, compressed)
        return [replaced.get(id(m), m) for m in sent], saved

    def _compressed_message(self, message: Message) -> Message:
        content = message.get("content")
        compress = self.system_prompts.compress
        if isinstance(content, str):
            new_content: Any = compress(content)
            changed = new_content != content
        elif isinstance(content, list):
            new_content = [
                {**part, "text": compress(part["text"])} if part.get("type") == "text" else part
                for part in content
            ]
            changed = new_content != content
        else:
            return message
        return {**message, "content": new_content} if changed else message

    def _control_tokens(self, counter: TokenCounter, message: Message) -> int:
        key = (counter.key, canonical_json(message))
        tokens = self._control_token_cache.get(key)
        if tokens is None:
            tokens = counter.message(message)
            if len(self._control_token_cache) < 10_000:
                self._control_token_cache[key] = tokens
        return tokens

    def _summary_message(self, summary: StoredSummary) -> Message:
        return {"role": "system", "content": SUMMARY_HEADER + summary.text}

    def _summary_message_tokens(self, path: _Path, summary: StoredSummary) -> int:
        key = (summary.id, path.counter.key)
        tokens = self._summary_tokens.get(key)
        if tokens is None:
            tokens = path.counter.message(self._summary_message(summary))
            self._summary_tokens[key] = tokens
        return tokens

    def _reply_cap(self, path: _Path) -> int:
        max_tokens, info = path.max_tokens, path.info
        return min(max_tokens if max_tokens is not None else self.max_tokens, info.max_output)

    def _over_limit(self, path: _Path, prompt_tokens: int) -> bool:
        info = path.info
        if self.max_prompt_tokens is not None and prompt_tokens > self.max_prompt_tokens:
            return True
        return prompt_tokens + self._reply_cap(path) > info.context_window

    def _finish(
        self, connection: Connection, path: _Path, view: _View, sync_fold: FoldResult | None
    ) -> Prepared:
        info, max_tokens, tools_tokens = path.info, path.max_tokens, path.tools_tokens
        self._check_fits(info, view.prompt_tokens)
        reply = min(self._reply_cap(path), info.context_window - view.prompt_tokens)
        conversation = path.conversation_id
        due = self._fold_due(path, view.start, view.tail_tokens)
        baseline = path.total_tokens + REPLY_PRIMING + tools_tokens
        request_id = self.store.add_request(
            connection,
            {
                "conversation_id": conversation,
                "user": path.user,
                "model": info.name,
                "head_hash": path.hashes[-1],
                "message_count": len(path.messages),
                "messages_sent": len(view.messages),
                "baseline_tokens": baseline,
                "prompt_tokens": view.prompt_tokens,
                "summary_id": view.summary.id if view.summary else None,
                "summary_tokens": view.summary_tokens,
                "max_tokens_requested": max_tokens,
                "max_tokens_baseline": max_tokens if max_tokens is not None else info.max_output,
                "max_tokens": reply,
                "summarizer_tokens_in": sync_fold.tokens_in if sync_fold else 0,
                "summarizer_tokens_out": sync_fold.tokens_out if sync_fold else 0,
                "folded_synchronously": sync_fold is not None,
                "summary_failures": sync_fold.failures if sync_fold else 0,
                "compression_saved_tokens": view.compression_saved,
            },
        )
        if due:
            self._schedule_fold(path)
        return Prepared(
            messages=[dict(m) for m in view.messages],
            max_tokens=reply,
            model=info.name,
            baseline_tokens=baseline,
            prompt_tokens=view.prompt_tokens,
            request_id=request_id,
            conversation_id=conversation,
            user=path.user,
            tools=path.tools,
            summary_id=view.summary.id if view.summary else None,
            messages_folded=view.summary.messages_folded if view.summary else 0,
            fold_pending=due,
            compression_saved_tokens=view.compression_saved,
            max_tokens_param=info.max_tokens_param,
        )

    def _check_fits(self, info: ModelInfo, prompt_tokens: int) -> None:
        limit = info.context_window - 1
        if self.max_prompt_tokens is not None:
            limit = min(limit, self.max_prompt_tokens)
        if prompt_tokens > limit:
            raise PromptTooLargeError(
                f"the smallest valid request is {prompt_tokens} prompt tokens, over the limit "
                f"of {limit} for {info.name}: the newest user turn alone is too large. Shorten "
                "it, or raise max_prompt_tokens / the model's context_window.",
                prompt_tokens=prompt_tokens,
                limit=limit,
            )

    # -- folding ---------------------------------------------------------------------------

    def _tail_tokens(self, path: _Path, start: int) -> int:
        if start == 0:
            return path.total_tokens
        with self.store.reader.connect() as connection:
            return path.total_tokens - self._token_rows(connection, path, [start - 1])[start - 1][1]

    def _fold_due(self, path: _Path, start: int, tail_tokens: int) -> bool:
        if conversational_count(path.messages, start) > self.keep_last + self.fold_every:
            return True
        return self.keep_tokens is not None and tail_tokens > self.keep_tokens * 3 // 2

    def _fold_to_fit(self, path: _Path) -> FoldResult:
        """Over a hard limit: fold now, down to keep_last, then to the newest turn alone."""
        total = FoldResult()
        reply = self._reply_cap(path)
        limit = path.info.context_window - reply
        if self.max_prompt_tokens is not None:
            limit = min(limit, self.max_prompt_tokens)
        for keep_last in (self.keep_last, 0):
            result = self._fold(
                path, keep_last=keep_last, sync=True, prompt_limit=limit - path.tools_tokens
            )
            total = _add(total, result)
            with self.store.reader.connect() as connection:
                view = self._view(connection, path)
            if not self._over_limit(path, view.prompt_tokens):
                break
        return total

    def _schedule_fold(self, path: _Path) -> None:
        if not self._background or path.anchor_hash is None:
            return
        with self._lock:
            key = path.anchor_hash
            if key in self._pending and not self._pending[key].done():
                return
            future = self._submit(lambda: self._fold_logged(path))
            self._pending[key] = future
            future.add_done_callback(lambda _f: self._forget(key, future))

    def _submit(self, work: Callable[[], T]) -> Future[T]:
        """Run ``work`` on the Trimmer's background thread."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="context-trimmer")
            return self._executor.submit(work)

    def _forget(self, key: str, future: Future[FoldResult]) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def _fold_logged(self, path: _Path) -> FoldResult:
        try:
            return self._fold(path, keep_last=self.keep_last, sync=False)
        except Exception:
            log.exception("background fold failed for conversation anchor %s", path.anchor_hash)
            raise

    def _fold(
        self, path: _Path, *, keep_last: int, sync: bool, prompt_limit: int | None = None
    ) -> FoldResult:
        """Fold everything before the tail into a new summary, under a lease.

        With ``prompt_limit`` (a synchronous fold to fit a hard limit) the summary's
        budget shrinks so that the whole request fits under it.
        """
        with self.store.reader.connect() as connection:
            summary = self._deepest_summary(connection, path)
        start = _start_of(summary)
        cut = tail_start(
            path.messages,
            start,
            keep_last,
            keep_tokens=self.keep_tokens,
            tokens_of=lambda i: path.counter.message(path.messages[i]),
        )
        evicted = [m for m in path.messages[start:cut] if m["role"] not in CONTROL_ROLES]
        if not evicted or path.anchor_hash is None:
            return FoldResult(reason="nothing to fold")
        lease = f"fold:{summary.covers_hash if summary else path.anchor_hash}"
        owner = uuid.uuid4().hex
        if not self.store.acquire_lease(lease, owner, self.lease_seconds):
            return FoldResult(reason="another worker is folding this span")
        with self.store.reader.connect() as connection:
            if _start_of(self._deepest_summary(connection, path)) != start:
                self.store.release_lease(lease, owner)
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
                self.store.release_lease(lease, owner)
            # A failed background fold keeps its lease until it expires: that is the
            # back-off before the next attempt at the same span.
            return FoldResult(
                tokens_in=error.tokens_in,
                tokens_out=error.tokens_out,
                failures=self._failures_per_attempt(sync),
                reason=str(error),
            )
        except BaseException:
            self.store.release_lease(lease, owner)
            raise
        self.store.release_lease(lease, owner)
        return result

    def _summary_budget(
        self, connection: Connection, path: _Path, cut: int, prompt_limit: int | None
    ) -> int:
        """``summary_tokens``, or ``summary_share`` of the history before ``cut`` (not
        its control messages), shrunk to fit ``prompt_limit``; from stored counts."""
        control = control_indexes(path.messages, 0, cut)
        rows = self._token_rows(connection, path, [cut - 1, *control])
        before_tail = rows[cut - 1][1]
        control_tokens = sum(rows[i][0] for i in control)
        budget = self.summary_tokens
        if self.summary_share is not None:
            share = math.ceil(self.summary_share * (before_tail - control_tokens))
            budget = max(MIN_SUMMARY_TOKENS, min(budget, share))
        if prompt_limit is None:
            return budget
        header = path.counter.message({"role": "system", "content": SUMMARY_HEADER})
        tail = path.total_tokens - before_tail
        fixed = control_tokens + tail + header + REPLY_PRIMING
        return max(MIN_SUMMARY_TOKENS, min(budget, prompt_limit - fixed))

    def _summarize(
        self,
        path: _Path,
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
            summary_id = self.store.add_summary(
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
        self, path: _Path, cut: int, summarizer: Summarizer, error: SummarizerError
    ) -> None:
        log.warning("summary failed (%s): %s", summarizer.name, error)
        self.store.add_failure(
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

    def _load_conversation(
        self, conversation_id: str | None, user: str | None
    ) -> tuple[list[Message], str | None]:
        if conversation_id is None:
            raise ConfigurationError("compact() needs the messages or a conversation_id")
        head = self.store.last_head(conversation_id)
        if head is None:
            raise ConfigurationError(
                f"no prepared request has conversation_id {conversation_id!r}; "
                "prepare() it first or pass the messages"
            )
        with self.store.reader.connect() as connection:
            bodies = self.store.load_path(connection, head[0])
        return [json.loads(body) for body in bodies], user if user is not None else head[1]

    def _completion_estimate(self, prepared: Prepared, response: Any) -> int:
        choices = field_of(response, "choices") or []
        message = field_of(choices[0], "message") if choices else None
        text = field_of(message, "content") if message is not None else None
        return self._counter(prepared.model).text(text) if isinstance(text, str) else 0


class _HexDigests(Sequence[str]):
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


def _start_of(summary: StoredSummary | None) -> int:
    return 0 if summary is None else summary.covers_depth + 1


def _add(a: FoldResult, b: FoldResult) -> FoldResult:
    return FoldResult(
        b.summary_id or a.summary_id,
        a.messages_folded + b.messages_folded,
        a.tokens_in + b.tokens_in,
        a.tokens_out + b.tokens_out,
        a.failures + b.failures,
        b.reason or a.reason,
    )


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
