"""A circuit breaker per summarizer: a failing LLM is not called on every fold.

    closed ──(``threshold`` failures in a row)──> open ──(cool-down over)──> half-open
      ^                                            ^                            │
      └──────────── the trial fold succeeds ───────┼──── it fails (cool-down x2) ┘

While open, folds go straight to the extractive summarizer; when the cool-down is
over, one fold tries the LLM again (half-open) while the others keep folding
extractively. Each failed trial doubles the cool-down, up to ``max_cooldown``. The
state lives in the process (one breaker per summarizer object): two app servers each
keep their own. The clock is injected, so tests move time by hand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from .._exceptions import ConfigurationError

State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True)
class BreakerStatus:
    """What the breaker knows: ``reopens_at`` (UTC, when open) is when the LLM may be
    tried again; ``failures`` counts consecutive failures."""

    state: State
    failures: int
    cooldown: float
    reopens_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reopens_at"] = self.reopens_at.isoformat() if self.reopens_at else None
        return data


class CircuitBreaker:
    """``allow()`` before calling the LLM; then ``success()`` or ``failure()``.

    ``threshold``: consecutive failures that open it; ``cooldown``: the first wait,
    doubled after each failed trial up to ``max_cooldown`` seconds; ``clock``: seconds
    since the epoch (``time.time`` by default).
    """

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 30.0,
        max_cooldown: float = 300.0,
        *,
        clock: Callable[[], float] = time.time,
    ):
        if threshold < 1 or not 0 < cooldown <= max_cooldown:
            raise ConfigurationError(
                "CircuitBreaker needs threshold >= 1 and 0 < cooldown <= max_cooldown; got "
                f"{threshold}, {cooldown}, {max_cooldown}"
            )
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._cooldown = cooldown
        self._reopens_at: float | None = None
        self._trial = False

    def allow(self) -> bool:
        """May the LLM be called now? Half-open lets exactly one caller through."""
        with self._lock:
            if self._reopens_at is None:
                return True
            if self._trial or self._clock() < self._reopens_at:
                return False
            self._trial = True
            return True

    def success(self) -> None:
        """The call worked: close the breaker."""
        with self._lock:
            self._failures, self._cooldown = 0, self.base_cooldown
            self._reopens_at, self._trial = None, False

    def failure(self) -> None:
        """The call failed: count it; open (or re-open, doubling the cool-down)."""
        with self._lock:
            self._failures += 1
            if self._trial:
                self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            elif self._reopens_at is not None or self._failures < self.threshold:
                return  # a call let through before the breaker opened
            self._trial = False
            self._reopens_at = self._clock() + self._cooldown

    def status(self) -> BreakerStatus:
        """The current state, failures, cool-down and when the LLM is tried again."""
        with self._lock:
            reopens = self._reopens_at
            if reopens is None:
                state: State = "closed"
            elif self._trial or self._clock() >= reopens:
                state = "half-open"
            else:
                state = "open"
            return BreakerStatus(
                state,
                self._failures,
                self._cooldown,
                None if reopens is None else datetime.fromtimestamp(reopens, timezone.utc),
            )
