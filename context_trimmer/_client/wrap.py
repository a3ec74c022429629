"""The send path of a wrapped client: prepare, reserve, send with retries, record.

Each intercepted call (a :class:`~._calls.Call`: Chat Completions or Responses) is
prepared (summary, window, system prompt, reply cap), reserved against the shared
rate-limit budget and the user's quota, sent with retries, and recorded; the SDK's own
object comes back (a stream comes back as a transparent proxy that passes every chunk
through untouched and records the usage when the stream ends; a raw response, from
``with_raw_response`` / ``with_streaming_response``, comes back as it is).

A wrapped client may hold several upstreams (a :class:`~._upstreams.Pool`): each call
goes to the upstream serving its model with the most budget left; a 429 or a
connection failure moves it to the next one, then (all tried) it waits and retries, and
only then falls back to the next model.

The send logic is written once, as a generator of effects (:func:`._send_plan.send_plan`):
choose the upstreams, reserve budget, sleep, send. The sync and async clients each
drive it here with their own I/O, so failover, retries, budget waits and model fallback
behave identically in both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import openai

from .._exceptions import QuotaExceeded, RateLimitBudgetExceeded, StoreError
from .._inline import WouldWait
from .._models import ModelTable
from .._prepared import Prepared
from .._store.db import Database
from .._store.ledger import Ledger
from .._store.ratelimit import Governor, HeaderLimits, Quotas, RateLimits, budget_key
from .._trimming.recording import Recorder
from .calls import Call, conversation
from .failopen import FailOpen, keep_books, log
from .relayed import RELAY, relayed
from .retry import RetryPolicy
from .send_plan import Choose, Effect, Reserve, Send, SendState, Sleep, Target, send_plan
from .streams import AsyncRecordedStream, RecordedStream
from .upstreams import Pool

__all__ = ["Sender", "Target", "conversation", "run_async", "run_sync"]


class Sender:
    """What a wrapped client (and every copy made by ``with_options``) shares: the
    Trimmer's parts, the upstreams' pool, the governor, quotas, fallback and retry policy."""

    def __init__(
        self,
        *,
        prepare: Callable[..., Prepared],
        aprepare: Callable[..., Awaitable[Prepared]],
        recorder: Recorder,
        ledger: Ledger,
        db: Database,
        models: ModelTable,
        governor: bool,
        limits: Mapping[str, RateLimits] | None,
        max_wait: float,
        fallback_model: str | None,
        retry: RetryPolicy | None,
        quotas: Quotas,
        failopen: FailOpen,
        sleep: Callable[[float], Any] | None,
        pool: Pool,
    ):
        self.prepare = prepare
        self.aprepare = aprepare
        self.recorder = recorder
        self.ledger = ledger
        self.models = models
        self.governor = Governor(db, limits=limits, max_wait=max_wait) if governor else None
        self.quotas = quotas
        self.failopen = failopen
        self.fallback_model = fallback_model
        self.retry = retry
        self.sleep = sleep
        self.pool = pool
        self.offload = db.offload  # store work of the async client (see _store_lane)
        if fallback_model is not None:
            pool.check(fallback_model)

    def policy(self, targets: Sequence[Target]) -> RetryPolicy:
        return self.retry or RetryPolicy(max_retries=targets[0].max_retries)

    def budget(self, state: SendState, model: str, index: int) -> str:
        target = state.targets[index]
        return budget_key(target.base_url, target.api_key, self.pool.model_name(index, model))

    def check(self, call: Call) -> None:
        """ConfigurationError, before anything is stored, when no upstream serves the
        call's model."""
        model = call.prepare["model"]
        if isinstance(model, str):
            self.pool.check(model)

    def start(self, prepared: Prepared, targets: Sequence[Target]) -> SendState:
        models = [prepared.model, *([self.fallback_model] if self.fallback_model else [])]
        tokens = prepared.prompt_tokens + prepared.max_tokens
        state = SendState(prepared, targets, self.pool, models, tokens)
        try:
            state.quota = self.quotas.reserve(prepared.user, state.tokens)
        except QuotaExceeded:
            state.outcome = "quota_exceeded"
            self._close(state, 0)
            raise
        return state

    def prepare_and_start(self, call: Call, targets: Sequence[Target]) -> SendState | Prepared:
        """prepare() and :meth:`start_reserved`; run inline (``_inline``), where the quota
        would wait, only the Prepared (recorded: prepare() must not run again), to start
        from where waiting is harmless."""
        prepared = self.prepare(**call.prepare)
        try:
            return self.start_reserved(prepared, targets)
        except WouldWait:
            return prepared

    def start_reserved(self, prepared: Prepared, targets: Sequence[Target]) -> SendState:
        """:meth:`start`, and the send plan's first reservation made now, in the same
        hand-off to the store's thread (when its upstream needs no choosing)."""
        state = self.start(prepared, targets)
        model, serving = state.models[0], self.pool.serving(state.models[0])
        if self.governor is None or len(serving) != 1:
            return state
        index = serving[0]  # what choose() answers for a model one upstream serves
        try:
            state.early = (model, index, self.reserve(state, model, index))
        except WouldWait:  # run inline and the budget is being written: the plan's
            pass  # Reserve does it (prepare() is done: rerunning it would record it twice)
        except Exception as error:  # raised where the plan asks for it
            state.early = (model, index, error)
        return state

    def untrimmed(
        self, error: StoreError, call: Call, targets: Sequence[Target]
    ) -> tuple[Target, dict[str, Any]]:
        """The store is down: where the call goes as given (``on_store_error=
        "passthrough"``, else ``error`` is raised): the first upstream serving its model,
        under its name there."""
        body = self.failopen.passthrough(error, call)
        model = body.get("model")
        if not isinstance(model, str) or not self.pool.serving(model):
            return targets[0], body
        index = self.pool.serving(model)[0]
        return targets[index], {**body, "model": self.pool.model_name(index, model)}

    def choose(self, state: SendState, model: str) -> list[int]:
        """The upstreams to try for ``model``, in order (one upstream: no budget read)."""
        serving = self.pool.serving(model)
        if len(serving) < 2 or self.governor is None:
            return self.pool.order(model, {}, state.tokens)
        budgets = [
            (self.budget(state, model, i), model, self.pool.members[i].limits) for i in serving
        ]
        try:
            left = self.governor.headroom(budgets)
        except StoreError as error:  # as in reserve(): the store went away after prepare()
            if self.failopen.policy != "passthrough":
                raise
            log.warning("context-trimmer: choosing an upstream without the budgets: %s", error)
            return self.pool.order(model, {}, state.tokens)
        return self.pool.order(model, dict(zip(serving, left, strict=True)), state.tokens)

    def observing(self, headers: Mapping[str, str]) -> bool:
        """Whether ``headers`` tell the governor anything (else no write, no hand-off)."""
        return self.governor is not None and HeaderLimits.parse(headers) is not None

    def observe(self, state: SendState, model: str, index: int, headers: Mapping[str, str]) -> None:
        if self.governor is not None:
            try:
                self.governor.observe(self.budget(state, model, index), headers)
            except StoreError as error:  # the API answered: its answer goes to the caller
                log.warning("context-trimmer: rate-limit headers not stored: %s", error)

    def reserve(self, state: SendState, model: str, index: int) -> float:
        assert self.governor is not None
        key, limits = self.budget(state, model, index), self.pool.members[index].limits
        try:
            return self.governor.try_reserve(key, model, state.tokens, limits)
        except StoreError as error:  # the store went away after prepare()
            if self.failopen.policy != "passthrough":
                raise
            log.warning("context-trimmer: sending without the rate-limit budget: %s", error)
            return 0.0

    def finish(self, state: SendState, response: Any, outcome: str = "ok") -> None:
        """Record usage (``response`` read as a chat completion), how the call went, and
        settle the user's quota (a failing store never costs the caller the answer: see
        ``keep_books``)."""
        used = self.recorder.usage_of(state.prepared, response)
        state.outcome = outcome
        self._close(state, used["prompt_tokens"] + used["completion_tokens"], (response,))

    def fail(self, state: SendState, error: BaseException) -> None:
        if isinstance(error, RateLimitBudgetExceeded):
            state.outcome = "budget_exceeded"
        elif isinstance(error, openai.RateLimitError):
            state.outcome = "rate_limited"
        elif isinstance(error, openai.APIConnectionError) and answer_cut(error):
            state.outcome = "answer_cut"
        self._close(state, 0)

    def _close(self, state: SendState, actual: int, answered: tuple[Any, ...] = ()) -> None:
        """Record the usage (when ``answered`` holds the response), settle the quota and
        record the attempt, in one transaction (one commit, one write lock per answer)."""
        attempt = {
            "request_id": state.prepared.request_id,
            "attempts": state.attempts,
            "rate_limited": state.rate_limited,
            "waited_ms": int(state.waited * 1000),
            "fallback_model": state.fallback_model,
            "outcome": state.outcome,
            "upstream": None if state.upstream is None else self.pool.label(state.upstream),
        }

        def write() -> None:
            with self.ledger.writing() as connection:
                for response in answered:
                    self.recorder.record(state.prepared, response, connection)
                self.quotas.settle(state.quota, actual, connection)
                self.ledger.add_attempt(attempt, connection)

        steps = [("usage, quota, attempt" if answered else "quota, attempt", write)]
        keep_books(state.prepared.request_id, steps)


