"""The Trimmer's background thread: folds and prompt rewrites run here, one at a time,
off the request path.

The backlog of keyed jobs (folds) is bounded (:data:`MAX_PENDING`): a job waiting in
the queue holds its conversation's messages, so when new conversations arrive faster
than the thread folds them, an unbounded queue would hold every one of them. A due fold
over the bound is not queued: nothing of it stays in memory, and the next prepare() of
its conversation finds it due again (from the stored summary and the request) and
schedules it then; a request that would cross a hard limit folds synchronously as
always, and ``context-trimmer compact`` or a worker can fold what is left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
MAX_PENDING = 64
"""Keyed jobs (folds) that may wait at once; more are skipped (see above)."""


class Background:
    """A lazily started single worker thread, with at most one pending job per key."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._pending: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()
        self._max_pending = max_pending
        self.skipped = 0
        """Keyed jobs not queued because the backlog was full."""

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Run ``work`` on the background thread."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="context-trimmer")
            return self._executor.submit(work)

    def submit_once(self, key: Hashable, work: Callable[[], Any]) -> bool:
        """Run ``work`` unless a job for ``key`` is still pending or the backlog is
        full; False when not queued."""
        with self._lock:
            if key in self._pending and not self._pending[key].done():
                return False
            if len(self._pending) >= self._max_pending:
                self.skipped += 1
                return False
            future = self.submit(work)
            self._pending[key] = future
        # Outside the lock: a job already done (a fold with nothing to do) runs the
        # callback here, at once, and the callback takes the lock.
        future.add_done_callback(lambda _f: self._forget(key, future))
        return True

    @property
    def backlog(self) -> int:
        """Keyed jobs queued or running."""
        with self._lock:
            return len(self._pending)

    def _forget(self, key: Hashable, future: Future[Any]) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def wait(self, timeout: float | None = None) -> None:
        """Block until the work submitted so far is done."""
        self.submit(lambda: None).result(timeout)

    def close(self) -> None:
        """Finish the submitted work and stop the thread."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
