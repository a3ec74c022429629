"""The gateway's POST to an upstream, without the SDK's request machinery.

The gateway forwards JSON it has validated and relays the answer's bytes. Sent through
the SDK's ``post``, every request had its options copied as pydantic models, its URL
and headers rebuilt and merged, and its answer wrapped: about 0.6 ms of CPU a request,
a tenth of the gateway's. For a plain ``AsyncOpenAI`` (no provider runtime, no custom
auth, no default query: what ``context-trimmer serve`` builds), :func:`direct_sender`
posts with the client's own HTTP client, URL, headers and timeout (worked out once per
client and path), and fails as the SDK does: ``APITimeoutError``,
``APIConnectionError``, and for a 4xx/5xx the SDK's own status error, its body read.
The send plan's failover, retries and rate-limit reading see what they always see.
Clients whose credentials are not a fixed key (Azure, a key callable, workload
identity) keep the SDK's ``post``.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from .upstream_url import upstream_url

__all__ = ["DirectAnswer", "direct_sender"]

Send = Callable[[dict[str, Any], dict[str, Any]], Awaitable["DirectAnswer"]]

try:  # openai 3.x: the exceptions of httpx2 (and of httpx, where it is loaded)
    from openai._httpx2 import request_exceptions, timeout_exceptions

    _TIMEOUTS: Callable[[], tuple[type[Exception], ...]] = timeout_exceptions
    _FAILURES: Callable[[], tuple[type[Exception], ...]] = request_exceptions
except ImportError:  # openai 2.x: httpx, and any other failure to send is a connection error
    import httpx

    _TIMEOUTS = lambda: (httpx.TimeoutException,)  # noqa: E731
    _FAILURES = lambda: (Exception,)  # noqa: E731

_ENDPOINTS: weakref.WeakKeyDictionary[Any, dict[str, tuple[Any, dict[str, str]]]] = (
    weakref.WeakKeyDictionary()
)
_INTERNAL_HEADER = "x-stainless-raw-response"  # tells the SDK how to answer; not sent


class DirectAnswer:
    """The upstream's answer as the relay reads a raw SDK response: its HTTP response
    (status, headers, the body not read yet) and headers."""

    def __init__(self, response: Any):
        self.http_response = response
        self.headers = response.headers


def direct_sender(client: Any, path: str) -> Send | None:
    """The POST of ``path`` on ``client`` without the SDK's request path, or None when
    the client is not a plain ``AsyncOpenAI`` (then the SDK's own ``post`` sends)."""
    if not _plain(client):
        return None
    url, headers = _endpoint(client, path)
    http, timeout = client._client, client.timeout

    async def send(body: dict[str, Any], extra: dict[str, Any]) -> DirectAnswer:
        merged = {**headers, **{k: v for k, v in extra.items() if k.lower() != _INTERNAL_HEADER}}
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        content_bytes = content.encode()
        request = http.build_request(
            "POST", url, headers=merged, content=content_bytes, timeout=timeout
        )
        try:
            response = await http.send(request, stream=True)
        except _TIMEOUTS() as error:
            if refused(error):  # the aiohttp transport calls a refused connection a timeout
                raise openai.APIConnectionError(request=request) from error
            raise openai.APITimeoutError(request=request) from error
        except openai.OpenAIError:
            raise
        except _FAILURES() as error:
            raise openai.APIConnectionError(request=request) from error
        if response.status_code >= 400:
            await response.aread()
            raise client._make_status_error_from_response(response) from None
        return DirectAnswer(response)

    return send


def refused(error: BaseException) -> bool:
    """Whether ``error`` was caused by a refused connection (the host answered: nothing
    listens there). httpx2's aiohttp transport, which ``serve`` uses, raises
    ``ConnectTimeout`` for every failed connect, refusals included."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConnectionRefusedError):
            return True
        seen.add(id(cause))
        nested = [a for a in getattr(cause, "args", ()) if isinstance(a, BaseException)]
        cause = cause.__cause__ or cause.__context__ or (nested[0] if nested else None)
    return False


def _plain(client: Any) -> bool:
    """A plain async OpenAI client: its requests are its base URL, headers and key."""
    return (
        isinstance(client, openai.AsyncOpenAI)
        and not isinstance(client, openai.AsyncAzureOpenAI)
        and getattr(client, "_provider_runtime", None) is None
        and getattr(client, "_api_key_provider", None) is None  # a key from a callable
        and getattr(client, "workload_identity", None) is None  # a token exchanged
        and client.custom_auth is None
        and not client.default_query
        and isinstance(client.api_key, str)
    )


def _endpoint(client: Any, path: str) -> tuple[Any, dict[str, str]]:
    """The URL of ``path`` and the headers every request of ``client`` carries."""
    known = _ENDPOINTS.setdefault(client, {})
    if path not in known:
        headers = {**client.default_headers, **client.auth_headers}
        headers["X-Stainless-Retry-Count"] = "0"  # the SDK's retries are off: the plan's
        plain = {name: value for name, value in headers.items() if isinstance(value, str)}
        url = upstream_url(str(client.base_url), path)  # the gateway's one URL builder
        if url is None:
            raise ValueError(f"{path!r} is not a path under {client.base_url}")
        known[path] = (url, plain)
    return known[path]
