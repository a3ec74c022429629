"""Bounded waits on PostgreSQL: a stopped, frozen or unreachable server cannot hold a thread.

Three limits, all ``timeout`` seconds (see :func:`store_timeout`): connecting
(libpq's ``connect_timeout``), waiting for a pooled connection (SQLAlchemy's
``pool_timeout``) and each statement (the server's ``statement_timeout``).

A frozen server (SIGSTOP, a hung VM) is the hard case: its kernel still acknowledges
TCP, so neither ``statement_timeout`` (the server enforces it) nor TCP keepalives (the
kernel answers them) end the wait. A watchdog thread does: every call that waits on
the server (the ping on checkout, each statement, commit, rollback) arms a deadline
for its connection's socket, a little after the server's own limit; when one passes,
the socket is shut down, the blocked call fails at once as a lost connection (which
the pool discards), and the thread learns that it was cut for lack of an answer.

A pooled connection is pinged on checkout only when it may be gone: when it has been
idle for :data:`PING_AFTER_IDLE` seconds or more, or when its socket has something to
read (an idle connection is sent nothing: a server that closed it, restarted or
terminated its backend has sent an error or the end of the stream). A busy, healthy
pool so pays no round trip per checkout; a connection that broke silently in between
fails its first statement within the same deadlines as the ping would have.
"""

from __future__ import annotations

import math
import os
import select
import socket
import threading
import time
import weakref
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError

from .._exceptions import ConfigurationError

TIMEOUT_ENV = "CONTEXT_TRIMMER_DB_TIMEOUT"
DEFAULT_TIMEOUT = 5.0
"""Seconds: connecting, waiting for a pooled connection, and each statement."""
GRACE = 1.0
"""The watchdog fires this long after the server's own statement limit."""
PING_AFTER_IDLE = 10.0
"""Seconds a pooled connection may sit idle and still be handed out without a ping."""
_RETURNED = "context_trimmer_returned"  # the pool entry's info: when it was checked in


def store_timeout(timeout: float | None = None) -> float:
    """``timeout``, else ``$CONTEXT_TRIMMER_DB_TIMEOUT``, else 5 seconds."""
    value: Any = timeout
    if value is None:
        value = os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT
        try:
            value = float(value)
        except ValueError:
            raise ConfigurationError(
                f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"store_timeout must be a number of seconds > 0, got {value!r}")
    return float(value)


def connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """libpq settings bounding the connection and each statement (URL options kept)."""
    options = " ".join(
        part
        for part in (url.query.get("options"), f"-c statement_timeout={int(timeout * 1000)}")
        if isinstance(part, str) and part
    )
    return {
        "connect_timeout": max(2, math.ceil(timeout)),
        "options": options,
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(timeout)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": int(timeout * 1000),
    }


class Watchdog:
    """Shuts down the socket of any connection whose call outlived its deadline."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, Any, int]] = {}  # id -> (deadline, conn, thread)
        self._cut: set[int] = set()  # threads whose connection was cut
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wakes_at: float | None = None  # when the thread looks next (None: when told)

    def arm(self, dbapi_connection: Any, seconds: float) -> None:
        with self._condition:
            deadline = time.monotonic() + seconds
            self._armed[id(dbapi_connection)] = (
                deadline,
                dbapi_connection,
                threading.get_ident(),
            )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="context-trimmer-db-watchdog", daemon=True
                )
                self._thread.start()
            if self._wakes_at is None or deadline < self._wakes_at:
                self._condition.notify()  # else it wakes in time anyway: no switch per call

    def disarm(self, dbapi_connection: Any) -> None:
        if dbapi_connection is not None:
            with self._condition:
                self._armed.pop(id(dbapi_connection), None)

    def take_cut(self) -> bool:
        """True (once) if this thread's connection was cut since the last call."""
        with self._condition:
            ident = threading.get_ident()
            if ident in self._cut:
                self._cut.discard(ident)
                return True
            return False

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for key, (deadline, connection, thread) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[key]
                        self._cut.add(thread)
                        _shut_down(connection)
                self._wakes_at = min((d for d, _c, _t in self._armed.values()), default=None)
                wait = None if self._wakes_at is None else max(0.0, self._wakes_at - now)
                self._condition.wait(wait)


