"""What a wrapped client does when the store fails: fail open if asked, never lose an answer.

- ``Trimmer(on_store_error="passthrough")``: when prepare() cannot reach the store, the
  request goes to the API as the app gave it, with only the ``max_tokens`` policy
  applied (the call's, else the Trimmer's default, within the model's output limit).
  A warning is logged once per outage, and each such request is counted
  (:attr:`FailOpen.passthrough_requests`, in memory). ``"raise"`` (the default) lets
  the :class:`StoreError` reach the app.
- Once the API has answered, the bookkeeping (usage, attempt, quota) is retried for a
  moment if the store fails, then given up with an error in the log naming the request
  id: the app always gets its answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError, StoreError
from .._inline import refuse
from .._models import ModelTable

if TYPE_CHECKING:  # calls imports the OpenAI SDK, which a Trimmer needs only to wrap a client
    from .calls import Call

log = logging.getLogger("context_trimmer")

POLICIES = ("raise", "passthrough")
BOOKKEEPING_SECONDS = 2.0
"""How long bookkeeping after an answer keeps retrying a failing store."""


class FailOpen:
    """The ``on_store_error`` policy of one Trimmer, and its tally of passed requests."""

    def __init__(self, policy: str, default_max_tokens: int, models: ModelTable):
        if policy not in POLICIES:
            raise ConfigurationError(
                f"on_store_error must be 'raise' or 'passthrough', got {policy!r}"
            )
        self.policy = policy
        self.default_max_tokens = default_max_tokens
        self.models = models
        self.passthrough_requests = 0
        self._down = False
        self._lock = threading.Lock()

    def passthrough(self, error: StoreError, call: Call) -> dict[str, Any]:
        """The body to send as the app gave it (reply cap applied), or ``error`` raised
        under the "raise" policy."""
        if self.policy != "passthrough":
            raise error
        with self._lock:
            self.passthrough_requests += 1
            first = not self._down
            self._down = True
        if first:
            log.warning(
                "context-trimmer: the store is unavailable; sending requests untrimmed "
                "until it is back (on_store_error='passthrough'): %s",
                error,
            )
        model = call.prepare["model"]
        wanted = call.prepare.get("max_tokens")
        cap = min(
            wanted if wanted is not None else self.default_max_tokens,
            self.models.get(model).max_output,
        )
        return call.body_with(call.prepare["messages"], cap, model, self.models)

    def recovered(self) -> None:
        """The store answered again: the next outage is warned about anew."""
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    log.warning(
                        "context-trimmer: the store is back; %d request(s) passed through "
                        "untrimmed so far",
                        self.passthrough_requests,
                    )


def keep_books(
    request_id: int,
    steps: Sequence[tuple[str, Callable[[], Any]]],
    *,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run each bookkeeping step, retrying a failing store for a moment; what still
    fails is logged (with the request id) and skipped, never raised."""
    deadline = clock() + BOOKKEEPING_SECONDS
    for position, (_what, step) in enumerate(steps):
        pause = 0.1
        while True:
            try:
                step()
                break
            except StoreError as error:
                refuse("bookkeeping to retry")  # inline: the lane retries, with pauses
                if clock() + pause > deadline:
                    lost = ", ".join(name for name, _step in steps[position:])
                    log.error(
                        "context-trimmer: could not record the %s of request %s (the answer "
                        "was returned to the caller): %s",
                        lost,
                        request_id,
                        error,
                    )
                    return
                sleep(pause)
                pause *= 2
