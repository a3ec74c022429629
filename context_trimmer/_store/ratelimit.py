"""Rate-limit budgets and per-user quotas, shared by every worker through SQL.

OpenAI's tokens-per-minute limit counts ``prompt tokens + max_tokens`` of every request.
The :class:`Governor` keeps, per API key and model, what is left of the requests and
tokens limits and when they reset: from the ``x-ratelimit-*`` headers of every response
(429s included), or from configured :class:`RateLimits` before any header was seen.
Before a request is sent, its cost is reserved in one transaction (a row lock on
PostgreSQL, the write lock on SQLite), so concurrent workers never reserve more than
the budget; when it does not fit, the caller waits for the reset (plus jitter) or gets
:class:`RateLimitBudgetExceeded` if that wait is longer than ``max_wait``.

:class:`Quotas` does the same for each ``user``: tokens per minute and per UTC day,
reserved before sending and settled to the real usage afterwards.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, select, update

from .._exceptions import QuotaExceeded, RateLimitBudgetExceeded
from .db import Database, as_utc, insert_if_absent
from .fastsql import Fast
from .schema import RateLimitState, UserWindow, utcnow

LIMITS: Table = RateLimitState.__table__  # type: ignore[assignment]
WINDOWS: Table = UserWindow.__table__  # type: ignore[assignment]
MINUTE = timedelta(minutes=1)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1.428s``, ``12ms``); None if not one."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        try:
            return float(text)  # some servers send plain seconds
        except ValueError:
            return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


@dataclass(frozen=True)
class HeaderLimits:
    """The ``x-ratelimit-*`` headers of one response (None: header absent)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> HeaderLimits | None:
        def number(name: str) -> int | None:
            value = headers.get(f"x-ratelimit-{name}")
            return int(float(value)) if value and _is_number(value) else None

        def duration(name: str) -> float | None:
            value = headers.get(f"x-ratelimit-{name}")
            return parse_duration(value) if value else None

        found = cls(
            number("limit-requests"),
            number("limit-tokens"),
            number("remaining-requests"),
            number("remaining-tokens"),
            duration("reset-requests"),
            duration("reset-tokens"),
        )
        return None if found == cls() else found


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class RateLimits:
    """Limits known before the API's headers say them (per minute, for one model)."""

    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None


@dataclass(frozen=True)
class Headroom:
    """What is left of one budget (None: no limit known on that side)."""

    tokens: int | None
    requests: int | None

    @classmethod
    def of(cls, limits: RateLimits) -> Headroom:
        """A full budget of ``limits``."""
        return cls(limits.tokens_per_minute, limits.requests_per_minute)

    def fits(self, tokens: int) -> float:
        """How many requests of ``tokens`` still fit (``inf`` when unbounded)."""
        by_tokens = math.inf if self.tokens is None else self.tokens / max(tokens, 1)
        by_requests = math.inf if self.requests is None else float(self.requests)
        return max(0.0, min(by_tokens, by_requests))


def budget_key(base_url: str, api_key: str, model: str) -> str:
    """The budget a request draws on: one per API key, endpoint and model."""
    account = hashlib.sha256(f"{base_url}\0{api_key}".encode()).hexdigest()[:16]
    return f"{account}:{model}"


_KNOWN = Fast(select(LIMITS.c.key).where(LIMITS.c.key == bindparam("key")))
UNKNOWN_FOR = 1.0
"""Seconds a budget found without a row (no limits configured or seen) is taken as
still unknown without reading again: a limit another process learns is used here
within that long, and one this process learns at once."""


