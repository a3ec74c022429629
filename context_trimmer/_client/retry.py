"""Retry policy for wrapped calls: exponential backoff with full jitter.

The wrapper turns the SDK's own retries off for the calls it sends (so nothing is
retried twice over) and retries with the SDK's rules for *what* to retry: connection
errors and timeouts, 408, 409, 429 and 5xx, ``x-should-retry`` obeyed, and a
``retry-after`` longer than two minutes not retried. *When* to retry: the server's
``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date) when given, else full
jitter, ``uniform(0, min(cap, base * 2**attempt))``, which spreads competing workers
apart instead of having them retry in step.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MAX_RETRY_AFTER = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: up to ``max_retries`` retries, waiting a
    random share of ``min(cap, base * 2**attempt)`` seconds unless the server says how long."""

    max_retries: int = 4
    base: float = 0.5
    cap: float = 8.0
    random: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        server = retry_after(headers)
        if server is not None and 0 < server <= MAX_RETRY_AFTER:
            return float(server)
        return float(self.random()) * min(self.cap, self.base * 2.0**attempt)


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The server's requested delay in seconds, from ``retry-after-ms`` or ``retry-after``."""
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    value = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(value) if value else None
    return None if parsed is None else float(email.utils.mktime_tz(parsed) - time.time())


def should_retry(status: int | None, headers: Mapping[str, str] | None) -> bool:
    """The SDK's rules: ``status`` None means the connection failed or timed out."""
    if status is None:
        return True
    server = retry_after(headers)
    if server is not None and server > MAX_RETRY_AFTER:
        return False
    verdict = (headers or {}).get("x-should-retry")
    if verdict in ("true", "false"):
        return verdict == "true"
    return status in (408, 409, 429) or status >= 500
