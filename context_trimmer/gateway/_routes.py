"""The gateway beyond chat completions: ``POST /v1/responses``, every other ``/v1/...``
endpoint passed through, ``GET /metrics``, and a JSON 404 for everything else.

- ``POST /v1/responses`` (JSON or SSE) goes through the same wrapped client as chat
  completions (``app.state.client``), so it is trimmed exactly as the wrapper trims
  ``responses.create``; a request with server-side state (``previous_response_id``,
  ``conversation``) passes through untouched. It is posted with the client's own
  ``post`` (what ``responses.create`` calls), so parameters newer than the installed SDK
  still reach the upstream, and answered as the upstream's bytes (``_client.relayed``), as chat
  completions are.
- Any other ``/v1/...`` request (embeddings, moderations, models, files, batches, audio,
  images...) is relayed by one shared HTTP client (``app.state.http``, made by
  :func:`passthrough_client`), request and response bodies streamed, with the UPSTREAM
  key in place of the caller's gateway key, which never leaves the gateway.
- Authentication is the gateway's (``authenticate`` is handed in by ``create_app``, so
  this module does not import ``gateway``); every error the gateway makes itself is
  OpenAI-style JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import openai
from openai.types.responses import Response as ResponsesAnswer
from openai.types.responses import ResponseStreamEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._client.calls import RAW_HEADER
from .._client.relayed import (
    RELAY,
    RelayedAnswer,
    RelayedStream,
    UpstreamAnswerCut,
    UpstreamAnswerError,
    unrecorded,
)
from .._client.responses_api import untrimmable
from .._exceptions import (
    InvalidMessagesError,
    QuotaExceeded,
    RateLimitBudgetExceeded,
    StoreError,
    TrimmerError,
)
from .._store.keys import KeyInfo
from .._store.tenants import tenant_user
from ._guard import (
    check_reply_caps,
    error_response,
    identity,
    on_store_error,
    read_json_body,
)
from ._metrics import note, render_metrics
from ._passthrough import Passthrough, check_references, forward
from ._relay import SSERelay

__all__ = ["api_routes", "error_response"]

log = logging.getLogger("context_trimmer.gateway")
Authenticate = Callable[[Request], Awaitable[KeyInfo | None]]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def unauthorized() -> JSONResponse:
    return error_response(
        401,
        "Invalid or missing gateway API key. Send 'Authorization: Bearer <key>'; "
        "create one with: context-trimmer keys create --user NAME",
        code="invalid_api_key",
    )


OWN_PATHS = {"chat/completions": "POST", "responses": "POST", "savings": "GET"}
"""Endpoints the gateway answers itself: another method there is a 405, not passed on."""


def api_routes(authenticate: Authenticate, *, metrics_public: bool = False) -> list[Route]:
    """The routes to register after the gateway's own (chat completions, savings...)."""

    async def responses(request: Request) -> Response:
        key = await authenticate(request)
        if key is None:
            return unauthorized()
        return await _responses(request, key)

    async def passthrough(request: Request) -> Response:
        allowed = OWN_PATHS.get(request.path_params["path"].strip("/"))
        if allowed is not None:  # the gateway's own endpoint, with another method
            return error_response(
                405,
                f"{request.method} is not allowed on {request.url.path}: use {allowed}.",
                code="method_not_allowed",
                headers={"allow": allowed},
            )
        key = await authenticate(request)
        if key is None:
            return unauthorized()
        return await forward(request, key)

    async def metrics(request: Request) -> Response:
        if not metrics_public:
            key = await authenticate(request)
            if key is None:
                return unauthorized()
            if not key.admin:
                return error_response(
                    403,
                    "/metrics needs an admin key (context-trimmer keys create --user NAME "
                    "--admin), or serve --metrics-public",
                    kind="permission_error",
                )
        return await render_metrics(request.app.state.metrics, request.app.state.trimmer)

    return [
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/{path:path}", passthrough, methods=METHODS),
        Route("/{path:path}", not_found, methods=METHODS),
    ]


