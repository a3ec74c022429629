"""``trimmer.wrap(client)``: the OpenAI client, with every chat completion made lighter.

Only ``client.chat.completions.create`` changes; everything else is the client's own.
A call is prepared (summary, window, system prompt, max_tokens), reserved against the
shared rate-limit budget and the user's quota, sent with retries, and recorded; the
SDK's own object comes back (a stream comes back as a transparent proxy that passes
every chunk through untouched and records the usage when the stream ends).

The send logic is written once, as a generator of effects (:func:`send_plan`): reserve
budget, sleep, send. The sync and async clients each drive it with their own I/O, so
retries, budget waits and model fallback behave identically in both.

The conversation and user of a call come from ``with trimmer.conversation(id, user=...)``,
or the ``X-Conversation-Id`` / ``X-User-Id`` entries of ``extra_headers`` (removed before
sending), or the request's ``user`` field, else they are inferred from the messages.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai

from ._db import Database
from ._exceptions import ConfigurationError, QuotaExceeded, RateLimitBudgetExceeded, StoreError
from ._failopen import FailOpen, keep_books, log
from ._ledger import Ledger
from ._models import ModelTable
from ._prepared import Prepared
from ._ratelimit import Governor, QuotaHold, Quotas, RateLimits, budget_key
from ._recording import Recorder
from ._retry import RetryPolicy, should_retry
from ._streams import AsyncRecordedStream, RecordedStream

CONVERSATION_HEADER = "x-conversation-id"
USER_HEADER = "x-user-id"
_identity: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "context_trimmer_identity", default=(None, None)
)


@contextmanager
def conversation(conversation_id: str | None = None, user: str | None = None) -> Iterator[None]:
    """Calls made inside belong to this conversation and user (works across awaits)."""
    token = _identity.set((conversation_id, user))
    try:
        yield
    finally:
        _identity.reset(token)


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
    options: dict[str, Any]
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
    """Everything a wrapped client needs, for the sync and the async client alike."""

    def __init__(
        self,
        client: Any,
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
        sleep: Callable[[float], Any] | None,
        failopen: FailOpen,
    ):
        self.failopen = failopen
        self.prepare = prepare
        self.aprepare = aprepare
        self.recorder = recorder
        self.ledger = ledger
        self.models = models
        self.client = client
        self.raw = client.with_options(max_retries=0).chat.completions.with_raw_response
        self.governor = Governor(db, limits=limits, max_wait=max_wait) if governor else None
        self.quotas = quotas
        self.fallback_model = fallback_model
        self.policy = retry or RetryPolicy(max_retries=client.max_retries)
        self.sleep = sleep
        self.base_url = str(client.base_url)
        self.api_key = str(client.api_key)

    def budget(self, model: str) -> str:
        return budget_key(self.base_url, self.api_key, model)

    def split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The arguments prepare() takes, and the ones passed through to the SDK."""
        options = dict(kwargs)
        try:
            messages, model = options.pop("messages"), options.pop("model")
        except KeyError as missing:
            raise ConfigurationError(f"chat.completions.create() needs {missing}") from None
        max_tokens = options.pop("max_tokens", None)
        max_tokens = options.pop("max_completion_tokens", max_tokens)
        conversation_id, user = _identity.get()
        headers = {str(k).lower(): v for k, v in (options.pop("extra_headers", None) or {}).items()}
        header_conversation = headers.pop(CONVERSATION_HEADER, None)
        header_user = headers.pop(USER_HEADER, None)
        conversation_id = conversation_id or header_conversation
        user = user or header_user or options.get("user")
        if headers:
            options["extra_headers"] = headers
        prepare = {
            "messages": messages,
            "model": model,
            "conversation_id": conversation_id,
            "user": user,
            "tools": options.get("tools"),
            "max_tokens": max_tokens,
        }
        return prepare, options

    def start(self, prepared: Prepared, options: dict[str, Any]) -> SendState:
        models = [prepared.model, *([self.fallback_model] if self.fallback_model else [])]
        state = SendState(prepared, options, models, prepared.prompt_tokens + prepared.max_tokens)
        try:
            state.quota = self.quotas.reserve(prepared.user, state.tokens)
        except QuotaExceeded:
            state.outcome = "quota_exceeded"
            self._close(state, 0)
            raise
        return state

    def request(self, state: SendState, model: str) -> dict[str, Any]:
        prepared = state.prepared
        param = self.models.get(model).max_tokens_param
        return {
            **state.options,
            "model": model,
            "messages": prepared.messages,
            param: prepared.max_tokens,
        }

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        if self.governor is not None:
            try:
                self.governor.observe(self.budget(model), headers)
            except StoreError as error:  # the API answered: its answer goes to the caller
                log.warning("context-trimmer: rate-limit headers not stored: %s", error)

    def reserve(self, state: SendState, model: str) -> float:
        assert self.governor is not None
        try:
            return self.governor.try_reserve(self.budget(model), model, state.tokens)
        except StoreError as error:  # the store went away after prepare()
            if self.failopen.policy != "passthrough":
                raise
            log.warning("context-trimmer: sending without the rate-limit budget: %s", error)
            return 0.0

    def finish(self, state: SendState, response: Any, outcome: str = "ok") -> None:
        """Record usage, how the call went, and settle the user's quota (a failing store
        never costs the caller the answer: see ``keep_books``)."""
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