class Governor:
    """Reserves each request's ``prompt + max_tokens`` in the shared budget."""

    def __init__(
        self,
        db: Database,
        *,
        limits: Mapping[str, RateLimits] | None = None,
        max_wait: float = 60.0,
    ):
        self._db = db
        self.limits = dict(limits or {})
        self.max_wait = max_wait
        self._unknown: dict[str, float] = {}  # budget key -> until when (monotonic)
        self._observed = 0  # observe() calls so far

    def try_reserve(
        self, key: str, model: str, tokens: int, limits: RateLimits | None = None
    ) -> float:
        """Reserve ``tokens`` and one request: 0.0 when done, else the seconds to wait.
        ``limits``: this budget's own (an upstream's), before the configured ones."""
        now = utcnow()
        seed = limits or self._configured(model)
        if seed is None and not self._known(key):
            return 0.0  # nothing known about this budget yet: the first response tells
        with self._db.writing() as connection:
            row = self._locked_row(connection, key, seed, now)
            if row is None:
                return 0.0  # nothing known about this budget yet: the first response tells
            state = dict(row._mapping)
            _refill(state, now)
            if state["limit_tokens"] is not None and tokens > state["limit_tokens"]:
                raise RateLimitBudgetExceeded(
                    f"this request reserves {tokens} tokens, more than the whole limit of "
                    f"{state['limit_tokens']} for {model}; lower max_tokens or shorten it",
                    model=model,
                    wait_seconds=float("inf"),
                )
            wait = _wait_for(state, tokens, now)
            if wait == 0.0:
                if state["remaining_tokens"] is not None:
                    state["remaining_tokens"] -= tokens
                if state["remaining_requests"] is not None:
                    state["remaining_requests"] -= 1
            _save(connection, key, state, now)
            return wait

    def _known(self, key: str) -> bool:
        """Whether a budget row exists (read without taking the write lock, and not
        again for ``UNKNOWN_FOR`` seconds once found missing)."""
        until = self._unknown.get(key)
        if until is not None and time.monotonic() < until:
            return False
        observed = self._observed
        with self._db.reading() as connection:
            known = _KNOWN.first(connection, {"key": key}) is not None
        if not known and observed == self._observed:  # no observe() meanwhile
            if len(self._unknown) >= 1024:
                self._unknown.clear()  # a bound: the keys are upstreams times models
            self._unknown[key] = time.monotonic() + UNKNOWN_FOR
        return known

    def headroom(
        self, budgets: Sequence[tuple[str, str, RateLimits | None]]
    ) -> list[Headroom | None]:
        """What is left now of each budget ``(key, model, its own limits)``, read without
        a lock (None: nothing known yet)."""
        keys = [key for key, _model, _limits in budgets]
        with self._db.reading() as connection:
            rows = connection.execute(select(LIMITS).where(LIMITS.c.key.in_(keys))).mappings()
            known = {row["key"]: dict(row) for row in rows}
        now = utcnow()
        left: list[Headroom | None] = []
        for key, model, limits in budgets:
            state = known.get(key)
            if state is None:
                seed = limits or self._configured(model)
                left.append(None if seed is None else Headroom.of(seed))
                continue
            _refill(state, now)
            left.append(Headroom(state["remaining_tokens"], state["remaining_requests"]))
        return left

    def observe(self, key: str, headers: Mapping[str, str]) -> None:
        """Take in what the API said about the limits."""
        seen = HeaderLimits.parse(headers)
        if seen is None:
            return
        now = utcnow()
        with self._db.writing() as connection:
            row = self._locked_row(connection, key, None, now)
            state = dict(row._mapping) if row is not None else _empty_state()
            _merge(state, seen, now)
            _save(connection, key, state, now, insert=row is None)
        self._observed += 1
        self._unknown.pop(key, None)

    def check_wait(self, model: str, waited: float, wait: float) -> None:
        if waited + wait > self.max_wait:
            raise RateLimitBudgetExceeded(
                f"the rate-limit budget for {model} is spent until its reset in {wait:.1f}s; "
                f"waiting would exceed max_wait={self.max_wait}s. Retry later, lower "
                "max_tokens, or raise max_wait.",
                model=model,
                wait_seconds=wait,
            )

    def _locked_row(
        self, connection: Connection, key: str, seed: RateLimits | None, now: datetime
    ) -> Any:
        """The budget row, locked; seeded from ``seed`` when there is none yet."""
        query = select(LIMITS).where(LIMITS.c.key == key).with_for_update()
        row = connection.execute(query).first()
        if row is None and seed is not None:
            insert_if_absent(connection, LIMITS, {"key": key, **_seed(seed, now)})
            row = connection.execute(query).first()
        return row

    def _configured(self, model: str) -> RateLimits | None:
        matches = [name for name in self.limits if model.startswith(name)]
        return self.limits[max(matches, key=len)] if matches else None


