"""The gateway's guards: what is refused before anything is stored, and how failures answer.

- Every error is OpenAI-style JSON (``{"error": {"message", "type", "param", "code"}}``):
  a store outage is a 503 with ``Retry-After``, anything unexpected a 500, an unknown
  route a 404; never plain text.
- A request body is refused over the size limit (before it is read whole), nested
  deeper than :data:`MAX_DEPTH` (found by a scan of the raw bytes, before parsing),
  holding NaN, Infinity or a number beyond a float (``1e400``), or when ``model``,
  ``messages``, ``stream`` or ``user`` have the wrong type, or a reply cap
  (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``) is not an integer
  from 1 to the model's output limit. Every route that parses JSON reads it with
  :func:`read_json_body`: one set of limits. The identifiers (``X-Conversation-Id``,
  ``X-User-Id``, ``user``) follow the library's rule (1 to 200 characters, no control characters).
- The tenant (the key's user) and its end user are stored as one name that no other
  tenant can produce: the tenant's ``\\`` and ``:`` are escaped, then ``:`` and the end
  user follow (``acme`` + ``bob`` is ``acme:bob``; a tenant named ``acme:bob`` is
  ``acme\\:bob``). Names without ``\\`` or ``:`` in the tenant are stored as before.
- Keys longer than :data:`MAX_KEY_CHARS` are refused before they are hashed; unknown
  keys are remembered in a bounded cache; a key seen valid in the last hour is still
  accepted while the store cannot be reached (so ``--on-store-error passthrough``
  serves known callers).
- The body is forwarded as it came (fields the SDK does not name included): the
  gateway posts it with the wrapped client's own ``post``, never a 500 for a new field.
- ``/healthz`` checks the store at most once a second (:class:`StoreHealth`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._arguments import MAX_IDENTIFIER, MAX_STORED_INT
from .._exceptions import StoreError
from .._store.keys import KeyInfo
from .._store.tenants import tenant_user

log = logging.getLogger("context_trimmer.gateway")

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a request body."""
MAX_KEY_CHARS = 200
"""Longer than any gateway key (``ctk-`` and 43 characters): refused before hashing."""
KEY_CACHE_ENTRIES = 10_000
"""Keys remembered, known and unknown each: at most a few MB."""
STALE_KEY_SECONDS = 3600.0
"""During a store outage, a key seen valid this recently is still accepted."""
RETRY_AFTER_SECONDS = 5
HEALTH_SECONDS = 1.0
"""The store is checked for ``/healthz`` at most this often."""


def error_response(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- failures ---------------------------------------------------------------------------


def store_unavailable() -> JSONResponse:
    """The answer while the store cannot be reached: 503, try again shortly."""
    return error_response(
        503,
        "the gateway's history store is unavailable; retry shortly",
        kind="server_error",
        code="store_unavailable",
        headers={"retry-after": str(RETRY_AFTER_SECONDS)},
    )


async def on_store_error(request: Request, error: Exception) -> Response:
    health = getattr(request.app.state, "health", None)
    if isinstance(health, StoreHealth) and isinstance(error, StoreError):
        health.failed(error)
    else:
        log.warning("the store failed: %s", error)
    return store_unavailable()


async def on_http_error(request: Request, error: Exception) -> Response:
    status = error.status_code if isinstance(error, HTTPException) else 400
    detail = error.detail if isinstance(error, HTTPException) else str(error)
    headers = dict(error.headers or {}) if isinstance(error, HTTPException) else None
    if status == 404:
        detail = f"unknown path: {request.method} {request.url.path}"
    return error_response(status, detail, headers=headers)


async def on_unexpected(request: Request, error: Exception) -> Response:
    log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=error)
    return error_response(
        500,
        "the gateway failed unexpectedly (see its log); the request may be retried",
        kind="server_error",
        code="internal_error",
    )


EXCEPTION_HANDLERS: dict[Any, Callable[..., Any]] = {
    StoreError: on_store_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}


@dataclass(frozen=True)
class StoreState:
    ok: bool
    revision: str | None = None
    error: str | None = None


