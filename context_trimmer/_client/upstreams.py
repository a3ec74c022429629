"""A pool of upstreams behind one wrapped client: which upstream serves a request,
which are cooling down, and the name each one knows a model by.

``trimmer.wrap(client_a, client_b, ...)`` (or the gateway's ``[[upstreams]]``) gives one
wrapped client several SDK clients: other API keys, other endpoints, Azure deployments.
For each request the send path (:mod:`._wrap`) asks :meth:`Pool.order` which of the
upstreams serving the request's model to try, and in which order:

- the one with the most rate-limit budget left first (``Headroom``, read from the
  governor's shared budgets: how many requests of this size still fit);
- ties (budgets not known yet) in turn, so a fresh pool spreads its load;
- an upstream that failed ``threshold`` times in a row (a 429 or a connection
  failure) is left out for a cool-down, doubled after each failure once it is over,
  up to ``max_seconds``; one success ends it. When every upstream serving the model is
  cooling down they are all tried anyway: a cool-down orders, it never refuses.

A 429 or a connection failure moves the request to the next upstream in that order
before any retry wait or fallback model. The cool-down state lives in the process, like
the summarizer's circuit breaker; the budgets are shared by every process through the
database. Pure: no I/O, the clock injected.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import openai

from .._exceptions import ConfigurationError
from .._store.ratelimit import Headroom, RateLimits

Client = TypeVar("Client", openai.OpenAI, openai.AsyncOpenAI)
LABEL_LENGTH = 200


@dataclass(frozen=True)
class Upstream(Generic[Client]):
    """One client of a pool and what the pool should know about it.

    ``name``: how the ledger and the report call it (with its host: ``name@host``;
    default: the host). ``models``: the models it serves, a list of names or a mapping
    from the name the app asks for to the upstream's own (an Azure deployment name);
    None: every model, under its own name. ``limits``: its budget per model until its
    ``x-ratelimit-*`` headers say otherwise.
    """

    client: Client
    name: str | None = None
    models: Sequence[str] | Mapping[str, str] | None = None
    limits: RateLimits | None = None


@dataclass(frozen=True)
class CoolDown:
    """When an upstream is skipped: after ``threshold`` failures in a row (429s or
    connection failures) for ``seconds``, doubled after each failure once over, up to
    ``max_seconds``; ``clock``: seconds, monotonic (``time.monotonic`` by default)."""

    threshold: int = 3
    seconds: float = 30.0
    max_seconds: float = 300.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def __post_init__(self) -> None:
        if self.threshold < 1 or not 0 < self.seconds <= self.max_seconds:
            raise ConfigurationError(
                "CoolDown needs threshold >= 1 and 0 < seconds <= max_seconds; got "
                f"{self.threshold}, {self.seconds}, {self.max_seconds}"
            )


@dataclass(frozen=True)
class Member:
    """One upstream as the pool sees it: its ledger label, models and limits."""

    label: str
    models: Mapping[str, str] | None
    limits: RateLimits | None

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def model_name(self, model: str) -> str:
        """The upstream's name for ``model``."""
        return model if self.models is None else self.models.get(model, model)


class _Health:
    """Failures in a row of one upstream and until when it is skipped."""

    def __init__(self, policy: CoolDown):
        self.policy = policy
        self.failures = 0
        self.seconds = policy.seconds
        self.until: float | None = None

    def cooling(self, now: float) -> bool:
        return self.until is not None and now < self.until

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.cooling(now) or self.failures < self.policy.threshold:
            return
        if self.until is not None:  # failed again after a cool-down: wait longer
            self.seconds = min(self.seconds * 2, self.policy.max_seconds)
        self.until = now + self.seconds

    def succeeded(self) -> None:
        self.failures, self.seconds, self.until = 0, self.policy.seconds, None


class Pool:
    """The upstreams of one wrapped client (in the order given), their cool-downs and
    the choice of the next one to try."""

    def __init__(self, members: Sequence[Member], cooldown: CoolDown | None = None):
        if not members:
            raise ConfigurationError("a pool needs at least one upstream")
        self.members = tuple(members)
        self.cooldown = cooldown or CoolDown()
        self._health = [_Health(self.cooldown) for _ in self.members]
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.members)

    def label(self, index: int) -> str:
        return self.members[index].label

    def model_name(self, index: int, model: str) -> str:
        return self.members[index].model_name(model)

    def serving(self, model: str) -> list[int]:
        """The upstreams that serve ``model``, in the order given."""
        return [i for i, member in enumerate(self.members) if member.serves(model)]

    def check(self, model: str) -> None:
        """ConfigurationError when no upstream serves ``model``."""
        if not self.serving(model):
            served = sorted({m for member in self.members for m in member.models or ()})
            raise ConfigurationError(
                f"no upstream serves model {model!r}; the upstreams serve: {', '.join(served)}"
            )

    def order(self, model: str, headroom: Mapping[int, Headroom | None], tokens: int) -> list[int]:
        """The upstreams to try for a request of ``tokens`` to ``model``: the most budget
        left first, ties in turn, those cooling down left out (unless all are)."""
        serving = self.serving(model)
        turn = next(self._turn)
        now = self.cooldown.clock()
        with self._lock:
            ready = [i for i in serving if not self._health[i].cooling(now)] or serving

        def rank(index: int) -> tuple[float, int]:
            room = headroom.get(index)
            fits = math.inf if room is None else room.fits(tokens)
            return (-fits, (index - turn) % len(self.members))

        return sorted(ready, key=rank)

    def failed(self, index: int) -> None:
        """A 429 or a connection failure from upstream ``index``."""
        with self._lock:
            self._health[index].failed(self.cooldown.clock())

    def succeeded(self, index: int) -> None:
        with self._lock:
            self._health[index].succeeded()

    def cooling(self) -> list[str]:
        """The labels of the upstreams skipped now."""
        now = self.cooldown.clock()
        with self._lock:
            return [self.label(i) for i, h in enumerate(self._health) if h.cooling(now)]


def host_of(base_url: str) -> str:
    """The host (and port) of ``base_url``, without any user or password."""
    return urlsplit(base_url).netloc.rpartition("@")[2] or base_url


def members(specs: Iterable[tuple[str | None, str, object, RateLimits | None]]) -> list[Member]:
    """Members from ``(name, base_url, models, limits)``: labels ``name@host`` (or the
    host), made unique by position (``host#2``); ``models`` a list or a mapping."""
    made: list[Member] = []
    seen: set[str] = set()
    for position, (name, base_url, models, limits) in enumerate(specs, start=1):
        label = f"{name}@{host_of(base_url)}" if name else host_of(base_url)
        label = label[: LABEL_LENGTH - 4]
        if label in seen:
            label = f"{label}#{position}"
        seen.add(label)
        made.append(Member(label, _model_map(label, models), limits))
    return made


def _model_map(label: str, models: object) -> Mapping[str, str] | None:
    if models is None:
        return None
    if isinstance(models, Mapping):
        mapping = dict(models)
    elif isinstance(models, Sequence) and not isinstance(models, str):
        mapping = {model: model for model in models}
    else:
        raise ConfigurationError(
            f"upstream {label!r}: models must be a list of names or a mapping, got {models!r}"
        )
    for public, own in mapping.items():
        if not isinstance(public, str) or not isinstance(own, str) or not public or not own:
            raise ConfigurationError(
                f"upstream {label!r}: model names must be non-empty strings, got "
                f"{public!r} -> {own!r}"
            )
    return mapping
