"""The Trimmer's background thread: folds and prompt rewrites run here, one at a time,
off the request path."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Background:
    """A lazily started single worker thread, with at most one pending job per key."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._pending: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Run ``work`` on the background thread."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="context-trimmer")
            return self._executor.submit(work)

    def submit_once(self, key: Hashable, work: Callable[[], Any]) -> None:
        """Run ``work`` unless a job for ``key`` is still pending."""
        with self._lock:
            if key in self._pending and not self._pending[key].done():
                return
            future = self.submit(work)
            self._pending[key] = future
            future.add_done_callback(lambda _f: self._forget(key, future))

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