def _shut_down(dbapi_connection: Any) -> None:
    """End every wait on the connection's socket (the socket stays open until closed)."""
    try:
        if dbapi_connection.closed:
            return
        duplicate = socket.socket(fileno=os.dup(dbapi_connection.fileno()))
    except Exception:  # closed meanwhile: nothing is waiting on it any more
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()


WATCHDOG = Watchdog()


_LIMITS: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()
"""The watchdog's limit of each bound engine."""


_UNWATCHED: AbstractContextManager[None] = nullcontext()


def watched(engine: Engine, dbapi_connection: Any) -> AbstractContextManager[None]:
    """The watchdog armed for a wait on the server that SQLAlchemy's events do not see
    (a statement run on the DBAPI cursor); nothing (a shared no-op, no cost on SQLite's
    hot path) for an engine not :func:`bound`."""
    seconds = _LIMITS.get(engine)
    return _UNWATCHED if seconds is None else _Armed(dbapi_connection, seconds)


class _Armed:
    """The watchdog armed for one connection while inside."""

    __slots__ = ("connection", "seconds")

    def __init__(self, dbapi_connection: Any, seconds: float):
        self.connection, self.seconds = dbapi_connection, seconds

    def __enter__(self) -> None:
        WATCHDOG.arm(self.connection, self.seconds)

    def __exit__(self, *_exc: object) -> None:
        WATCHDOG.disarm(self.connection)


def bound(engine: Engine, timeout: float) -> None:
    """Arm the watchdog around every wait of ``engine``'s connections on the server, and
    ping each connection on checkout (a dead one is replaced, as with pre-ping)."""
    seconds = timeout + GRACE
    _LIMITS[engine] = seconds
    dialect = engine.dialect

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if not _may_be_gone(dbapi_connection, record.info.get(_RETURNED)):
            return
        WATCHDOG.arm(dbapi_connection, seconds)
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise DisconnectionError(f"the pooled connection is gone: {error}") from error
        finally:
            WATCHDOG.disarm(dbapi_connection)

    def arm(connection: Any, *_args: Any) -> None:
        if not connection.invalidated:  # an invalidated one has no socket to wait on
            WATCHDOG.arm(connection.connection.dbapi_connection, seconds)

    def disarm(connection: Any, *_args: Any) -> None:
        if not connection.invalidated:
            WATCHDOG.disarm(connection.connection.dbapi_connection)

    def disarm_error(context: Any) -> None:
        # The statement failed: it no longer waits (a lost connection is disarmed when
        # the pool invalidates it). The DBAPI cursor knows its connection.
        WATCHDOG.disarm(getattr(getattr(context, "cursor", None), "connection", None))

    def arm_reset(dbapi_connection: Any, *_args: Any) -> None:
        WATCHDOG.arm(dbapi_connection, seconds)

    def disarm_pooled(dbapi_connection: Any, *_args: Any) -> None:
        WATCHDOG.disarm(dbapi_connection)

    def returned(dbapi_connection: Any, record: Any) -> None:
        WATCHDOG.disarm(dbapi_connection)
        record.info[_RETURNED] = time.monotonic()

    for name in ("before_cursor_execute", "commit", "rollback"):
        event.listen(engine, name, arm)
    event.listen(engine, "after_cursor_execute", disarm)
    event.listen(engine, "handle_error", disarm_error)
    event.listen(engine.pool, "reset", arm_reset)
    event.listen(engine.pool, "checkin", returned)
    for name in ("invalidate", "soft_invalidate", "close"):
        event.listen(engine.pool, name, disarm_pooled)


def _may_be_gone(dbapi_connection: Any, returned: float | None) -> bool:
    """Whether a pooled connection needs a ping before use: idle for long (or never
    used), or with something to read on its socket (see the module's docstring)."""
    if returned is None or time.monotonic() - returned >= PING_AFTER_IDLE:
        return True
    try:
        readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    except Exception:  # closed or broken: the ping finds out what it is
        return True
    return bool(readable)