def _empty_state() -> dict[str, Any]:
    return {
        "limit_requests": None,
        "limit_tokens": None,
        "remaining_requests": None,
        "remaining_tokens": None,
        "reset_requests_at": None,
        "reset_tokens_at": None,
    }


def _seed(limits: RateLimits, now: datetime) -> dict[str, Any]:
    return {
        "limit_requests": limits.requests_per_minute,
        "limit_tokens": limits.tokens_per_minute,
        "remaining_requests": limits.requests_per_minute,
        "remaining_tokens": limits.tokens_per_minute,
        "reset_requests_at": now + MINUTE if limits.requests_per_minute else None,
        "reset_tokens_at": now + MINUTE if limits.tokens_per_minute else None,
        "updated_at": now,
    }


def _refill(state: dict[str, Any], now: datetime) -> None:
    """A window that has reset is full again (until the next header corrects it)."""
    for kind in ("tokens", "requests"):
        reset = state[f"reset_{kind}_at"]
        if reset is not None and as_utc(reset) <= now and state[f"limit_{kind}"] is not None:
            state[f"remaining_{kind}"] = state[f"limit_{kind}"]
            state[f"reset_{kind}_at"] = now + MINUTE


def _wait_for(state: dict[str, Any], tokens: int, now: datetime) -> float:
    waits = []
    for kind, need in (("tokens", tokens), ("requests", 1)):
        remaining, reset = state[f"remaining_{kind}"], state[f"reset_{kind}_at"]
        if remaining is not None and remaining < need:
            waits.append(max(0.01, (as_utc(reset) - now).total_seconds()) if reset else 1.0)
    return max(waits, default=0.0)


def _merge(state: dict[str, Any], seen: HeaderLimits, now: datetime) -> None:
    for kind in ("tokens", "requests"):
        limit = getattr(seen, f"limit_{kind}")
        remaining = getattr(seen, f"remaining_{kind}")
        reset = getattr(seen, f"reset_{kind}")
        if limit is not None:
            state[f"limit_{kind}"] = limit
        if remaining is not None:
            ours = state[f"remaining_{kind}"]
            # Other workers may have reserved what the server has not seen yet.
            state[f"remaining_{kind}"] = remaining if ours is None else min(ours, remaining)
        if reset is not None:
            state[f"reset_{kind}_at"] = now + timedelta(seconds=reset)


def _save(
    connection: Connection, key: str, state: dict[str, Any], now: datetime, *, insert: bool = False
) -> None:
    values = {name: state[name] for name in _empty_state()} | {"updated_at": now}
    if insert:
        if not insert_if_absent(connection, LIMITS, {"key": key, **values}):
            connection.execute(update(LIMITS).where(LIMITS.c.key == key).values(**values))
    else:
        connection.execute(update(LIMITS).where(LIMITS.c.key == key).values(**values))


@dataclass(frozen=True)
class UserQuota:
    """Tokens (``prompt + max_tokens`` reserved, settled to real usage) one user may spend."""

    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None


@dataclass(frozen=True)
class QuotaHold:
    """What :meth:`Quotas.reserve` took, to settle once the usage is known."""

    user: str
    windows: tuple[str, ...]
    tokens: int


