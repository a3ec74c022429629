"""The send plan of a wrapped call, written once as a generator of effects.

:func:`send_plan` says what to do, never does it: ``Choose`` the upstreams to try for a
model (most budget left first), ``Reserve`` budget on one of them, ``Sleep``, ``Send``.
The sync and async clients drive it with their own I/O (:mod:`._wrap`), so failover,
retries, budget waits and model fallback behave identically in both:

- a 429 or a connection failure moves the call to the next upstream serving the model,
  at once; when every one has failed, the call waits (``retry-after``, else backoff
  with full jitter) and goes round again, up to ``max_retries`` times;
- only then, if the model stays rate-limited (or its budget spent), does the call fall
  back to the next model, on every upstream serving that one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from .._exceptions import ConfigurationError, RateLimitBudgetExceeded
from .._prepared import Prepared
from .._store.ratelimit import Governor, QuotaHold
from .retry import RetryPolicy, should_retry
from .upstreams import Pool


@dataclass(frozen=True)
class Target:
    """Where one upstream of a wrapped client sends: the identity of its rate-limit
    budget, its ``max_retries``, and the SDK's own POST (``send(body, headers)``, retries
    off), which returns the raw response (an awaitable of it for the async client)."""

    base_url: str
    api_key: str
    max_retries: int
    send: Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class Choose:
    model: str


@dataclass(frozen=True)
class Reserve:
    model: str
    upstream: int


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Send:
    model: str
    upstream: int


@dataclass
class SendState:
    """One call on its way out: what it is and what happened to it. ``targets`` are the
    pool's upstreams, in the pool's order; ``upstream`` the one that answered (or was
    tried last)."""

    prepared: Prepared
    targets: Sequence[Target]
    pool: Pool
    models: list[str]
    tokens: int
    attempts: int = 0
    rate_limited: int = 0
    waited: float = 0.0
    fallback_model: str | None = None
    quota: QuotaHold | None = None
    outcome: str = "error"
    upstream: int | None = None
    early: tuple[str, int, Any] | None = None  # a Reserve answered ahead (see take_early)

    def take_early(self, reserve: Reserve) -> Any:
        """The answer to ``reserve`` if it was made ahead (a wait, or the error to
        raise), else None; an answer is used once."""
        early, self.early = self.early, None
        if early is None or early[:2] != (reserve.model, reserve.upstream):
            return None
        return early[2]


@dataclass(frozen=True)
class _Failed:
    """A send that failed: ``status`` None when the connection did."""

    error: openai.APIError
    status: int | None
    headers: Mapping[str, str] | None

    @property
    def moves_on(self) -> bool:
        """A 429 or a connection failure: another upstream may answer (even when this
        one says to wait longer than a retry would, or not to retry)."""
        return self.status in (None, 429)


Effect = Choose | Reserve | Sleep | Send


def send_plan(
    state: SendState, governor: Governor | None, policy: RetryPolicy
) -> Generator[Effect, Any, Any]:
    """Choose, reserve, send and retry; fall back to the next model when one stays
    exhausted on every upstream. Returns the raw response of the call that succeeded."""
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
        upstreams = list((yield Choose(model)))
        limited: _Failed | None = None  # a 429 this round: the model is rate-limited
        while True:
            index = yield from _reserve(state, model, upstreams, governor, policy)
            sent = yield from _send_once(state, model, index)
            if not isinstance(sent, _Failed):
                return sent
            limited = sent if sent.status == 429 else limited
            upstreams.remove(index)
            if not (sent.moves_on and upstreams):
                break
        if attempt >= policy.max_retries or not should_retry(sent.status, sent.headers):
            # Rate-limited where it answered, unreachable elsewhere: the fallback's case.
            raise (limited if sent.moves_on and limited else sent).error
        delay = policy.delay(attempt, sent.headers)
        state.waited += delay
        yield Sleep(delay)
        attempt += 1


def _send_once(state: SendState, model: str, index: int) -> Generator[Effect, Any, Any]:
    """One POST to upstream ``index``: its raw response, or how it failed."""
    state.attempts += 1
    state.upstream = index
    try:
        raw = yield Send(model, index)
    except openai.APIStatusError as error:
        state.rate_limited += error.status_code == 429
        failed = _Failed(error, error.status_code, error.response.headers)
    except openai.APIConnectionError as error:
        failed = _Failed(error, None, None)
    else:
        state.pool.succeeded(index)
        return raw
    if failed.moves_on:
        state.pool.failed(index)
    return failed


def _reserve(
    state: SendState,
    model: str,
    upstreams: Sequence[int],
    governor: Governor | None,
    policy: RetryPolicy,
) -> Generator[Effect, Any, int]:
    """The first of ``upstreams`` whose budget has room (now reserved); when none has,
    wait for the soonest reset (up to ``max_wait`` in all) and look again."""
    if governor is None:
        return upstreams[0]
    waited = 0.0
    while True:
        waits: list[float] = []
        too_large: RateLimitBudgetExceeded | None = None
        for index in upstreams:
            try:
                wait = yield Reserve(model, index)
            except RateLimitBudgetExceeded as error:  # over this upstream's whole limit
                wait, too_large = math.inf, error
            if wait <= 0:
                return index
            waits.append(wait)
        wait = min(waits)
        if too_large is not None and wait == math.inf:
            raise too_large
        governor.check_wait(model, waited, wait)
        wait += policy.random() * min(1.0, 0.1 * wait)  # jitter: workers do not wake in step
        waited += wait
        state.waited += wait
        yield Sleep(wait)