async def not_found(request: Request) -> Response:
    return error_response(
        404,
        f"Unknown path: {request.method} {request.url.path}. The gateway serves the OpenAI "
        "API under /v1 (and /healthz, /metrics).",
        code="unknown_url",
    )


async def _responses(request: Request, key: KeyInfo) -> Response:
    body = await read_json_body(request, request.app.state.config.max_body_bytes)
    if isinstance(body, Response):
        return body
    refused = check_reply_caps(request, body)
    if refused is not None:
        return refused
    if not isinstance(body.get("model"), str):
        return error_response(
            400,
            "missing required parameter: 'model'",
            param="model",
            code="missing_required_parameter",
        )
    who = identity(request, key.user, body)
    if isinstance(who, Response):
        return who
    passthrough: Passthrough = request.app.state.passthrough
    tenant = tenant_user(key.user, None)
    if not key.admin:  # previous_response_id, conversation, input files: the caller's only
        refused = await check_references(passthrough, tenant, body)
        if refused is not None:
            return refused
    note(request, model=body["model"], user=key.user)
    if untrimmable(body) is not None:  # the wrapped client passes it through untouched
        request.app.state.metrics.passthrough("responses")
    answer = await relay_to_upstream(
        request,
        "/responses",
        body,
        who,
        (ResponsesAnswer, openai.AsyncStream[ResponseStreamEvent]),
        "input",
        _responses_failure,
    )
    if body.get("store") is False:  # nothing stored upstream: nothing to own
        return answer
    return await owned_response(answer, passthrough, tenant)


async def relay_to_upstream(
    request: Request,
    path: str,
    body: dict[str, Any],
    who: tuple[str | None, str],
    types: tuple[Any, Any],
    field: str,
    failure: Callable[[Exception], bytes] | None = None,
) -> Response:
    """POST ``body`` (the JSON as it came: no SDK transform) to ``path`` through the
    wrapped client, for conversation and user ``who``, and answer with the upstream's
    bytes: JSON, or SSE relayed as it comes (``failure`` writes a broken stream's last
    event). ``types``: the SDK's answer and stream types; ``field``: the body's
    field a model-call error names."""
    trimmer = request.app.state.trimmer
    stream = bool(body.get("stream"))
    answer_type, stream_type = types
    conversation, user = who
    try:
        with trimmer.conversation(conversation, user=user):
            result: Any = await request.app.state.client.post(
                path,
                body=body,
                cast_to=answer_type,
                stream=stream,
                stream_cls=stream_type,
                options={"headers": {RAW_HEADER: RELAY}},  # the answer as bytes
            )
            answer = await as_relayed(result, stream)
    except StoreError as error:
        return await on_store_error(request, error)
    except UpstreamAnswerCut as error:
        return model_call_error(error, field)
    except UpstreamAnswerError:
        raise  # nothing the gateway expects: the catch-all answers
    except (openai.APIError, TrimmerError) as error:
        return model_call_error(error, field)
    if isinstance(answer, RelayedStream):
        return SSERelay(answer, failure=failure)
    return Response(answer.content, answer.status_code, media_type="application/json")


async def as_relayed(result: Any, stream: bool) -> RelayedStream | RelayedAnswer:
    """The wrapped client's relayed answer; a request passed through (server-side
    state, or the store down) comes back as the SDK's raw response, relayed unrecorded."""
    if isinstance(result, (RelayedStream, RelayedAnswer)):
        return result
    return await unrecorded(result, stream=stream)


async def owned_response(answer: Response, passthrough: Passthrough, tenant: str) -> Response:
    """``answer`` to a ``POST /v1/responses``, once the stored response it created is
    recorded as ``tenant``'s: at once for JSON, at the stream's first event for SSE."""
    if isinstance(answer, SSERelay):
        answer.body_iterator = _recording(answer.body_iterator, passthrough, tenant)
        return answer
    if 200 <= answer.status_code < 300:
        await passthrough.record(tenant, {i: "response" for i in _response_ids(bytes(answer.body))})
    return answer


