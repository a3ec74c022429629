"""Where async callers' SQLite work runs when it would wait: one thread per store.

Store work of the async wrapper and the gateway (prepare, the rate-limit budget, the
bookkeeping of an answer) runs on the event loop itself when it is quick and cannot
wait (``_inline``); what would wait (a lock held, a fold to make, a long new history)
comes here, so the event loop never blocks. With asyncio's default pool, up to six
threads took turns at the GIL and at SQLite's one write lock: each turn is a futex
wake-up and a context switch, and on a 2-core machine the gateway spent about a sixth
of its CPU on them. SQLite writes one transaction at a time anyway, so a SQLite store
gets one thread, a *lane*, that runs the work in order and stays hot.

One thing must not happen: a request waiting behind a slow one. A prepare() may fold
synchronously (a summarizer call, up to ``sync_fold_deadline``). When the lane's
current job has run longer than ``stall`` seconds, new work, and the work already
queued behind it, goes to asyncio's default pool instead, as before.

PostgreSQL stores keep the default pool: their statements wait on the network with the
GIL released, and several connections work in parallel.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["StoreLane"]

T = TypeVar("T")
_Job = tuple[Callable[[], Any], "Future[Any]"]


class StoreLane:
    """Runs store work on one thread, in order; overflows to asyncio's default pool
    while a job holds the lane for longer than ``stall`` seconds."""

    def __init__(self, stall: float = 0.05):
        self.stall = stall
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._busy_since: float | None = None
        self._thread: threading.Thread | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the lane (or, while it is held up, the default pool)."""
        if self._stalled():
            self._rescue_queued()
            return await asyncio.to_thread(function, *args)
        future: Future[T] = Future()
        context = contextvars.copy_context()  # as asyncio.to_thread does
        with self._ready:
            self._jobs.append((lambda: context.run(function, *args), future))
            self._ready.notify()
            self._start()
        return await asyncio.wrap_future(future)

    def _stalled(self) -> bool:
        since = self._busy_since
        return since is not None and time.monotonic() - since > self.stall

    def _rescue_queued(self) -> None:
        """Move the jobs waiting behind a stalled one to the default pool."""
        with self._ready:
            queued = list(self._jobs)
            self._jobs.clear()
        loop = asyncio.get_running_loop()
        for job in queued:
            loop.run_in_executor(None, _run, *job)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="ct-store", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    if not self._ready.wait(timeout=60):
                        self._thread = None  # idle for a minute: the next job starts one
                        return
                job = self._jobs.popleft()
            self._busy_since = time.monotonic()
            try:
                _run(*job)
            finally:
                self._busy_since = None


def _run(call: Callable[[], Any], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as error:  # handed to the awaiting coroutine
        future.set_exception(error)
