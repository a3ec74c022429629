"""The Trimmer: the facade that wires the parts together and keeps the public methods.

A request meets the parts in this order: validation and hashing (``_validation``,
``_hashing``) give a :class:`~._path.Path`; storing it (``_path``, ``_history``) gives a
``StoredPath``; the deepest summary (``_summary_store``) and the stored token counts
feed the pure request plan (``_plan``); a fold runs synchronously only over a hard
limit (``_folding``); the ledger row is written (``_recording``, ``_ledger``) and a due
fold is scheduled on the background thread (``_background``). prepare() makes no
network call unless a hard limit forces a synchronous fold.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ._background import Background
from ._db import Database
from ._exceptions import ConfigurationError
from ._folding import Folder, summarizer_from
from ._hashing import ChainCache, HexDigests
from ._keys import KeyInfo, authenticate, create_key, list_keys, revoke_key
from ._ledger import Ledger
from ._models import ModelTable
from ._options import TrimmerOptions
from ._path import Path, StoredPath, deepest_summary, load_bodies, start_of, token_rows
from ._path import store as store_path
from ._plan import (
    Compressor,
    Plan,
    check_fits,
    fold_due,
    over_limit,
    plan_request,
    recall_budget,
    reply_cap,
    rows_needed,
    summary_message,
    with_recall,
)
from ._prepared import FoldResult, Prepared
from ._ratelimit import Quotas, RateLimits, UserQuota
from ._recall import recall
from ._recording import Recorder, baseline_tokens, request_row
from ._report import GroupBy, Report, build_report
from ._retry import RetryPolicy
from ._summarizers import Summarizer
from ._summary_store import StoredSummary, Summaries
from ._system_prompt import Mode, PromptRewriter, SystemPrompts, discard
from ._tokens import TokenCounter
from ._validation import validate_messages
from ._window import anchor_index
from ._wrap import Sender, WrappedClient, conversation

Message = Mapping[str, Any]


class Trimmer:
    """Stores history in SQL and makes each chat request lighter.

    ``url``: SQLAlchemy URL of the store (default: ``$CONTEXT_TRIMMER_DB``, else a
    SQLite file under ``~/.local/share/context-trimmer``). The trimming options
    (``keep_last``, ``fold_every``, ``keep_tokens``, ``summary_tokens``,
    ``summary_share``, ``recall_tokens``, ``max_tokens``, ``max_prompt_tokens``, ``background``,
    ``lease_seconds``) are those of :class:`TrimmerOptions`, checked there.
    ``summarizer``: ``"extractive"``, ``"openai"``, a Summarizer, or None (gpt-4o-mini
    when ``OPENAI_API_KEY`` is set, else extractive). ``models``: overrides of the model
    table. ``system_prompt``: ``"safe"`` (default), ``"llm"``, ``"off"`` or a callable,
    applied to system and developer messages; ``protect``: regexes of lines to keep
    byte for byte; ``prompt_rewriter``: the model for ``"llm"`` (gpt-4o-mini by default).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        summarizer: str | Summarizer | None = None,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        system_prompt: Mode | Callable[[str], str] = "safe",
        protect: Sequence[str] = (),
        prompt_rewriter: PromptRewriter | None = None,
        migrate: bool = True,
        **options: Any,
    ):
        try:
            self.options = TrimmerOptions(**options)
        except TypeError as error:
            raise ConfigurationError(f"Trimmer(): {error}") from None
        self.models = ModelTable(models)
        self._counters: dict[str, TokenCounter] = {}
        self._chains = ChainCache()
        self._summary_tokens: dict[tuple[int, str], int] = {}
        chosen = summarizer_from(summarizer, api_key_present=bool(os.environ.get("OPENAI_API_KEY")))
        self._db = Database(url, migrate=migrate)
        self._summaries = Summaries(self._db)
        self._ledger = Ledger(self._db)
        self._background = Background()
        self._folder = Folder(self._db, self.options, chosen, self._background)
        self._recorder = Recorder(self._ledger, self._counter)
        self._system_prompts = SystemPrompts(
            system_prompt,
            db=self._db,
            count=self._counter("gpt-4o").text,
            schedule=lambda work: discard(self._background.submit(work)),
            protect=protect,
            rewriter=prompt_rewriter,
            lease_seconds=self.options.lease_seconds,
        )

    @property
    def url(self) -> str:
        """The store's URL without its password."""
        return self._db.display_url

    @property
    def summarizer(self) -> Summarizer:
        """The summarizer folds use first."""
        return self._folder.summarizer

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
        path = self._path(messages, model, user, conversation_id, tools, max_tokens)
        with self._db.writing() as connection:
            stored = store_path(connection, path)
            plan = self._plan(connection, stored)
            if not over_limit(stored, plan.prompt_tokens, self.options):
                return self._finish(connection, stored, plan, None)
        sync_fold = self._folder.fold_to_fit(stored, lambda: self._fits(stored))
        with self._db.writing() as connection:
            return self._finish(connection, stored, self._plan(connection, stored), sync_fold)

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
        with self._db.writing() as connection:
            stored = store_path(connection, path)
            start = start_of(deepest_summary(connection, self._summaries, stored))
        tail = self._folder.tail_tokens(stored, start)
        if not force and not fold_due(stored, start, tail, self.options):
            return FoldResult(reason="no fold due")
        return self._folder.fold(stored, keep_last=self.options.keep_last, sync=False)

    async def acompact(
        self, messages: Sequence[Message] | None = None, **options: Any
    ) -> FoldResult:
        """:meth:`compact` on a worker thread."""
        return await asyncio.to_thread(lambda: self.compact(messages, **options))

    def record(self, prepared: Prepared, response: Any) -> bool:
        """Store the API's ``usage`` for a prepared request; False if already recorded.

        ``response`` is the SDK's ChatCompletion (or its dict). Without ``usage``
        (a stream that did not report it) the figures are estimated and marked so.
        """
        return self._recorder.record(prepared, response)

    def usage_of(self, prepared: Prepared, response: Any) -> dict[str, Any]:
        """The token figures ``record()`` stores: the API's ``usage``, or an estimate
        (the exact prepared prompt, the answer's text counted) marked as one."""
        return self._recorder.usage_of(prepared, response)

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
    ) -> WrappedClient:
        """``client`` (``openai.OpenAI`` or ``AsyncOpenAI``) with every chat completion
        prepared, governed and recorded; everything else on it is untouched.

        ``governor``: keep the shared rate-limit budget from the ``x-ratelimit-*``
        headers (``limits`` per model until headers arrive) and wait for it, up to
        ``max_wait`` seconds. ``fallback_model``: send there when the model stays
        rate-limited. ``retry``: backoff with full jitter (the client's ``max_retries``).
        ``user_quota`` / ``user_quotas``: tokens per minute and day for each ``user``.
        """
        sender = Sender(
            client,
            prepare=self.prepare,
            aprepare=self.aprepare,
            recorder=self._recorder,
            ledger=self._ledger,
            db=self._db,
            models=self.models,
            governor=governor,
            limits=limits,
            max_wait=max_wait,
            fallback_model=fallback_model,
            retry=retry,
            quotas=Quotas(self._db, user_quota, user_quotas),
            sleep=sleep,
        )
        return WrappedClient(client, sender)

    conversation = staticmethod(conversation)

    def quota_usage(self, user: str, quota: UserQuota | None = None) -> dict[str, int]:
        """Tokens ``user`` has used in the current minute and UTC day (``{"minute",
        "day"}``), as counted by every wrapped client and gateway on this store."""
        return Quotas(self._db, quota).used(user)

    def create_key(self, user: str, *, admin: bool = False) -> tuple[str, KeyInfo]:
        """A new gateway API key for ``user``: the key (shown once) and its record."""
        return create_key(self._db, user, admin=admin)

    def list_keys(self) -> list[KeyInfo]:
        """The gateway API keys (their records; keys themselves are never stored)."""
        return list_keys(self._db)

    def authenticate_key(self, key: str) -> KeyInfo | None:
        """The record of an active gateway key, or None."""
        return authenticate(self._db, key)

    def schema_revision(self) -> str | None:
        """The store's schema revision."""
        return self._db.revision()

    def revoke_key(self, key_id_or_prefix: str) -> int:
        """Revoke gateway keys by id or prefix; returns how many were revoked."""
        return revoke_key(self._db, key_id_or_prefix)

    def report(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: GroupBy | None = None,
    ) -> Report:
        """The token savings report for requests in ``[since, until)``, optionally grouped
        by ``"day"``, ``"model"``, ``"conversation"`` or ``"user"``."""
        return build_report(self._ledger, self.models, since=since, until=until, group_by=group_by)

    def wait_for_background(self, timeout: float | None = None) -> None:
        """Block until the background work scheduled so far (folds, prompt rewrites) is done."""
        self._background.wait(timeout)

    def close(self) -> None:
        """Finish background folds and release the database connections."""
        self._background.close()
        self._system_prompts.close()
        self._folder.close()
        self._db.close()

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
        tools: Sequence[Message] | None = None,
        max_tokens: int | None = None,
    ) -> Path:
        known = self._chains.known_prefix(messages, user)
        validate_messages(messages, known_valid=known)
        hashes = HexDigests(self._chains.digests(messages, user, known))
        anchor = anchor_index(messages)
        counter = self._counter(model)
        return Path(
            messages,
            hashes,
            anchor,
            counter,
            user,
            conversation_id or hashes[anchor if anchor is not None else 0][:16],
            tools=[dict(t) for t in tools] if tools else None,
            tools_tokens=counter.tools(tools),
            max_tokens=max_tokens,
        )

    def _counter(self, model: str) -> TokenCounter:
        counter = self._counters.get(model)
        if counter is None:
            counter = self._counters[model] = TokenCounter(self.models.get(model))
        return counter

    def _plan(self, connection: Connection, path: StoredPath) -> Plan:
        summary = deepest_summary(connection, self._summaries, path)
        compressing = self._system_prompts.active
        rows = token_rows(connection, path, rows_needed(path, start_of(summary), compressing))
        tokens = 0 if summary is None else self._summary_message_tokens(path, summary)
        prompts = self._system_prompts
        compressor = Compressor(
            prompts.compress_message, lambda message: prompts.message_tokens(path.counter, message)
        )
        plan = plan_request(path, summary, tokens, rows, compressor if compressing else None)
        budget = recall_budget(path, plan.prompt_tokens, self.options)
        return with_recall(path, plan, recall(connection, path, summary, budget))

    def _fits(self, path: StoredPath) -> bool:
        with self._db.reading() as connection:
            return not over_limit(path, self._plan(connection, path).prompt_tokens, self.options)

    def _summary_message_tokens(self, path: StoredPath, summary: StoredSummary) -> int:
        key = (summary.id, path.counter.key)
        tokens = self._summary_tokens.get(key)
        if tokens is None:
            tokens = path.counter.message(summary_message(summary))
            self._summary_tokens[key] = tokens
        return tokens

    def _finish(
        self, connection: Connection, path: StoredPath, plan: Plan, sync_fold: FoldResult | None
    ) -> Prepared:
        check_fits(path, plan.prompt_tokens, self.options)
        reply = min(reply_cap(path, self.options), path.info.context_window - plan.prompt_tokens)
        due = fold_due(path, plan.start, plan.tail_tokens, self.options)
        request_id = self._ledger.add_request(connection, request_row(path, plan, reply, sync_fold))
        if due:
            self._folder.schedule(path)
        summary = plan.summary
        return Prepared(
            messages=[dict(m) for m in plan.messages],
            max_tokens=reply,
            model=path.info.name,
            baseline_tokens=baseline_tokens(path),
            prompt_tokens=plan.prompt_tokens,
            request_id=request_id,
            conversation_id=path.conversation_id,
            user=path.user,
            tools=path.tools,
            summary_id=summary.id if summary else None,
            messages_folded=summary.messages_folded if summary else 0,
            fold_pending=due,
            compression_saved_tokens=plan.compression_saved,
            max_tokens_param=path.info.max_tokens_param,
        )

    def _load_conversation(
        self, conversation_id: str | None, user: str | None
    ) -> tuple[list[Message], str | None]:
        if conversation_id is None:
            raise ConfigurationError("compact() needs the messages or a conversation_id")
        head = self._ledger.last_head(conversation_id)
        if head is None:
            raise ConfigurationError(
                f"no prepared request has conversation_id {conversation_id!r}; "
                "prepare() it first or pass the messages"
            )
        with self._db.reading() as connection:
            messages = load_bodies(connection, head[0])
        return messages, user if user is not None else head[1]