def answer_cut(error: BaseException) -> bool:
    """Whether the transport failed because the answer's body ended early (the server
    closed the connection before ``Content-Length`` bytes came), as httpx says it."""
    cause = error.__cause__ or error.__context__
    return type(cause).__name__ == "RemoteProtocolError" and "message body" in str(cause)


def run_sync(sender: Sender, call: Call, targets: Sequence[Target]) -> Any:
    """Prepare, send and record ``call`` on the sync client; ``targets``: the pool's
    upstreams (the wrapped client's own first)."""
    sender.check(call)
    try:
        state = sender.start(sender.prepare(**call.prepare), targets)
    except StoreError as error:
        target, body = sender.untrimmed(error, call, targets)
        raw = target.send(body, call.headers_for_send())
        return raw if call.raw_mode is not None else raw.parse()
    sender.failopen.recovered()
    sleep = sender.sleep or time.sleep
    try:
        raw = _drive(
            send_plan(state, sender.governor, sender.policy(targets)),
            {
                Choose: lambda e: sender.choose(state, e.model),
                Reserve: lambda e: sender.reserve(state, e.model, e.upstream),
                Sleep: lambda e: sleep(e.seconds),
                Send: lambda e: _send_sync(sender, state, call, e),
            },
        )
    except BaseException as error:
        sender.fail(state, error)
        raise
    if call.raw_mode is not None:  # the caller asked for the raw response: it is theirs
        sender.finish(state, call.usage_view(None if call.stream else raw.parse()))
        return raw
    response = raw.parse()
    if call.stream:
        return RecordedStream(
            response,
            lambda summary, end: sender.finish(state, summary, end),
            call.stream_summary(),
            call.hides_usage,
        )
    sender.finish(state, call.usage_view(response))
    return response


