"""A PostgreSQL store known to be down fails fast; one background probe pays the waits.

A frozen server (SIGSTOP, a hung host) costs each call up to about twice
``store_timeout`` before it fails (see ``_store.deadlines``). Once one call has timed out so,
the :class:`Outage` begins: every later call fails at once with a StoreError saying so,
while one daemon thread probes the server every :data:`PROBE_SECONDS` (each probe bounded
by the same deadlines). The first probe that gets an answer ends the outage, so calls
reach the store again within about a second of its return. A refused connection is not
an outage: it fails at once anyway, and the next call finds the server as soon as it is
back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("context_trimmer")
PROBE_SECONDS = 1.0
"""How often the background probe tries a store that timed out."""


class Outage:
    """Whether the store is known to be down, and the probe that finds it back.

    ``probe()`` must reach the store past the outage (it raises when it cannot);
    ``clock`` and ``every`` are injectable for tests."""

    def __init__(
        self,
        probe: Callable[[], None],
        *,
        every: float = PROBE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._probe = probe
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._reason = ""
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def down_for(self) -> float | None:
        """Seconds since the outage began, or None while the store is not known down."""
        since = self._since
        return None if since is None else self._clock() - since

    @property
    def reason(self) -> str:
        return self._reason

    def begin(self, reason: str) -> None:
        """The store timed out: fail fast from now on, and probe it in the background."""
        with self._lock:
            if self._closed.is_set():
                return
            if self._since is None:
                self._since, self._reason = self._clock(), reason
                log.warning(
                    "context-trimmer: the store gave no answer (%s); failing calls at once "
                    "until a probe (every %g s) reaches it",
                    reason,
                    self._every,
                )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="context-trimmer-store-probe", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self._every):
            try:
                self._probe()
            except Exception as error:  # a StoreError, as expected while it is down
                log.debug("context-trimmer: the store probe failed: %s", error)
                continue
            with self._lock:
                self._since, self._thread = None, None
            log.warning("context-trimmer: the store answers again")
            return
        with self._lock:
            self._thread = None

    def close(self) -> None:
        """Stop probing (the store is being closed)."""
        self._closed.set()