class StoreHealth:
    """The store's state for ``/healthz``: probed at most every ``seconds``, one probe at
    a time; a request that met a :class:`StoreError` marks it down at once. The first
    failure of an outage and the recovery are logged."""

    def __init__(
        self,
        probe: Callable[[], str | None],
        seconds: float = HEALTH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._probe = probe
        self._seconds = seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._state: StoreState | None = None
        self._at = 0.0

    async def check(self) -> StoreState:
        if self._fresh():
            assert self._state is not None
            return self._state
        async with self._lock:
            if not self._fresh():
                try:
                    revision = await asyncio.to_thread(self._probe)
                except StoreError as error:
                    self.failed(error)
                else:
                    self._set(StoreState(True, revision))
        assert self._state is not None
        return self._state

    def failed(self, error: StoreError) -> None:
        self._set(StoreState(False, error=str(error)))

    def _fresh(self) -> bool:
        return self._state is not None and self._clock() - self._at < self._seconds

    def _set(self, state: StoreState) -> None:
        before = self._state
        if not state.ok and (before is None or before.ok):
            log.warning("the history store is unavailable, answering 503: %s", state.error)
        elif state.ok and before is not None and not before.ok:
            log.warning("the history store is back")
        self._state, self._at = state, self._clock()


# -- the request body -------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text ``data`` nests arrays and objects deeper than ``limit``,
    decided on the raw bytes without parsing (strings skipped): each pass removes the
    innermost pairs, so ``limit`` passes empty any text no deeper than that."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"")
        if shorter == brackets:
            break
        brackets = shorter
    if b"[]" in brackets:
        return True
    unclosed = len(brackets) - len(brackets.rstrip(b"["))
    return unclosed > limit


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}.get(
        type(value), "object"
    )


def _wrong_type(name: str, expected: str, value: Any) -> JSONResponse:
    return error_response(
        400,
        f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.",
        param=name,
        code="invalid_type",
    )


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, f"request body over {limit:,} bytes", code="body_too_large")


