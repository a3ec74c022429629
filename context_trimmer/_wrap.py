"""The send path of a wrapped client: prepare, reserve, send with retries, record.

Each intercepted call (a :class:`~._calls.Call`: Chat Completions or Responses) is
prepared (summary, window, system prompt, reply cap), reserved against the shared
rate-limit budget and the user's quota, sent with retries, and recorded; the SDK's own
object comes back (a stream comes back as a transparent proxy that passes every chunk
through untouched and records the usage when the stream ends; a raw response, from
``with_raw_response`` / ``with_streaming_response``, comes back as it is).

The send logic is written once, as a generator of effects (:func:`send_plan`): reserve
budget, sleep, send. The sync and async clients each drive it with their own I/O, so
retries, budget waits and model fallback behave identically in both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import openai

from ._calls import Call, conversation
from ._db import Database
from ._exceptions import ConfigurationError, QuotaExceeded, RateLimitBudgetExceeded, StoreError
from ._failopen import FailOpen, keep_books, log
from ._ledger import Ledger
from ._models import ModelTable
from ._prepared import Prepared
from ._ratelimit import Governor, QuotaHold, Quotas, RateLimits, budget_key
from ._recording import Recorder
from ._relayed import RELAY, relayed
from ._retry import RetryPolicy, should_retry
from ._streams import AsyncRecordedStream, RecordedStream

__all__ = ["Sender", "Target", "conversation", "run_async", "run_sync"]


@dataclass(frozen=True)
class Target:
    """Where one wrapped client sends: the identity of its rate-limit budget, its
    ``max_retries``, and the SDK's own POST (``send(body, headers)``, retries off),
    which returns the raw response (an awaitable of it for the async client)."""

    base_url: str
    api_key: str
    max_retries: int
    send: Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class Reserve:
    model: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Send:
    model: str


@dataclass
class SendState:
    """One call on its way out: what it is and what happened to it."""

    prepared: Prepared
    target: Target
    models: list[str]
    tokens: int
    attempts: int = 0
    rate_limited: int = 0
    waited: float = 0.0
    fallback_model: str | None = None
    quota: QuotaHold | None = None
    outcome: str = "error"


Effect = Reserve | Sleep | Send


def send_plan(
    state: SendState, governor: Governor | None, policy: RetryPolicy
) -> Generator[Effect, Any, Any]:
    """Reserve, send and retry; fall back to the next model when one stays exhausted.
    Returns the raw response of the call that succeeded."""
    for position, model in enumerate(state.models):
        try:
            return (yield from _send_one_model(state, model, governor, policy))
        except (RateLimitBudgetExceeded, openai.RateLimitError):
            if position == len(state.models) - 1:
                raise
            state.fallback_model = state.models[position + 1]
    raise ConfigurationError("no model to send to")


def _send_one_model(
    state: SendState, model: str, governor: Governor | None, policy: RetryPolicy
) -> Generator[Effect, Any, Any]:
    attempt = 0
    while True:
        yield from _reserve(state, model, governor, policy)
        state.attempts += 1
        failure: openai.APIError
        try:
            return (yield Send(model))
        except openai.APIStatusError as error:
            failure, status = error, error.status_code
            headers: Mapping[str, str] | None = error.response.headers
            state.rate_limited += status == 429
        except openai.APIConnectionError as error:
            failure, status, headers = error, None, None
        if attempt >= policy.max_retries or not should_retry(status, headers):
            raise failure
        delay = policy.delay(attempt, headers)
        state.waited += delay
        yield Sleep(delay)
        attempt += 1


def _reserve(
    state: SendState, model: str, governor: Governor | None, policy: RetryPolicy
) -> Generator[Effect, Any, None]:
    if governor is None:
        return
    waited = 0.0
    while (wait := (yield Reserve(model))) > 0:
        governor.check_wait(model, waited, wait)
        wait += policy.random() * min(1.0, 0.1 * wait)  # jitter: workers do not wake in step
        waited += wait
        state.waited += wait
        yield Sleep(wait)


class Sender:
    """What a wrapped client (and every copy made by ``with_options``) shares: the
    Trimmer's parts, the governor, quotas, fallback and retry policy."""

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

    def policy(self, target: Target) -> RetryPolicy:
        return self.retry or RetryPolicy(max_retries=target.max_retries)

    def budget(self, state: SendState, model: str) -> str:
        return budget_key(state.target.base_url, state.target.api_key, model)

    def start(self, prepared: Prepared, target: Target) -> SendState:
        models = [prepared.model, *([self.fallback_model] if self.fallback_model else [])]
        state = SendState(prepared, target, models, prepared.prompt_tokens + prepared.max_tokens)
        try:
            state.quota = self.quotas.reserve(prepared.user, state.tokens)
        except QuotaExceeded:
            state.outcome = "quota_exceeded"
            self._close(state, 0)
            raise
        return state

    def observe(self, state: SendState, model: str, headers: Mapping[str, str]) -> None:
        if self.governor is not None:
            try:
                self.governor.observe(self.budget(state, model), headers)
            except StoreError as error:  # the API answered: its answer goes to the caller
                log.warning("context-trimmer: rate-limit headers not stored: %s", error)

    def reserve(self, state: SendState, model: str) -> float:
        assert self.governor is not None
        try:
            return self.governor.try_reserve(self.budget(state, model), model, state.tokens)
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
        record = ("usage", lambda: self.recorder.record(state.prepared, response))
        self._close(state, used["prompt_tokens"] + used["completion_tokens"], record)

    def fail(self, state: SendState, error: BaseException) -> None:
        if isinstance(error, RateLimitBudgetExceeded):
            state.outcome = "budget_exceeded"
        elif isinstance(error, openai.RateLimitError):
            state.outcome = "rate_limited"
        self._close(state, 0)

    def _close(self, state: SendState, actual: int, *first: tuple[str, Callable[[], Any]]) -> None:
        attempt = {
            "request_id": state.prepared.request_id,
            "attempts": state.attempts,
            "rate_limited": state.rate_limited,
            "waited_ms": int(state.waited * 1000),
            "fallback_model": state.fallback_model,
            "outcome": state.outcome,
        }
        steps = [
            *first,
            ("quota", lambda: self.quotas.settle(state.quota, actual)),
            ("attempt", lambda: self.ledger.add_attempt(attempt)),
        ]
        keep_books(state.prepared.request_id, steps)