class Quotas:
    """Per-user token quotas per minute and per UTC day, shared through SQL."""

    def __init__(
        self,
        db: Database,
        default: UserQuota | None = None,
        per_user: Mapping[str, UserQuota] | None = None,
    ):
        self._db = db
        self.default = default
        self.per_user = dict(per_user or {})

    def quota_for(self, user: str | None) -> UserQuota | None:
        if user is None:
            return None
        return self.per_user.get(user, self.default)

    def reserve(self, user: str | None, tokens: int) -> QuotaHold | None:
        quota = self.quota_for(user)
        if quota is None or user is None:
            return None
        now = utcnow()
        windows = _windows(quota, now)
        with self._db.writing() as connection:
            _forget_old_windows(connection, user, now)
            for window, limit, ends in windows:
                used = _locked_tokens(connection, user, window)
                if used + tokens > limit:
                    raise _quota_error(user, window, used, limit, tokens, ends - now)
            for window, _limit, _ends in windows:
                _add_tokens(connection, user, window, tokens)
        return QuotaHold(user, tuple(w for w, _l, _e in windows), tokens)

    def settle(
        self, hold: QuotaHold | None, actual: int, connection: Connection | None = None
    ) -> None:
        """Replace the reservation by what the request really used (in ``connection``'s
        transaction, else its own)."""
        if hold is None or actual == hold.tokens:
            return
        if connection is None:
            with self._db.writing() as connection:
                return self.settle(hold, actual, connection)
        for window in hold.windows:
            _add_tokens(connection, hold.user, window, actual - hold.tokens)

    def used(self, user: str) -> dict[str, int]:
        """Tokens ``user`` has spent in the current minute and day."""
        now = utcnow()
        with self._db.reading() as connection:
            return {
                kind: int(
                    connection.execute(
                        select(WINDOWS.c.tokens).where(
                            WINDOWS.c.user == user, WINDOWS.c.window == window
                        )
                    ).scalar()
                    or 0
                )
                for kind, window in (("minute", _minute(now)), ("day", _day(now)))
            }


def _quota_error(
    user: str, window: str, used: int, limit: int, tokens: int, left: timedelta
) -> QuotaExceeded:
    kind = "minute" if window.startswith("m:") else "day"
    seconds = left.total_seconds()
    return QuotaExceeded(
        f"user {user!r} has used {used:,} of {limit:,} tokens this {kind}; this request "
        f"needs {tokens:,}. Retry in {seconds:.0f}s, or raise the user's quota.",
        user=user,
        window=kind,
        used=used,
        limit=limit,
        retry_after=seconds,
    )


def _minute(now: datetime) -> str:
    return "m:" + now.strftime("%Y-%m-%dT%H:%M")


def _day(now: datetime) -> str:
    return "d:" + now.strftime("%Y-%m-%d")


def _windows(quota: UserQuota, now: datetime) -> list[tuple[str, int, datetime]]:
    windows = []
    if quota.tokens_per_minute is not None:
        start = now.replace(second=0, microsecond=0)
        windows.append((_minute(now), quota.tokens_per_minute, start + MINUTE))
    if quota.tokens_per_day is not None:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        windows.append((_day(now), quota.tokens_per_day, start + timedelta(days=1)))
    return windows


def _locked_tokens(connection: Connection, user: str, window: str) -> int:
    insert_if_absent(connection, WINDOWS, {"user": user, "window": window, "tokens": 0})
    query = select(WINDOWS.c.tokens).where(WINDOWS.c.user == user, WINDOWS.c.window == window)
    return int(connection.execute(query.with_for_update()).scalar_one())


def _add_tokens(connection: Connection, user: str, window: str, tokens: int) -> None:
    connection.execute(
        update(WINDOWS)
        .where(WINDOWS.c.user == user, WINDOWS.c.window == window)
        .values(tokens=WINDOWS.c.tokens + tokens)
    )


def _forget_old_windows(connection: Connection, user: str, now: datetime) -> None:
    connection.execute(
        delete(WINDOWS).where(
            WINDOWS.c.user == user,
            ((WINDOWS.c.window.like("m:%")) & (WINDOWS.c.window < _minute(now)))
            | ((WINDOWS.c.window.like("d:%")) & (WINDOWS.c.window < _day(now))),
        )
    )