def _body(sender: Sender, state: SendState, call: Call, send: Send) -> dict[str, Any]:
    """The body for ``send``: the prepared call, under the upstream's name for the model."""
    body = call.body_for(state.prepared, send.model, sender.models)
    body["model"] = sender.pool.model_name(send.upstream, send.model)
    return body


def _send_sync(sender: Sender, state: SendState, call: Call, send: Send) -> Any:
    body = _body(sender, state, call, send)
    try:
        raw = state.targets[send.upstream].send(body, call.headers_for_send())
    except openai.APIStatusError as error:
        sender.observe(state, send.model, send.upstream, error.response.headers)
        raise
    sender.observe(state, send.model, send.upstream, raw.headers)
    return raw


def _drive(plan: Generator[Effect, Any, Any], handlers: Mapping[type, Callable[[Any], Any]]) -> Any:
    step = _Step(plan)
    while not step.done:
        try:
            step.value = handlers[type(step.effect)](step.effect)
        except _THROWN as failure:
            step.error = failure
        step.advance()
    return step.value


_THROWN = (openai.APIStatusError, openai.APIConnectionError, RateLimitBudgetExceeded)
"""What an effect may raise back into the plan (the rest ends it)."""


class _Step:
    """Walks a send plan: feeds each effect's result (or API error) back into it."""

    def __init__(self, plan: Generator[Effect, Any, Any]):
        self.plan = plan
        self.value: Any = None
        self.error: BaseException | None = None
        self.effect: Effect | None = None
        self.done = False
        self.advance()

    def advance(self) -> None:
        try:
            if self.error is not None:
                self.effect = self.plan.throw(self.error)
            else:
                self.effect = self.plan.send(self.value)
        except StopIteration as stop:
            self.done, self.value = True, stop.value
            return
        self.value, self.error = None, None


