"""The Trimmer: the facade that wires the parts together and keeps the public methods.

A request meets the parts in this order: validation and hashing (``_validation``,
``_trimming.hashing``) give a :class:`~._trimming.path.Path`; storing it
(``_trimming.path``, ``_store.history``) gives a ``StoredPath``; the deepest summary
(``_store.summaries``) and the stored token counts feed the pure request plan
(``_trimming.plan``); a fold runs synchronously only over a hard limit
(``_trimming.folding``); the ledger row is written (``_trimming.recording``,
``_store.ledger``) and a due fold is scheduled on the background thread
(``_trimming.background``). prepare() makes no
network call unless a hard limit forces a synchronous fold.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from ._arguments import check_arguments, check_reply_cap, refuse_oversized_turn
from ._client.calls import conversation
from ._client.failopen import FailOpen
from ._exceptions import ConfigurationError
from ._models import ModelTable
from ._options import TrimmerOptions
from ._prepared import FoldResult, Prepared
from ._reports.report import GroupBy, Report, build_report
from ._store import erasure as _erasure
from ._store import sessions as _session_store
from ._store.batch import Batch, Pending
from ._store.db import Database
from ._store.erasure import Erasure
from ._store.export import export
from ._store.keys import GatewayKeys
from ._store.ledger import Ledger
from ._store.ownership import Ownership
from ._store.prompt_cache import DEFAULT_LIFETIME
from ._store.ratelimit import Quotas, RateLimits, UserQuota
from ._store.schema import utcnow
from ._store.summaries import StoredSummary, Summaries
from ._text.tokens import TokenCounter
from ._trimming.background import Background
from ._trimming.cut import defers, newest_fit
from ._trimming.folding import Folder, summarizer_from
from ._trimming.hashing import ChainCache
from ._trimming.path import (
    Path,
    Rows,
    StoredPath,
    build_path,
    deepest_summary,
    load_bodies,
    load_conversation,
    start_of,
    store_and_look_up,
    token_rows,
)
from ._trimming.path import store as store_path
from ._trimming.plan import (
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
from ._trimming.recall import forget_recalled, recall, send_term_counts
from ._trimming.recording import Recorder, baseline_tokens, request_row
from ._trimming.summarizers import Summarizer
from ._trimming.system_prompt import Mode, PromptRewriter, SystemPrompts, discard

if TYPE_CHECKING:  # the OpenAI SDK is imported by wrap(): prepare() alone needs none of it
    from ._client.retry import RetryPolicy
    from ._client.upstreams import Client, CoolDown, Upstream

Message = Mapping[str, Any]


class Trimmer:
    """Stores history in SQL and makes each chat request lighter.

    ``url``: SQLAlchemy URL of the store (default: ``$CONTEXT_TRIMMER_DB``, else a
    SQLite file under ``~/.local/share/context-trimmer``). The trimming options
    (``keep_last``, ``fold_every``, ``keep_tokens``, ``summary_tokens``,
    ``summary_share``, ``recall_tokens``, ``max_tokens``, ``max_prompt_tokens``,
    ``background``, ``lease_seconds``, ``sync_fold_deadline``, ``cache_bytes``) are those
    of :class:`TrimmerOptions`, checked there.
    ``summarizer``: ``"extractive"``, ``"openai"``, a Summarizer, or None (gpt-4o-mini
    when ``OPENAI_API_KEY`` is set, else extractive). ``models``: overrides of the model
    table. ``system_prompt``: ``"safe"`` (default), ``"llm"``, ``"off"`` or a callable,
    applied to system and developer messages; ``protect``: regexes of lines to keep
    byte for byte; ``prompt_rewriter``: the model for ``"llm"`` (gpt-4o-mini by default).
    ``store_timeout``: seconds a database connect, pool wait or statement may take
    (default ``$CONTEXT_TRIMMER_DB_TIMEOUT``, else 5); beyond it: :class:`StoreError`.
    ``on_store_error``: ``"raise"``, or ``"passthrough"`` for wrapped clients to send
    requests untrimmed while the store is down (counted in ``passthrough_requests``).
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
        store_timeout: float | None = None,
        on_store_error: str = "raise",
        **options: Any,
    ):
        try:
            self.options = TrimmerOptions(**options)
        except TypeError as error:
            raise ConfigurationError(f"Trimmer(): {error}") from None
        self.models = ModelTable(models)
        self._failopen = FailOpen(on_store_error, self.options.max_tokens, self.models)
        self._counters: dict[str, TokenCounter] = {}
        self._chains = ChainCache(self.options.cache_bytes)
        self._summary_tokens: dict[tuple[int, str], int] = {}
        chosen = summarizer_from(summarizer, api_key_present=bool(os.environ.get("OPENAI_API_KEY")))
        self._db = Database(url, migrate=migrate, timeout=store_timeout)
        self._summaries = Summaries(self._db)
        self._ledger = Ledger(self._db)
        self._background = Background()
        self._folder = Folder(self._db, self.options, chosen, self._background)
        if self.options.folds == "queue":
            from ._trimming.queue import QueueDispatch  # procrastinate is an optional extra

            self._folder.dispatch = QueueDispatch(self._db, self.options)
        self.keys = GatewayKeys(self._db)
        self.objects = Ownership(self._db)  # the gateway's object owners
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
    def passthrough_requests(self) -> int:
        """Requests wrapped clients sent untrimmed because the store was down."""
        return self._failopen.passthrough_requests

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
            stored, summary, rows, counted = store_and_look_up(
                connection,
                path,
                self._summaries,
                self._rows_needed,
                lambda batch: self._terms_to_count(batch, path),
            )
            plan = self._plan(connection, stored, found=(summary, rows), counted=counted)
            if over_limit(stored, plan.prompt_tokens, self.options):
                plan = self._cut(connection, stored, plan) or plan  # a large fold: later
            fits = not over_limit(stored, plan.prompt_tokens, self.options)
            if fits:
                prepared = self._finish(connection, stored, plan, None)
        if not fits:
            sync_fold = self._folder.fold_to_fit(stored, lambda: self._fits(stored))
            with self._db.writing() as connection:
                plan = self._plan(connection, stored)
                prepared = self._finish(connection, stored, plan, sync_fold)
        return self._scheduled(prepared, stored, plan)  # once what it stored is committed

    async def aprepare(self, messages: Sequence[Message], **arguments: Any) -> Prepared:
        """:meth:`prepare` (same arguments) on a worker thread: the event loop never blocks."""
        return await asyncio.to_thread(lambda: self.prepare(messages, **arguments))

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
        Without ``force`` it folds only when a fold is due, keeping folds batched (and,
        for a model's summary, once the turns are enough for its floor budget).
        """
        if messages is None:
            messages, user = load_conversation(self._db, self._ledger, conversation_id, user)
        path = self._path(messages, model, user, conversation_id)
        with self._db.writing() as connection:
            stored = store_path(connection, path)
            start = start_of(deepest_summary(connection, self._summaries, stored))
        tail = self._folder.tail_tokens(stored, start)
        if not force and not fold_due(stored, start, tail, self.options):
            return FoldResult(reason="no fold due")
        return self._folder.fold(stored, keep_last=self.options.keep_last, eager=force)

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
        client: Client | Upstream[Client],
        *more: Client | Upstream[Client],
        governor: bool = True,
        limits: Mapping[str, RateLimits] | None = None,
        max_wait: float = 60.0,
        fallback_model: str | None = None,
        retry: RetryPolicy | None = None,
        user_quota: UserQuota | None = None,
        user_quotas: Mapping[str, UserQuota] | None = None,
        sleep: Callable[[float], Any] | None = None,
        cooldown: CoolDown | None = None,
    ) -> Client:
        """A copy of ``client`` (``openai.OpenAI`` or ``AsyncOpenAI``, and still one) with
        every chat completion and Responses call prepared, governed and recorded (a default
        summarizer follows its endpoint and key). With ``more`` clients (of the same kind;
        each bare or an :class:`Upstream` naming its models and limits), each call goes to
        the one serving its model with the most budget left, and on to the next on a 429
        or a connection failure; ``cooldown`` says when a failing one is skipped.

        ``governor``: keep the shared rate-limit budget from the ``x-ratelimit-*``
        headers (``limits`` per model until headers arrive) and wait for it, up to
        ``max_wait`` seconds. ``fallback_model``: send there when the model stays
        rate-limited. ``retry``: backoff with full jitter (the client's ``max_retries``).
        ``user_quota`` / ``user_quotas``: tokens per minute and day for each ``user``.
        """
        from ._client.wrap import Sender
        from ._client.wrapped_client import pool_of, wrap_client

        pool, clients = pool_of((client, *more), cooldown)
        first: Client = clients[0]
        sender = Sender(
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
            failopen=self._failopen,
            pool=pool,
        )
        return wrap_client(self._folder.follow(first), sender, clients[1:])

    conversation = staticmethod(conversation)

    def quota_usage(self, user: str, quota: UserQuota | None = None) -> dict[str, int]:
        """Tokens ``user`` has used in the current minute and UTC day (``{"minute",
        "day"}``), as counted by every wrapped client and gateway on this store."""
        return Quotas(self._db, quota).used(user)

    def schema_revision(self) -> str | None:
        """The store's schema revision."""
        return self._db.revision()

    def report(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: GroupBy | None = None,
        cache_lifetime: float = DEFAULT_LIFETIME,
    ) -> Report:
        """The token savings report for requests in ``[since, until)``, optionally grouped
        by ``"day"``, ``"model"``, ``"conversation"``, ``"user"`` or ``"upstream"``; the
        cached baseline keeps a prompt prefix ``cache_lifetime`` seconds after its last use."""
        return build_report(
            self._ledger,
            self.models,
            since=since,
            until=until,
            group_by=group_by,
            cache_lifetime=cache_lifetime,
        )

    def export(self, user: str | None, conversation_id: str | None = None) -> list[dict[str, Any]]:
        """``user``'s conversations (or the one named), one dict each: messages in order
        with their timestamps, the current summary, request times (see ``_store.erasure``)."""
        return list(export(self._db, user, conversation_id))

    def forget(
        self,
        user: str | None = None,
        conversation_id: str | None = None,
        *,
        tenant: str | None = None,
    ) -> Erasure:
        """Erase ``user``'s conversations (or the one named): text gone, figures kept.
        ``tenant=`` erases a gateway tenant and every end user of it (``acme`` and
        ``acme:alice``...; a tenant named ``acme:bob`` is another, untouched)."""
        self._background.wait()  # no fold may store a summary of what is being erased
        self._chains.clear()
        forget_recalled()  # no erased words stay in recall's caches
        keys = _erasure.rewrite_keys(self._db, self._system_prompts.protect)
        return _erasure.forget(
            self._db, user, conversation_id, tenant=tenant, compression_keys=keys
        )

    def prune(self, older_than: datetime | timedelta) -> Erasure:
        """Erase every conversation unused since ``older_than`` (a time, or an age)."""
        cutoff = utcnow() - older_than if isinstance(older_than, timedelta) else older_than
        self._background.wait()
        self._chains.clear()
        forget_recalled()  # no erased words stay in recall's caches
        keys = _erasure.rewrite_keys(self._db, self._system_prompts.protect)
        return _erasure.prune(self._db, cutoff, compression_keys=keys)

    def summarizer_status(self) -> dict[str, Any]:
        """The summarizer, its fallback and its circuit breaker, as this process sees it."""
        return self._folder.status()

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
        max_tokens = check_arguments(messages, model, conversation_id, user, tools, max_tokens)
        counter = self._counter(model)
        check_reply_cap(max_tokens, counter.info.max_output, model)
        path = build_path(self._chains, counter, messages, user, conversation_id, tools, max_tokens)
        refuse_oversized_turn(messages, counter, self.options.max_prompt_tokens)
        return path

    def _counter(self, model: str) -> TokenCounter:
        counter = self._counters.get(model)
        if counter is None:
            counter = self._counters[model] = TokenCounter(self.models.get(model))
        return counter

    def _rows_needed(
        self, path: StoredPath, summary: StoredSummary | None, cut: int | None = None
    ) -> list[int]:
        """The message indexes whose token rows planning reads."""
        return rows_needed(path, start_of(summary), self._system_prompts.active, cut)

    def _plan(
        self,
        connection: Connection,
        path: StoredPath,
        recalling: bool = True,
        found: tuple[StoredSummary | None, Rows] | None = None,
        counted: Pending | None = None,
        cut: int | None = None,
    ) -> Plan:
        """The request for ``path``; ``found``: its deepest summary and the token rows
        it needs, and ``counted``: recall's term counts, when looked up already (see
        ``store_and_look_up``); ``cut``: only the messages from there on after the
        summary (see ``_trimming.cut``), recall searching all before it."""
        if found is None:
            summary = deepest_summary(connection, self._summaries, path)
            rows = token_rows(connection, path, self._rows_needed(path, summary, cut))
        else:
            summary, rows = found
        compressing = self._system_prompts.active
        tokens = 0 if summary is None else self._summary_message_tokens(path, summary)
        prompts = self._system_prompts
        compressor = Compressor(
            prompts.compress_message, lambda message: prompts.message_tokens(path.counter, message)
        )
        plan = plan_request(path, summary, tokens, rows, compressor if compressing else None, cut)
        if not recalling:
            return plan
        budget = recall_budget(path, plan.prompt_tokens, self.options)
        searched_to = start_of(summary) if cut is None else cut  # all that is not sent
        said = "" if summary is None else summary.text
        recalled = recall(connection, path, searched_to, said, budget, counted)
        return with_recall(path, plan, recalled)

    def _terms_to_count(self, batch: Batch, path: Path) -> Pending | None:
        """Recall's count of the question's terms and their matches, sent with
        prepare()'s first lookups."""
        return send_term_counts(batch, path) if self.options.recall_tokens else None

    def _cut(
        self, connection: Connection, path: StoredPath, plan: Plan, recalling: bool = True
    ) -> Plan | None:
        """Over a hard limit with a large fold due and folds in the background: the
        request cut to the newest messages that fit (``_trimming.cut``); None when the
        fold must run now."""
        if not defers(plan, self.options):
            return None
        cut = newest_fit(connection, path, plan, self.options)
        return None if cut is None else self._plan(connection, path, recalling, cut=cut)

    # -- agent sessions (integrations.agents) ---------------------------------------------

    def _session_history(self, session_id: str, user: str | None) -> list[dict[str, Any]]:
        """Every stored message of the session, oldest first."""
        with self._db.reading() as connection:
            head = _session_store.head(connection, session_id, user)
            return [] if head is None else [dict(m) for m in load_bodies(connection, head)]

    def _session_save(
        self, session_id: str, user: str | None, model: str, messages: Sequence[Message]
    ) -> None:
        """Store ``messages`` (the session's whole history) and make their last the head."""
        if not messages:
            with self._db.writing() as connection:
                _session_store.move(connection, session_id, user, None, model)
            return
        path = self._path(messages, model, user, session_id)
        with self._db.writing() as connection:
            stored = store_path(connection, path)
            _session_store.move(connection, session_id, user, stored.hashes[-1], model)

    def _session_pop(
        self, session_id: str, user: str | None, model: str
    ) -> tuple[Message, bool] | None:
        """Move the session's head back one message; the message it left, and whether
        that was the session's only one (then the head stays, for the caller to erase)."""
        with self._db.writing() as connection:
            head = _session_store.head(connection, session_id, user)
            if head is None:
                return None
            message = load_bodies(connection, head)[-1]
            parent = _session_store.parent(connection, head)
            if parent is not None:
                _session_store.move(connection, session_id, user, parent, model)
        return message, parent is None

    def _session_view(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        user: str | None,
        conversation_id: str,
        recalling: bool,
    ) -> list[dict[str, Any]]:
        """What prepare() would send for ``messages`` (summary, recall when
        ``recalling``, window), with the same folds, but no ledger row: nothing is sent."""
        path = self._path(messages, model, user, conversation_id)
        with self._db.writing() as connection:
            stored = store_path(connection, path)
            plan = self._plan(connection, stored, recalling)
            if over_limit(stored, plan.prompt_tokens, self.options):
                plan = self._cut(connection, stored, plan, recalling) or plan
        if over_limit(stored, plan.prompt_tokens, self.options):
            self._folder.fold_to_fit(stored, lambda: self._fits(stored))
            with self._db.reading() as connection:
                plan = self._plan(connection, stored, recalling)
        if fold_due(stored, plan.start, plan.tail_tokens, self.options):
            self._folder.schedule(stored, plan.start)
        return [dict(m) for m in plan.messages]

    def _fits(self, path: StoredPath) -> bool:
        with self._db.reading() as connection:
            return not over_limit(path, self._plan(connection, path).prompt_tokens, self.options)

    def _summary_message_tokens(self, path: StoredPath, summary: StoredSummary) -> int:
        key = (summary.id, path.counter.key)
        tokens = self._summary_tokens.get(key)
        if tokens is None:
            tokens = path.counter.message(summary_message(summary))
            if len(self._summary_tokens) >= 10_000:
                self._summary_tokens.clear()
            self._summary_tokens[key] = tokens
        return tokens

    def _scheduled(self, prepared: Prepared, path: StoredPath, plan: Plan) -> Prepared:
        """``prepared``, its due fold scheduled once what it stored is committed."""
        if prepared.fold_pending:
            self._folder.schedule(path, plan.start)
        return prepared

    def _finish(
        self, connection: Connection, path: StoredPath, plan: Plan, sync_fold: FoldResult | None
    ) -> Prepared:
        check_fits(path, plan.prompt_tokens, self.options)
        reply = min(reply_cap(path, self.options), path.info.context_window - plan.prompt_tokens)
        due = fold_due(path, plan.start, plan.tail_tokens, self.options)
        due = due and not self._folder.waits(connection, path, plan.summary)
        row = request_row(path, plan, reply, sync_fold)
        request_id = self._ledger.add_request(connection, row, last=True)
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