async def read_json_body(request: Request, limit: int) -> dict[str, Any] | Response:
    """The request's JSON object, read up to ``limit`` bytes and checked for depth before
    it is parsed; or the 4xx answer saying what is wrong."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return _too_large(limit)
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            return _too_large(limit)
    raw = bytes(data)
    if too_deep(raw):
        return error_response(
            400, f"the request body nests deeper than {MAX_DEPTH} levels", code="too_deep"
        )
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except _NotFinite as error:
        return error_response(
            400,
            f"the request body is not valid JSON: {error} is not a JSON number "
            "(JSON has no NaN or infinity); send a finite number",
            code="invalid_number",
        )
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, a 5,000-digit int
        return error_response(400, f"the request body is not valid JSON: {error}")
    except RecursionError:
        return error_response(
            400, f"the request body nests deeper than {MAX_DEPTH} levels", code="too_deep"
        )
    if not isinstance(body, dict):
        return error_response(400, "the request body must be a JSON object")
    return body


class _NotFinite(ValueError):
    """NaN, Infinity, or a number too large for a float (``1e400``) in a request body."""


def _no_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


REPLY_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def check_reply_caps(request: Request, body: dict[str, Any]) -> Response | None:
    """A 400 naming the reply cap that is not a positive integer, or exceeds the model's
    output limit (in the trimmer's model table), as the API refuses it; nothing stored."""
    model = body.get("model")
    models = request.app.state.trimmer.models

    def max_output(name: str) -> int:
        return int(models.get(name).max_output)

    for name in REPLY_CAPS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return _wrong_type(name, "an integer", value)
        if value < 1:
            return error_response(400, f"'{name}' must be at least 1, got {value}", param=name)
        limit = min(max_output(model) if isinstance(model, str) else 0, MAX_STORED_INT)
        if isinstance(model, str) and value > limit:
            return error_response(
                400,
                f"'{name}' is too large: {value}. This model supports at most {limit} "
                f"completion tokens, whereas you provided {value}.",
                param=name,
                code="integer_above_max_value",
            )
    return None


def check_chat_body(body: dict[str, Any]) -> Response | None:
    """A 400 for a chat completions body the API would refuse by its types alone."""
    for name in ("model", "messages"):
        if name not in body:
            return error_response(
                400,
                f"missing required parameter: '{name}'",
                param=name,
                code="missing_required_parameter",
            )
    if not isinstance(body["model"], str) or not body["model"].strip():
        return _wrong_type("model", "a non-empty string", body["model"])
    if not isinstance(body["messages"], list):
        return _wrong_type("messages", "an array", body["messages"])
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return _wrong_type("stream", "a boolean", body["stream"])
    if body.get("user") is not None and not isinstance(body["user"], str):
        return _wrong_type("user", "a string", body["user"])
    return None


# -- identity ---------------------------------------------------------------------------


def _identifier_problem(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_IDENTIFIER:
        return f"must be at most {MAX_IDENTIFIER} characters (got {len(value)})"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters"
    return None


def identity(
    request: Request, tenant: str, body: dict[str, Any]
) -> tuple[str | None, str] | Response:
    """``(conversation id, stored user name)`` of the request, or its 400."""
    conversation = request.headers.get("x-conversation-id")
    if conversation is not None:
        problem = _identifier_problem(conversation)
        if problem:
            return error_response(400, f"X-Conversation-Id {problem}", param="X-Conversation-Id")
    header = request.headers.get("x-user-id")
    where = "X-User-Id" if header is not None else "user"
    end_user = header if header is not None else body.get("user")
    if end_user is None or end_user == "":
        return conversation, tenant_user(tenant, None)
    user = tenant_user(tenant, end_user)
    problem = _identifier_problem(end_user)
    if problem is None and len(user) > MAX_IDENTIFIER:
        room = MAX_IDENTIFIER - len(tenant_user(tenant, None)) - 1
        problem = f"must be at most {max(room, 0)} characters for this key (got {len(end_user)})"
    if problem:
        return error_response(400, f"{where} {problem}", param=where)
    return conversation, user


# -- keys -------------------------------------------------------------------------------


@dataclass
class _Seen:
    at: float
    info: KeyInfo


class KeyCache:
    """Gateway keys checked against the store, remembered for ``seconds`` (so a
    revocation takes effect within that time) to keep a database read off most requests.

    Keys longer than :data:`MAX_KEY_CHARS` are refused unread. Known and unknown keys
    are each remembered up to :data:`KEY_CACHE_ENTRIES` (the oldest forgotten first).
    While the store cannot be reached, a key seen valid in the last hour is still accepted; any
    other key meets the :class:`StoreError` (a 503)."""

    def __init__(
        self,
        authenticate: Callable[[str], KeyInfo | None],
        seconds: float,
        *,
        entries: int = KEY_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._authenticate = authenticate
        self.seconds = seconds
        self._entries = entries
        self._clock = clock
        self._known: OrderedDict[str, _Seen] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    async def lookup(self, token: str) -> KeyInfo | None:
        """The key's record, or None for a key that is unknown, revoked or too long."""
        if len(token) > MAX_KEY_CHARS:
            return None
        now = self._clock()
        known = self._known.get(token)
        if known is not None and now - known.at < self.seconds:
            return known.info
        refused = self._unknown.get(token)
        if refused is not None and now - refused < self.seconds:
            return None
        try:
            info = await asyncio.to_thread(self._authenticate, token)
        except StoreError:
            if known is not None and now - known.at < STALE_KEY_SECONDS:
                return known.info  # seen valid lately: still trusted while the store is away
            raise
        self._remember(token, now, info)
        return info

    def _remember(self, token: str, now: float, info: KeyInfo | None) -> None:
        if self.seconds <= 0 and info is None:
            return
        self._known.pop(token, None)
        self._unknown.pop(token, None)
        if info is None:
            self._unknown[token] = now
            table: OrderedDict[str, Any] = self._unknown
        else:
            self._known[token] = _Seen(now, info)
            table = self._known
        while len(table) > self._entries:
            table.popitem(last=False)