async def run_async(sender: Sender, call: Call, targets: Sequence[Target]) -> Any:
    """:func:`run_sync` on the async client."""
    sender.check(call)
    try:  # prepare and take the quota in one hand-off (see Sender.prepare_and_start)
        started = await sender.offload(sender.prepare_and_start, call, targets)
        if isinstance(started, Prepared):
            state = await sender.offload(sender.start_reserved, started, targets)
        else:
            state = started
    except StoreError as error:
        target, body = sender.untrimmed(error, call, targets)
        raw = await target.send(body, call.headers_for_send())
        return raw if call.raw_mode is not None else await _awaitable(raw.parse())
    sender.failopen.recovered()
    sleep = sender.sleep or asyncio.sleep
    try:
        raw = await _adrive(
            send_plan(state, sender.governor, sender.policy(targets)),
            {
                Choose: lambda e: _achoose(sender, state, e.model),
                Reserve: lambda e: _areserve(sender, state, e),
                Sleep: lambda e: _awaitable(sleep(e.seconds)),
                Send: lambda e: _send_async(sender, state, call, e),
            },
        )
    except BaseException as error:
        await sender.offload(sender.fail, state, error)
        raise
    if call.raw_mode == RELAY:  # the gateway relays the answer's bytes
        finish = lambda answer, end: sender.finish(state, answer, end)  # noqa: E731
        return await relayed(raw, call, finish, sender.offload)
    if call.raw_mode is not None:
        answer = None if call.stream else await _awaitable(raw.parse())
        await sender.offload(sender.finish, state, call.usage_view(answer))
        return raw
    response = await _awaitable(raw.parse())
    if call.stream:
        return AsyncRecordedStream(
            response,
            lambda summary, end: sender.finish(state, summary, end),
            call.stream_summary(),
            sender.offload,
            call.hides_usage,
        )
    await sender.offload(sender.finish, state, call.usage_view(response))
    return response


async def _awaitable(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def _areserve(sender: Sender, state: SendState, reserve: Reserve) -> float:
    early = state.take_early(reserve)
    if isinstance(early, Exception):
        raise early
    if early is not None:
        return float(early)
    return await sender.offload(sender.reserve, state, reserve.model, reserve.upstream)


async def _achoose(sender: Sender, state: SendState, model: str) -> list[int]:
    if len(sender.pool) < 2:  # nothing to read
        return sender.choose(state, model)
    return await sender.offload(sender.choose, state, model)


async def _send_async(sender: Sender, state: SendState, call: Call, send: Send) -> Any:
    body = _body(sender, state, call, send)
    where = send.model, send.upstream
    try:
        raw = await state.targets[send.upstream].send(body, call.headers_for_send())
    except openai.APIStatusError as error:
        if sender.observing(error.response.headers):
            await sender.offload(sender.observe, state, *where, error.response.headers)
        raise
    if sender.observing(raw.headers):
        await sender.offload(sender.observe, state, *where, raw.headers)
    return raw


async def _adrive(
    plan: Generator[Effect, Any, Any], handlers: Mapping[type, Callable[[Any], Awaitable[Any]]]
) -> Any:
    step = _Step(plan)
    while not step.done:
        try:
            step.value = await handlers[type(step.effect)](step.effect)
        except _THROWN as failure:
            step.error = failure
        step.advance()
    return step.value