def run_sync(sender: Sender, call: Call, target: Target) -> Any:
    """Prepare, send and record ``call`` on the sync client."""
    try:
        state = sender.start(sender.prepare(**call.prepare), target)
    except StoreError as error:
        raw = target.send(sender.failopen.passthrough(error, call), call.headers_for_send())
        return raw if call.raw_mode is not None else raw.parse()
    sender.failopen.recovered()
    sleep = sender.sleep or time.sleep
    try:
        raw = _drive(
            send_plan(state, sender.governor, sender.policy(target)),
            {
                Reserve: lambda e: sender.reserve(state, e.model),
                Sleep: lambda e: sleep(e.seconds),
                Send: lambda e: _send_sync(sender, state, call, e.model),
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
        )
    sender.finish(state, call.usage_view(response))
    return response


def _send_sync(sender: Sender, state: SendState, call: Call, model: str) -> Any:
    body = call.body_for(state.prepared, model, sender.models)
    try:
        raw = state.target.send(body, call.headers_for_send())
    except openai.APIStatusError as error:
        sender.observe(state, model, error.response.headers)
        raise
    sender.observe(state, model, raw.headers)
    return raw


def _drive(plan: Generator[Effect, Any, Any], handlers: Mapping[type, Callable[[Any], Any]]) -> Any:
    step = _Step(plan)
    while not step.done:
        try:
            step.value = handlers[type(step.effect)](step.effect)
        except (openai.APIStatusError, openai.APIConnectionError) as failure:
            step.error = failure
        step.advance()
    return step.value


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


async def run_async(sender: Sender, call: Call, target: Target) -> Any:
    """:func:`run_sync` on the async client."""
    try:  # prepare and take the quota in one hand-off to a worker thread
        prepare = sender.prepare
        state = await asyncio.to_thread(lambda: sender.start(prepare(**call.prepare), target))
    except StoreError as error:
        body = sender.failopen.passthrough(error, call)
        raw = await target.send(body, call.headers_for_send())
        return raw if call.raw_mode is not None else await _awaitable(raw.parse())
    sender.failopen.recovered()
    sleep = sender.sleep or asyncio.sleep
    try:
        raw = await _adrive(
            send_plan(state, sender.governor, sender.policy(target)),
            {
                Reserve: lambda e: asyncio.to_thread(sender.reserve, state, e.model),
                Sleep: lambda e: _awaitable(sleep(e.seconds)),
                Send: lambda e: _send_async(sender, state, call, e.model),
            },
        )
    except BaseException as error:
        await asyncio.to_thread(sender.fail, state, error)
        raise
    if call.raw_mode == RELAY:  # the gateway relays the answer's bytes
        return await relayed(raw, call, lambda answer, end: sender.finish(state, answer, end))
    if call.raw_mode is not None:
        answer = None if call.stream else await _awaitable(raw.parse())
        await asyncio.to_thread(sender.finish, state, call.usage_view(answer))
        return raw
    response = await _awaitable(raw.parse())
    if call.stream:
        return AsyncRecordedStream(
            response,
            lambda summary, end: sender.finish(state, summary, end),
            call.stream_summary(),
        )
    await asyncio.to_thread(sender.finish, state, call.usage_view(response))
    return response


async def _awaitable(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def _send_async(sender: Sender, state: SendState, call: Call, model: str) -> Any:
    body = call.body_for(state.prepared, model, sender.models)
    try:
        raw = await state.target.send(body, call.headers_for_send())
    except openai.APIStatusError as error:
        await asyncio.to_thread(sender.observe, state, model, error.response.headers)
        raise
    await asyncio.to_thread(sender.observe, state, model, raw.headers)
    return raw


async def _adrive(
    plan: Generator[Effect, Any, Any], handlers: Mapping[type, Callable[[Any], Awaitable[Any]]]
) -> Any:
    step = _Step(plan)
    while not step.done:
        try:
            step.value = await handlers[type(step.effect)](step.effect)
        except (openai.APIStatusError, openai.APIConnectionError) as failure:
            step.error = failure
        step.advance()
    return step.value