def run_sync(sender: Sender, kwargs: dict[str, Any]) -> Any:
    prepare, options = sender.split(kwargs)
    try:
        state = sender.start(sender.prepare(**prepare), options)
    except StoreError as error:
        return sender.client.chat.completions.create(
            **sender.failopen.passthrough(error, prepare, options)
        )
    sender.failopen.recovered()
    sleep = sender.sleep or time.sleep
    try:
        raw = _drive(
            send_plan(state, sender.governor, sender.policy),
            {
                Reserve: lambda e: sender.reserve(state, e.model),
                Sleep: lambda e: sleep(e.seconds),
                Send: lambda e: _send_sync(sender, state, e.model),
            },
        )
    except BaseException as error:
        sender.fail(state, error)
        raise
    response = raw.parse()
    if options.get("stream"):
        return RecordedStream(response, lambda summary, end: sender.finish(state, summary, end))
    sender.finish(state, response)
    return response


def _send_sync(sender: Sender, state: SendState, model: str) -> Any:
    try:
        raw = sender.raw.create(**sender.request(state, model))
    except openai.APIStatusError as error:
        sender.observe(model, error.response.headers)
        raise
    sender.observe(model, raw.headers)
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


async def run_async(sender: Sender, kwargs: dict[str, Any]) -> Any:
    prepare, options = sender.split(kwargs)
    try:
        prepared = await sender.aprepare(**prepare)
        state = await asyncio.to_thread(sender.start, prepared, options)
    except StoreError as error:
        return await sender.client.chat.completions.create(
            **sender.failopen.passthrough(error, prepare, options)
        )
    sender.failopen.recovered()
    sleep = sender.sleep or asyncio.sleep
    try:
        raw = await _adrive(
            send_plan(state, sender.governor, sender.policy),
            {
                Reserve: lambda e: asyncio.to_thread(sender.reserve, state, e.model),
                Sleep: lambda e: _awaitable(sleep(e.seconds)),
                Send: lambda e: _send_async(sender, state, e.model),
            },
        )
    except BaseException as error:
        await asyncio.to_thread(sender.fail, state, error)
        raise
    response = await _awaitable(raw.parse())
    if options.get("stream"):
        return AsyncRecordedStream(
            response, lambda summary, end: sender.finish(state, summary, end)
        )
    await asyncio.to_thread(sender.finish, state, response)
    return response


async def _awaitable(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def _send_async(sender: Sender, state: SendState, model: str) -> Any:
    try:
        raw = await sender.raw.create(**sender.request(state, model))
    except openai.APIStatusError as error:
        await asyncio.to_thread(sender.observe, model, error.response.headers)
        raise
    await asyncio.to_thread(sender.observe, model, raw.headers)
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


class _Passthrough:
    """Everything not overridden comes from the wrapped object."""

    _wrapped: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class _Completions(_Passthrough):
    def __init__(self, completions: Any, create: Callable[..., Any]):
        self._wrapped = completions
        self.create = create


class _Chat(_Passthrough):
    def __init__(self, chat: Any, create: Callable[..., Any]):
        self._wrapped = chat
        self.completions = _Completions(chat.completions, create)


class WrappedClient(_Passthrough):
    """The client, but ``chat.completions.create`` goes through the Trimmer."""

    def __init__(self, client: Any, sender: Sender):
        self._wrapped = client
        self.sender = sender

        async def acreate(**kwargs: Any) -> Any:
            return await run_async(sender, kwargs)

        def create(**kwargs: Any) -> Any:
            return run_sync(sender, kwargs)

        is_async = isinstance(client, openai.AsyncOpenAI)
        self.chat = _Chat(client.chat, acreate if is_async else create)