async def _recording(
    events: AsyncIterable[Any], passthrough: Passthrough, tenant: str
) -> AsyncIterator[Any]:
    """``events`` as they come; the response id in the first event recorded before it
    is passed on (looked for in the first 64 KiB only)."""
    seen: bytes | None = b""
    async for chunk in events:
        if seen is not None:
            seen += chunk if isinstance(chunk, bytes) else str(chunk).encode()
            if b"\n\n" in seen or len(seen) > 65_536:
                first = seen.split(b"\n\n", 1)[0]
                data = b"".join(
                    line[5:].strip() for line in first.split(b"\n") if line.startswith(b"data:")
                )
                ids = _response_ids(data, nested=True)
                await passthrough.record(tenant, {i: "response" for i in ids})
                seen = None
        yield chunk


def _response_ids(data: bytes, *, nested: bool = False) -> set[str]:
    """The id of the Responses API object in ``data`` (JSON), or of the one in its
    ``response`` field (an SSE event)."""
    try:
        answer = json.loads(data)
    except ValueError:
        return set()
    if nested and isinstance(answer, dict):
        answer = answer.get("response")
    if isinstance(answer, dict) and isinstance(answer.get("id"), str):
        return {answer["id"]}
    return set()


def _responses_failure(error: Exception) -> bytes:
    """The in-band error event of a Responses stream the upstream broke."""
    failure = {"type": "error", "message": str(error), "code": "upstream_error"}
    return b"event: error\ndata: " + json.dumps(failure).encode() + b"\n\n"


def model_call_error(error: openai.APIError | TrimmerError, field: str) -> Response:
    """The gateway's answer when a trimmed call fails (the upstream's errors keep their
    status and body); ``field`` names the request's messages (``messages``, ``input``)."""
    if isinstance(error, openai.APIStatusError):
        return upstream_error(error)
    if isinstance(error, openai.APIError):
        cause = error.__cause__  # the transport's own words: refused, reset, timed out...
        detail = f"{error} ({cause})" if cause is not None and str(cause) else str(error)
        return error_response(
            502,
            f"the upstream could not be reached: {detail}",
            kind="upstream_error",
            code="upstream_unreachable",
        )
    if isinstance(error, UpstreamAnswerCut):
        return error_response(502, str(error), kind="upstream_error", code="upstream_answer_cut")
    if isinstance(error, InvalidMessagesError):
        param = field + (f"[{error.index}]" if error.index is not None else "")
        param += f".{error.field}" if error.field else ""
        return error_response(400, str(error), param=param)
    if isinstance(error, QuotaExceeded):
        retry = {"retry-after": str(max(1, int(error.retry_after)))}
        return error_response(
            429, str(error), kind="quota_exceeded", code="user_quota", headers=retry
        )
    if isinstance(error, RateLimitBudgetExceeded):
        wait = error.wait_seconds
        headers = {"retry-after": str(max(1, int(wait)))} if wait != float("inf") else None
        return error_response(429, str(error), kind="rate_limit_exceeded", headers=headers)
    return error_response(400, str(error), param=getattr(error, "param", None))


def upstream_error(error: openai.APIStatusError) -> Response:
    body = error.body if isinstance(error.body, dict) else None
    if body is None or "error" not in body:
        body = {
            "error": body
            or {"message": str(error), "type": "upstream_error", "param": None, "code": None}
        }
    headers = {
        name: value
        for name, value in error.response.headers.items()
        if name.lower() in ("retry-after", "retry-after-ms")
        or name.lower().startswith("x-ratelimit-")
    }
    return JSONResponse(body, status_code=error.status_code, headers=headers)
